//! The hub: parlor's live state and the only code that changes it.
//!
//! It owns who is online (users with at least one client process), the
//! client processes themselves (`clients`), each online user's `mailbox`,
//! presence (`presence`), dialogs, and the rooms' member lists (loaded from
//! the store at start, written through on change). HTTP handlers call one
//! method per request; each takes its locks, does short synchronous work,
//! and releases them before any `.await` (mini-redis `db.rs`'s shape). A
//! parked poll waits on a oneshot outside every lock.
//!
//! Locks: users (with their clients and mailboxes) and client tokens are
//! spread over `SHARDS` shards by a hash of the name or token, each behind
//! its own mutex. What they share — who is online, rooms, dialogs,
//! presence — is the `Directory`, behind a read-write lock. A poll takes the
//! directory shared and its user's shard; a /send the directory shared and
//! its members' shards (every shard for the lobby). So no lock is taken by
//! every request and held for its work: polls and sends of users in
//! different shards run in parallel on different cores. Operations that
//! change the directory (/join, /leave, the sweeper, rooms, dialogs,
//! statuses) take it exclusively, with every shard.
//!
//! Durability: each operation describes what it changed as store `Change`s
//! and submits them under the next ticket (`Locked::flush`), numbered and
//! queued in order under the small `Log` lock. Mailbox events carry that
//! ticket and stay invisible to polls until the store reports it durable,
//! which is also when their readers are woken (`Hub::advance_durable`,
//! driven by `run_visibility`). Events are appended `UNSEALED` and given
//! their ticket before the operation lets go of the mailbox's shard; since
//! any two operations on one mailbox hold its shard in turn, its events'
//! tickets grow with the log. A /send answers only once its ticket is
//! durable; it submits with `Committer::Waiter` and commits in
//! `wait_durable`, outside every lock (see `store::sqlite::writer`).
//!
//! Seams for cluster mode: mailbox append + wake (`deliver`), presence and
//! the client table are what a Redis engine would take over; each is behind
//! its own small type so that swap is confined to this module.

pub mod clients;
pub mod mailbox;
pub mod online;
pub mod presence;
pub mod sweeper;

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::StatusCode;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::auth::{self, PasswordHasherPool};
use crate::config::{
    MAX_CLIENTS_PER_USER, MAX_CLIENT_MSG_ID_BYTES, MAX_EVENTS_PER_POLL, MAX_HISTORY_LIMIT,
    MAX_NAME_LEN, MAX_PASSWORD_BYTES, MAX_ROOMS, MAX_TEXT_BYTES, PRESENCE_CHANGES_PER_POLL,
};
use crate::error::{ApiError, ApiResult};
use crate::event::{
    empty_poll_body, write_poll_body, Event, EventBytes, Message, RemovalReason, Status,
};
use crate::store::{Change, Snapshot, Store, StoreError, StoredRoom};
use clients::{Clients, Wake};
use mailbox::{Mailbox, Read, UNSEALED};
use online::{OnlineNames, OnlineSnapshot};
use presence::PresenceBoard;
use sweeper::SweeperAlarm;

/// The global room every online user is in; also its conversation id.
pub const LOBBY: &str = "lobby";
/// Dialog ids are `dialog:A:B` with the two names sorted. `:` cannot occur
/// in a name, so a dialog id never collides with a room name.
const DIALOG_PREFIX: &str = "dialog:";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversationKind {
    Room,
    Dialog,
}

/// A conversation as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conversation {
    pub id: String,
    pub kind: ConversationKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub members: Vec<String>,
}

impl Conversation {
    fn room(name: &str, members: Vec<String>) -> Conversation {
        Conversation {
            id: name.to_owned(),
            kind: ConversationKind::Room,
            name: Some(name.to_owned()),
            members,
        }
    }
}

/// What /join and /sync answer: who the client is, where its cursor starts,
/// and a snapshot of the users and conversations it can see.
#[derive(Debug)]
pub struct Session {
    pub user: String,
    pub client: u64,
    pub token: Option<String>,
    pub cursor: u64,
    pub poll_timeout_ms: u64,
    pub inactivity_timeout_ms: u64,
    /// Who is online: the `users` of the answer, and the lobby's members.
    pub online: Arc<OnlineSnapshot>,
    /// The user's rooms and dialogs; the lobby comes first in the answer.
    pub rooms_and_dialogs: Vec<Conversation>,
}

impl Session {
    /// The answer's JSON: `{"user", "client", "token"?, "cursor",
    /// "poll_timeout_ms", "inactivity_timeout_ms", "users", "conversations"}`,
    /// with the online list spliced in as it was serialized once for all.
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Head<'a> {
            user: &'a str,
            client: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            token: Option<&'a str>,
            cursor: u64,
            poll_timeout_ms: u64,
            inactivity_timeout_ms: u64,
        }
        let head = Head {
            user: &self.user,
            client: self.client,
            token: self.token.as_deref(),
            cursor: self.cursor,
            poll_timeout_ms: self.poll_timeout_ms,
            inactivity_timeout_ms: self.inactivity_timeout_ms,
        };
        let mut out = Vec::with_capacity(
            256 + self.online.users.len()
                + self.online.names.len()
                + 128 * self.rooms_and_dialogs.len(),
        );
        serde_json::to_writer(&mut out, &head).expect("a session serializes");
        out.pop(); // the head's closing brace: the object goes on
        out.extend_from_slice(b",\"users\":");
        out.extend_from_slice(self.online.users.as_bytes());
        out.extend_from_slice(
            format!(
                r#","conversations":[{{"id":"{LOBBY}","kind":"room","name":"{LOBBY}","members":"#
            )
            .as_bytes(),
        );
        out.extend_from_slice(self.online.names.as_bytes());
        out.push(b'}');
        for conversation in &self.rooms_and_dialogs {
            out.push(b',');
            serde_json::to_writer(&mut out, conversation).expect("a conversation serializes");
        }
        out.extend_from_slice(b"]}");
        out
    }
}

/// Who got a published notification.
#[derive(Debug, Serialize)]
pub struct PublishReport {
    pub delivered: Vec<String>,
    pub offline: Vec<String>,
}

/// Counts of everything the hub holds, for leak checks and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HubStats {
    pub online_users: usize,
    pub clients: usize,
    pub tokens: usize,
    pub parked_polls: usize,
    pub idle_clients: usize,
    pub dialogs: usize,
    pub rooms: usize,
    pub mailbox_events: usize,
    pub presence_entries: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    pub poll_timeout: Duration,
    pub inactivity_timeout: Duration,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
}

/// How long a /send waits for its message to become durable before giving
/// up with 503 (the client retries with the same `client_msg_id`).
const SEND_DURABILITY_TIMEOUT: Duration = Duration::from_secs(10);
/// Recent sends remembered per shard for `client_msg_id` dedupe without a
/// store read (and while they may not be durable yet, hence not readable
/// from it).
const RECENT_SENDS_PER_SHARD: usize = 1_000;
/// Mailbox trims are written to the store once the start moved this far.
const TRIM_WRITE_STEP: u64 = 256;
/// Shards of users (with their clients and mailboxes) and of client tokens.
/// Requests of users in different shards never wait for each other; 16
/// keeps that rare on machines of up to a few dozen cores, and costs a
/// lock each for the operations that take them all.
const SHARDS: usize = 16;
/// A set of shards, one bit each.
type ShardSet = u32;
const ALL_SHARDS: ShardSet = ((1u64 << SHARDS) - 1) as ShardSet;

/// A cheap-to-clone handle on the shared hub.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// Lock order: `directory` (read or write), then shards in index order, then
/// `log`. A lock taken alone (a token look-up, waking readers once their
/// events are durable) may be taken without the ones before it, as long as
/// nothing else is held meanwhile.
struct Shared {
    directory: RwLock<Directory>,
    shards: Box<[Mutex<Shard>]>,
    log: Mutex<Log>,
    /// Seeds which shard a user name belongs to, per process, so that names
    /// cannot be chosen to crowd one shard.
    shard_seed: u64,
    store: Arc<dyn Store>,
    config: HubConfig,
    hasher: PasswordHasherPool,
    /// Wakes the sweeper task early (see `sweeper::SweeperAlarm`).
    sweeper: Arc<SweeperAlarm>,
    /// The highest store ticket made durable.
    durable: watch::Receiver<u64>,
    /// Whether the store keeps live state (else live changes are not described).
    persist_live: bool,
    /// Set (with every shard locked) when the server stops: no poll parks.
    shutting_down: AtomicBool,
    last_message_id: AtomicU64,
    last_delivery_id: AtomicU64,
    last_client_id: AtomicU64,
    /// The highest durable ticket whose readers were woken. Written under
    /// the log's lock, read without it.
    woken_through: AtomicU64,
}

