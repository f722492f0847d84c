//! The hub: parlor's live state and the only code that changes it.
//!
//! It owns who is online (users with at least one client process), the
//! client processes themselves (`clients`), each online user's `mailbox`,
//! presence (`presence`), dialogs, and the rooms' member lists (loaded from
//! the store at start, written through on change). HTTP handlers call one
//! method per request; each takes the lock, does short synchronous work,
//! and releases it before any `.await` (mini-redis `db.rs`'s shape). A
//! parked poll waits on a oneshot outside the lock.
//!
//! Durability: each operation describes what it changed as store `Change`s
//! and submits them, in lock order, under the next ticket (`State::flush`).
//! Mailbox events carry that ticket and stay invisible to polls until the
//! store reports it durable (`Hub::advance_durable`, driven by
//! `run_visibility`), which is also when their readers are woken. A /send
//! answers only once its ticket is durable; it submits with
//! `finish_and_wait` and commits in `wait_durable`, outside the lock (see
//! `store::sqlite::writer`).
//!
//! Seams for cluster mode: mailbox append + wake (`deliver`), presence and
//! the client table are what a Redis engine would take over; each is behind
//! its own small type so that swap is confined to this module.

pub mod clients;
pub mod mailbox;
pub mod online;
pub mod presence;
pub mod sweeper;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::StatusCode;
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::auth::PasswordHasherPool;
use crate::config::{
    MAX_CLIENTS_PER_USER, MAX_CLIENT_MSG_ID_BYTES, MAX_EVENTS_PER_POLL, MAX_HISTORY_LIMIT,
    MAX_NAME_LEN, MAX_PASSWORD_BYTES, MAX_ROOMS, MAX_TEXT_BYTES, PRESENCE_CHANGES_PER_POLL,
};
use crate::error::{ApiError, ApiResult};
use crate::event::{
    empty_poll_body, write_poll_body, Event, EventBytes, Message, RemovalReason, Status,
};
use crate::store::{Change, Snapshot, Store, StoreError, StoredRoom};
use clients::{Clients, Parked, Wake};
use mailbox::{Mailbox, Read};
use online::{OnlineNames, OnlineSnapshot};
use presence::PresenceBoard;

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
/// Recent sends remembered for `client_msg_id` dedupe without a store read
/// (and while they may not be durable yet, hence not readable from it).
const RECENT_SENDS: usize = 10_000;
/// Mailbox trims are written to the store once the start moved this far.
const TRIM_WRITE_STEP: u64 = 256;

/// A cheap-to-clone handle on the shared hub.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    store: Arc<dyn Store>,
    config: HubConfig,
    hasher: PasswordHasherPool,
    /// Wakes the sweeper task early (see `clients::Clients::sweeper`).
    sweeper: Arc<Notify>,
    /// The highest store ticket made durable.
    durable: watch::Receiver<u64>,
}

struct State {
    /// Users with at least one client process.
    users: HashMap<String, OnlineUser>,
    /// Their names, sorted (kept in step with `users`).
    online: OnlineNames,
    clients: Clients,
    /// Every room but the lobby, by name (= id).
    rooms: HashMap<String, Conversation>,
    /// user → names of the rooms it is a member of (online or not).
    rooms_of: HashMap<String, BTreeSet<String>>,
    /// Live dialogs by id; torn down when either member goes offline.
    dialogs: HashMap<String, Conversation>,
    presence: PresenceBoard,
    /// Size of the presence board when it was last compacted.
    presence_compacted_at: usize,
    shutting_down: bool,

    /// Whether the store keeps live state (else live changes are not described).
    persist_live: bool,
    /// Changes made by the current operation, submitted by `flush`.
    changes: Vec<Change>,
    /// Mailbox window moves of the current operation (see `Persist`).
    window_changes: Vec<Change>,
    last_delivery_id: u64,
    /// Users whose mailboxes got events in the current operation.
    to_wake: Vec<String>,
    /// The last ticket submitted; the current operation's is the next one.
    last_ticket: u64,
    /// The highest ticket the store made durable.
    durable_through: u64,
    /// Submitted tickets not yet durable, with the users to wake then.
    awaiting: VecDeque<(u64, Vec<String>)>,
    last_message_id: u64,
    /// (sender, client_msg_id) → message, the most recent sends, oldest first.
    recent_sends: HashMap<(String, String), Message>,
    recent_order: VecDeque<(String, String)>,
}

