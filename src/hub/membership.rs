//! Who is online: client processes open with /join and close with /leave
//! (or the sweeper); a user is online while it has at least one. Also /sync
//! (a fresh `Session` for a client whose cursor expired), /status and
//! /users, and the presence changes that coming and going make.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::clients::Wake;
use super::delivery::Committer;
use super::locks::{ClientRef, Exclusive, Locked, OnlineUser};
use super::mailbox::Mailbox;
use super::online::OnlinePage;
use super::{Hub, HubResult, Refusal};
use crate::access_log;
use crate::auth::join_token::Vouched;
use crate::auth::{self, TokenHash};
use crate::config::{MAX_CLIENTS_PER_USER, MAX_NAME_LEN, MAX_PASSWORD_BYTES, ONLINE_PAGE};
use crate::conversation::Conversation;
use crate::event::{Event, RemovalReason, Status};
use crate::metrics::RateLimit;
use crate::store::Change;

/// What /join and /sync answer: who the client is, where its cursor starts,
/// and a snapshot of the users (the first page of them) and conversations
/// it can see (the JSON is built in `api::session`).
#[derive(Debug)]
pub struct Session {
    pub user: String,
    pub client: u64,
    /// Set by /join only: /sync is called with it.
    pub token: Option<String>,
    pub cursor: u64,
    pub poll_timeout_ms: u64,
    pub inactivity_timeout_ms: u64,
    /// The user's own status (it may not be on the page).
    pub status: Status,
    /// The first `ONLINE_PAGE` users online: the `users` of the answer,
    /// and the lobby's members.
    pub online: OnlinePage,
    /// The user's rooms and dialogs; the lobby comes first in the answer.
    pub rooms_and_dialogs: Vec<Conversation>,
}

impl Hub {
    /// A /join from this machine (for embedding and tests; per-address
    /// limits count it as 127.0.0.1).
    pub async fn join(&self, name: &str, password: &str) -> HubResult<Session> {
        self.join_from(name, password, IpAddr::V4(Ipv4Addr::LOCALHOST))
            .await
    }

    /// POST /join from the client address `from`: checks or claims the
    /// name, then opens a client process.
    pub async fn join_from(&self, name: &str, password: &str, from: IpAddr) -> HubResult<Session> {
        if !valid_name(name) {
            return Err(Refusal::InvalidUserName);
        }
        if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
            return Err(Refusal::InvalidPassword);
        }
        self.require_store_room()?;
        self.check_password(name, password, from).await?;
        self.open_session(name, &[]).await
    }

    /// POST /join with a valid JWT (`auth::join_token`): the user it names
    /// opens a client process, a member of each of its rooms.
    pub async fn join_vouched(&self, vouched: &Vouched) -> HubResult<Session> {
        self.require_store_room()?;
        self.check_vouched(&vouched.user).await?;
        self.open_session(&vouched.user, &vouched.rooms).await
    }

    /// Opens a client process of `name`, which may join, after joining it
    /// to `rooms` (all or none), and answers once that is durable.
    async fn open_session(&self, name: &str, rooms: &[String]) -> HubResult<Session> {
        let now = Instant::now();
        let (session, ticket) = {
            let mut locked = self.lock_all();
            let clients_of_user = locked
                .shard(self.shared.shard_of_user(name))
                .users
                .get(name)
                .map_or(0, |user| user.clients.len());
            if clients_of_user >= MAX_CLIENTS_PER_USER {
                self.shared.metrics.rate_limited(RateLimit::Clients);
                return Err(Refusal::TooManyClients {
                    name: name.to_owned(),
                });
            }
            locked.join_rooms(name, rooms)?;
            let (client, token) = locked.open_client(name, now);
            let ticket = locked.flush_for_waiter();
            let mut session = locked.session(client);
            session.token = Some(token);
            (session, ticket)
        };
        // The token must survive a crash before the client may use it.
        self.wait_durable(ticket).await?;
        tracing::debug!(user = name, client = session.client, "client joined");
        Ok(session)
    }

    /// GET /sync: a fresh snapshot and the current head, for a client whose
    /// cursor expired.
    pub fn sync(&self, token: &str) -> HubResult<Session> {
        let token = &TokenHash::of(token);
        self.advance_durable(self.shared.durable_through());
        let mut locked = self.lock_all();
        let client = locked.client_of(token)?;
        let session = locked.session(client);
        locked
            .shard(client.shard)
            .clients
            .reset_acked(client.key, session.cursor);
        Ok(session)
    }

    /// POST /status, a few times a second at most per client process.
    pub fn set_status(&self, token: &str, status: Status) -> HubResult<()> {
        let token = &TokenHash::of(token);
        let now = Instant::now();
        let mut locked = self.lock_all();
        let client = locked.client_of(token)?;
        let user = locked.user_of(client, token)?;
        if let Some(id) = locked
            .shard(client.shard)
            .clients
            .get(client.key)
            .map(|c| c.id)
        {
            self.shared.rates.status_change(id)?;
        }
        if locked.set_presence(&user, status) {
            locked.wake_all(Wake::Presence, now);
        }
        locked.flush(Committer::Store);
        Ok(())
    }

    /// POST /leave: ends the client process now.
    pub fn leave(&self, token: &str) -> HubResult<()> {
        let token = &TokenHash::of(token);
        let now = Instant::now();
        let mut locked = self.lock_all();
        let client = locked.client_of(token)?;
        locked.close_client(client, now);
        locked.flush(Committer::Store);
        Ok(())
    }

    /// GET /users: at most `limit` online users with their status, in
    /// name order after `after`.
    pub fn users(&self, token: &str, after: Option<&str>, limit: usize) -> HubResult<OnlinePage> {
        let token = &TokenHash::of(token);
        let mut locked = self.lock_all();
        locked.client_of(token)?;
        Ok(locked.dir.online.page(after, limit, false))
    }
}