/// What every shard shares: who is online, rooms, dialogs, presence. Read
/// (shared) by /poll and /send; written only by operations that change it
/// (/join, /leave, the sweeper, rooms, dialogs, statuses), which then hold
/// every shard too.
struct Directory {
    /// Names of the users with at least one client process, sorted.
    online: OnlineNames,
    /// Every room but the lobby, by name (= id).
    rooms: HashMap<String, Conversation>,
    /// user → names of the rooms it is a member of (online or not).
    rooms_of: HashMap<String, BTreeSet<String>>,
    /// Live dialogs by id; torn down when either member goes offline.
    dialogs: HashMap<String, Conversation>,
    presence: PresenceBoard,
    /// Size of the presence board when it was last compacted.
    presence_compacted_at: usize,
}

/// The users whose name hashes to this shard, with their clients, and the
/// tokens that hash to it (pointing at the client's shard).
struct Shard {
    users: HashMap<String, OnlineUser>,
    clients: Clients,
    tokens: HashMap<String, ClientRef>,
    /// (sender, client_msg_id) → message, for senders of this shard, the
    /// most recent sends, oldest first.
    recent_sends: HashMap<(String, String), Message>,
    recent_order: VecDeque<(String, String)>,
}

/// The order of durable changes: tickets are numbered and submitted to the
/// store under this lock, with who to wake once each is durable. It is held
/// for a counter bump and two queue pushes, and only by operations that
/// change something (a poll that reads or parks does not take it).
#[derive(Default)]
struct Log {
    /// The last ticket submitted.
    last_ticket: u64,
    /// Submitted tickets not yet durable, with the users to wake then.
    awaiting: VecDeque<(u64, Arc<[String]>)>,
}

/// Where a client lives: its user's shard and its slab key there.
#[derive(Debug, Clone, Copy)]
struct ClientRef {
    shard: usize,
    key: usize,
}

struct OnlineUser {
    /// Slab keys (in the user's shard) of the user's client processes.
    clients: Vec<usize>,
    mailbox: Mailbox,
    /// Ids of the user's live dialogs.
    dialogs: BTreeSet<String>,
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        tracing::error!(%error, "store failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the server could not store or read data; retry later",
        )
    }
}