struct OnlineUser {
    /// Slab keys of the user's client processes.
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
        let sweeper = Arc::new(Notify::new());
        let mut state = State::restore(snapshot, &store, &sweeper, config, Instant::now());
        // Whatever restoring had to tidy (e.g. a dialog of a user who did
        // not come back) is written like any other change.
        let durable = store.durable();
        state.flush(&*store, &durable, Committer::Store);
        Ok(Hub {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                store,
                config,
                hasher: PasswordHasherPool::new(config.argon2_memory_kib, config.argon2_iterations),
                sweeper,
                durable,
            }),
        })
    }

    /// Ends an operation: submits its changes and wakes (now, or once they
    /// are durable) the users it delivered to. Returns its ticket.
    fn finish(&self, state: &mut State) -> u64 {
        state.flush(&*self.shared.store, &self.shared.durable, Committer::Store)
    }

    /// `finish` for an operation that answers only once durable: the
    /// caller must `wait_durable` on the ticket right after releasing the
    /// lock, which commits it.
    fn finish_and_wait(&self, state: &mut State) -> u64 {
        state.flush(&*self.shared.store, &self.shared.durable, Committer::Waiter)
    }

    /// Makes events up to `ticket` visible and wakes their readers.
    pub fn advance_durable(&self, ticket: u64) {
        let now = Instant::now();
        let mut state = self.state();
        state.advance_durable(ticket, now);
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
        // be gone before the hub lock is taken, or this task (watch, then
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
        // Make the operation's events visible and wake their readers from
        // here, rather than one task hop later from `run_visibility`.
        let durable_through = *self.shared.durable.borrow();
        self.advance_durable(durable_through);
        Ok(())
    }

    /// Writes whatever the store has queued; called at shutdown.
    pub fn close_store(&self) {
        self.shared.store.close();
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Hub methods do not panic while holding the lock; should one ever
        // do so, the server keeps serving rather than failing every request.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
            let mut state = self.state();
            let clients_of_user = state.users.get(name).map_or(0, |user| user.clients.len());
            if clients_of_user >= MAX_CLIENTS_PER_USER {
                return Err(ApiError::too_many(
                    "too_many_clients",
                    format!("`{name}` already has {MAX_CLIENTS_PER_USER} client processes; /leave one first"),
                ));
            }
            let key = state.open_client(name, now);
            let token = state.clients.get(key).map(|client| client.token.clone());
            let ticket = self.finish_and_wait(&mut state);
            let mut session = state.session(key, self.shared.config);
            session.token = token;
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
        let mut state = self.state();
        let key = state.client_key(token)?;
        let durable_through = *self.shared.durable.borrow();
        state.advance_durable(durable_through, Instant::now());
        let session = state.session(key, self.shared.config);
        state.clients.reset_acked(key, session.cursor);
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
                key: parked.key,
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

    fn read_or_park(&self, token: &str, cursor: u64, may_park: bool) -> ApiResult<ReadOrPark> {
        let now = Instant::now();
        let mut state = self.state();
        let key = state.client_key(token)?;
        // Catch up with the store first: a /send answered 200 a moment ago
        // must be readable now, even if the visibility task has not run yet.
        let durable_through = *self.shared.durable.borrow();
        state.advance_durable(durable_through, now);
        // A newer poll of the same client wins; the older is answered empty.
        state.clients.supersede(key, now);
        let user_name = state.user_of(key)?;
        state.copy_presence_changes(&user_name, cursor);
        state.acknowledge(key, &user_name, cursor);
        self.finish(&mut state);
        let State {
            users,
            clients,
            shutting_down,
            durable_through,
            ..
        } = &mut *state;
        let user = users
            .get_mut(&user_name)
            .expect("every client's user is online");
        let answer = match user.mailbox.read_durable(cursor, MAX_EVENTS_PER_POLL, *durable_through) {
            Read::Events { first_seq, events } => {
                let last = first_seq + events.len() as u64 - 1;
                Ok(ReadOrPark::Ready(write_poll_body(last, first_seq, events.into_iter())))
            }
            Read::UpToDate if may_park && !*shutting_down => {
                let parked = clients.park(key).ok_or_else(ApiError::unknown_client)?;
                return Ok(ReadOrPark::Parked(parked));
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
        clients.mark_idle(key, now);
        answer
    }

    fn unpark(&self, key: usize, client_id: u64, poll_id: u64) {
        self.state()
            .clients
            .unpark(key, client_id, poll_id, Instant::now());
    }

    /// POST /send: stores the message, then delivers it to every member.
    /// Answers once the message is durable.
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
        // the hub lock: a disk read must not hold every other request up.
        if let Some(id) = client_msg_id {
            let (user, recent) = {
                let state = self.state();
                let user = state.caller(token)?;
                // Its ticket may not be durable yet: wait for the newest.
                let recent = state
                    .recent_send(&user, id)
                    .map(|first| (first, state.last_ticket));
                (user, recent)
            };
            if let Some((first, ticket)) = recent {
                self.wait_durable(ticket).await?;
                return Ok(first);
            }
            // The store reads only what is durable.
            if let Some(first) = self.shared.store.find_sent(&user, id)? {
                return Ok(first);
            }
        }
        let now = Instant::now();
        let (message, ticket) = 'locked: {
            let mut state = self.state();
            let user = state.caller(token)?;
            state.require_member(conversation, &user)?;
            if let Some(id) = client_msg_id {
                // Checked again: the same id may have been sent meanwhile.
                if let Some(first) = state.recent_send(&user, id) {
                    // A retry: answer the first result, once it is durable
                    // (it may still be on its way to disk).
                    break 'locked (first, state.last_ticket);
                }
            }
            state.last_message_id += 1;
            let message = Message {
                id: state.last_message_id,
                conversation: conversation.to_owned(),
                from: user.clone(),
                text: text.to_owned(),
                at: unix_millis(),
                client_msg_id: client_msg_id.map(str::to_owned),
            };
            let event = Event::Message(&message).to_bytes();
            state.changes.push(Change::Message(message.clone()));
            state.remember_send(&message);
            state.deliver_to_conversation(conversation, &event, now);
            let ticket = self.finish_and_wait(&mut state);
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
            let state = self.state();
            let user = state.caller(token)?;
            state.require_member(conversation, &user)?;
        }
        Ok(self.shared.store.history(conversation, before, limit)?)
    }

    /// POST /dialog: the dialog with `with`, created if there is none.
    pub fn dialog(&self, token: &str, with: &str) -> ApiResult<Conversation> {
        let now = Instant::now();
        let mut state = self.state();
        let user = state.caller(token)?;
        if with == user {
            return Err(ApiError::bad_request(
                "invalid_user",
                "a dialog needs another user",
            ));
        }
        if !state.users.contains_key(with) {
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
        if let Some(existing) = state.dialogs.get(&id) {
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
            if let Some(online) = state.users.get_mut(member) {
                online.dialogs.insert(id.clone());
            }
            state.deliver(member, &event, now);
        }
        if state.persist_live {
            state.changes.push(Change::DialogOpened {
                id: id.clone(),
                members: [first.to_owned(), second.to_owned()],
            });
        }
        state.dialogs.insert(id, conversation.clone());
        self.finish(&mut state);
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
        let now = Instant::now();
        let mut state = self.state();
        let user = state.caller(token)?;
        if name == LOBBY {
            return Ok(state.lobby());
        }
        let mut members = match state.rooms.get(name) {
            Some(room) if room.members.contains(&user) => return Ok(room.clone()),
            Some(room) => room.members.clone(),
            None if state.rooms.len() >= MAX_ROOMS => {
                return Err(ApiError::too_many(
                    "too_many_rooms",
                    format!("the server holds its maximum of {MAX_ROOMS} rooms"),
                ))
            }
            None => Vec::new(),
        };
        members.push(user.clone());
        state.changes.push(Change::Room(StoredRoom {
            name: name.to_owned(),
            members: members.clone(),
        }));
        let room = Conversation::room(name, members);
        state.rooms.insert(name.to_owned(), room.clone());
        state
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
                state.deliver(member, &joined, now);
            }
        }
        let added = Event::ConversationAdded {
            conversation: &room,
        }
        .to_bytes();
        state.deliver(&user, &added, now);
        self.finish(&mut state);
        Ok(room)
    }

    /// POST /rooms/leave.
    pub fn leave_room(&self, token: &str, conversation: &str) -> ApiResult<()> {
        let now = Instant::now();
        let mut state = self.state();
        let user = state.caller(token)?;
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
        state.require_member(conversation, &user)?;
        let mut members = state.rooms[conversation].members.clone();
        members.retain(|member| *member != user);
        state.changes.push(Change::Room(StoredRoom {
            name: conversation.to_owned(),
            members: members.clone(),
        }));
        if let Some(room) = state.rooms.get_mut(conversation) {
            room.members = members.clone();
        }
        if let Some(rooms) = state.rooms_of.get_mut(&user) {
            rooms.remove(conversation);
            if rooms.is_empty() {
                state.rooms_of.remove(&user);
            }
        }
        let left = Event::MemberLeft {
            conversation,
            user: &user,
        }
        .to_bytes();
        for member in &members {
            state.deliver(member, &left, now);
        }
        let removed = Event::ConversationRemoved {
            conversation,
            reason: RemovalReason::Left,
        }
        .to_bytes();
        state.deliver(&user, &removed, now);
        self.finish(&mut state);
        Ok(())
    }

    /// POST /status.
    pub fn set_status(&self, token: &str, status: Status) -> ApiResult<()> {
        let now = Instant::now();
        let mut state = self.state();
        let user = state.caller(token)?;
        if state.set_presence(&user, status) {
            state.clients.wake_all(Wake::Events, now);
        }
        self.finish(&mut state);
        Ok(())
    }

    /// POST /leave: ends the client process now.
    pub fn leave(&self, token: &str) -> ApiResult<()> {
        let now = Instant::now();
        let mut state = self.state();
        let key = state.client_key(token)?;
        state.close_client(key, now);
        self.finish(&mut state);
        Ok(())
    }

    /// GET /users: who is online, with their status.
    pub fn users(&self, token: &str) -> ApiResult<Arc<OnlineSnapshot>> {
        let mut state = self.state();
        state.client_key(token)?;
        Ok(state.online_snapshot())
    }

    /// POST /api/publish: a notification to each listed user's clients.
    pub fn publish(&self, users: &[String], data: &serde_json::Value) -> PublishReport {
        let now = Instant::now();
        let event = Event::Notification { data }.to_bytes();
        let mut state = self.state();
        let mut report = PublishReport {
            delivered: Vec::new(),
            offline: Vec::new(),
        };
        for user in users {
            if state.deliver(user, &event, now) {
                report.delivered.push(user.clone());
            } else {
                report.offline.push(user.clone());
            }
        }
        self.finish(&mut state);
        report
    }

    /// Removes clients idle past their deadline; returns the next deadline.
    pub fn sweep_expired(&self, now: Instant) -> Option<Instant> {
        let mut state = self.state();
        let expired = state.clients.pop_expired(now);
        if !expired.is_empty() {
            tracing::debug!(count = expired.len(), "sweeping inactive clients");
        }
        for key in expired {
            state.close_client(key, now);
        }
        self.finish(&mut state);
        state.clients.next_deadline()
    }

    pub(crate) async fn sweeper_notified(&self) {
        self.shared.sweeper.notified().await
    }

    /// Answers every parked poll at once (empty) and stops parking new ones.
    pub fn shut_down(&self) {
        let mut state = self.state();
        state.shutting_down = true;
        state.clients.wake_all(Wake::ShuttingDown, Instant::now());
    }

    pub fn stats(&self) -> HubStats {
        let state = self.state();
        HubStats {
            online_users: state.users.len(),
            clients: state.clients.len(),
            tokens: state.clients.tokens(),
            parked_polls: state.clients.parked(),
            idle_clients: state.clients.idle(),
            dialogs: state.dialogs.len(),
            rooms: state.rooms.len(),
            mailbox_events: state.users.values().map(|u| u.mailbox.len()).sum(),
            presence_entries: state.presence.len(),
        }
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
    /// The request itself, in `Hub::wait_durable`, outside the hub lock.
    Waiter,
}

