//! How the hub's state is split under locks, and how an operation takes
//! them: the per-user `Shard`s, the shared `Directory`, and `Locked`, an
//! operation's view of what it holds.
//!
//! Users (with their clients and mailboxes) and client tokens (by their
//! SHA-256, `auth::TokenHash`: the raw token is never kept) are spread over
//! `SHARDS` shards by a hash of the name or token, each behind its own
//! mutex. What they share — who is online, rooms, dialogs, presence — is the
//! `Directory`, behind a read-write lock. A poll takes the directory shared
//! and its user's shard; a /send the directory shared and its members'
//! shards (every shard for the lobby). So no lock is taken by every request
//! and held for its work: polls and sends of users in different shards run
//! in parallel on different cores. Operations that change the directory
//! (/join, /leave, the sweeper, rooms, dialogs, statuses) take it
//! exclusively, with every shard (`Hub::lock_all`).
//!
//! Lock order: `directory` (read or write), then shards in index order, then
//! the delivery `log`. A lock taken alone (a token look-up, waking readers
//! once their events are durable) may be taken without the ones before it,
//! as long as nothing else is held meanwhile. `Hub::lock` is the only way
//! to take several, and takes them in this order.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Deref;
use std::sync::{Arc, MutexGuard, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::clients::{Clients, Wake};
use super::delivery::Batch;
use super::mailbox::Mailbox;
use super::online::OnlineNames;
use super::presence::PresenceBoard;
use super::sweeper::SweeperAlarm;
use super::{Hub, HubResult, Refusal, Shared};
use crate::access_log;
use crate::auth::TokenHash;
use crate::conversation::{is_dialog, Conversation, LOBBY};
use crate::event::Message;

/// Shards of users (with their clients and mailboxes) and of client tokens.
/// Requests of users in different shards never wait for each other; 16
/// keeps that rare on machines of up to a few dozen cores, and costs a
/// lock each for the operations that take them all.
pub(super) const SHARDS: usize = 16;
/// A set of shards, one bit each.
pub(super) type ShardSet = u32;
pub(super) const ALL_SHARDS: ShardSet = ((1u64 << SHARDS) - 1) as ShardSet;

/// What every shard shares: who is online, rooms, dialogs, presence. Read
/// (shared) by /poll and /send; written only by operations that change it
/// (/join, /leave, the sweeper, rooms, dialogs, statuses), which then hold
/// every shard too.
pub(super) struct Directory {
    /// Names of the users with at least one client process, sorted.
    pub(super) online: OnlineNames,
    /// Every room but the lobby, by name (= id).
    pub(super) rooms: HashMap<String, Conversation>,
    /// user → names of the rooms it is a member of (online or not).
    pub(super) rooms_of: HashMap<String, BTreeSet<String>>,
    /// Live dialogs by id; torn down when either member goes offline.
    pub(super) dialogs: HashMap<String, Conversation>,
    pub(super) presence: PresenceBoard,
    /// Size of the presence board when it was last compacted.
    pub(super) presence_compacted_at: usize,
}

/// The users whose name hashes to this shard, with their clients, and the
/// tokens that hash to it (pointing at the client's shard).
pub(super) struct Shard {
    pub(super) users: HashMap<String, OnlineUser>,
    pub(super) clients: Clients,
    pub(super) tokens: HashMap<TokenHash, ClientRef>,
    /// (sender, client_msg_id) → message, for senders of this shard, the
    /// most recent sends, oldest first (see `send`).
    pub(super) recent_sends: HashMap<(String, String), Message>,
    pub(super) recent_order: VecDeque<(String, String)>,
}

/// Where a client lives: its user's shard and its slab key there.
#[derive(Debug, Clone, Copy)]
pub(super) struct ClientRef {
    pub(super) shard: usize,
    pub(super) key: usize,
}

/// An online user, in its shard.
pub(super) struct OnlineUser {
    /// Slab keys (in the user's shard) of the user's client processes.
    pub(super) clients: Vec<usize>,
    pub(super) mailbox: Mailbox,
    /// Ids of the user's live dialogs.
    pub(super) dialogs: BTreeSet<String>,
}

/// An operation in progress: the directory (shared or exclusive), the
/// shards it took, and what it changed so far. Dropping it submits what it
/// changed (see `delivery`), so an operation that ends early still does.
pub(super) struct Locked<'a, D: Deref<Target = Directory>> {
    pub(super) hub: &'a Shared,
    pub(super) dir: D,
    /// By index; `None` for shards the operation did not take.
    pub(super) shards: [Option<MutexGuard<'a, Shard>>; SHARDS],
    pub(super) batch: Batch,
}

/// An operation holding the directory to change and every shard.
pub(super) type Exclusive<'a> = Locked<'a, RwLockWriteGuard<'a, Directory>>;

impl Hub {
    /// The directory, shared: for operations that change no room, dialog,
    /// status or who is online.
    pub(super) fn directory(&self) -> RwLockReadGuard<'_, Directory> {
        // Hub methods do not panic while holding a lock; should one ever
        // do so, the server keeps serving rather than failing every request.
        self.shared
            .directory
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the shards in `set`, in index order, after `directory`.
    pub(super) fn lock<D: Deref<Target = Directory>>(
        &self,
        directory: D,
        set: ShardSet,
    ) -> Locked<'_, D> {
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
    pub(super) fn lock_all(&self) -> Exclusive<'_> {
        let directory = self
            .shared
            .directory
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.lock(directory, ALL_SHARDS)
    }

    /// The client behind a token (`UnknownClient` if none). Takes the
    /// token's shard alone: call it holding no shard.
    pub(super) fn find_client(&self, token: &TokenHash) -> HubResult<ClientRef> {
        self.shared
            .shard(self.shared.shard_of_token(token))
            .tokens
            .get(token)
            .copied()
            .ok_or(Refusal::UnknownClient)
    }
}