impl Hub {
    /// Builds the hub over a store, resuming the state it kept.
    pub fn new(store: Arc<dyn Store>, config: HubConfig) -> Result<Hub, StoreError> {
        let snapshot = store.load()?;
        let sweeper = Arc::new(SweeperAlarm::default());
        let durable = store.durable();
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    users: HashMap::new(),
                    clients: Clients::new(sweeper.clone(), config.inactivity_timeout),
                    tokens: HashMap::new(),
                    recent_sends: HashMap::new(),
                    recent_order: VecDeque::new(),
                })
            })
            .collect();
        let hub = Hub {
            shared: Arc::new(Shared {
                directory: RwLock::new(Directory {
                    online: OnlineNames::default(),
                    rooms: HashMap::new(),
                    rooms_of: HashMap::new(),
                    dialogs: HashMap::new(),
                    presence: PresenceBoard::restore(
                        snapshot.presence.clone(),
                        snapshot.presence_version,
                    ),
                    presence_compacted_at: 0,
                }),
                shards,
                log: Mutex::new(Log::default()),
                shard_seed: RandomState::new().hash_one(0x7061_726c_6f72_u64),
                persist_live: store.keeps_live_state(),
                store,
                config,
                hasher: PasswordHasherPool::new(config.argon2_memory_kib, config.argon2_iterations),
                sweeper,
                durable,
                shutting_down: AtomicBool::new(false),
                last_message_id: AtomicU64::new(snapshot.last_message_id),
                last_delivery_id: AtomicU64::new(snapshot.last_delivery_id),
                last_client_id: AtomicU64::new(snapshot.last_client_id),
                woken_through: AtomicU64::new(0),
            }),
        };
        {
            let mut world = hub.everything();
            world.restore(snapshot, Instant::now());
            // Whatever restoring had to tidy (e.g. a dialog of a user who
            // did not come back) is written like any other change.
            world.flush(Committer::Store);
        }
        Ok(hub)
    }

    /// The directory, shared: for operations that change no room, dialog,
    /// status or who is online.
    fn directory(&self) -> RwLockReadGuard<'_, Directory> {
        // Hub methods do not panic while holding a lock; should one ever
        // do so, the server keeps serving rather than failing every request.
        self.shared
            .directory
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the shards in `set`, in index order, after `directory`.
    fn lock<D: Deref<Target = Directory>>(&self, directory: D, set: ShardSet) -> Locked<'_, D> {
        let shards = std::array::from_fn(|index| {
            (set & (1 << index) != 0).then(|| self.shared.shard(index))
        });
        Locked {
            hub: &self.shared,
            dir: directory,
            shards,
            batch: Batch::default(),
        }
    }

    /// The directory to change, and every shard.
    fn everything(&self) -> Exclusive<'_> {
        let directory = self
            .shared
            .directory
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.lock(directory, ALL_SHARDS)
    }

    /// The client behind a token (401 `unknown_client` if none). Takes the
    /// token's shard alone: call it holding no shard.
    fn find_client(&self, token: &str) -> ApiResult<ClientRef> {
        self.shared
            .shard(self.shared.shard_of_token(token))
            .tokens
            .get(token)
            .copied()
            .ok_or_else(ApiError::unknown_client)
    }

    /// Makes events up to `ticket` visible and wakes their readers.
    pub fn advance_durable(&self, ticket: u64) {
        // Every /send calls this once durable; most find it done already.
        if ticket <= self.shared.woken_through.load(Ordering::Acquire) {
            return;
        }
        let batches: Vec<Arc<[String]>> = {
            let mut log = self.shared.log();
            if ticket <= self.shared.woken_through.load(Ordering::Acquire) {
                return;
            }
            self.shared.woken_through.store(ticket, Ordering::Release);
            let mut batches = Vec::new();
            while log
                .awaiting
                .front()
                .is_some_and(|(waiting, _)| *waiting <= ticket)
            {
                if let Some((_, users)) = log.awaiting.pop_front() {
                    batches.push(users);
                }
            }
            batches
        };
        if batches.is_empty() {
            return;
        }
        // One lock per shard, each taken alone.
        let mut by_shard: Vec<(usize, &str)> = batches
            .iter()
            .flat_map(|users| users.iter())
            .map(|user| (self.shared.shard_of_user(user), user.as_str()))
            .collect();
        by_shard.sort_unstable_by_key(|&(shard, _)| shard);
        let now = Instant::now();
        for group in by_shard.chunk_by(|a, b| a.0 == b.0) {
            let mut shard = self.shared.shard(group[0].0);
            for &(_, user) in group {
                shard.wake_user(user, now);
            }
        }
    }

    /// Follows the store's durability and makes events visible as they
    /// become durable, until `shutdown` flips to true.
    pub async fn run_visibility(self, mut shutdown: watch::Receiver<bool>) {
        let mut durable = self.shared.durable.clone();
        loop {
            tokio::select! {
                changed = durable.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let ticket = *durable.borrow_and_update();
                    self.advance_durable(ticket);
                }
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Waits until `ticket` is durable (503 after `SEND_DURABILITY_TIMEOUT`).
    async fn wait_durable(&self, ticket: u64) -> ApiResult<()> {
        if *self.shared.durable.borrow() < ticket {
            // Let the other requests this thread has ready queue their
            // changes first, so that one commit takes them all (group
            // commit); the guard commits even if the request is cancelled
            // meanwhile.
            let commit = CommitThrough {
                store: &*self.shared.store,
                ticket,
            };
            tokio::task::yield_now().await;
            drop(commit);
        }
        let mut durable = self.shared.durable.clone();
        let waiting = tokio::time::timeout(
            SEND_DURABILITY_TIMEOUT,
            durable.wait_for(|done| *done >= ticket),
        );
        // `wait_for` answers with a guard that read-locks the watch: it must
        // be gone before a hub lock is taken, or this task (watch, then
        // hub) and a poll (hub, then watch) deadlock once the store writer
        // queues for the watch's write lock.
        let reached = matches!(waiting.await, Ok(Ok(_)));
        if !reached {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_stored",
                "the message could not be stored in time; retry with the same client_msg_id",
            ));
        }
        // Wake the operation's readers from here, rather than one task hop
        // later from `run_visibility`.
        let durable_through = *self.shared.durable.borrow();
        self.advance_durable(durable_through);
        Ok(())
    }

    /// Writes whatever the store has queued; called at shutdown.
    pub fn close_store(&self) {
        self.shared.store.close();
    }

    pub fn config(&self) -> HubConfig {
        self.shared.config
    }

    /// POST /join: checks or claims the name, then opens a client process.
    pub async fn join(&self, name: &str, password: &str) -> ApiResult<Session> {
        if !valid_name(name) {
            return Err(ApiError::bad_request(
                "invalid_name",
                format!("a name is 1 to {MAX_NAME_LEN} letters, digits, `_`, `-` or `.`"),
            ));
        }
        if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
            return Err(ApiError::bad_request(
                "invalid_password",
                format!("a password is 1 to {MAX_PASSWORD_BYTES} bytes"),
            ));
        }
        self.check_password(name, password).await?;

        let now = Instant::now();
        let (session, ticket) = {
            let mut world = self.everything();
            let clients_of_user = world
                .shard(self.shared.shard_of_user(name))
                .users
                .get(name)
                .map_or(0, |user| user.clients.len());
            if clients_of_user >= MAX_CLIENTS_PER_USER {
                return Err(ApiError::too_many(
                    "too_many_clients",
                    format!("`{name}` already has {MAX_CLIENTS_PER_USER} client processes; /leave one first"),
                ));
            }
            let client = world.open_client(name, now);
            let ticket = world.flush_for_waiter();
            let mut session = world.session(client);
            session.token = world
                .shard(client.shard)
                .clients
                .get(client.key)
                .map(|client| client.token.clone());
            (session, ticket)
        };
        // The token must survive a crash before the client may use it.
        self.wait_durable(ticket).await?;
        tracing::debug!(user = name, client = session.client, "client joined");
        Ok(session)
    }

    async fn check_password(&self, name: &str, password: &str) -> ApiResult<()> {
        let store = &self.shared.store;
        let hasher = &self.shared.hasher;
        let stored = match store.password_hash(name)? {
            Some(stored) => stored,
            None => {
                let hash = hasher.hash(password).await;
                let created = store.create_account(name, &hash).await.map_err(|_| {
                    StoreError("the store stopped while creating an account".into())
                })??;
                if created {
                    return Ok(());
                }
                // Another /join claimed the name while we hashed.
                store.password_hash(name)?.ok_or_else(|| {
                    StoreError(format!("account `{name}` vanished after being claimed"))
                })?
            }
        };
        if hasher.verify(password, &stored).await {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_credentials",
                format!("`{name}` is taken and the password does not match"),
            ))
        }
    }

    /// GET /sync: a fresh snapshot and the current head, for a client whose
    /// cursor expired.
    pub fn sync(&self, token: &str) -> ApiResult<Session> {
        let durable_through = *self.shared.durable.borrow();
        self.advance_durable(durable_through);
        let mut world = self.everything();
        let client = world.client_of(token)?;
        let session = world.session(client);
        world
            .shard(client.shard)
            .clients
            .reset_acked(client.key, session.cursor);
        Ok(session)
    }

    /// GET|POST /poll: answers the events after `cursor`, waiting up to the
    /// poll timeout (or `timeout`, if shorter) for one to arrive.
    pub async fn poll(
        &self,
        token: &str,
        cursor: u64,
        timeout: Option<Duration>,
    ) -> ApiResult<Vec<u8>> {
        let poll_timeout = self.shared.config.poll_timeout;
        let wait = match timeout {
            Some(asked) => asked.min(poll_timeout),
            // Up to 10 % shorter at random: polls parked together (after a
            // restart, a fan-out) would otherwise all expire together and
            // re-poll in one storm every poll timeout.
            None => poll_timeout.mul_f64(1.0 - 0.1 * jitter_fraction()),
        };
        let deadline = Instant::now() + wait;
        loop {
            let parked = match self.read_or_park(token, cursor, !wait.is_zero())? {
                ReadOrPark::Ready(body) => return Ok(body),
                ReadOrPark::Parked(parked) => parked,
            };
            let mut guard = ParkGuard {
                hub: self,
                client: parked.client,
                client_id: parked.client_id,
                poll_id: parked.poll_id,
                armed: true,
            };
            tokio::select! {
                woken = parked.woken => {
                    // Whoever woke us already took the parked poll off the client.
                    guard.armed = false;
                    match woken {
                        Ok(Wake::Events) => continue,
                        Ok(Wake::Superseded | Wake::ShuttingDown) => return Ok(empty_poll_body(cursor)),
                        Ok(Wake::ClientGone) | Err(_) => return Err(ApiError::unknown_client()),
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    drop(guard); // unparks: the client is idle from now
                    return Ok(empty_poll_body(cursor));
                }
            }
        }
    }

    /// The poll path: the directory shared, the token's shard, then the
    /// user's shard; the log only if the poll changed something durable.
    fn read_or_park(&self, token: &str, cursor: u64, may_park: bool) -> ApiResult<ReadOrPark> {
        let now = Instant::now();
        let directory = self.directory();
        let client = self.find_client(token)?;
        let mut locked = self.lock(directory, 1 << client.shard);
        let user_name = locked.user_of(client, token)?;
        locked
            .shard(client.shard)
            .clients
            .supersede(client.key, now);
        locked.copy_presence_changes(&user_name, cursor);
        locked.acknowledge(client, &user_name, cursor);
        locked.flush(Committer::Store);
        // Events are readable once durable, whether or not their readers
        // were woken yet: a /send answered 200 a moment ago reads now. Read
        // after the flush, so that what this poll copied in and the store
        // made durable at once (the in-memory store) is answered now.
        let durable_through = *self.shared.durable.borrow();
        let shutting_down = self.shared.shutting_down.load(Ordering::Acquire);
        let Shard { users, clients, .. } = locked.shard(client.shard);
        let user = users
            .get_mut(&user_name)
            .expect("every client's user is online");
        let answer = match user.mailbox.read_durable(cursor, MAX_EVENTS_PER_POLL, durable_through) {
            Read::Events { first_seq, events } => {
                let last = first_seq + events.len() as u64 - 1;
                Ok(ReadOrPark::Ready(write_poll_body(last, first_seq, events.into_iter())))
            }
            Read::UpToDate if may_park && !shutting_down => {
                let parked = clients.park(client.key).ok_or_else(ApiError::unknown_client)?;
                return Ok(ReadOrPark::Parked(ParkedAt {
                    client,
                    client_id: parked.client_id,
                    poll_id: parked.poll_id,
                    woken: parked.woken,
                }));
            }
            Read::UpToDate => Ok(ReadOrPark::Ready(empty_poll_body(cursor))),
            Read::Expired { oldest_cursor } => Err(ApiError::new(
                StatusCode::GONE,
                "cursor_expired",
                format!(
                    "events after cursor {cursor} were dropped (oldest kept: {oldest_cursor}); GET /sync and reload history"
                ),
            )),
            Read::Ahead { head } => Err(ApiError::bad_request(
                "invalid_cursor",
                format!("cursor {cursor} is ahead of the newest event ({head})"),
            )),
        };
        // The poll ends now: the inactivity countdown starts over.
        clients.mark_idle(client.key, now);
        answer
    }

    fn unpark(&self, client: ClientRef, client_id: u64, poll_id: u64) {
        self.shared.shard(client.shard).clients.unpark(
            client.key,
            client_id,
            poll_id,
            Instant::now(),
        );
    }

    /// POST /send: stores the message, then delivers it to every member.
    /// Answers once the message is durable. Takes the directory shared and
    /// the shards of the members (all of them for the lobby), so sends to
    /// conversations of different users proceed in parallel, and sends to
    /// one conversation are ordered alike in every member's mailbox.
    pub async fn send(
        &self,
        token: &str,
        conversation: &str,
        text: &str,
        client_msg_id: Option<&str>,
    ) -> ApiResult<Message> {
        if text.is_empty() || text.len() > MAX_TEXT_BYTES {
            return Err(ApiError::bad_request(
                "invalid_text",
                format!("text must be 1 to {MAX_TEXT_BYTES} bytes of UTF-8"),
            ));
        }
        if let Some(id) = client_msg_id {
            if id.is_empty() || id.len() > MAX_CLIENT_MSG_ID_BYTES {
                return Err(ApiError::invalid_param(
                    "client_msg_id",
                    &format!("1 to {MAX_CLIENT_MSG_ID_BYTES} bytes"),
                ));
            }
        }
        // A retry answers the first send's result. Sends older than the
        // recent ones kept in memory are looked up in the store, without
        // any hub lock: a disk read must not hold other requests up.
        if let Some(id) = client_msg_id {
            let (user, recent) = {
                let directory = self.directory();
                let client = self.find_client(token)?;
                let mut locked = self.lock(directory, 1 << client.shard);
                let user = locked.user_of(client, token)?;
                let recent = locked.shard(client.shard).recent_send(&user, id);
                (user, recent)
            };
            if let Some(first) = recent {
                // Its ticket may not be durable yet: wait for the newest.
                let ticket = self.shared.log().last_ticket;
                self.wait_durable(ticket).await?;
                return Ok(first);
            }
            // The store reads only what is durable.
            if let Some(first) = self.shared.store.find_sent(&user, id)? {
                return Ok(first);
            }
        }
        let (message, ticket) = 'locked: {
            let directory = self.directory();
            let client = self.find_client(token)?;
            let members = directory.shards_of_members(&self.shared, conversation)?;
            let mut locked = self.lock(directory, members | 1 << client.shard);
            let user = locked.user_of(client, token)?;
            locked.dir.require_member(conversation, &user)?;
            if let Some(id) = client_msg_id {
                // Checked again: the same id may have been sent meanwhile.
                if let Some(first) = locked.shard(client.shard).recent_send(&user, id) {
                    // A retry: answer the first result, once it is durable
                    // (it may still be on its way to disk).
                    drop(locked);
                    break 'locked (first, self.shared.log().last_ticket);
                }
            }
            // Numbered with the members' shards held: any two messages of
            // one conversation reach every member in id order.
            let id = self.shared.last_message_id.fetch_add(1, Ordering::Relaxed) + 1;
            let message = Message {
                id,
                conversation: conversation.to_owned(),
                from: user.clone(),
                text: text.to_owned(),
                at: unix_millis(),
                client_msg_id: client_msg_id.map(str::to_owned),
            };
            let event = Event::Message(&message).to_bytes();
            locked.batch.changes.push(Change::Message(message.clone()));
            locked.shard(client.shard).remember_send(&message);
            locked.deliver_to_conversation(conversation, &event);
            let ticket = locked.flush_for_waiter();
            (message, ticket)
        };
        self.wait_durable(ticket).await?;
        Ok(message)
    }

    /// GET /history: a page of a conversation's messages, members only.
    pub fn history(
        &self,
        token: &str,
        conversation: &str,
        before: Option<u64>,
        limit: Option<usize>,
    ) -> ApiResult<Vec<Message>> {
        let limit = limit.unwrap_or(crate::config::DEFAULT_HISTORY_LIMIT);
        if limit == 0 || limit > MAX_HISTORY_LIMIT {
            return Err(ApiError::invalid_param(
                "limit",
                &format!("between 1 and {MAX_HISTORY_LIMIT}"),
            ));
        }
        {
            let directory = self.directory();
            let client = self.find_client(token)?;
            let mut locked = self.lock(directory, 1 << client.shard);
            let user = locked.user_of(client, token)?;
            locked.dir.require_member(conversation, &user)?;
        }
        Ok(self.shared.store.history(conversation, before, limit)?)
    }

    /// POST /dialog: the dialog with `with`, created if there is none.
    pub fn dialog(&self, token: &str, with: &str) -> ApiResult<Conversation> {
        let mut world = self.everything();
        let client = world.client_of(token)?;
        let user = world.user_of(client, token)?;
        if with == user {
            return Err(ApiError::bad_request(
                "invalid_user",
                "a dialog needs another user",
            ));
        }
        if !world.is_online(with) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_user",
                format!("`{with}` is not online"),
            ));
        }
        let (first, second) = if user.as_str() < with {
            (user.as_str(), with)
        } else {
            (with, user.as_str())
        };
        let id = format!("{DIALOG_PREFIX}{first}:{second}");
        if let Some(existing) = world.dir.dialogs.get(&id) {
            return Ok(existing.clone());
        }
        let conversation = Conversation {
            id: id.clone(),
            kind: ConversationKind::Dialog,
            name: None,
            members: vec![first.to_owned(), second.to_owned()],
        };
        let event = Event::ConversationAdded {
            conversation: &conversation,
        }
        .to_bytes();
        for member in [first, second] {
            if let Some(online) = world.online_user(member) {
                online.dialogs.insert(id.clone());
            }
            world.deliver(member, &event);
        }
        if self.shared.persist_live {
            world.batch.changes.push(Change::DialogOpened {
                id: id.clone(),
                members: [first.to_owned(), second.to_owned()],
            });
        }
        world.dir.dialogs.insert(id, conversation.clone());
        world.flush(Committer::Store);
        Ok(conversation)
    }

    /// POST /rooms/join: joins (creating if needed) the room `name`.
    pub fn join_room(&self, token: &str, name: &str) -> ApiResult<Conversation> {
        if !valid_name(name) {
            return Err(ApiError::bad_request(
                "invalid_name",
                format!("a room name is 1 to {MAX_NAME_LEN} letters, digits, `_`, `-` or `.`"),
            ));
        }
        let mut world = self.everything();
        let client = world.client_of(token)?;
        let user = world.user_of(client, token)?;
        if name == LOBBY {
            return Ok(world.dir.lobby());
        }
        let mut members = match world.dir.rooms.get(name) {
            Some(room) if room.members.contains(&user) => return Ok(room.clone()),
            Some(room) => room.members.clone(),
            None if world.dir.rooms.len() >= MAX_ROOMS => {
                return Err(ApiError::too_many(
                    "too_many_rooms",
                    format!("the server holds its maximum of {MAX_ROOMS} rooms"),
                ))
            }
            None => Vec::new(),
        };
        members.push(user.clone());
        world.batch.changes.push(Change::Room(StoredRoom {
            name: name.to_owned(),
            members: members.clone(),
        }));
        let room = Conversation::room(name, members);
        world.dir.rooms.insert(name.to_owned(), room.clone());
        world
            .dir
            .rooms_of
            .entry(user.clone())
            .or_default()
            .insert(name.to_owned());
        let joined = Event::MemberJoined {
            conversation: name,
            user: &user,
        }
        .to_bytes();
        for member in &room.members {
            if *member != user {
                world.deliver(member, &joined);
            }
        }
        let added = Event::ConversationAdded {
            conversation: &room,
        }
        .to_bytes();
        world.deliver(&user, &added);
        world.flush(Committer::Store);
        Ok(room)
    }

    /// POST /rooms/leave.
    pub fn leave_room(&self, token: &str, conversation: &str) -> ApiResult<()> {
        let mut world = self.everything();
        let client = world.client_of(token)?;
        let user = world.user_of(client, token)?;
        if conversation == LOBBY {
            return Err(ApiError::bad_request(
                "cannot_leave_lobby",
                "every online user is in the lobby",
            ));
        }
        if conversation.starts_with(DIALOG_PREFIX) {
            return Err(ApiError::bad_request(
                "not_a_room",
                "dialogs end when a member goes offline; only rooms can be left",
            ));
        }
        world.dir.require_member(conversation, &user)?;
        let mut members = world.dir.rooms[conversation].members.clone();
        members.retain(|member| *member != user);
        world.batch.changes.push(Change::Room(StoredRoom {
            name: conversation.to_owned(),
            members: members.clone(),
        }));
        if let Some(room) = world.dir.rooms.get_mut(conversation) {
            room.members = members.clone();
        }
        if let Some(rooms) = world.dir.rooms_of.get_mut(&user) {
            rooms.remove(conversation);
            if rooms.is_empty() {
                world.dir.rooms_of.remove(&user);
            }
        }
        let left = Event::MemberLeft {
            conversation,
            user: &user,
        }
        .to_bytes();
        for member in &members {
            world.deliver(member, &left);
        }
        let removed = Event::ConversationRemoved {
            conversation,
            reason: RemovalReason::Left,
        }
        .to_bytes();
        world.deliver(&user, &removed);
        world.flush(Committer::Store);
        Ok(())
    }

    /// POST /status.
    pub fn set_status(&self, token: &str, status: Status) -> ApiResult<()> {
        let now = Instant::now();
        let mut world = self.everything();
        let client = world.client_of(token)?;
        let user = world.user_of(client, token)?;
        if world.set_presence(&user, status) {
            world.wake_all(Wake::Events, now);
        }
        world.flush(Committer::Store);
        Ok(())
    }

    /// POST /leave: ends the client process now.
    pub fn leave(&self, token: &str) -> ApiResult<()> {
        let now = Instant::now();
        let mut world = self.everything();
        let client = world.client_of(token)?;
        world.close_client(client, now);
        world.flush(Committer::Store);
        Ok(())
    }

    /// GET /users: who is online, with their status.
    pub fn users(&self, token: &str) -> ApiResult<Arc<OnlineSnapshot>> {
        let mut world = self.everything();
        world.client_of(token)?;
        Ok(world.dir.online_snapshot())
    }

    /// POST /api/publish: a notification to each listed user's clients.
    /// Takes the directory shared and the listed users' shards.
    pub fn publish(&self, users: &[String], data: &serde_json::Value) -> PublishReport {
        let event = Event::Notification { data }.to_bytes();
        let set = users
            .iter()
            .fold(0, |set, user| set | 1 << self.shared.shard_of_user(user));
        let mut locked = self.lock(self.directory(), set);
        let mut report = PublishReport {
            delivered: Vec::new(),
            offline: Vec::new(),
        };
        for user in users {
            if locked.deliver(user, &event) {
                report.delivered.push(user.clone());
            } else {
                report.offline.push(user.clone());
            }
        }
        locked.flush(Committer::Store);
        report
    }

    /// Removes clients idle past their deadline; returns the next deadline.
    pub fn sweep_expired(&self, now: Instant) -> Option<Instant> {
        let mut world = self.everything();
        let mut expired = Vec::new();
        for (index, shard) in world.shards.iter_mut().enumerate() {
            if let Some(shard) = shard {
                expired.extend(
                    shard
                        .clients
                        .pop_expired(now)
                        .into_iter()
                        .map(|key| ClientRef { shard: index, key }),
                );
            }
        }
        if !expired.is_empty() {
            tracing::debug!(count = expired.len(), "sweeping inactive clients");
        }
        for client in expired {
            world.close_client(client, now);
        }
        world.flush(Committer::Store);
        let next = world
            .shards
            .iter()
            .flatten()
            .filter_map(|shard| shard.clients.next_deadline())
            .min();
        self.shared
            .sweeper
            .set(next.unwrap_or(now + sweeper::IDLE_RECHECK));
        next
    }

    pub(crate) async fn sweeper_notified(&self) {
        self.shared.sweeper.notified().await
    }

    /// Answers every parked poll at once (empty) and stops parking new ones.
    pub fn shut_down(&self) {
        let mut world = self.everything();
        self.shared.shutting_down.store(true, Ordering::Release);
        world.wake_all(Wake::ShuttingDown, Instant::now());
    }

    pub fn stats(&self) -> HubStats {
        let world = self.everything();
        let shards = || world.shards.iter().flatten();
        HubStats {
            online_users: shards().map(|shard| shard.users.len()).sum(),
            clients: shards().map(|shard| shard.clients.len()).sum(),
            tokens: shards().map(|shard| shard.tokens.len()).sum(),
            parked_polls: shards().map(|shard| shard.clients.parked()).sum(),
            idle_clients: shards().map(|shard| shard.clients.idle()).sum(),
            dialogs: world.dir.dialogs.len(),
            rooms: world.dir.rooms.len(),
            mailbox_events: shards()
                .flat_map(|shard| shard.users.values())
                .map(|user| user.mailbox.len())
                .sum(),
            presence_entries: world.dir.presence.len(),
        }
    }
}

