//! POST /send and GET /history: a message's way in and its way back out of
//! the store, and the `client_msg_id` dedupe that makes a retried /send
//! safe. Read top-down: `Hub::send` checks the request, answers a retry
//! from the recent sends or the store, else numbers the message, delivers it
//! to the conversation (`delivery`) and waits until it is durable.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use super::locks::Shard;
use super::{Hub, HubResult, Refusal};
use crate::auth::TokenHash;
use crate::config::{
    DEFAULT_HISTORY_LIMIT, MAX_CLIENT_MSG_ID_BYTES, MAX_HISTORY_LIMIT, MAX_TEXT_BYTES,
};
use crate::event::{Event, Message};
use crate::store::Change;

/// Recent sends remembered per shard for `client_msg_id` dedupe without a
/// store read (and while they may not be durable yet, hence not readable
/// from it).
const RECENT_SENDS_PER_SHARD: usize = 1_000;

impl Hub {
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
    ) -> HubResult<Message> {
        let token = &TokenHash::of(token);
        if text.is_empty() || text.len() > MAX_TEXT_BYTES {
            return Err(Refusal::InvalidText);
        }
        if let Some(id) = client_msg_id {
            if id.is_empty() || id.len() > MAX_CLIENT_MSG_ID_BYTES {
                return Err(Refusal::InvalidClientMsgId);
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
                let ticket = self.shared.last_ticket();
                self.wait_durable(ticket).await?;
                return Ok(first);
            }
            // The store reads only what is durable.
            if let Some(first) = self.shared.store.find_sent(&user, id).await? {
                return Ok(first);
            }
        }
        self.require_store_room()?;
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
                    break 'locked (first, self.shared.last_ticket());
                }
            }
            // A new message (not a retry, answered above): counted against
            // the sender's rate.
            self.shared.rates.send(client.shard, &user)?;
            // Numbered with the members' shards held: any two messages of
            // one conversation reach every member in id order.
            let id = self.shared.last_message_id.fetch_add(1, Ordering::Relaxed) + 1;
            self.shared.metrics.message();
            let message = Message {
                id,
                conversation: conversation.to_owned(),
                from: user.clone(),
                text: text.to_owned(),
                at: unix_millis(),
                client_msg_id: client_msg_id.map(str::to_owned),
            };
            let event = Event::Message(&message).to_bytes();
            locked.record(Change::Message(message.clone()));
            locked.shard(client.shard).remember_send(&message);
            locked.deliver_to_conversation(conversation, &event);
            let ticket = locked.flush_for_waiter();
            (message, ticket)
        };
        self.wait_durable(ticket).await?;
        // A retry the checks above could not recognise is kept out at
        // commit; its answer is the first message's.
        Ok(self.shared.store.stored_first(&message).unwrap_or(message))
    }

    /// GET /history: a page of a conversation's messages, members only.
    pub async fn history(
        &self,
        token: &str,
        conversation: &str,
        before: Option<u64>,
        limit: Option<usize>,
    ) -> HubResult<Vec<Message>> {
        let token = &TokenHash::of(token);
        let limit = limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
        if limit == 0 || limit > MAX_HISTORY_LIMIT {
            return Err(Refusal::InvalidHistoryLimit);
        }
        {
            let directory = self.directory();
            let client = self.find_client(token)?;
            let mut locked = self.lock(directory, 1 << client.shard);
            let user = locked.user_of(client, token)?;
            locked.dir.require_member(conversation, &user)?;
        }
        Ok(self
            .shared
            .store
            .history(conversation, before, limit)
            .await?)
    }
}

impl Shard {
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

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
