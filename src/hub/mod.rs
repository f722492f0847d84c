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
//! Seams for cluster mode: mailbox append + wake (`deliver`), presence and
//! the client table are what a Redis engine would take over; each is behind
//! its own small type so that swap is confined to this module.

pub mod clients;
pub mod mailbox;
pub mod presence;
pub mod sweeper;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::StatusCode;
use serde::Serialize;
use tokio::sync::Notify;
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
use crate::store::{Appended, NewMessage, Store, StoreError, StoredRoom};
use clients::{Clients, Parked, Wake};
use mailbox::{Mailbox, Read};
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserStatus {
    pub name: String,
    pub status: Status,
}

/// What /join and /sync answer: who the client is, where its cursor starts,
/// and a snapshot of the users and conversations it can see.
#[derive(Debug, Serialize)]
pub struct Session {
    pub user: String,
    pub client: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub cursor: u64,
    pub poll_timeout_ms: u64,
    pub inactivity_timeout_ms: u64,
    pub users: Vec<UserStatus>,
    pub conversations: Vec<Conversation>,
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
}

struct State {
    /// Users with at least one client process.
    users: HashMap<String, OnlineUser>,
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
    /// Builds the hub over a store, loading the rooms it holds.
    pub fn new(store: Arc<dyn Store>, config: HubConfig) -> Result<Hub, StoreError> {
        let mut rooms = HashMap::new();
        let mut rooms_of: HashMap<String, BTreeSet<String>> = HashMap::new();
        for room in store.rooms()? {
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
        let sweeper = Arc::new(Notify::new());
        let state = State {
            users: HashMap::new(),
            clients: Clients::new(sweeper.clone(), config.inactivity_timeout),
            rooms,
            rooms_of,
            dialogs: HashMap::new(),
            presence: PresenceBoard::default(),
            presence_compacted_at: 0,
            shutting_down: false,
        };
        Ok(Hub {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                store,
                config,
                hasher: PasswordHasherPool::new(config.argon2_memory_kib, config.argon2_iterations),
                sweeper,
            }),
        })
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
        let mut session = state.session(key, self.shared.config);
        session.token = token;
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
                if store.create_account(name, &hash)? {
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
        let state = self.state();
        let key = state.client_key(token)?;
        Ok(state.session(key, self.shared.config))
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
        let wait = timeout.map_or(poll_timeout, |asked| asked.min(poll_timeout));
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
        // A newer poll of the same client wins; the older is answered empty.
        state.clients.supersede(key, now);
        let State {
            users,
            clients,
            presence,
            shutting_down,
            ..
        } = &mut *state;
        let user_name = clients
            .get(key)
            .ok_or_else(ApiError::unknown_client)?
            .user
            .clone();
        let user = users
            .get_mut(&user_name)
            .expect("every client's user is online");
        if copy_presence_changes(&mut user.mailbox, presence, cursor) {
            for &other in &user.clients {
                clients.wake(other, Wake::Events, now);
            }
        }
        let answer = match user.mailbox.read(cursor, MAX_EVENTS_PER_POLL) {
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
    pub fn send(
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
        let now = Instant::now();
        let mut state = self.state();
        let key = state.client_key(token)?;
        let user = state.user_of(key)?;
        state.require_member(conversation, &user)?;
        // Stored under the hub lock, so store order is delivery order.
        let appended = self.shared.store.append_message(NewMessage {
            conversation,
            from: &user,
            text,
            at: unix_millis(),
            client_msg_id,
        })?;
        match appended {
            Appended::Duplicate(message) => Ok(message),
            Appended::New(message) => {
                let event = Event::Message(&message).to_bytes();
                state.deliver_to_conversation(conversation, &event, now);
                Ok(message)
            }
        }
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
            let key = state.client_key(token)?;
            let user = state.user_of(key)?;
            state.require_member(conversation, &user)?;
        }
        Ok(self.shared.store.history(conversation, before, limit)?)
    }

    /// POST /dialog: the dialog with `with`, created if there is none.
    pub fn dialog(&self, token: &str, with: &str) -> ApiResult<Conversation> {
        let now = Instant::now();
        let mut state = self.state();
        let key = state.client_key(token)?;
        let user = state.user_of(key)?;
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
        state.dialogs.insert(id, conversation.clone());
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
        let key = state.client_key(token)?;
        let user = state.user_of(key)?;
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
        self.shared.store.save_room(&StoredRoom {
            name: name.to_owned(),
            members: members.clone(),
        })?;
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
        Ok(room)
    }

    /// POST /rooms/leave.
    pub fn leave_room(&self, token: &str, conversation: &str) -> ApiResult<()> {
        let now = Instant::now();
        let mut state = self.state();
        let key = state.client_key(token)?;
        let user = state.user_of(key)?;
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
        self.shared.store.save_room(&StoredRoom {
            name: conversation.to_owned(),
            members: members.clone(),
        })?;
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
        Ok(())
    }

    /// POST /status.
    pub fn set_status(&self, token: &str, status: Status) -> ApiResult<()> {
        let now = Instant::now();
        let mut state = self.state();
        let key = state.client_key(token)?;
        let user = state.user_of(key)?;
        if state.presence.set(&user, status) {
            state.clients.wake_all(Wake::Events, now);
        }
        Ok(())
    }

    /// POST /leave: ends the client process now.
    pub fn leave(&self, token: &str) -> ApiResult<()> {
        let now = Instant::now();
        let mut state = self.state();
        let key = state.client_key(token)?;
        state.close_client(key, now);
        Ok(())
    }

    /// GET /users: who is online, with their status.
    pub fn users(&self, token: &str) -> ApiResult<Vec<UserStatus>> {
        let state = self.state();
        state.client_key(token)?;
        Ok(state.online_users())
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
    fn client_key(&self, token: &str) -> ApiResult<usize> {
        self.clients
            .key_of(token)
            .ok_or_else(ApiError::unknown_client)
    }

    fn user_of(&self, key: usize) -> ApiResult<String> {
        self.clients
            .get(key)
            .map(|client| client.user.clone())
            .ok_or_else(ApiError::unknown_client)
    }

    /// Opens a client process; the user comes online with its first one.
    fn open_client(&mut self, name: &str, now: Instant) -> usize {
        let came_online = !self.users.contains_key(name);
        if came_online {
            self.users.insert(
                name.to_owned(),
                OnlineUser {
                    clients: Vec::new(),
                    mailbox: Mailbox::new(self.presence.version()),
                    dialogs: BTreeSet::new(),
                },
            );
        }
        let key = self.clients.open(name, now);
        if let Some(user) = self.users.get_mut(name) {
            user.clients.push(key);
        }
        if came_online {
            self.presence.set(name, Status::Online);
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
        tracing::debug!(user = %client.user, "user went offline");
        for dialog in &gone.dialogs {
            let Some(conversation) = self.dialogs.remove(dialog) else {
                continue;
            };
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
        self.presence.set(&client.user, Status::Offline);
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
        self.presence.forget_offline_before(all_seen + 1);
        self.presence_compacted_at = self.presence.len();
    }

    /// Appends an event to an online user's mailbox and wakes its parked
    /// polls. Returns false when the user is offline (nothing to deliver to).
    fn deliver(&mut self, user: &str, event: &EventBytes, now: Instant) -> bool {
        deliver(&mut self.users, &mut self.clients, user, event, now)
    }

    fn deliver_to_conversation(&mut self, conversation: &str, event: &EventBytes, now: Instant) {
        let State {
            users,
            clients,
            rooms,
            dialogs,
            ..
        } = self;
        if conversation == LOBBY {
            for user in users.values_mut() {
                user.mailbox.push(event.clone());
                for &key in &user.clients {
                    clients.wake(key, Wake::Events, now);
                }
            }
            return;
        }
        let members = rooms
            .get(conversation)
            .or_else(|| dialogs.get(conversation))
            .map(|c| c.members.as_slice())
            .unwrap_or_default();
        for member in members {
            deliver(users, clients, member, event, now);
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

    fn online_users(&self) -> Vec<UserStatus> {
        let mut users: Vec<UserStatus> = self
            .users
            .keys()
            .map(|name| UserStatus {
                name: name.clone(),
                status: self.presence.status(name),
            })
            .collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users
    }

    /// The lobby's members are the online users.
    fn lobby(&self) -> Conversation {
        let mut members: Vec<String> = self.users.keys().cloned().collect();
        members.sort();
        Conversation::room(LOBBY, members)
    }

    fn session(&self, key: usize, config: HubConfig) -> Session {
        let client = self.clients.get(key).expect("session of a live client");
        let user = &self.users[&client.user];
        let mut conversations = vec![self.lobby()];
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
            cursor: user.mailbox.head(),
            poll_timeout_ms: millis(config.poll_timeout),
            inactivity_timeout_ms: millis(config.inactivity_timeout),
            users: self.online_users(),
            conversations,
        }
    }
}

fn deliver(
    users: &mut HashMap<String, OnlineUser>,
    clients: &mut Clients,
    user: &str,
    event: &EventBytes,
    now: Instant,
) -> bool {
    let Some(online) = users.get_mut(user) else {
        return false;
    };
    online.mailbox.push(event.clone());
    for &key in &online.clients {
        clients.wake(key, Wake::Events, now);
    }
    true
}

/// Copies presence changes the mailbox has not seen into it, at most as many
/// as fit in the next poll's answer, so presence never grows a backlog that
/// could expire a reader's cursor. Returns whether anything was copied.
fn copy_presence_changes(mailbox: &mut Mailbox, presence: &PresenceBoard, cursor: u64) -> bool {
    if mailbox.presence_seen >= presence.version() {
        return false;
    }
    let unread = mailbox.unread_after(cursor);
    let room = PRESENCE_CHANGES_PER_POLL.min(MAX_EVENTS_PER_POLL.saturating_sub(unread));
    if room == 0 {
        return false;
    }
    let changes: Vec<(u64, EventBytes)> = presence
        .changes_since(mailbox.presence_seen, room)
        .map(|(version, event)| (version, event.clone()))
        .collect();
    let copied = !changes.is_empty();
    if changes.len() < room {
        mailbox.presence_seen = presence.version();
    }
    for (version, event) in changes {
        mailbox.push(event);
        mailbox.presence_seen = mailbox.presence_seen.max(version);
    }
    copied
}

/// Names of users and rooms: 1..=32 ASCII letters, digits, `_`, `-`, `.`.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
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
