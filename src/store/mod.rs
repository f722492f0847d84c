//! The `Store`: everything parlor keeps beyond a process's lifetime.
//!
//! The hub holds live state in memory and describes every change to it as a
//! [`Change`], submitted in the order the hub made it, under one increasing
//! *ticket* per hub operation. A store applies submissions in ticket order
//! and reports, through [`Store::durable`], the highest ticket that is as
//! durable as it can make it. The hub answers a /send only once its ticket
//! is durable, and lets polls read only durable mailbox events, so a crash
//! can never take back an event a client has already seen.
//!
//! - [`memory::MemoryStore`] (`--ephemeral`): applies at once, keeps nothing.
//! - [`sqlite::SqliteStore`] (the default): a writer thread commits whatever
//!   has queued up in one transaction (group commit).
//!
//! Reads a request makes (history, a login's account, a retried
//! `client_msg_id`) answer with a [`Reply`] to await: a store whose reads
//! may wait for a disk does them on threads of its own, never on the async
//! workers, where one slow read would stall every poll they serve.

pub mod memory;
pub mod sqlite;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::{oneshot, watch};

use crate::auth::TokenHash;
use crate::event::{EventBytes, Message, Status};

/// A store failure: the request fails and the server stays up.
#[derive(Debug)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store error: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

impl StoreError {
    /// A failure of the storage underneath: what was being done, and why it
    /// failed.
    pub(crate) fn new(context: &str, cause: impl fmt::Display) -> StoreError {
        StoreError(format!("{context}: {cause}"))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The answer to a store read: ready at once (the memory store), or
/// computed on the store's own threads (the SQLite store's readers).
#[derive(Debug)]
pub struct Reply<T>(Answer<T>);

#[derive(Debug)]
enum Answer<T> {
    /// None once taken by `poll`.
    Ready(Option<StoreResult<T>>),
    Pending(oneshot::Receiver<StoreResult<T>>),
}

impl<T> Reply<T> {
    /// An answer already known: costs no allocation and no thread hop.
    pub fn ready(result: StoreResult<T>) -> Reply<T> {
        Reply(Answer::Ready(Some(result)))
    }

    /// An answer to be sent on the returned sender; a sender dropped
    /// without answering (the store stopped) answers an error.
    pub fn pending() -> (oneshot::Sender<StoreResult<T>>, Reply<T>) {
        let (answer, reply) = oneshot::channel();
        (answer, Reply(Answer::Pending(reply)))
    }

    /// Blocks the calling thread for the answer (tests outside a runtime).
    #[cfg(test)]
    pub(crate) fn wait(self) -> StoreResult<T> {
        match self.0 {
            Answer::Ready(result) => result.expect("a reply is waited for once"),
            Answer::Pending(reply) => reply.blocking_recv().unwrap_or_else(|_| Err(stopped())),
        }
    }
}

fn stopped() -> StoreError {
    StoreError("the store stopped before answering a read".into())
}

// No field is pinned: the answer is moved out, the receiver is Unpin.
impl<T> Unpin for Reply<T> {}

impl<T> Future for Reply<T> {
    type Output = StoreResult<T>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<StoreResult<T>> {
        match &mut self.get_mut().0 {
            Answer::Ready(result) => {
                Poll::Ready(result.take().expect("a reply is polled to completion once"))
            }
            Answer::Pending(reply) => Pin::new(reply)
                .poll(context)
                .map(|answer| answer.unwrap_or_else(|_| Err(stopped()))),
        }
    }
}

/// A claimed name: how its user proves who they are. A name keeps its kind
/// for good, so a name created by a JWT join cannot be taken over with a
/// password, nor a password account with a JWT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Account {
    /// Joins with a password: its argon2id PHC string (`auth`).
    Password(String),
    /// Joins with a JWT signed by the application's backend
    /// (`auth::join_token`); no password is kept.
    Jwt,
}

/// A room as stored: its name (which is also its id) and its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRoom {
    pub name: String,
    pub members: Vec<String>,
}