impl Shared {
    /// FNV-1a from a per-process seed: a few ns for a short name, where
    /// SipHash costs several times that on every request.
    fn shard_of_user(&self, name: &str) -> usize {
        let mut hash = self.shard_seed;
        for &byte in name.as_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        ((hash ^ (hash >> 32)) % SHARDS as u64) as usize
    }

    /// Tokens are random hex (`auth::new_token`): their first digit is
    /// already a uniform shard number. Whatever else a client sends maps to
    /// some shard too, where no client has it.
    fn shard_of_token(&self, token: &str) -> usize {
        let digit = match token.as_bytes().first() {
            Some(&byte @ b'0'..=b'9') => byte - b'0',
            Some(&byte @ b'a'..=b'f') => byte - b'a' + 10,
            Some(&other) => other,
            None => 0,
        };
        usize::from(digit) % SHARDS
    }

    fn shard(&self, index: usize) -> MutexGuard<'_, Shard> {
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Commits through `ticket` when dropped (see `Hub::wait_durable`).
struct CommitThrough<'a> {
    store: &'a dyn Store,
    ticket: u64,
}

impl Drop for CommitThrough<'_> {
    fn drop(&mut self) {
        self.store.commit_through(self.ticket);
    }
}

/// Who commits an operation's changes (see `Store::submit_for_waiter`).
#[derive(Clone, Copy)]
enum Committer {
    /// The store's background writer: nobody waits for this operation.
    Store,
    /// The request itself, in `Hub::wait_durable`, outside the hub's locks.
    Waiter,
}

