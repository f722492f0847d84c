//! `MemoryStore`: the store kept in RAM, for `--ephemeral` runs and tests.
//! Every submission is "durable" at once; nothing survives the process, so
//! only what later requests read back (accounts, rooms, messages) is kept,
//! and of the messages only the newest `EPHEMERAL_HISTORY_PER_CONVERSATION`
//! of each conversation.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::{oneshot, watch};

use super::{Account, Change, Reply, Snapshot, Store, StoreResult, StoredRoom};
use crate::config::EPHEMERAL_HISTORY_PER_CONVERSATION;
use crate::event::Message;

#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    durable: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    accounts: HashMap<String, Account>,
    rooms: HashMap<String, StoredRoom>,
    /// Messages per conversation, in id order, the newest
    /// `EPHEMERAL_HISTORY_PER_CONVERSATION` of each.
    messages: HashMap<String, VecDeque<Message>>,
    /// (sender, client_msg_id) → (conversation, message id), for the
    /// messages kept.
    sent_ids: HashMap<(String, String), (String, u64)>,
}

impl Inner {
    /// Keeps a message, dropping its conversation's oldest past the cap.
    fn add_message(&mut self, message: Message) {
        if let Some(id) = &message.client_msg_id {
            self.sent_ids.insert(
                (message.from.clone(), id.clone()),
                (message.conversation.clone(), message.id),
            );
        }
        let list = self
            .messages
            .entry(message.conversation.clone())
            .or_default();
        list.push_back(message);
        let dropped = list
            .len()
            .saturating_sub(EPHEMERAL_HISTORY_PER_CONVERSATION);
        let dropped: Vec<Message> = list.drain(..dropped).collect();
        for message in &dropped {
            self.forget_sent_id(message);
        }
    }

    /// Deletes a room and its history.
    fn delete_room(&mut self, name: &str) {
        self.rooms.remove(name);
        for message in self.messages.remove(name).unwrap_or_default() {
            self.forget_sent_id(&message);
        }
    }

