//! The inactivity sweeper: removes client processes that stopped polling.
//!
//! A client is idle from the end of its last poll (or its /join) until its
//! next poll parks; only idle clients have a deadline. Deadlines sit in an
//! ordered set, so each pass costs O(expired · log n), not a scan of every
//! client. The task (`run`) sleeps until the earliest deadline and is woken
//! early only when a new deadline becomes the earliest (mini-redis `db.rs`
//! shape); each pass is `Hub::sweep_expired`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::delivery::Committer;
use super::locks::ClientRef;
use super::Hub;

/// Idle clients ordered by deadline: (deadline, slab key, client id). The
/// client id tells a stale entry from a reused slab slot.
#[derive(Debug, Default)]
pub struct IdleQueue {
    deadlines: BTreeSet<(Instant, usize, u64)>,
}

impl IdleQueue {
    /// Adds a deadline; true when it became the earliest one (the sweeper
    /// must then be woken to sleep less).
    pub fn insert(&mut self, deadline: Instant, key: usize, client_id: u64) -> bool {
        let earliest = self
            .deadlines
            .first()
            .is_none_or(|&(first, _, _)| deadline < first);
        self.deadlines.insert((deadline, key, client_id));
        earliest
    }

    pub fn remove(&mut self, deadline: Instant, key: usize, client_id: u64) {
        self.deadlines.remove(&(deadline, key, client_id));
    }

    /// Removes and returns the clients whose deadline is at or before `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Vec<(usize, u64)> {
        let mut expired = Vec::new();
        while let Some(&(deadline, key, client_id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            expired.push((key, client_id));
        }
        expired
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(deadline, _, _)| deadline)
    }

    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }
}

/// Longest the sweeper sleeps with nothing scheduled, as a guard against a
/// missed wake-up.
pub const IDLE_RECHECK: Duration = Duration::from_secs(60);

/// When the sweeper task wakes next, shared by every shard's idle queue. A
/// deadline that became the earliest of its shard wakes the sweeper early
/// only if it is earlier than that: with an idle queue per shard, "earliest
/// of its shard" is common (a shard whose clients are all parked), earliest
/// of all is rare, and each early wake takes every shard's lock.
#[derive(Debug)]
pub struct SweeperAlarm {
    notify: Notify,
    origin: Instant,
    /// Milliseconds after `origin` that the sweeper sleeps until.
    wakes_at_ms: AtomicU64,
}

impl Default for SweeperAlarm {
    fn default() -> Self {
        SweeperAlarm {
            notify: Notify::new(),
            origin: Instant::now(),
            // Until the sweeper has run once, any deadline wakes it.
            wakes_at_ms: AtomicU64::new(u64::MAX),
        }
    }
}

impl SweeperAlarm {
    /// A shard's idle queue got `deadline` as its earliest.
    pub fn deadline_added(&self, deadline: Instant) {
        if self.millis(deadline) < self.wakes_at_ms.load(Ordering::Acquire) {
            self.notify.notify_one();
        }
    }

    /// The sweeper will sleep until `until`. Set while the sweep still
    /// holds every shard, so a deadline added after it compares with this.
    pub fn set(&self, until: Instant) {
        self.wakes_at_ms
            .store(self.millis(until), Ordering::Release);
    }

    pub async fn notified(&self) {
        self.notify.notified().await
    }

    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin)
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX)
    }
}

/// The sweeper task: runs until `shutdown` flips to true.
pub async fn run(hub: Hub, mut shutdown: watch::Receiver<bool>) {
    loop {
        let next = hub.sweep_expired(Instant::now());
        let sleep_until = next.unwrap_or_else(|| Instant::now() + IDLE_RECHECK);
        tokio::select! {
            _ = tokio::time::sleep_until(sleep_until) => {}
            _ = hub.shared.sweeper.notified() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

impl Hub {
    /// Closes the client processes idle past their deadline (a user whose
    /// last one goes is offline); returns the next deadline.
    pub fn sweep_expired(&self, now: Instant) -> Option<Instant> {
        let mut locked = self.lock_all();
        let mut expired = Vec::new();
        for (index, shard) in locked.shards.iter_mut().enumerate() {
            if let Some(shard) = shard {
                expired.extend(
                    shard
                        .clients
                        .pop_expired(now)
                        .into_iter()
                        .map(|key| ClientRef { shard: index, key }),
                );
            }
        }
        if !expired.is_empty() {
            tracing::debug!(count = expired.len(), "sweeping inactive clients");
        }
        for client in expired {
            self.shared.metrics.swept_client();
            locked.close_client(client, now);
        }
        locked.flush(Committer::Store);
        let next = locked
            .shards
            .iter()
            .flatten()
            .filter_map(|shard| shard.clients.next_deadline())
            .min();
        // Set while every shard is still held: see `SweeperAlarm::set`.
        self.shared.sweeper.set(next.unwrap_or(now + IDLE_RECHECK));
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_only_what_expired_in_deadline_order() {
        let now = Instant::now();
        let mut queue = IdleQueue::default();
        assert!(queue.insert(now + Duration::from_secs(5), 1, 10));
        assert!(queue.insert(now + Duration::from_secs(1), 2, 20));
        assert!(!queue.insert(now + Duration::from_secs(3), 3, 30));
        queue.remove(now + Duration::from_secs(3), 3, 30);
        assert_eq!(
            queue.pop_expired(now + Duration::from_secs(4)),
            vec![(2, 20)]
        );
        assert_eq!(queue.next_deadline(), Some(now + Duration::from_secs(5)));
        assert_eq!(queue.len(), 1);
    }

    #[tokio::test]
    async fn the_alarm_wakes_the_sweeper_only_for_a_deadline_before_its_own() {
        let alarm = SweeperAlarm::default();
        let now = Instant::now();
        let woken = || tokio::time::timeout(Duration::from_millis(20), alarm.notified());
        alarm.set(now + Duration::from_secs(10));
        alarm.deadline_added(now + Duration::from_secs(20));
        assert!(woken().await.is_err(), "a later deadline lets it sleep");
        alarm.deadline_added(now + Duration::from_secs(5));
        assert!(woken().await.is_ok(), "an earlier one wakes it");
    }
}
