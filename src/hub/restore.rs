//! Rebuilding the live state from the store's `Snapshot` at start: rooms,
//! client processes with their users' mailboxes, presence and dialogs, and
//! tidying whatever no live client accounts for.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::locks::{ClientRef, Exclusive, OnlineUser};
use super::mailbox::Mailbox;
use crate::conversation::Conversation;
use crate::event::{Event, Status};
use crate::store::{Change, Snapshot};

impl Exclusive<'_> {
    /// Restores the state a store kept, with every client given a fresh
    /// inactivity timeout from `now` (downtime does not count against
    /// anyone).
    pub(super) fn restore(&mut self, snapshot: Snapshot, now: Instant) {
        let hub = self.hub;
        for room in snapshot.rooms {
            if room.members.is_empty() {
                // Nobody is in it: it goes, as when its last member leaves.
                self.record(Change::RoomDeleted { name: room.name });
                continue;
            }
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
                        self.record_live(|| Change::MailboxOpened {
                            user: user.clone(),
                            start: 0,
                            presence_seen,
                            after_delivery: last_delivery_id,
                        });
                        Mailbox::new(presence_seen)
                    }
                };
                self.dir.online.insert(&user);
                let status = self.dir.presence.status(&user);
                self.dir.online.set_status(&user, status);
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
            let key = shard.clients.insert(id, token, &user, acked, now);
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
            self.record_live(|| Change::MailboxClosed { user });
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
                self.dir
                    .dialogs
                    .insert(id.clone(), Conversation::dialog(id, members));
            } else {
                self.record_live(|| Change::DialogClosed { id });
            }
        }
    }
}