    fn forget_sent_id(&mut self, message: &Message) {
        if let Some(id) = &message.client_msg_id {
            self.sent_ids.remove(&(message.from.clone(), id.clone()));
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore {
            inner: Mutex::default(),
            durable: watch::Sender::new(0),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every critical section below leaves `Inner` consistent before any
        // point that could panic, so a poisoned lock still guards good data.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for MemoryStore {
    fn load(&self) -> StoreResult<Snapshot> {
        Ok(Snapshot {
            rooms: self.inner().rooms.values().cloned().collect(),
            ..Snapshot::default()
        })
    }

    fn account(&self, name: &str) -> Reply<Option<Account>> {
        Reply::ready(Ok(self.inner().accounts.get(name).cloned()))
    }

    fn create_account(
        &self,
        name: &str,
        account: &Account,
    ) -> oneshot::Receiver<StoreResult<bool>> {
        let (reply, answer) = oneshot::channel();
        let mut inner = self.inner();
        let created = !inner.accounts.contains_key(name);
        if created {
            inner.accounts.insert(name.to_owned(), account.clone());
        }
        let _ = reply.send(Ok(created));
        answer
    }

    fn find_sent(&self, from: &str, client_msg_id: &str) -> Reply<Option<Message>> {
        let inner = self.inner();
        let key = (from.to_owned(), client_msg_id.to_owned());
        let Some((conversation, id)) = inner.sent_ids.get(&key) else {
            return Reply::ready(Ok(None));
        };
        let list = inner.messages.get(conversation);
        Reply::ready(Ok(list.and_then(|list| {
            let index = list.binary_search_by_key(id, |message| message.id).ok()?;
            list.get(index).cloned()
        })))
    }

    fn history(
        &self,
        conversation: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Reply<Vec<Message>> {
        let inner = self.inner();
        let Some(list) = inner.messages.get(conversation) else {
            return Reply::ready(Ok(Vec::new()));
        };
        // Ids increase along the list, so `before` is a binary search.
        let end = match before {
            Some(before) => list.partition_point(|message| message.id < before),
            None => list.len(),
        };
        let start = end.saturating_sub(limit);
        Reply::ready(Ok(list.range(start..end).cloned().collect()))
    }

    fn submit(&self, ticket: u64, changes: Vec<Change>) {
        let mut inner = self.inner();
        for change in changes {
            match change {
                Change::Room(room) => {
                    inner.rooms.insert(room.name.clone(), room);
                }
                Change::RoomDeleted { name } => inner.delete_room(&name),
                Change::Message(message) => inner.add_message(message),
                // Live state needs no keeping when nothing survives a restart.
                _ => {}
            }
        }
        drop(inner);
        self.durable.send_replace(ticket);
    }

    fn durable(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    fn keeps_live_state(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: u64, text: &str, client_msg_id: Option<&str>) -> Change {
        message_in("lobby", id, text, client_msg_id)
    }

    fn message_in(conversation: &str, id: u64, text: &str, client_msg_id: Option<&str>) -> Change {
        Change::Message(Message {
            id,
            conversation: conversation.into(),
            from: "ann".into(),
            text: text.into(),
            at: 1,
            client_msg_id: client_msg_id.map(str::to_owned),
        })
    }

    #[test]
    fn history_pages_backwards_and_finds_client_ids() {
        let store = MemoryStore::new();
        for n in 1..=10 {
            store.submit(n, vec![message(n, &n.to_string(), None)]);
        }
        store.submit(11, vec![message(11, "once", Some("x1"))]);
        assert_eq!(*store.durable().borrow(), 11);
        assert_eq!(store.find_sent("ann", "x1").wait().unwrap().unwrap().id, 11);
        assert!(store.find_sent("bob", "x1").wait().unwrap().is_none());

        let page = store.history("lobby", None, 3).wait().unwrap();
        let texts: Vec<_> = page.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["9", "10", "once"]);
        let older = store
            .history("lobby", Some(page[0].id), 100)
            .wait()
            .unwrap();
        assert_eq!(older.len(), 8);
        assert!(store.history("nowhere", None, 5).wait().unwrap().is_empty());
    }

    #[test]
    fn a_deleted_room_takes_its_history_and_client_ids() {
        let store = MemoryStore::new();
        let room = StoredRoom {
            name: "games".into(),
            members: vec!["ann".into()],
        };
        store.submit(1, vec![Change::Room(room)]);
        store.submit(2, vec![message_in("games", 1, "gg", Some("g1"))]);
        store.submit(3, vec![message(2, "hi", Some("l1"))]);
        store.submit(
            4,
            vec![Change::RoomDeleted {
                name: "games".into(),
            }],
        );
        assert!(store.load().unwrap().rooms.is_empty());
        assert!(store.history("games", None, 10).wait().unwrap().is_empty());
        assert!(store.find_sent("ann", "g1").wait().unwrap().is_none());
        assert_eq!(store.find_sent("ann", "l1").wait().unwrap().unwrap().id, 2);
    }

    #[test]
    fn only_the_newest_messages_of_a_conversation_are_kept() {
        let store = MemoryStore::new();
        let total = EPHEMERAL_HISTORY_PER_CONVERSATION as u64 + 10;
        for id in 1..=total {
            store.submit(
                id,
                vec![message(id, &id.to_string(), Some(&id.to_string()))],
            );
        }
        let kept = store.history("lobby", None, usize::MAX).wait().unwrap();
        assert_eq!(kept.len(), EPHEMERAL_HISTORY_PER_CONVERSATION);
        assert_eq!(kept[0].id, 11, "the oldest went first");
        assert_eq!(kept.last().unwrap().id, total);
        assert!(store
            .history("lobby", Some(11), 10)
            .wait()
            .unwrap()
            .is_empty());
        assert!(store.find_sent("ann", "10").wait().unwrap().is_none());
        assert_eq!(store.find_sent("ann", "11").wait().unwrap().unwrap().id, 11);
        assert_eq!(
            store.inner().sent_ids.len(),
            EPHEMERAL_HISTORY_PER_CONVERSATION
        );
    }
}