enum ReadOrPark {
    Ready(Vec<u8>),
    Parked(Parked),
}

/// Unparks a poll whose future ends without being woken: on timeout, or when
/// hyper drops the request because the connection closed.
struct ParkGuard<'a> {
    hub: &'a Hub,
    key: usize,
    client_id: u64,
    poll_id: u64,
    armed: bool,
}

impl Drop for ParkGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.hub.unpark(self.key, self.client_id, self.poll_id);
        }
    }
}

impl State {
    /// The state a store kept, with every client given a fresh inactivity
    /// timeout from `now` (downtime does not count against anyone).
    fn restore(
        snapshot: Snapshot,
        store: &Arc<dyn Store>,
        sweeper: &Arc<Notify>,
        config: HubConfig,
        now: Instant,
    ) -> State {
        let mut rooms = HashMap::new();
        let mut rooms_of: HashMap<String, BTreeSet<String>> = HashMap::new();
        for room in snapshot.rooms {
            for member in &room.members {
                rooms_of
                    .entry(member.clone())
                    .or_default()
                    .insert(room.name.clone());
            }
            rooms.insert(
                room.name.clone(),
                Conversation::room(&room.name, room.members),
            );
        }
        let mut state = State {
            users: HashMap::new(),
            online: OnlineNames::default(),
            clients: Clients::new(sweeper.clone(), config.inactivity_timeout),
            rooms,
            rooms_of,
            dialogs: HashMap::new(),
            presence: PresenceBoard::restore(snapshot.presence, snapshot.presence_version),
            presence_compacted_at: 0,
            shutting_down: false,
            persist_live: store.keeps_live_state(),
            changes: Vec::new(),
            window_changes: Vec::new(),
            last_delivery_id: snapshot.last_delivery_id,
            to_wake: Vec::new(),
            last_ticket: 0,
            durable_through: 0,
            awaiting: VecDeque::new(),
            last_message_id: snapshot.last_message_id,
            recent_sends: HashMap::new(),
            recent_order: VecDeque::new(),
        };
        state.clients.continue_ids_after(snapshot.last_client_id);

        let mut mailboxes: HashMap<String, _> = snapshot
            .mailboxes
            .into_iter()
            .map(|mailbox| (mailbox.user.clone(), mailbox))
            .collect();
        for (id, token, user) in snapshot.clients {
            if !state.users.contains_key(&user) {
                let mailbox = match mailboxes.remove(&user) {
                    Some(kept) => {
                        // Slots of presence copies (not stored) are filled
                        // with the user's own presence, which a client may
                        // read any number of times; the copies are then
                        // made again from the board, so no change a client
                        // had not read yet is lost.
                        let filler = Event::Presence {
                            user: &user,
                            status: state.presence.status(&user),
                        }
                        .to_bytes();
                        let (mut mailbox, filled) = Mailbox::restore(
                            kept.start,
                            kept.head,
                            kept.presence_seen,
                            kept.events,
                            &filler,
                            state.last_delivery_id + 1,
                        );
                        if filled {
                            mailbox.presence_seen = 0;
                        }
                        mailbox
                    }
                    None => {
                        let presence_seen = state.presence.version();
                        state.changes.push(Change::MailboxOpened {
                            user: user.clone(),
                            start: 0,
                            presence_seen,
                            after_delivery: state.last_delivery_id,
                        });
                        Mailbox::new(presence_seen)
                    }
                };
                state.online.insert(&user);
                state.users.insert(
                    user.clone(),
                    OnlineUser {
                        clients: Vec::new(),
                        mailbox,
                        dialogs: BTreeSet::new(),
                    },
                );
            }
            let acked = state
                .users
                .get(&user)
                .map_or(0, |online| online.mailbox.start());
            let key = state.clients.restore(id, token, &user, acked, now);
            if let Some(online) = state.users.get_mut(&user) {
                online.clients.push(key);
            }
        }
        // Tidy what no live client accounts for (only after an unclean stop
        // between two writes of one operation, which the store never splits,
        // or an older database): mailboxes, statuses and dialogs of users
        // without clients.
        for user in mailboxes.into_keys() {
            state.changes.push(Change::MailboxClosed { user });
        }
        let stale_statuses: Vec<String> = state
            .presence
            .available()
            .filter(|user| !state.users.contains_key(*user))
            .map(str::to_owned)
            .collect();
        for user in stale_statuses {
            state.set_presence(&user, Status::Offline);
        }
        for (id, members) in snapshot.dialogs {
            if members
                .iter()
                .all(|member| state.users.contains_key(member))
            {
                for member in &members {
                    if let Some(online) = state.users.get_mut(member) {
                        online.dialogs.insert(id.clone());
                    }
                }
                let conversation = Conversation {
                    id: id.clone(),
                    kind: ConversationKind::Dialog,
                    name: None,
                    members: members.to_vec(),
                };
                state.dialogs.insert(id, conversation);
            } else {
                state.changes.push(Change::DialogClosed { id });
            }
        }
        if !state.persist_live {
            state.window_changes.clear();
            state.changes.retain(|change| {
                !matches!(
                    change,
                    Change::MailboxOpened { .. }
                        | Change::MailboxClosed { .. }
                        | Change::DialogClosed { .. }
                )
            });
        }
        state
    }