enum ReadOrPark {
    Ready(Vec<u8>),
    Parked(ParkedAt),
}

/// A parked poll and where its client lives.
struct ParkedAt {
    client: ClientRef,
    client_id: u64,
    poll_id: u64,
    woken: tokio::sync::oneshot::Receiver<Wake>,
}

/// Unparks a poll whose future ends without being woken: on timeout, or when
/// hyper drops the request because the connection closed.
struct ParkGuard<'a> {
    hub: &'a Hub,
    client: ClientRef,
    client_id: u64,
    poll_id: u64,
    armed: bool,
}

impl Drop for ParkGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.hub.unpark(self.client, self.client_id, self.poll_id);
        }
    }
}

impl Directory {
    /// A room or a live dialog by id (not the lobby, whose members are
    /// whoever is online).
    fn room_or_dialog(&self, id: &str) -> Option<&Conversation> {
        if id.starts_with(DIALOG_PREFIX) {
            self.dialogs.get(id)
        } else {
            self.rooms.get(id)
        }
    }

    /// The shards of a conversation's members (every shard for the lobby);
    /// 404 for a conversation that does not exist.
    fn shards_of_members(&self, hub: &Shared, conversation: &str) -> ApiResult<ShardSet> {
        if conversation == LOBBY {
            return Ok(ALL_SHARDS);
        }
        let members = self
            .room_or_dialog(conversation)
            .map(|conversation| &conversation.members)
            .ok_or_else(|| ApiError::unknown_conversation(conversation))?;
        Ok(members
            .iter()
            .fold(0, |set, member| set | 1 << hub.shard_of_user(member)))
    }

    fn require_member(&self, conversation: &str, user: &str) -> ApiResult<()> {
        if conversation == LOBBY {
            return Ok(()); // every online user is in the lobby
        }
        match self.room_or_dialog(conversation) {
            None => Err(ApiError::unknown_conversation(conversation)),
            Some(c) if c.members.iter().any(|member| member == user) => Ok(()),
            Some(_) => Err(ApiError::not_member(conversation)),
        }
    }

    fn online_snapshot(&mut self) -> Arc<OnlineSnapshot> {
        let presence = &self.presence;
        self.online.snapshot(|name| presence.status(name))
    }

    /// The lobby's members are the online users.
    fn lobby(&self) -> Conversation {
        Conversation::room(LOBBY, self.online.iter().map(str::to_owned).collect())
    }
}

impl Shard {
    /// Answers the parked polls of `user`'s clients: there is news.
    fn wake_user(&mut self, user: &str, now: Instant) {
        if let Some(online) = self.users.get(user) {
            for &key in &online.clients {
                self.clients.wake(key, Wake::Events, now);
            }
        }
    }

    /// A message `user` sent recently with `client_msg_id`, if any.
    fn recent_send(&self, user: &str, client_msg_id: &str) -> Option<Message> {
        let key = (user.to_owned(), client_msg_id.to_owned());
        self.recent_sends.get(&key).cloned()
    }

    fn remember_send(&mut self, message: &Message) {
        let Some(id) = &message.client_msg_id else {
            return;
        };
        let key = (message.from.clone(), id.clone());
        self.recent_order.push_back(key.clone());
        self.recent_sends.insert(key, message.clone());
        if self.recent_order.len() > RECENT_SENDS_PER_SHARD {
            if let Some(oldest) = self.recent_order.pop_front() {
                self.recent_sends.remove(&oldest);
            }
        }
    }
}

/// What one operation changed, submitted by `Locked::flush`.
#[derive(Default)]
struct Batch {
    changes: Vec<Change>,
    /// Mailbox window moves (see `Persist`).
    windows: Vec<Change>,
    /// Users whose mailboxes got events (appended `UNSEALED`).
    to_wake: Vec<String>,
}

/// An operation in progress: the directory (shared or exclusive), the
/// shards it took, and what it changed so far.
struct Locked<'a, D: Deref<Target = Directory>> {
    hub: &'a Shared,
    dir: D,
    /// By index; `None` for shards the operation did not take.
    shards: [Option<MutexGuard<'a, Shard>>; SHARDS],
    batch: Batch,
}

/// An operation holding the directory to change and every shard.
type Exclusive<'a> = Locked<'a, RwLockWriteGuard<'a, Directory>>;

/// An operation that changed something submits it, even when it ends early
/// (an error answered after a delivery): its events were appended
/// `UNSEALED`, and left so they would hide every later event of their
/// mailboxes.
impl<D: Deref<Target = Directory>> Drop for Locked<'_, D> {
    fn drop(&mut self) {
        let batch = &self.batch;
        if !(batch.changes.is_empty() && batch.windows.is_empty() && batch.to_wake.is_empty()) {
            self.flush(Committer::Store);
        }
    }
}