impl Shared {
    /// FNV-1a from a per-process seed: a few ns for a short name, where
    /// SipHash costs several times that on every request.
    #[inline]
    pub(super) fn shard_of_user(&self, name: &str) -> usize {
        let mut hash = self.shard_seed;
        for &byte in name.as_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        ((hash ^ (hash >> 32)) % SHARDS as u64) as usize
    }

    /// A token hash is uniform whatever a client sends, so it needs no
    /// seed: its first byte picks the shard.
    #[inline]
    pub(super) fn shard_of_token(&self, token: &TokenHash) -> usize {
        token.shard(SHARDS)
    }

    /// One shard, taken alone or in index order (see the lock order).
    #[inline]
    pub(super) fn shard(&self, index: usize) -> MutexGuard<'_, Shard> {
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Directory {
    /// An empty directory over the presence board the store kept.
    pub(super) fn new(presence: PresenceBoard) -> Directory {
        Directory {
            online: OnlineNames::default(),
            rooms: HashMap::new(),
            rooms_of: HashMap::new(),
            dialogs: HashMap::new(),
            presence,
            presence_compacted_at: 0,
        }
    }

    /// A room or a live dialog by id (not the lobby, whose members are
    /// whoever is online).
    pub(super) fn room_or_dialog(&self, id: &str) -> Option<&Conversation> {
        if is_dialog(id) {
            self.dialogs.get(id)
        } else {
            self.rooms.get(id)
        }
    }

    /// The shards of a conversation's members (every shard for the lobby);
    /// `UnknownConversation` for a conversation that does not exist.
    pub(super) fn shards_of_members(
        &self,
        hub: &Shared,
        conversation: &str,
    ) -> HubResult<ShardSet> {
        if conversation == LOBBY {
            return Ok(ALL_SHARDS);
        }
        let members = self
            .room_or_dialog(conversation)
            .map(|conversation| &conversation.members)
            .ok_or_else(|| Refusal::UnknownConversation {
                conversation: conversation.to_owned(),
            })?;
        Ok(members
            .iter()
            .fold(0, |set, member| set | 1 << hub.shard_of_user(member)))
    }

    pub(super) fn require_member(&self, conversation: &str, user: &str) -> HubResult<()> {
        if conversation == LOBBY {
            return Ok(()); // every online user is in the lobby
        }
        match self.room_or_dialog(conversation) {
            None => Err(Refusal::UnknownConversation {
                conversation: conversation.to_owned(),
            }),
            Some(c) if c.members.iter().any(|member| member == user) => Ok(()),
            Some(_) => Err(Refusal::NotMember {
                conversation: conversation.to_owned(),
            }),
        }
    }

    /// The lobby's members are the online users.
    pub(super) fn lobby(&self) -> Conversation {
        self.online.lobby()
    }
}

impl Shard {
    pub(super) fn new(sweeper: Arc<SweeperAlarm>, inactivity_timeout: Duration) -> Shard {
        Shard {
            users: HashMap::new(),
            clients: Clients::new(sweeper, inactivity_timeout),
            tokens: HashMap::new(),
            recent_sends: HashMap::new(),
            recent_order: VecDeque::new(),
        }
    }
}

impl<D: Deref<Target = Directory>> Locked<'_, D> {
    /// A shard the operation holds.
    #[inline]
    pub(super) fn shard(&mut self, index: usize) -> &mut Shard {
        self.shards[index]
            .as_deref_mut()
            .expect("an operation touches only the shards it locked")
    }

