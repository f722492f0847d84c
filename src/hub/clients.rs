//! Client processes (browser tabs, scripts) of the users of one hub shard:
//! their parked poll and their place in the sweeper's idle queue. (Which
//! shard holds the client behind a token is the hub's token map.)
//!
//! Invariant: every live client is either parked (a poll is waiting) or idle
//! (it has a deadline in the idle queue), never both and never neither — so
//! a client whose poll was woken and whose connection then vanished is still
//! swept. Clients live in a slab; the public client id is a counter, so a
//! reused slab slot can never be mistaken for the client that held it before.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use slab::Slab;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::sweeper::{IdleQueue, SweeperAlarm};
use crate::auth::TokenHash;

/// Why a parked poll is answered before its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The mailbox has something new: read it.
    Events,
    /// Presence changed, and nothing else: read it, or wait a little for
    /// more changes to answer them all at once (see `poll`).
    Presence,
    /// A newer poll of the same client took over: answer empty.
    Superseded,
    /// The server is stopping: answer empty so the client re-polls elsewhere.
    ShuttingDown,
    /// The client was removed (/leave from another request).
    ClientGone,
}

#[derive(Debug)]
pub struct Client {
    pub id: u64,
    /// What the hub keeps of the client's token (see `auth::TokenHash`).
    pub token: TokenHash,
    pub user: String,
    /// The highest cursor the client has polled with (or was handed by
    /// /join or /sync): it has seen every event up to there, so its user's
    /// mailbox need not keep them for it. What a live client has not
    /// acknowledged is kept, so no event is dropped before every client saw
    /// it (short of the mailbox filling up).
    pub acked: u64,
    parked: Option<ParkedPoll>,
    idle_deadline: Option<Instant>,
}

#[derive(Debug)]
struct ParkedPoll {
    poll_id: u64,
    wake: oneshot::Sender<Wake>,
    /// The poll already holds presence changes, to answer when its window
    /// ends: a further presence change need not wake it.
    coalescing: bool,
}

/// A poll that was parked: wait on `woken`, and identify it to `unpark`.
#[derive(Debug)]
pub struct Parked {
    pub key: usize,
    pub client_id: u64,
    pub poll_id: u64,
    pub woken: oneshot::Receiver<Wake>,
}

#[derive(Debug)]
pub struct Clients {
    slab: Slab<Client>,
    /// Slab keys of clients with a parked poll that a presence change
    /// wakes (all at once, without scanning idle clients).
    parked: HashSet<usize>,
    /// Slab keys of clients with a parked poll that is `coalescing`: woken
    /// by anything but presence. Every parked poll is in exactly one set.
    coalescing: HashSet<usize>,
    idle: IdleQueue,
    /// Told of each new earliest deadline of this queue; wakes the sweeper
    /// if it is the earliest of all. Called with the shard's lock held:
    /// `notify_one` never blocks.
    sweeper: Arc<SweeperAlarm>,
    inactivity_timeout: Duration,
    last_poll_id: u64,
}

impl Clients {
    pub fn new(sweeper: Arc<SweeperAlarm>, inactivity_timeout: Duration) -> Clients {
        Clients {
            slab: Slab::new(),
            parked: HashSet::new(),
            coalescing: HashSet::new(),
            idle: IdleQueue::default(),
            sweeper,
            inactivity_timeout,
            last_poll_id: 0,
        }
    }

    /// Adds client `id` (its token unguessable, see `auth`) of `user`,
    /// idle from `now`, acknowledged up to `acked`. A client restored from
    /// the store gets a full inactivity timeout from `now`: time the server
    /// was down does not count against it.
    pub fn insert(
        &mut self,
        id: u64,
        token: TokenHash,
        user: &str,
        acked: u64,
        now: Instant,
    ) -> usize {
        let key = self.slab.insert(Client {
            id,
            token,
            user: user.to_owned(),
            acked,
            parked: None,
            idle_deadline: None,
        });
        self.mark_idle(key, now);
        key
    }

    /// Removes a client; a poll it had parked is answered `ClientGone`.
    pub fn close(&mut self, key: usize) -> Option<Client> {
        let mut client = self.slab.try_remove(key)?;
        if let Some(deadline) = client.idle_deadline.take() {
            self.idle.remove(deadline, key, client.id);
        }
        if let Some(parked) = client.parked.take() {
            self.parked_set(parked.coalescing).remove(&key);
            let _ = parked.wake.send(Wake::ClientGone);
        }
        Some(client)
    }

    pub fn get(&self, key: usize) -> Option<&Client> {
        self.slab.get(key)
    }

    /// Records that the client has seen every event up to `cursor` (never
    /// moving back: an older cursor is a retry of something already seen).
    pub fn acknowledge(&mut self, key: usize, cursor: u64) {
        if let Some(client) = self.slab.get_mut(key) {
            client.acked = client.acked.max(cursor);
        }
    }

    /// Sets where the client resumes from (/sync hands it a fresh cursor).
    pub fn reset_acked(&mut self, key: usize, cursor: u64) {
        if let Some(client) = self.slab.get_mut(key) {
            client.acked = cursor;
        }
    }