impl<D: Deref<Target = Directory>> Locked<'_, D> {
    /// A shard the operation holds.
    fn shard(&mut self, index: usize) -> &mut Shard {
        self.shards[index]
            .as_deref_mut()
            .expect("an operation touches only the shards it locked")
    }

    /// The user behind a client found by token, checked again under the
    /// user's shard (the client may have gone, and its slot been reused).
    fn user_of(&mut self, client: ClientRef, token: &str) -> ApiResult<String> {
        self.shard(client.shard)
            .clients
            .get(client.key)
            .filter(|found| found.token == token)
            .map(|found| found.user.clone())
            .ok_or_else(ApiError::unknown_client)
    }

    fn online_user(&mut self, user: &str) -> Option<&mut OnlineUser> {
        let index = self.hub.shard_of_user(user);
        self.shard(index).users.get_mut(user)
    }

    /// Appends an event to an online user's mailbox; its readers are woken
    /// when the operation's changes are durable. Returns false when the user
    /// is offline (nothing to deliver to).
    fn deliver(&mut self, user: &str, event: &EventBytes) -> bool {
        let Locked {
            hub, shards, batch, ..
        } = self;
        deliver_into(hub, shards, batch, user, event)
    }

    fn deliver_to_conversation(&mut self, conversation: &str, event: &EventBytes) {
        let Locked {
            hub,
            dir,
            shards,
            batch,
        } = self;
        if conversation == LOBBY {
            for shard in shards.iter_mut().flatten() {
                for (name, user) in shard.users.iter_mut() {
                    append_for_operation(hub, batch, user, name, event);
                }
            }
            return;
        }
        let Some(found) = dir.room_or_dialog(conversation) else {
            return;
        };
        for member in &found.members {
            deliver_into(hub, shards, batch, member, event);
        }
    }

    /// A poll with `cursor` acknowledges every event up to it: once all the
    /// user's clients have seen an event, the mailbox drops it. Without this
    /// a mailbox keeps its last `MAILBOX_CAPACITY` events for good, which
    /// after a mass join is thousands of presence copies per user.
    fn acknowledge(&mut self, client: ClientRef, user: &str, cursor: u64) {
        let durable_through = *self.hub.durable.borrow();
        let next_delivery = self.hub.last_delivery_id.load(Ordering::Relaxed) + 1;
        let persist_live = self.hub.persist_live;
        let windows = &mut self.batch.windows;
        let Some(Shard { users, clients, .. }) = self.shards[client.shard].as_deref_mut() else {
            return;
        };
        let Some(online) = users.get_mut(user) else {
            return;
        };
        let mailbox = &mut online.mailbox;
        // A cursor outside what is kept (expired, or ahead of what was ever
        // handed out) acknowledges nothing.
        if cursor < mailbox.start() || cursor > mailbox.visible_head(durable_through) {
            return;
        }
        clients.acknowledge(client.key, cursor);
        let seen_by_all = online
            .clients
            .iter()
            .filter_map(|&key| clients.get(key))
            .map(|client| client.acked)
            .min()
            .unwrap_or(cursor);
        if mailbox.trim_through(seen_by_all) && persist_live {
            note_window(mailbox, user, next_delivery, windows);
        }
    }

    /// Copies presence changes the user's mailbox has not seen into it, at
    /// most as many as fit in the next poll's answer, so presence never
    /// grows a backlog that could expire a reader's cursor.
    fn copy_presence_changes(&mut self, user: &str, cursor: u64) {
        let index = self.hub.shard_of_user(user);
        let Locked {
            hub,
            dir,
            shards,
            batch,
        } = self;
        let presence = &dir.presence;
        let Some(online) = shards[index]
            .as_deref_mut()
            .and_then(|shard| shard.users.get_mut(user))
        else {
            return;
        };
        let mailbox = &mut online.mailbox;
        if mailbox.presence_seen >= presence.version() {
            return;
        }
        let unread = mailbox.unread_after(cursor);
        let room = PRESENCE_CHANGES_PER_POLL.min(MAX_EVENTS_PER_POLL.saturating_sub(unread));
        if room == 0 {
            return;
        }
        let copied: Vec<(u64, EventBytes)> = presence
            .changes_since(mailbox.presence_seen, room)
            .map(|(version, event)| (version, event.clone()))
            .collect();
        let mut seen = mailbox.presence_seen;
        if copied.len() < room {
            seen = presence.version();
        }
        let any = !copied.is_empty();
        // Copies are not stored (see `Change::PresenceSeen`): the head they
        // reach is. Each needs the deliveries after it, like a delivery
        // made now would.
        let needs_from = hub.last_delivery_id.load(Ordering::Relaxed) + 1;
        for (version, event) in copied {
            seen = seen.max(version);
            mailbox.push_delivered(event, UNSEALED, needs_from);
        }
        mailbox.presence_seen = seen;
        if hub.persist_live {
            batch.changes.push(Change::PresenceSeen {
                user: user.to_owned(),
                version: seen,
                head: mailbox.head(),
            });
            note_window(mailbox, user, needs_from, &mut batch.windows);
        }
        if any {
            batch.to_wake.push(user.to_owned());
        }
    }

    /// Ends an operation: submits its changes under the next ticket, seals
    /// the events it appended with that ticket, and wakes their readers
    /// (now, if the store is already durable that far, else once it is).
    /// Returns the ticket, or None if there was nothing to submit (most
    /// polls: they then take no lock but their own).
    fn flush(&mut self, committer: Committer) -> Option<u64> {
        let hub = self.hub;
        let batch = &mut self.batch;
        batch.changes.append(&mut batch.windows);
        if batch.changes.is_empty() && batch.to_wake.is_empty() {
            return None;
        }
        let changes = std::mem::take(&mut batch.changes);
        let to_wake: Arc<[String]> = std::mem::take(&mut batch.to_wake).into();
        let (ticket, wake_now) = {
            let mut log = hub.log();
            log.last_ticket += 1;
            let ticket = log.last_ticket;
            match committer {
                Committer::Store => hub.store.submit(ticket, changes),
                Committer::Waiter => hub.store.submit_for_waiter(ticket, changes),
            }
            // Read after submitting (the in-memory store is durable as soon
            // as it is submitted to), and with the log held: whoever wakes
            // readers for a later durable ticket takes the log after us,
            // and so finds the entry pushed here.
            let wake_now = *hub.durable.borrow() >= ticket;
            if !wake_now && !to_wake.is_empty() {
                log.awaiting.push_back((ticket, to_wake.clone()));
            }
            (ticket, wake_now)
        };
        let now = Instant::now();
        for user in to_wake.iter() {
            let index = hub.shard_of_user(user);
            let Shard { users, clients, .. } = self.shard(index);
            let Some(online) = users.get_mut(user) else {
                continue;
            };
            online.mailbox.seal(ticket);
            if wake_now {
                for &key in &online.clients {
                    clients.wake(key, Wake::Events, now);
                }
            }
        }
        Some(ticket)
    }

    /// `flush` for an operation that answers once durable: the ticket to
    /// wait for (the last one submitted if it changed nothing itself).
    fn flush_for_waiter(&mut self) -> u64 {
        self.flush(Committer::Waiter)
            .unwrap_or_else(|| self.hub.log().last_ticket)
    }
}