    /// Submits the current operation's changes under the next ticket and
    /// wakes the users it delivered to — at once if the store is already
    /// durable that far (the in-memory store), else once it is.
    fn flush(
        &mut self,
        store: &dyn Store,
        durable: &watch::Receiver<u64>,
        committer: Committer,
    ) -> u64 {
        self.changes.append(&mut self.window_changes);
        if self.changes.is_empty() && self.to_wake.is_empty() {
            return self.last_ticket;
        }
        self.last_ticket += 1;
        let ticket = self.last_ticket;
        let changes = std::mem::take(&mut self.changes);
        match committer {
            Committer::Store => store.submit(ticket, changes),
            Committer::Waiter => store.submit_for_waiter(ticket, changes),
        }
        let to_wake = std::mem::take(&mut self.to_wake);
        if !to_wake.is_empty() {
            self.awaiting.push_back((ticket, to_wake));
        }
        // Read after submitting: the in-memory store is durable as soon as
        // it is submitted to.
        let durable = *durable.borrow();
        if durable >= ticket {
            self.advance_durable(durable, Instant::now());
        }
        ticket
    }

    fn advance_durable(&mut self, ticket: u64, now: Instant) {
        if ticket <= self.durable_through {
            return;
        }
        self.durable_through = ticket;
        while self
            .awaiting
            .front()
            .is_some_and(|(waiting, _)| *waiting <= ticket)
        {
            let Some((_, users)) = self.awaiting.pop_front() else {
                break;
            };
            for user in users {
                if let Some(online) = self.users.get(&user) {
                    for &key in &online.clients {
                        self.clients.wake(key, Wake::Events, now);
                    }
                }
            }
        }
    }