    /// The user behind a client found by token, checked again under the
    /// user's shard (the client may have gone, and its slot been reused).
    pub(super) fn user_of(&mut self, client: ClientRef, token: &TokenHash) -> HubResult<String> {
        let found = self
            .shard(client.shard)
            .clients
            .get(client.key)
            .filter(|found| found.token == *token)
            .ok_or(Refusal::UnknownClient)?;
        access_log::note_caller(&found.user, found.id);
        Ok(found.user.clone())
    }

    /// An online user, in a shard the operation holds.
    pub(super) fn online_user(&mut self, user: &str) -> Option<&mut OnlineUser> {
        let index = self.hub.shard_of_user(user);
        self.shard(index).users.get_mut(user)
    }
}

impl Exclusive<'_> {
    pub(super) fn is_online(&mut self, user: &str) -> bool {
        self.online_user(user).is_some()
    }

    /// The client behind a token (`UnknownClient` if none).
    pub(super) fn client_of(&mut self, token: &TokenHash) -> HubResult<ClientRef> {
        let index = self.hub.shard_of_token(token);
        let client = self
            .shard(index)
            .tokens
            .get(token)
            .copied()
            .ok_or(Refusal::UnknownClient)?;
        if access_log::wants_caller() {
            if let Some(found) = self.shard(client.shard).clients.get(client.key) {
                access_log::note_caller(&found.user, found.id);
            }
        }
        Ok(client)
    }

    /// Answers every parked poll.
    pub(super) fn wake_all(&mut self, wake: Wake, now: Instant) {
        for shard in self.shards.iter_mut().flatten() {
            shard.clients.wake_all(wake, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::auth::TokenHash;
    use crate::hub::{Hub, HubConfig};
    use crate::limits::Limits;
    use crate::store::memory::MemoryStore;

    fn hub() -> Hub {
        let config = HubConfig {
            poll_timeout: Duration::from_secs(5),
            inactivity_timeout: Duration::from_secs(60),
            argon2_memory_kib: 8,
            argon2_iterations: 1,
        };
        // It joins users until some land in the right shards: no sign-up limit.
        let limits = Limits {
            signups_per_ip: None,
            ..Limits::default()
        };
        Hub::with_limits(Arc::new(MemoryStore::new()), config, limits)
            .expect("an empty store loads")
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

    /// No lock is contended by every client: with one shard held (as by a
    /// long operation of one of its users), users of other shards still
    /// send and poll, and only that shard's users wait.
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
            let token_shard = hub.shared.shard_of_token(&TokenHash::of(&token));
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
}