impl Exclusive<'_> {
    /// Restores the state a store kept, with every client given a fresh
    /// inactivity timeout from `now` (downtime does not count against
    /// anyone).
    fn restore(&mut self, snapshot: Snapshot, now: Instant) {
        let hub = self.hub;
        for room in snapshot.rooms {
            for member in &room.members {
                self.dir
                    .rooms_of
                    .entry(member.clone())
                    .or_default()
                    .insert(room.name.clone());
            }
            self.dir.rooms.insert(
                room.name.clone(),
                Conversation::room(&room.name, room.members),
            );
        }
        let mut mailboxes: HashMap<String, _> = snapshot
            .mailboxes
            .into_iter()
            .map(|mailbox| (mailbox.user.clone(), mailbox))
            .collect();
        let last_delivery_id = hub.last_delivery_id.load(Ordering::Relaxed);
        for (id, token, user) in snapshot.clients {
            let index = hub.shard_of_user(&user);
            if !self.shard(index).users.contains_key(&user) {
                let mailbox = match mailboxes.remove(&user) {
                    Some(kept) => {
                        // Slots of presence copies (not stored) are filled
                        // with the user's own presence, which a client may
                        // read any number of times; the copies are then
                        // made again from the board, so no change a client
                        // had not read yet is lost.
                        let filler = Event::Presence {
                            user: &user,
                            status: self.dir.presence.status(&user),
                        }
                        .to_bytes();
                        let (mut mailbox, filled) = Mailbox::restore(
                            kept.start,
                            kept.head,
                            kept.presence_seen,
                            kept.events,
                            &filler,
                            last_delivery_id + 1,
                        );
                        if filled {
                            mailbox.presence_seen = 0;
                        }
                        mailbox
                    }
                    None => {
                        let presence_seen = self.dir.presence.version();
                        self.batch.changes.push(Change::MailboxOpened {
                            user: user.clone(),
                            start: 0,
                            presence_seen,
                            after_delivery: last_delivery_id,
                        });
                        Mailbox::new(presence_seen)
                    }
                };
                self.dir.online.insert(&user);
                self.shard(index).users.insert(
                    user.clone(),
                    OnlineUser {
                        clients: Vec::new(),
                        mailbox,
                        dialogs: BTreeSet::new(),
                    },
                );
            }
            hub.last_client_id.fetch_max(id, Ordering::Relaxed);
            let shard = self.shard(index);
            let acked = shard
                .users
                .get(&user)
                .map_or(0, |online| online.mailbox.start());
            let key = shard.clients.insert(id, token.clone(), &user, acked, now);
            if let Some(online) = shard.users.get_mut(&user) {
                online.clients.push(key);
            }
            let token_shard = hub.shard_of_token(&token);
            self.shard(token_shard)
                .tokens
                .insert(token, ClientRef { shard: index, key });
        }
        // Tidy what no live client accounts for (only after an unclean stop
        // between two writes of one operation, which the store never splits,
        // or an older database): mailboxes, statuses and dialogs of users
        // without clients.
        for user in mailboxes.into_keys() {
            self.batch.changes.push(Change::MailboxClosed { user });
        }
        let stale_statuses: Vec<String> =
            self.dir.presence.available().map(str::to_owned).collect();
        for user in stale_statuses {
            if !self.is_online(&user) {
                self.set_presence(&user, Status::Offline);
            }
        }
        for (id, members) in snapshot.dialogs {
            if members.iter().all(|member| self.is_online(member)) {
                for member in &members {
                    if let Some(online) = self.online_user(member) {
                        online.dialogs.insert(id.clone());
                    }
                }
                let conversation = Conversation {
                    id: id.clone(),
                    kind: ConversationKind::Dialog,
                    name: None,
                    members: members.to_vec(),
                };
                self.dir.dialogs.insert(id, conversation);
            } else {
                self.batch.changes.push(Change::DialogClosed { id });
            }
        }
        if !hub.persist_live {
            self.batch.windows.clear();
            self.batch.changes.retain(|change| {
                !matches!(
                    change,
                    Change::MailboxOpened { .. }
                        | Change::MailboxClosed { .. }
                        | Change::DialogClosed { .. }
                )
            });
        }
    }

    fn is_online(&mut self, user: &str) -> bool {
        self.online_user(user).is_some()
    }

    /// The client behind a token (401 `unknown_client` if none).
    fn client_of(&mut self, token: &str) -> ApiResult<ClientRef> {
        let index = self.hub.shard_of_token(token);
        self.shard(index)
            .tokens
            .get(token)
            .copied()
            .ok_or_else(ApiError::unknown_client)
    }

    /// Answers every parked poll.
    fn wake_all(&mut self, wake: Wake, now: Instant) {
        for shard in self.shards.iter_mut().flatten() {
            shard.clients.wake_all(wake, now);
        }
    }

    /// Sets a status on the board (and records it). False if unchanged.
    fn set_presence(&mut self, user: &str, status: Status) -> bool {
        if !self.dir.presence.set(user, status) {
            return false;
        }
        self.dir.online.status_changed();
        if self.hub.persist_live {
            let version = self.dir.presence.version();
            self.batch.changes.push(Change::Presence {
                user: user.to_owned(),
                status,
                version,
            });
        }
        true
    }

    /// Opens a client process; the user comes online with its first one.
    fn open_client(&mut self, name: &str, now: Instant) -> ClientRef {
        let hub = self.hub;
        let index = hub.shard_of_user(name);
        let came_online = !self.shard(index).users.contains_key(name);
        if came_online {
            let presence_seen = self.dir.presence.version();
            self.dir.online.insert(name);
            self.shard(index).users.insert(
                name.to_owned(),
                OnlineUser {
                    clients: Vec::new(),
                    mailbox: Mailbox::new(presence_seen),
                    dialogs: BTreeSet::new(),
                },
            );
            if hub.persist_live {
                self.batch.changes.push(Change::MailboxOpened {
                    user: name.to_owned(),
                    start: 0,
                    presence_seen,
                    after_delivery: hub.last_delivery_id.load(Ordering::Relaxed),
                });
            }
        }
        // The client starts where its session's cursor will: the durable
        // head (or later, if the store catches up before the session is
        // built; acknowledging less is always safe).
        let durable_through = *hub.durable.borrow();
        let id = hub.last_client_id.fetch_add(1, Ordering::Relaxed) + 1;
        let token = auth::new_token();
        let shard = self.shard(index);
        let acked = shard
            .users
            .get(name)
            .map_or(0, |user| user.mailbox.visible_head(durable_through));
        let key = shard.clients.insert(id, token.clone(), name, acked, now);
        if let Some(user) = shard.users.get_mut(name) {
            user.clients.push(key);
        }
        if hub.persist_live {
            self.batch.changes.push(Change::ClientOpened {
                id,
                token: token.clone(),
                user: name.to_owned(),
            });
        }
        let token_shard = hub.shard_of_token(&token);
        let client = ClientRef { shard: index, key };
        self.shard(token_shard).tokens.insert(token, client);
        if came_online {
            self.set_presence(name, Status::Online);
            self.wake_all(Wake::Events, now);
        }
        client
    }

    /// Removes a client process; with the user's last one, the user goes
    /// offline and its dialogs are torn down.
    fn close_client(&mut self, client: ClientRef, now: Instant) {
        let hub = self.hub;
        let Some(closed) = self.shard(client.shard).clients.close(client.key) else {
            return;
        };
        let token_shard = hub.shard_of_token(&closed.token);
        self.shard(token_shard).tokens.remove(&closed.token);
        if hub.persist_live {
            self.batch
                .changes
                .push(Change::ClientClosed { id: closed.id });
        }
        let shard = self.shard(client.shard);
        let Some(user) = shard.users.get_mut(&closed.user) else {
            return;
        };
        user.clients.retain(|&other| other != client.key);
        if !user.clients.is_empty() {
            return;
        }
        let Some(gone) = shard.users.remove(&closed.user) else {
            return;
        };
        self.dir.online.remove(&closed.user);
        tracing::debug!(user = %closed.user, "user went offline");
        if hub.persist_live {
            self.batch.changes.push(Change::MailboxClosed {
                user: closed.user.clone(),
            });
        }
        for dialog in &gone.dialogs {
            let Some(conversation) = self.dir.dialogs.remove(dialog) else {
                continue;
            };
            if hub.persist_live {
                self.batch
                    .changes
                    .push(Change::DialogClosed { id: dialog.clone() });
            }
            let removed = Event::ConversationRemoved {
                conversation: dialog,
                reason: RemovalReason::UserOffline,
            }
            .to_bytes();
            for member in &conversation.members {
                if let Some(other) = self.online_user(member) {
                    other.dialogs.remove(dialog);
                }
                self.deliver(member, &removed);
            }
        }
        self.set_presence(&closed.user, Status::Offline);
        self.wake_all(Wake::Events, now);
        self.compact_presence();
    }

    /// Forgets offline users that every mailbox has already been told about,
    /// so the board does not grow with every name ever seen. Runs only once
    /// the board has grown by a margin since the last time (amortised O(1)).
    fn compact_presence(&mut self) {
        const MARGIN: usize = 1024;
        let size = self.dir.presence.len();
        let online = self.dir.online.iter().len();
        if size < online * 2 + MARGIN || size < self.dir.presence_compacted_at + MARGIN {
            return;
        }
        let all_seen = self
            .shards
            .iter()
            .flatten()
            .flat_map(|shard| shard.users.values())
            .map(|user| user.mailbox.presence_seen)
            .min()
            .unwrap_or_else(|| self.dir.presence.version());
        let forgotten = self.dir.presence.forget_offline_before(all_seen + 1);
        if self.hub.persist_live {
            self.batch.changes.extend(
                forgotten
                    .into_iter()
                    .map(|user| Change::PresenceForgotten { user }),
            );
        }
        self.dir.presence_compacted_at = self.dir.presence.len();
    }

    fn session(&mut self, client: ClientRef) -> Session {
        let config = self.hub.config;
        let durable_through = *self.hub.durable.borrow();
        let online = self.dir.online_snapshot();
        let Locked { dir, shards, .. } = self;
        let shard = shards[client.shard]
            .as_deref()
            .expect("every shard is held");
        let found = shard
            .clients
            .get(client.key)
            .expect("session of a live client");
        let user = &shard.users[&found.user];
        let mut conversations = Vec::new();
        if let Some(rooms) = dir.rooms_of.get(&found.user) {
            conversations.extend(rooms.iter().filter_map(|room| dir.rooms.get(room).cloned()));
        }
        conversations.extend(
            user.dialogs
                .iter()
                .filter_map(|dialog| dir.dialogs.get(dialog).cloned()),
        );
        Session {
            user: found.user.clone(),
            client: found.id,
            token: None,
            // Only durable events are ever answered, so the cursor starts
            // at the durable head.
            cursor: user.mailbox.visible_head(durable_through),
            poll_timeout_ms: millis(config.poll_timeout),
            inactivity_timeout_ms: millis(config.inactivity_timeout),
            online,
            rooms_and_dialogs: conversations,
        }
    }
}