    fn client_key(&self, token: &str) -> ApiResult<usize> {
        self.clients
            .key_of(token)
            .ok_or_else(ApiError::unknown_client)
    }

    /// The user behind a client token (401 `unknown_client` if none).
    fn caller(&self, token: &str) -> ApiResult<String> {
        self.user_of(self.client_key(token)?)
    }

    fn user_of(&self, key: usize) -> ApiResult<String> {
        self.clients
            .get(key)
            .map(|client| client.user.clone())
            .ok_or_else(ApiError::unknown_client)
    }

    /// Sets a status on the board (and records it). False if unchanged.
    fn set_presence(&mut self, user: &str, status: Status) -> bool {
        if !self.presence.set(user, status) {
            return false;
        }
        self.online.status_changed();
        if self.persist_live {
            self.changes.push(Change::Presence {
                user: user.to_owned(),
                status,
                version: self.presence.version(),
            });
        }
        true
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
        if self.recent_order.len() > RECENT_SENDS {
            if let Some(oldest) = self.recent_order.pop_front() {
                self.recent_sends.remove(&oldest);
            }
        }
    }

    /// Opens a client process; the user comes online with its first one.
    fn open_client(&mut self, name: &str, now: Instant) -> usize {
        let came_online = !self.users.contains_key(name);
        if came_online {
            let presence_seen = self.presence.version();
            self.online.insert(name);
            self.users.insert(
                name.to_owned(),
                OnlineUser {
                    clients: Vec::new(),
                    mailbox: Mailbox::new(presence_seen),
                    dialogs: BTreeSet::new(),
                },
            );
            if self.persist_live {
                self.changes.push(Change::MailboxOpened {
                    user: name.to_owned(),
                    start: 0,
                    presence_seen,
                    after_delivery: self.last_delivery_id,
                });
            }
        }
        // The client starts where its session's cursor will: the durable
        // head (or later, if the store catches up before the session is
        // built; acknowledging less is always safe).
        let acked = self
            .users
            .get(name)
            .map_or(0, |user| user.mailbox.visible_head(self.durable_through));
        let key = self.clients.open(name, acked, now);
        if let Some(user) = self.users.get_mut(name) {
            user.clients.push(key);
        }
        if self.persist_live {
            if let Some(client) = self.clients.get(key) {
                self.changes.push(Change::ClientOpened {
                    id: client.id,
                    token: client.token.clone(),
                    user: name.to_owned(),
                });
            }
        }
        if came_online {
            self.set_presence(name, Status::Online);
            self.clients.wake_all(Wake::Events, now);
        }
        key
    }

