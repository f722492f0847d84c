//! The `Store`: what parlor keeps beyond a process's lifetime — accounts,
//! rooms and their members, and message history.
//!
//! The hub owns live state (client processes, mailboxes, presence, dialogs) in
//! memory and calls the store for what must outlive it. Calls are made while
//! the hub holds its lock, in the order the hub decides, so a store sees
//! messages in the order every member sees them. `memory` keeps it all in
//! RAM (`--ephemeral`); a durable implementation plugs in behind the same
//! trait.

pub mod memory;

use std::fmt;

use crate::event::Message;

/// A store failure: the request fails and the server stays up.
#[derive(Debug)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store error: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

pub type StoreResult<T> = Result<T, StoreError>;

/// A room as stored: its name (which is also its id) and its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRoom {
    pub name: String,
    pub members: Vec<String>,
}

/// A message the hub asks the store to keep.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    pub conversation: &'a str,
    pub from: &'a str,
    pub text: &'a str,
    pub at: u64,
    pub client_msg_id: Option<&'a str>,
}

/// What `append_message` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored under a new id.
    New(Message),
    /// The sender already sent this `client_msg_id`: the first message.
    Duplicate(Message),
}

pub trait Store: Send + Sync + 'static {
    /// The password hash of an account, if the name is claimed.
    fn password_hash(&self, name: &str) -> StoreResult<Option<String>>;

    /// Claims a name. Returns false when it was already claimed (the caller
    /// then checks the password against the existing hash).
    fn create_account(&self, name: &str, password_hash: &str) -> StoreResult<bool>;

    /// Every room (the lobby excepted), read once at start.
    fn rooms(&self) -> StoreResult<Vec<StoredRoom>>;

    /// Creates or replaces a room with its current member list.
    fn save_room(&self, room: &StoredRoom) -> StoreResult<()>;

    /// Stores a message and gives it the next message id (ids increase across
    /// all conversations), unless `(from, client_msg_id)` was stored before.
    /// Must not return before the message is as durable as the store can make it.
    fn append_message(&self, message: NewMessage<'_>) -> StoreResult<Appended>;

    /// Up to `limit` messages of a conversation with id < `before` (all when
    /// `None`), oldest first.
    fn history(
        &self,
        conversation: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<Message>>;
}
