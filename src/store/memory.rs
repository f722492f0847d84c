//! `MemoryStore`: the store kept in RAM, for `--ephemeral` runs and tests.
//! Nothing survives the process.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Appended, NewMessage, Store, StoreResult, StoredRoom};
use crate::event::Message;

#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    accounts: HashMap<String, String>,
    rooms: HashMap<String, StoredRoom>,
    /// Messages per conversation, in id order.
    messages: HashMap<String, Vec<Message>>,
    /// (sender, client_msg_id) → (conversation, index in its message list).
    sent_ids: HashMap<(String, String), (String, usize)>,
    last_message_id: u64,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
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
    fn password_hash(&self, name: &str) -> StoreResult<Option<String>> {
        Ok(self.inner().accounts.get(name).cloned())
    }

    fn create_account(&self, name: &str, password_hash: &str) -> StoreResult<bool> {
        let mut inner = self.inner();
        if inner.accounts.contains_key(name) {
            return Ok(false);
        }
        inner
            .accounts
            .insert(name.to_owned(), password_hash.to_owned());
        Ok(true)
    }

    fn rooms(&self) -> StoreResult<Vec<StoredRoom>> {
        Ok(self.inner().rooms.values().cloned().collect())
    }

    fn save_room(&self, room: &StoredRoom) -> StoreResult<()> {
        self.inner().rooms.insert(room.name.clone(), room.clone());
        Ok(())
    }

    fn append_message(&self, new: NewMessage<'_>) -> StoreResult<Appended> {
        let mut inner = self.inner();
        if let Some(client_msg_id) = new.client_msg_id {
            let key = (new.from.to_owned(), client_msg_id.to_owned());
            if let Some((conversation, index)) = inner.sent_ids.get(&key) {
                return Ok(Appended::Duplicate(
                    inner.messages[conversation][*index].clone(),
                ));
            }
        }
        inner.last_message_id += 1;
        let message = Message {
            id: inner.last_message_id,
            conversation: new.conversation.to_owned(),
            from: new.from.to_owned(),
            text: new.text.to_owned(),
            at: new.at,
            client_msg_id: new.client_msg_id.map(str::to_owned),
        };
        let list = inner
            .messages
            .entry(new.conversation.to_owned())
            .or_default();
        list.push(message.clone());
        let index = list.len() - 1;
        if let Some(client_msg_id) = new.client_msg_id {
            inner.sent_ids.insert(
                (new.from.to_owned(), client_msg_id.to_owned()),
                (new.conversation.to_owned(), index),
            );
        }
        Ok(Appended::New(message))
    }

    fn history(
        &self,
        conversation: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        let inner = self.inner();
        let Some(list) = inner.messages.get(conversation) else {
            return Ok(Vec::new());
        };
        // Ids increase along the list, so `before` is a binary search.
        let end = match before {
            Some(before) => list.partition_point(|message| message.id < before),
            None => list.len(),
        };
        let start = end.saturating_sub(limit);
        Ok(list[start..end].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send<'a>(conversation: &'a str, text: &'a str, id: Option<&'a str>) -> NewMessage<'a> {
        NewMessage {
            conversation,
            from: "ann",
            text,
            at: 1,
            client_msg_id: id,
        }
    }

    #[test]
    fn history_pages_backwards_and_dedupes_client_ids() {
        let store = MemoryStore::new();
        for n in 0..10 {
            store
                .append_message(send("lobby", &n.to_string(), None))
                .unwrap();
        }
        let first = store
            .append_message(send("lobby", "once", Some("x1")))
            .unwrap();
        let again = store
            .append_message(send("lobby", "twice", Some("x1")))
            .unwrap();
        let Appended::New(first) = first else {
            panic!("first send is new")
        };
        assert_eq!(again, Appended::Duplicate(first.clone()));

        let page = store.history("lobby", None, 3).unwrap();
        let texts: Vec<_> = page.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["8", "9", "once"]);
        let older = store.history("lobby", Some(page[0].id), 100).unwrap();
        assert_eq!(older.len(), 8);
        assert_eq!(older.last().unwrap().text, "7");
        assert!(store.history("nowhere", None, 5).unwrap().is_empty());
    }
}