    /// Removes a client process; with the user's last one, the user goes
    /// offline and its dialogs are torn down.
    fn close_client(&mut self, key: usize, now: Instant) {
        let Some(client) = self.clients.close(key) else {
            return;
        };
        if self.persist_live {
            self.changes.push(Change::ClientClosed { id: client.id });
        }
        let Some(user) = self.users.get_mut(&client.user) else {
            return;
        };
        user.clients.retain(|&other| other != key);
        if !user.clients.is_empty() {
            return;
        }
        let Some(gone) = self.users.remove(&client.user) else {
            return;
        };
        self.online.remove(&client.user);
        tracing::debug!(user = %client.user, "user went offline");
        if self.persist_live {
            self.changes.push(Change::MailboxClosed {
                user: client.user.clone(),
            });
        }
        for dialog in &gone.dialogs {
            let Some(conversation) = self.dialogs.remove(dialog) else {
                continue;
            };
            if self.persist_live {
                self.changes
                    .push(Change::DialogClosed { id: dialog.clone() });
            }
            let removed = Event::ConversationRemoved {
                conversation: dialog,
                reason: RemovalReason::UserOffline,
            }
            .to_bytes();
            for member in &conversation.members {
                if let Some(other) = self.users.get_mut(member) {
                    other.dialogs.remove(dialog);
                }
                self.deliver(member, &removed, now);
            }
        }
        self.set_presence(&client.user, Status::Offline);
        self.clients.wake_all(Wake::Events, now);
        self.compact_presence();
    }