/// `Locked::deliver` over the operation's parts, so that a caller may hold
/// the directory borrowed meanwhile.
fn deliver_into(
    hub: &Shared,
    shards: &mut [Option<MutexGuard<'_, Shard>>],
    batch: &mut Batch,
    user: &str,
    event: &EventBytes,
) -> bool {
    let Some(online) = shards[hub.shard_of_user(user)]
        .as_deref_mut()
        .and_then(|shard| shard.users.get_mut(user))
    else {
        return false;
    };
    append_for_operation(hub, batch, online, user, event);
    true
}

/// Appends to a mailbox as part of the operation `batch` describes: the
/// store learns of it (if it keeps live state) and the user's readers are
/// woken when the operation is durable.
fn append_for_operation(
    hub: &Shared,
    batch: &mut Batch,
    online: &mut OnlineUser,
    user: &str,
    event: &EventBytes,
) {
    let persist = hub.persist_live.then_some(Persist {
        changes: &mut batch.changes,
        windows: &mut batch.windows,
        last_delivery_id: &hub.last_delivery_id,
    });
    append(online, user, event.clone(), persist);
    batch.to_wake.push(user.to_owned());
}

/// Where a mailbox append is described for the store, when it keeps live
/// state.
struct Persist<'a> {
    changes: &'a mut Vec<Change>,
    /// Window changes, kept apart so that consecutive appends of one event
    /// (a fan-out) find their `Delivered` last in `changes` and join it.
    windows: &'a mut Vec<Change>,
    /// Delivery ids are taken with the recipients' shards held, so within
    /// any one mailbox they grow with its events.
    last_delivery_id: &'a AtomicU64,
}

/// Appends to one mailbox (unsealed: the operation's ticket comes at
/// `flush`) and describes the append (and any window move) for the store:
/// appends of the same event in a row share one delivery.
fn append(online: &mut OnlineUser, user: &str, event: EventBytes, persist: Option<Persist<'_>>) {
    let Some(persist) = persist else {
        online.mailbox.push_pending(event, UNSEALED);
        return;
    };
    let delivery = match persist.changes.last() {
        Some(Change::Delivered { id, body, .. }) if body.same_event(&event) => *id,
        _ => {
            let id = persist.last_delivery_id.fetch_add(1, Ordering::Relaxed) + 1;
            persist.changes.push(Change::Delivered {
                id,
                body: event.clone(),
                recipients: Vec::new(),
            });
            id
        }
    };
    let seq = online.mailbox.push_delivered(event, UNSEALED, delivery);
    if let Some(Change::Delivered { recipients, .. }) = persist.changes.last_mut() {
        recipients.push((user.to_owned(), seq));
    }
    note_window(&mut online.mailbox, user, delivery, persist.windows);
}

/// Describes a move of the mailbox's window (its oldest events dropped,
/// when full or acknowledged) for the store, once it has moved
/// `TRIM_WRITE_STEP` since last written: the stored window may lag, which
/// only keeps more. `next_delivery` is the oldest delivery an empty mailbox
/// still needs.
fn note_window(mailbox: &mut Mailbox, user: &str, next_delivery: u64, windows: &mut Vec<Change>) {
    let moved = match mailbox.persisted_window {
        None => true,
        Some((start, _)) => mailbox.start() >= start + TRIM_WRITE_STEP,
    };
    if moved {
        let oldest = mailbox.oldest_delivery().unwrap_or(next_delivery);
        mailbox.persisted_window = Some((mailbox.start(), oldest));
        windows.push(Change::MailboxWindow {
            user: user.to_owned(),
            start: mailbox.start(),
            oldest_delivery: oldest,
        });
    }
}

/// Names of users and rooms: 1..=32 ASCII letters, digits, `_`, `-`, `.`.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A number in [0, 1) that differs from call to call (not for secrets).
fn jitter_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded per process, and the counter makes every call
    // hash something new: cheap, well spread, and needs no RNG crate.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    thread_local! {
        static SEED: std::collections::hash_map::RandomState = std::collections::hash_map::RandomState::new();
    }
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let bits = SEED.with(|seed| {
        let mut hasher = seed.build_hasher();
        hasher.write_u64(call);
        hasher.finish()
    });
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().try_into().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn hub() -> Hub {
        let config = HubConfig {
            poll_timeout: Duration::from_secs(5),
            inactivity_timeout: Duration::from_secs(60),
            argon2_memory_kib: 8,
            argon2_iterations: 1,
        };
        Hub::new(Arc::new(MemoryStore::new()), config).expect("an empty store loads")
    }

    /// Runs `work` on a thread of its own; its result if it finishes within
    /// `limit`, or None if it is still blocked then.
    fn on_thread<T: Send + 'static>(
        limit: Duration,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> (Option<T>, std::sync::mpsc::Receiver<T>) {
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            let _ = done.send(runtime.block_on(work));
        });
        (result.recv_timeout(limit).ok(), result)
    }

    /// The issue asks for no lock that every client contends on: with one
    /// shard held (as by a long operation of one of its users), users of
    /// other shards still send and poll, and only that shard's users wait.
    #[test]
    fn users_of_other_shards_send_and_poll_while_one_shard_is_held() {
        let hub = hub();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        const HELD: usize = 0;
        // Users (and their tokens) away from the held shard, and one in it.
        let mut away = Vec::new();
        let mut inside = None;
        for n in 0.. {
            let name = format!("u{n}");
            let session = runtime.block_on(hub.join(&name, "pw")).expect("joins");
            let token = session.token.clone().expect("a new client has a token");
            let user_shard = hub.shared.shard_of_user(&name);
            let token_shard = hub.shared.shard_of_token(&token);
            if user_shard != HELD && token_shard != HELD && away.len() < 2 {
                away.push((name, token, session.cursor));
            } else if user_shard == HELD && token_shard != HELD && inside.is_none() {
                inside = Some((token, session.cursor));
            }
            if away.len() == 2 && inside.is_some() {
                break;
            }
        }
        let (inside_token, _) = inside.expect("found above");
        let dialog = hub.dialog(&away[0].1, &away[1].0).expect("both are online");
        // Read up to now: the poll below must wait for the message.
        let reader_token = away[1].1.clone();
        let cursor = runtime
            .block_on(hub.poll(&reader_token, away[1].2, Some(Duration::ZERO)))
            .map(|body| serde_json::from_slice::<serde_json::Value>(&body).expect("JSON"))
            .expect("polls")["cursor"]
            .as_u64()
            .expect("a cursor");

        let held = hub.shared.shard(HELD);
        let (sender, reader) = (hub.clone(), hub.clone());
        let sender_token = away[0].1.clone();
        let (sent, _) = on_thread(Duration::from_secs(10), async move {
            let sent = sender
                .send(&sender_token, &dialog.id, "past the held shard", None)
                .await;
            let read = reader
                .poll(&reader_token, cursor, Some(Duration::from_secs(5)))
                .await;
            (
                sent.is_ok(),
                read.map(|body| String::from_utf8_lossy(&body).into_owned()),
            )
        });
        let (sent, read) = sent.expect("a send and a poll in other shards did not wait");
        assert!(sent);
        assert!(read.expect("polls").contains("past the held shard"));

        // A user of the held shard does wait for it (and only for it).
        let poller = hub.clone();
        let (blocked, finished) = on_thread(Duration::from_millis(300), async move {
            poller
                .poll(&inside_token, 0, Some(Duration::ZERO))
                .await
                .is_ok()
        });
        assert!(
            blocked.is_none(),
            "a poll in the held shard went past its lock"
        );
        drop(held);
        assert_eq!(finished.recv_timeout(Duration::from_secs(10)), Ok(true));
    }

    #[test]
    fn jitter_spreads_over_the_unit_interval() {
        let samples: Vec<f64> = (0..1000).map(|_| jitter_fraction()).collect();
        assert!(samples.iter().all(|x| (0.0..1.0).contains(x)));
        let below_half = samples.iter().filter(|x| **x < 0.5).count();
        assert!(
            (350..650).contains(&below_half),
            "{below_half} of 1000 below 0.5"
        );
    }

    #[test]
    fn names_are_bounded_and_plain() {
        assert!(valid_name("ann"));
        assert!(valid_name("a.b-c_9"));
        assert!(valid_name(&"x".repeat(32)));
        assert!(!valid_name(""));
        assert!(!valid_name(&"x".repeat(33)));
        assert!(!valid_name("ann bob"));
        assert!(!valid_name("dialog:ann:bob"));
        assert!(!valid_name("émile"));
        assert!(!valid_name("<script>"));
    }
}