    /// (Re)starts the client's inactivity countdown from `now`.
    pub fn mark_idle(&mut self, key: usize, now: Instant) {
        let Some(client) = self.slab.get_mut(key) else {
            return;
        };
        if let Some(previous) = client.idle_deadline.take() {
            self.idle.remove(previous, key, client.id);
        }
        let deadline = now + self.inactivity_timeout;
        client.idle_deadline = Some(deadline);
        if self.idle.insert(deadline, key, client.id) {
            self.sweeper.deadline_added(deadline);
        }
    }

    /// Answers the client's parked poll, if any, with `wake`.
    pub fn wake(&mut self, key: usize, wake: Wake, now: Instant) {
        let Some(parked) = self.slab.get_mut(key).and_then(|c| c.parked.take()) else {
            return;
        };
        self.parked_set(parked.coalescing).remove(&key);
        self.mark_idle(key, now);
        let _ = parked.wake.send(wake);
    }

    /// Answers the client's parked poll with `Superseded` (a newer poll came).
    pub fn supersede(&mut self, key: usize, now: Instant) {
        self.wake(key, Wake::Superseded, now);
    }

    /// Answers every parked poll, but for `Wake::Presence` those that are
    /// coalescing presence already.
    pub fn wake_all(&mut self, wake: Wake, now: Instant) {
        let mut keys = std::mem::take(&mut self.parked);
        if wake != Wake::Presence {
            keys.extend(self.coalescing.drain());
        }
        for key in keys {
            if let Some(parked) = self.slab.get_mut(key).and_then(|c| c.parked.take()) {
                self.mark_idle(key, now);
                let _ = parked.wake.send(wake);
            }
        }
    }

    /// Parks a poll for the client: it stops being idle until woken.
    /// A `coalescing` poll is not woken by presence changes.
    pub fn park(&mut self, key: usize, coalescing: bool) -> Option<Parked> {
        self.last_poll_id += 1;
        let poll_id = self.last_poll_id;
        let client = self.slab.get_mut(key)?;
        if let Some(deadline) = client.idle_deadline.take() {
            self.idle.remove(deadline, key, client.id);
        }
        let (wake, woken) = oneshot::channel();
        let newer = ParkedPoll {
            poll_id,
            wake,
            coalescing,
        };
        let client_id = client.id;
        if let Some(older) = client.parked.replace(newer) {
            self.parked_set(older.coalescing).remove(&key);
            let _ = older.wake.send(Wake::Superseded);
        }
        self.parked_set(coalescing).insert(key);
        Some(Parked {
            key,
            client_id,
            poll_id,
            woken,
        })
    }

    /// Ends a parked poll that timed out or whose connection went away; the
    /// client is idle from `now`. Does nothing if that poll was already woken.
    pub fn unpark(&mut self, key: usize, client_id: u64, poll_id: u64, now: Instant) {
        let Some(client) = self.slab.get_mut(key) else {
            return;
        };
        let ours =
            client.id == client_id && client.parked.as_ref().is_some_and(|p| p.poll_id == poll_id);
        if let Some(parked) = client.parked.take_if(|_| ours) {
            self.parked_set(parked.coalescing).remove(&key);
            self.mark_idle(key, now);
        }
    }

    /// The set a parked poll's key is in (see `parked` and `coalescing`).
    fn parked_set(&mut self, coalescing: bool) -> &mut HashSet<usize> {
        if coalescing {
            &mut self.coalescing
        } else {
            &mut self.parked
        }
    }

    /// Idle clients whose deadline passed, removed from the idle queue (the
    /// caller closes them).
    pub fn pop_expired(&mut self, now: Instant) -> Vec<usize> {
        let mut expired = Vec::new();
        for (key, client_id) in self.idle.pop_expired(now) {
            if let Some(client) = self.slab.get_mut(key) {
                if client.id == client_id {
                    client.idle_deadline = None;
                    expired.push(key);
                }
            }
        }
        expired
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.idle.next_deadline()
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    pub fn parked(&self) -> usize {
        self.parked.len() + self.coalescing.len()
    }

    pub fn idle(&self) -> usize {
        self.idle.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_wakes_only_polls_not_coalescing_already() {
        let now = Instant::now();
        let mut clients = Clients::new(Arc::default(), Duration::from_secs(30));
        let plain = clients.insert(1, TokenHash::of("t1"), "ann", 0, now);
        let held = clients.insert(2, TokenHash::of("t2"), "bob", 0, now);
        let mut plain_poll = clients.park(plain, false).expect("a client");
        let mut held_poll = clients.park(held, true).expect("a client");
        assert_eq!((clients.parked(), clients.idle()), (2, 0));

        clients.wake_all(Wake::Presence, now);
        assert_eq!(plain_poll.woken.try_recv(), Ok(Wake::Presence));
        assert!(held_poll.woken.try_recv().is_err(), "still parked");
        assert_eq!((clients.parked(), clients.idle()), (1, 1));

        clients.wake(held, Wake::Events, now);
        assert_eq!(held_poll.woken.try_recv(), Ok(Wake::Events));
        assert_eq!((clients.parked(), clients.idle()), (0, 2));

        let mut again = clients.park(held, true).expect("a client");
        let mut newer = clients.park(held, false).expect("a client");
        assert_eq!(again.woken.try_recv(), Ok(Wake::Superseded));
        assert_eq!(clients.parked(), 1, "the newer poll replaced it");
        clients.wake_all(Wake::ShuttingDown, now);
        assert_eq!(newer.woken.try_recv(), Ok(Wake::ShuttingDown));
        assert_eq!((clients.parked(), clients.idle()), (0, 2));
    }
}
