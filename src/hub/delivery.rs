//! Delivery: the one seam through which an event enters mailboxes and
//! becomes visible to polls, and through which every operation's changes
//! reach the store in order.
//!
//! Each operation describes what it changed as store `Change`s and submits
//! them under the next ticket (`Locked::flush`), numbered and queued in
//! order under the small `Log` lock. Mailbox events carry that ticket and
//! stay invisible to polls until the store reports it durable, which is
//! also when their readers are woken (`Hub::advance_durable`, driven by
//! `Hub::run_visibility`). Events are appended `UNSEALED` and given their
//! ticket before the operation lets go of the mailbox's shard; since any two
//! operations on one mailbox hold its shard in turn, its events' tickets grow
//! with the log. A /send answers only once its ticket is durable; it submits
//! with `Committer::Waiter` and commits in `Hub::wait_durable`, outside every
//! lock (see `store::sqlite::writer`).
//!
//! # Interface
//!
//! The rest of the hub uses only these; everything else here is private.
//! In cluster mode a Redis engine fills the same signatures (chosen at
//! compile time: no trait object on the send or poll path).
//!
//! Inside an operation (a `Locked`, its shards held):
//! - `Locked::deliver_to_user(user, event) -> bool` and
//!   `Locked::deliver_to_conversation(id, event)`: append to the mailboxes
//!   of the online recipients (false: the user is offline). Invisible to
//!   polls until the operation's ticket is durable; described for the store
//!   if it keeps live state; recipients woken once durable.
//! - `Batch::append_presence_copies`: the same for presence copies, which
//!   are not stored themselves.
//! - `Batch::note_window`: a mailbox dropped acknowledged events.
//! - `Locked::record(change)` / `Locked::record_live(|| change)`: any other
//!   change for the store (the latter only if it keeps live state).
//! - `Locked::flush(committer) -> Option<ticket>`: ends the operation's
//!   durable part: submits, seals, wakes (now if already durable). With
//!   `Committer::Waiter` (or `flush_for_waiter`) the caller commits in
//!   `wait_durable`. Dropping a `Locked` flushes whatever it did not.
//!
//! Outside every lock:
//! - `Hub::wait_durable(ticket)`: until the ticket is durable (committing
//!   on the caller's thread where the store can), or `Refusal::NotStored`
//!   (also when the store rejected the ticket's changes).
//! - `Hub::durably(operation)`: runs a synchronous operation that changes
//!   state and answers once it is durable (the API's /dialog, /rooms/*,
//!   /status, /leave, /api/publish); `Hub::require_store_room`, which
//!   refuses at once while the store's queue is beyond its bound, is its
//!   first step and that of /send and /join.
//! - `Hub::advance_durable(ticket)` / `Hub::run_visibility`: make events up
//!   to a durable ticket visible and wake their readers.
//! - `Shared::durable_through()`: polls read the events whose ticket is at
//!   most this, and no others; `Shared::last_ticket()`: the newest ticket
//!   submitted, for a retried /send to wait on.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::clients::Wake;
use super::locks::{Directory, Locked, Shard};
use super::mailbox::{Mailbox, UNSEALED};
use super::{Hub, HubResult, Refusal, Shared};
use crate::conversation::LOBBY;
use crate::event::EventBytes;
use crate::store::{Change, Store};

/// How long a /join or /send waits for its changes to become durable before
/// giving up with `NotStored` (the client retries; a /send with the same
/// `client_msg_id`).
pub(super) const SEND_DURABILITY_TIMEOUT: Duration = Duration::from_secs(10);
/// Mailbox trims are written to the store once the start moved this far.
const TRIM_WRITE_STEP: u64 = 256;

/// The order of durable changes: tickets are numbered and submitted to the
/// store under this lock, with who to wake once each is durable. It is held
/// for a counter bump and two queue pushes, and only by operations that
/// change something (a poll that reads or parks does not take it).
#[derive(Default)]
pub(super) struct Log {
    /// The last ticket submitted.
    last_ticket: u64,
    /// Submitted tickets not yet durable, with the users to wake then.
    awaiting: VecDeque<(u64, Arc<[String]>)>,
}