impl Exclusive<'_> {
    /// Opens a client process; the user comes online with its first one.
    /// Returns the client and its token, which only the joiner is told.
    pub(super) fn open_client(&mut self, name: &str, now: Instant) -> (ClientRef, String) {
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
            self.record_live(|| Change::MailboxOpened {
                user: name.to_owned(),
                start: 0,
                presence_seen,
                after_delivery: hub.last_delivery_id.load(Ordering::Relaxed),
            });
        }
        // The client starts where its session's cursor will: the durable
        // head (or later, if the store catches up before the session is
        // built; acknowledging less is always safe).
        let durable_through = hub.durable_through();
        let id = hub.last_client_id.fetch_add(1, Ordering::Relaxed) + 1;
        let token = auth::new_token();
        let token_hash = TokenHash::of(&token);
        let shard = self.shard(index);
        let acked = shard
            .users
            .get(name)
            .map_or(0, |user| user.mailbox.visible_head(durable_through));
        let key = shard.clients.insert(id, token_hash, name, acked, now);
        if let Some(user) = shard.users.get_mut(name) {
            user.clients.push(key);
        }
        self.record_live(|| Change::ClientOpened {
            id,
            token: token_hash,
            user: name.to_owned(),
        });
        let token_shard = hub.shard_of_token(&token_hash);
        let client = ClientRef { shard: index, key };
        self.shard(token_shard).tokens.insert(token_hash, client);
        if came_online {
            self.set_presence(name, Status::Online);
            self.wake_all(Wake::Presence, now);
        }
        (client, token)
    }

    /// Removes a client process; with the user's last one, the user goes
    /// offline and its dialogs are torn down.
    pub(super) fn close_client(&mut self, client: ClientRef, now: Instant) {
        let hub = self.hub;
        let Some(closed) = self.shard(client.shard).clients.close(client.key) else {
            return;
        };
        let token_shard = hub.shard_of_token(&closed.token);
        self.shard(token_shard).tokens.remove(&closed.token);
        self.record_live(|| Change::ClientClosed { id: closed.id });
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
        self.record_live(|| Change::MailboxClosed {
            user: closed.user.clone(),
        });
        for dialog in &gone.dialogs {
            let Some(conversation) = self.dir.dialogs.remove(dialog) else {
                continue;
            };
            self.record_live(|| Change::DialogClosed { id: dialog.clone() });
            let removed = Event::ConversationRemoved {
                conversation: dialog,
                reason: RemovalReason::UserOffline,
            }
            .to_bytes();
            for member in &conversation.members {
                if let Some(other) = self.online_user(member) {
                    other.dialogs.remove(dialog);
                }
                self.deliver_to_user(member, &removed);
            }
        }
        self.set_presence(&closed.user, Status::Offline);
        self.wake_all(Wake::Presence, now);
        self.compact_presence();
    }

    /// Sets a status on the board (and records it). False if unchanged.
    pub(super) fn set_presence(&mut self, user: &str, status: Status) -> bool {
        if !self.dir.presence.set(user, status) {
            return false;
        }
        self.dir.online.set_status(user, status);
        let version = self.dir.presence.version();
        self.record_live(|| Change::Presence {
            user: user.to_owned(),
            status,
            version,
        });
        true
    }

    /// Forgets offline users that every mailbox has already been told about,
    /// so the board does not grow with every name ever seen. Runs only once
    /// the board has grown by a margin since the last time (amortised O(1)).
    fn compact_presence(&mut self) {
        const MARGIN: usize = 1024;
        let size = self.dir.presence.len();
        let online = self.dir.online.len();
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
        for user in forgotten {
            self.record_live(|| Change::PresenceForgotten { user });
        }
        self.dir.presence_compacted_at = self.dir.presence.len();
    }

    /// The session of a live client, as /join and /sync answer it.
    fn session(&mut self, client: ClientRef) -> Session {
        let config = self.hub.config;
        let durable_through = self.hub.durable_through();
        let online = self.dir.online.page(None, ONLINE_PAGE, true);
        let Locked { dir, shards, .. } = self;
        let shard = shards[client.shard]
            .as_deref()
            .expect("every shard is held");
        let found = shard
            .clients
            .get(client.key)
            .expect("session of a live client");
        access_log::note_caller(&found.user, found.id);
        let user = &shard.users[&found.user];
        let status = dir.online.status_of(&found.user).unwrap_or(Status::Online);
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
            status,
            online,
            rooms_and_dialogs: conversations,
        }
    }
}

/// Names of users and rooms: 1..=`MAX_NAME_LEN` ASCII letters, digits, `_`,
/// `-`, `.` (so never a `:`, which dialog ids use).
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
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