/// One change to durable state, in the order the hub made it.
#[derive(Debug, Clone)]
pub enum Change {
    /// A room was created or its members changed.
    Room(StoredRoom),
    /// A room's last member left: the room is gone, and its history with
    /// it, so a room created later under the name starts empty (and the
    /// cap on rooms counts only rooms someone is in).
    RoomDeleted {
        name: String,
    },
    DialogOpened {
        id: String,
        members: [String; 2],
    },
    DialogClosed {
        id: String,
    },
    Message(Message),
    /// A client process opened; only its token's hash is kept.
    ClientOpened {
        id: u64,
        token: TokenHash,
        user: String,
    },
    ClientClosed {
        id: u64,
    },
    /// A user came online: its mailbox starts empty at `start`. Deliveries
    /// up to `after_delivery` belong to earlier mailboxes of the user.
    MailboxOpened {
        user: String,
        start: u64,
        presence_seen: u64,
        after_delivery: u64,
    },
    /// One event (the JSON object without its seq, shared with the live
    /// mailboxes) appended to several mailboxes: stored once, with each
    /// recipient's sequence number. A message to a room of 5 000 is one of
    /// these, not 5 000.
    Delivered {
        id: u64,
        body: EventBytes,
        recipients: Vec<(String, u64)>,
    },
    /// The mailbox keeps events after `start`, the oldest being in delivery
    /// `oldest_delivery`. Deliveries older than every mailbox's oldest are
    /// deleted.
    MailboxWindow {
        user: String,
        start: u64,
        oldest_delivery: u64,
    },
    /// Presence changes up to board `version` were copied into the mailbox,
    /// whose newest event is now `head`. The copies themselves are not
    /// stored: presence is state, and after N joins they would be N² rows.
    /// On restore, the seqs they held are filled in (see `StoredMailbox`).
    PresenceSeen {
        user: String,
        version: u64,
        head: u64,
    },
    /// The user went offline: its mailbox is gone.
    MailboxClosed {
        user: String,
    },
    Presence {
        user: String,
        status: Status,
        version: u64,
    },
    PresenceForgotten {
        user: String,
    },
}

/// A restored mailbox.
#[derive(Debug, Clone, Default)]
pub struct StoredMailbox {
    pub user: String,
    pub start: u64,
    /// The newest seq handed out as last recorded (presence copies are not
    /// stored, so it may be past the last stored event).
    pub head: u64,
    pub presence_seen: u64,
    /// (seq, delivery id, body), in seq order, all > start. Seqs missing
    /// between them (and up to `head`) held presence copies.
    pub events: Vec<(u64, u64, EventBytes)>,
}

/// Everything the hub needs to resume after a restart.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub rooms: Vec<StoredRoom>,
    pub dialogs: Vec<(String, [String; 2])>,
    /// (client id, token hash, user)
    pub clients: Vec<(u64, TokenHash, String)>,
    pub mailboxes: Vec<StoredMailbox>,
    /// (user, status, version)
    pub presence: Vec<(String, Status, u64)>,
    pub presence_version: u64,
    pub last_client_id: u64,
    pub last_message_id: u64,
    pub last_delivery_id: u64,
}

pub trait Store: Send + Sync + 'static {
    /// Reads the state to resume from (called once, at start).
    fn load(&self) -> StoreResult<Snapshot>;

    /// The account of a name, if the name is claimed.
    fn account(&self, name: &str) -> Reply<Option<Account>>;

    /// Claims a name as `account`; the answer (false: already claimed)
    /// comes once the account is durable.
    fn create_account(&self, name: &str, account: &Account)
        -> oneshot::Receiver<StoreResult<bool>>;

    /// A message `from` sent earlier with this `client_msg_id`, if stored.
    fn find_sent(&self, from: &str, client_msg_id: &str) -> Reply<Option<Message>>;

    /// Up to `limit` messages of a conversation with id < `before` (all when
    /// `None`), oldest first.
    fn history(&self, conversation: &str, before: Option<u64>, limit: usize)
        -> Reply<Vec<Message>>;

    /// Queues the changes of one hub operation. Tickets increase by one per
    /// call; the hub numbers and submits under its log lock, so order is the
    /// hub's order.
    fn submit(&self, ticket: u64, changes: Vec<Change>);

    /// Like `submit`, for an operation whose caller waits for it to be
    /// durable and calls `commit_through` as soon as the hub's locks are
    /// released: the store may leave the write to that call rather than
    /// hand it to a background writer.
    fn submit_for_waiter(&self, ticket: u64, changes: Vec<Change>) {
        self.submit(ticket, changes);
    }

    /// Writes what is queued through `ticket` on the calling thread if the
    /// store can do so quickly (not blocked, no fsync); otherwise makes
    /// sure its background writer will. Progress shows in `durable`.
    fn commit_through(&self, _ticket: u64) {}

    /// The highest ticket made durable so far.
    fn durable(&self) -> watch::Receiver<u64>;

    /// Whether the store keeps live state (clients, mailboxes, presence)
    /// across restarts. When false the hub does not describe those changes.
    fn keeps_live_state(&self) -> bool;

    /// Writes whatever is queued and stops; called once at shutdown.
    fn close(&self) {}

    /// Whether the changes submitted under `ticket` were refused by the
    /// store (a write that fails for a reason no retry cures) rather than
    /// written, though `durable` has passed it: nothing waits on them.
    fn rejected(&self, _ticket: u64) -> bool {
        false
    }

    /// When `message` turned out at commit to repeat the `(sender,
    /// client_msg_id)` of a message stored before (a retry the hub could
    /// not recognise), that first message: the retry's answer.
    fn stored_first(&self, _message: &Message) -> Option<Message> {
        None
    }

    /// Whether a waiting request may submit now: false while the store's
    /// queue is beyond its bound, so that requests are refused at once
    /// rather than queued without limit behind a stalled disk.
    fn has_room(&self) -> bool {
        true
    }

    /// Ok while commits keep up; otherwise why not (the writer stopped, or
    /// the oldest uncommitted change waits longer than a bound).
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}