/// What one operation changed, submitted by `Locked::flush`.
#[derive(Default)]
pub(super) struct Batch {
    changes: Vec<Change>,
    /// Mailbox window moves, kept apart so that consecutive appends of one
    /// event (a fan-out) find their `Delivered` last in `changes` and join
    /// it.
    windows: Vec<Change>,
    /// Users whose mailboxes got events (appended `UNSEALED`).
    to_wake: Vec<String>,
}

/// Who commits an operation's changes (see `Store::submit_for_waiter`).
#[derive(Clone, Copy)]
pub(super) enum Committer {
    /// The store's background writer: nobody waits for this operation.
    Store,
    /// The request itself, in `Hub::wait_durable`, outside the hub's locks.
    Waiter,
}

impl Shared {
    /// The highest ticket the store made durable: what polls may read.
    #[inline]
    pub(super) fn durable_through(&self) -> u64 {
        *self.durable.borrow()
    }

    /// The last ticket submitted (durable or not).
    pub(super) fn last_ticket(&self) -> u64 {
        self.log().last_ticket
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<D: Deref<Target = Directory>> Locked<'_, D> {
    /// Appends an event to an online user's mailbox as part of this
    /// operation. Returns false when the user is offline (nothing to
    /// deliver to).
    pub(super) fn deliver_to_user(&mut self, user: &str, event: &EventBytes) -> bool {
        let Locked {
            hub, shards, batch, ..
        } = self;
        batch.append_to_user(hub, shards, user, event)
    }

    /// Appends an event to the mailbox of every online member of a
    /// conversation (every online user for the lobby).
    pub(super) fn deliver_to_conversation(&mut self, conversation: &str, event: &EventBytes) {
        let Locked {
            hub,
            dir,
            shards,
            batch,
        } = self;
        if conversation == LOBBY {
            for shard in shards.iter_mut().flatten() {
                for (name, user) in shard.users.iter_mut() {
                    batch.append(hub, &mut user.mailbox, name, event);
                }
            }
            return;
        }
        let Some(found) = dir.room_or_dialog(conversation) else {
            return;
        };
        for member in &found.members {
            batch.append_to_user(hub, shards, member, event);
        }
    }

    /// Describes a change for the store.
    pub(super) fn record(&mut self, change: Change) {
        self.batch.changes.push(change);
    }

    /// Describes a change to live state (clients, mailboxes, presence,
    /// dialogs), if the store keeps it.
    pub(super) fn record_live(&mut self, change: impl FnOnce() -> Change) {
        if self.hub.keeps_live_state {
            self.batch.changes.push(change());
        }
    }

    /// Ends an operation: submits its changes under the next ticket, seals
    /// the events it appended with that ticket, and wakes their readers
    /// (now, if the store is already durable that far, else once it is).
    /// Returns the ticket, or None if there was nothing to submit (most
    /// polls: they then take no lock but their own).
    pub(super) fn flush(&mut self, committer: Committer) -> Option<u64> {
        let hub = self.hub;
        let batch = &mut self.batch;
        batch.changes.append(&mut batch.windows);
        if batch.changes.is_empty() && batch.to_wake.is_empty() {
            return None;
        }
        let changes = std::mem::take(&mut batch.changes);
        let to_wake: Arc<[String]> = std::mem::take(&mut batch.to_wake).into();
        let (ticket, wake_now) = {
            let mut log = hub.log();
            log.last_ticket += 1;
            let ticket = log.last_ticket;
            match committer {
                Committer::Store => hub.store.submit(ticket, changes),
                Committer::Waiter => hub.store.submit_for_waiter(ticket, changes),
            }
            // Read after submitting (the in-memory store is durable as soon
            // as it is submitted to), and with the log held: whoever wakes
            // readers for a later durable ticket takes the log after us,
            // and so finds the entry pushed here.
            let wake_now = hub.durable_through() >= ticket;
            if !wake_now && !to_wake.is_empty() {
                log.awaiting.push_back((ticket, to_wake.clone()));
            }
            (ticket, wake_now)
        };
        if wake_now {
            hub.metrics.durable_now();
        }
        let now = Instant::now();
        for user in to_wake.iter() {
            let index = hub.shard_of_user(user);
            let Shard { users, clients, .. } = self.shard(index);
            let Some(online) = users.get_mut(user) else {
                continue;
            };
            online.mailbox.seal(ticket);
            if wake_now {
                for &key in &online.clients {
                    clients.wake(key, Wake::Events, now);
                }
            }
        }
        Some(ticket)
    }

    /// `flush` for an operation that answers once durable: the ticket to
    /// wait for (the last one submitted if it changed nothing itself).
    pub(super) fn flush_for_waiter(&mut self) -> u64 {
        self.flush(Committer::Waiter)
            .unwrap_or_else(|| self.hub.last_ticket())
    }
}

/// An operation that changed something submits it, even when it ends early
/// (an error answered after a delivery): its events were appended
/// `UNSEALED`, and left so they would hide every later event of their
/// mailboxes.
impl<D: Deref<Target = Directory>> Drop for Locked<'_, D> {
    fn drop(&mut self) {
        let batch = &self.batch;
        if !(batch.changes.is_empty() && batch.windows.is_empty() && batch.to_wake.is_empty()) {
            self.flush(Committer::Store);
        }
    }
}