    /// Forgets offline users that every mailbox has already been told about,
    /// so the board does not grow with every name ever seen. Runs only once
    /// the board has grown by a margin since the last time (amortised O(1)).
    fn compact_presence(&mut self) {
        const MARGIN: usize = 1024;
        let size = self.presence.len();
        if size < self.users.len() * 2 + MARGIN || size < self.presence_compacted_at + MARGIN {
            return;
        }
        let all_seen = self
            .users
            .values()
            .map(|user| user.mailbox.presence_seen)
            .min()
            .unwrap_or_else(|| self.presence.version());
        let forgotten = self.presence.forget_offline_before(all_seen + 1);
        if self.persist_live {
            self.changes.extend(
                forgotten
                    .into_iter()
                    .map(|user| Change::PresenceForgotten { user }),
            );
        }
        self.presence_compacted_at = self.presence.len();
    }

    /// Appends an event to an online user's mailbox; its readers are woken
    /// when the operation's changes are durable. Returns false when the user
    /// is offline (nothing to deliver to).
    fn deliver(&mut self, user: &str, event: &EventBytes, _now: Instant) -> bool {
        let ticket = self.last_ticket + 1;
        let Some(online) = self.users.get_mut(user) else {
            return false;
        };
        let persist = self.persist_live.then_some(Persist {
            changes: &mut self.changes,
            windows: &mut self.window_changes,
            last_delivery_id: &mut self.last_delivery_id,
        });
        append(online, user, event.clone(), ticket, persist);
        self.to_wake.push(user.to_owned());
        true
    }

    fn deliver_to_conversation(&mut self, conversation: &str, event: &EventBytes, now: Instant) {
        if conversation == LOBBY {
            let ticket = self.last_ticket + 1;
            let State {
                users,
                changes,
                window_changes,
                last_delivery_id,
                to_wake,
                persist_live,
                ..
            } = self;
            for (name, user) in users.iter_mut() {
                let persist = persist_live.then_some(Persist {
                    changes: &mut *changes,
                    windows: &mut *window_changes,
                    last_delivery_id: &mut *last_delivery_id,
                });
                append(user, name, event.clone(), ticket, persist);
                to_wake.push(name.clone());
            }
            return;
        }
        // Borrow the member list out of the conversation while delivering
        // (delivery needs `&mut self`) rather than copy it per message.
        let members = match self.rooms.get_mut(conversation) {
            Some(room) => std::mem::take(&mut room.members),
            None => match self.dialogs.get_mut(conversation) {
                Some(dialog) => std::mem::take(&mut dialog.members),
                None => return,
            },
        };
        for member in &members {
            self.deliver(member, event, now);
        }
        if let Some(room) = self.rooms.get_mut(conversation) {
            room.members = members;
        } else if let Some(dialog) = self.dialogs.get_mut(conversation) {
            dialog.members = members;
        }
    }