impl Batch {
    /// `Locked::deliver_to_user` over the operation's parts, so that a
    /// caller may hold the directory borrowed meanwhile.
    fn append_to_user(
        &mut self,
        hub: &Shared,
        shards: &mut [Option<MutexGuard<'_, Shard>>],
        user: &str,
        event: &EventBytes,
    ) -> bool {
        let Some(online) = shards[hub.shard_of_user(user)]
            .as_deref_mut()
            .and_then(|shard| shard.users.get_mut(user))
        else {
            return false;
        };
        self.append(hub, &mut online.mailbox, user, event);
        true
    }

    /// Appends to one mailbox, unsealed (the operation's ticket comes at
    /// `flush`), and schedules its readers' wake. If the store keeps live
    /// state, describes the append (and any window move): appends of the
    /// same event in a row share one delivery.
    fn append(&mut self, hub: &Shared, mailbox: &mut Mailbox, user: &str, event: &EventBytes) {
        if hub.keeps_live_state {
            let delivery = match self.changes.last() {
                Some(Change::Delivered { id, body, .. }) if body.same_event(event) => *id,
                _ => {
                    // Delivery ids are taken with the recipients' shards
                    // held, so within any one mailbox they grow with its
                    // events.
                    let id = hub.last_delivery_id.fetch_add(1, Ordering::Relaxed) + 1;
                    self.changes.push(Change::Delivered {
                        id,
                        body: event.clone(),
                        recipients: Vec::new(),
                    });
                    id
                }
            };
            let seq = mailbox.push_delivered(event.clone(), UNSEALED, delivery);
            if let Some(Change::Delivered { recipients, .. }) = self.changes.last_mut() {
                recipients.push((user.to_owned(), seq));
            }
            self.note_window(mailbox, user, delivery);
        } else {
            mailbox.push_pending(event.clone(), UNSEALED);
        }
        self.to_wake.push(user.to_owned());
    }

    /// Appends presence copies (see `poll`) to a user's mailbox. Copies are
    /// not stored (see `Change::PresenceSeen`): the head they reach and the
    /// board version they bring the mailbox to (`seen`) are. Each needs the
    /// deliveries after it, like a delivery made now would.
    pub(super) fn append_presence_copies(
        &mut self,
        hub: &Shared,
        mailbox: &mut Mailbox,
        user: &str,
        copies: impl ExactSizeIterator<Item = EventBytes>,
        seen: u64,
    ) {
        let any = copies.len() > 0;
        let needs_from = hub.last_delivery_id.load(Ordering::Relaxed) + 1;
        for event in copies {
            mailbox.push_delivered(event, UNSEALED, needs_from);
        }
        mailbox.presence_seen = seen;
        if hub.keeps_live_state {
            self.changes.push(Change::PresenceSeen {
                user: user.to_owned(),
                version: seen,
                head: mailbox.head(),
            });
            self.note_window(mailbox, user, needs_from);
        }
        if any {
            self.to_wake.push(user.to_owned());
        }
    }

    /// Describes a move of the mailbox's window (its oldest events dropped,
    /// when full or acknowledged) for the store, once it has moved
    /// `TRIM_WRITE_STEP` since last written: the stored window may lag,
    /// which only keeps more. `next_delivery` is the oldest delivery an
    /// empty mailbox still needs.
    pub(super) fn note_window(&mut self, mailbox: &mut Mailbox, user: &str, next_delivery: u64) {
        let moved = match mailbox.persisted_window {
            None => true,
            Some((start, _)) => mailbox.start() >= start + TRIM_WRITE_STEP,
        };
        if moved {
            let oldest = mailbox.oldest_delivery().unwrap_or(next_delivery);
            mailbox.persisted_window = Some((mailbox.start(), oldest));
            self.windows.push(Change::MailboxWindow {
                user: user.to_owned(),
                start: mailbox.start(),
                oldest_delivery: oldest,
            });
        }
    }
}

impl Hub {
    /// Waits until `ticket` is durable (`NotStored` after
    /// `SEND_DURABILITY_TIMEOUT`). Call it holding no hub lock.
    pub(super) async fn wait_durable(&self, ticket: u64) -> HubResult<()> {
        if self.shared.durable_through() < ticket {
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
        // be gone before a hub lock is taken, or this task (watch, then
        // hub) and a poll (hub, then watch) deadlock once the store writer
        // queues for the watch's write lock.
        let reached = matches!(waiting.await, Ok(Ok(_)));
        if !reached || self.shared.store.rejected(ticket) {
            return Err(Refusal::NotStored);
        }
        // Wake the operation's readers from here, rather than one task hop
        // later from `run_visibility`.
        self.advance_durable(self.shared.durable_through());
        Ok(())
    }

    /// Runs an operation that changes state (`dialog`, `join_room`,
    /// `set_status`, `leave`, `publish`...) and answers once what it did,
    /// and everything submitted before, is durable, so that an answer of
    /// success is never taken back by a crash. Refused at once while the
    /// store's queue is beyond its bound; `NotStored` when the store does
    /// not commit in time. With the in-memory store there is nothing to
    /// wait for.
    pub async fn durably<T>(&self, operation: impl FnOnce(&Hub) -> HubResult<T>) -> HubResult<T> {
        self.require_store_room()?;
        let answer = operation(self)?;
        self.wait_durable(self.shared.last_ticket()).await?;
        Ok(answer)
    }

    /// Refuses at once (`StoreUnavailable`) while the store's queue is
    /// beyond its bound: called before an operation that will wait for
    /// durability changes anything, so that a stalled disk turns requests
    /// away instead of queuing them without limit.
    pub(super) fn require_store_room(&self) -> HubResult<()> {
        if self.shared.store.has_room() {
            Ok(())
        } else {
            Err(Refusal::StoreUnavailable)
        }
    }

    /// Ok while the store commits; otherwise why not (for /healthz).
    pub fn store_health(&self) -> Result<(), String> {
        self.shared.store.health()
    }

    /// Makes events up to `ticket` visible and wakes their readers.
    pub fn advance_durable(&self, ticket: u64) {
        // Every /send calls this once durable; most find it done already.
        if ticket <= self.shared.woken_through.load(Ordering::Acquire) {
            return;
        }
        let batches: Vec<Arc<[String]>> = {
            let mut log = self.shared.log();
            if ticket <= self.shared.woken_through.load(Ordering::Acquire) {
                return;
            }
            self.shared.woken_through.store(ticket, Ordering::Release);
            let mut batches = Vec::new();
            while log
                .awaiting
                .front()
                .is_some_and(|(waiting, _)| *waiting <= ticket)
            {
                if let Some((_, users)) = log.awaiting.pop_front() {
                    batches.push(users);
                }
            }
            batches
        };
        if batches.is_empty() {
            return;
        }
        self.shared.metrics.durable_now();
        // One lock per shard, each taken alone.
        let mut by_shard: Vec<(usize, &str)> = batches
            .iter()
            .flat_map(|users| users.iter())
            .map(|user| (self.shared.shard_of_user(user), user.as_str()))
            .collect();
        by_shard.sort_unstable_by_key(|&(shard, _)| shard);
        let now = Instant::now();
        for group in by_shard.chunk_by(|a, b| a.0 == b.0) {
            let mut shard = self.shared.shard(group[0].0);
            for &(_, user) in group {
                shard.wake_user(user, now);
            }
        }
    }

    /// The visibility task: follows the store's durability and makes events
    /// visible as they become durable, until `shutdown` flips to true.
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

impl Shard {
    /// Answers the parked polls of `user`'s clients: there is news.
    fn wake_user(&mut self, user: &str, now: Instant) {
        if let Some(online) = self.users.get(user) {
            for &key in &online.clients {
                self.clients.wake(key, Wake::Events, now);
            }
        }
    }
}