    /// A poll with `cursor` acknowledges every event up to it: once all the
    /// user's clients have seen an event, the mailbox drops it. Without this
    /// a mailbox keeps its last `MAILBOX_CAPACITY` events for good, which
    /// after a mass join is thousands of presence copies per user.
    fn acknowledge(&mut self, key: usize, user: &str, cursor: u64) {
        let Some(online) = self.users.get_mut(user) else {
            return;
        };
        let mailbox = &mut online.mailbox;
        // A cursor outside what is kept (expired, or ahead of what was ever
        // handed out) acknowledges nothing.
        if cursor < mailbox.start() || cursor > mailbox.visible_head(self.durable_through) {
            return;
        }
        self.clients.acknowledge(key, cursor);
        let seen_by_all = online
            .clients
            .iter()
            .filter_map(|&client| self.clients.get(client))
            .map(|client| client.acked)
            .min()
            .unwrap_or(cursor);
        if mailbox.trim_through(seen_by_all) && self.persist_live {
            note_window(
                mailbox,
                user,
                self.last_delivery_id + 1,
                &mut self.window_changes,
            );
        }
    }

    /// Copies presence changes the user's mailbox has not seen into it, at
    /// most as many as fit in the next poll's answer, so presence never
    /// grows a backlog that could expire a reader's cursor.
    fn copy_presence_changes(&mut self, user: &str, cursor: u64) {
        let ticket = self.last_ticket + 1;
        let State {
            users,
            presence,
            changes,
            window_changes,
            last_delivery_id,
            to_wake,
            persist_live,
            ..
        } = self;
        let Some(online) = users.get_mut(user) else {
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
        let needs_from = *last_delivery_id + 1;
        for (version, event) in copied {
            seen = seen.max(version);
            online.mailbox.push_delivered(event, ticket, needs_from);
        }
        online.mailbox.presence_seen = seen;
        if *persist_live {
            changes.push(Change::PresenceSeen {
                user: user.to_owned(),
                version: seen,
                head: online.mailbox.head(),
            });
            note_window(&mut online.mailbox, user, needs_from, window_changes);
        }
        if any {
            to_wake.push(user.to_owned());
        }
    }

    fn require_member(&self, conversation: &str, user: &str) -> ApiResult<()> {
        if conversation == LOBBY {
            return Ok(()); // every online user is in the lobby
        }
        let found = if conversation.starts_with(DIALOG_PREFIX) {
            self.dialogs.get(conversation)
        } else {
            self.rooms.get(conversation)
        };
        match found {
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

    fn session(&mut self, key: usize, config: HubConfig) -> Session {
        let online = self.online_snapshot();
        let client = self.clients.get(key).expect("session of a live client");
        let user = &self.users[&client.user];
        let mut conversations = Vec::new();
        if let Some(rooms) = self.rooms_of.get(&client.user) {
            conversations.extend(
                rooms
                    .iter()
                    .filter_map(|room| self.rooms.get(room).cloned()),
            );
        }
        conversations.extend(
            user.dialogs
                .iter()
                .filter_map(|dialog| self.dialogs.get(dialog).cloned()),
        );
        Session {
            user: client.user.clone(),
            client: client.id,
            token: None,
            // Only durable events are ever answered, so the cursor starts
            // at the durable head.
            cursor: user.mailbox.visible_head(self.durable_through),
            poll_timeout_ms: millis(config.poll_timeout),
            inactivity_timeout_ms: millis(config.inactivity_timeout),
            online,
            rooms_and_dialogs: conversations,
        }
    }
}

/// Where a mailbox append is described for the store, when it keeps live
/// state.
struct Persist<'a> {
    changes: &'a mut Vec<Change>,
    /// Window changes, kept apart so that consecutive appends of one event
    /// (a fan-out) find their `Delivered` last in `changes` and join it.
    windows: &'a mut Vec<Change>,
    last_delivery_id: &'a mut u64,
}

/// Appends to one mailbox and describes the append (and any window move)
/// for the store: appends of the same event in a row share one delivery.
fn append(
    online: &mut OnlineUser,
    user: &str,
    event: EventBytes,
    ticket: u64,
    persist: Option<Persist<'_>>,
) {
    let Some(persist) = persist else {
        online.mailbox.push_pending(event, ticket);
        return;
    };
    let joins_last = matches!(
        persist.changes.last(),
        Some(Change::Delivered { body, .. }) if body.same_event(&event)
    );
    if !joins_last {
        *persist.last_delivery_id += 1;
        persist.changes.push(Change::Delivered {
            id: *persist.last_delivery_id,
            body: event.clone(),
            recipients: Vec::new(),
        });
    }
    let delivery = *persist.last_delivery_id;
    let seq = online.mailbox.push_delivered(event, ticket, delivery);
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
