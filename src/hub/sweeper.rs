//! The inactivity sweeper: removes client processes that stopped polling.
//!
//! A client is idle from the end of its last poll (or its /join) until its
//! next poll parks; only idle clients have a deadline. Deadlines sit in an
//! ordered set, so each pass costs O(expired · log n), not a scan of every
//! client. The task sleeps until the earliest deadline and is woken early
//! only when a new deadline becomes the earliest (mini-redis `db.rs` shape).

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

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
const IDLE_RECHECK: Duration = Duration::from_secs(60);

/// Runs until `shutdown` flips to true.
pub async fn run(hub: Hub, mut shutdown: watch::Receiver<bool>) {
    loop {
        let next = hub.sweep_expired(Instant::now());
        let sleep_until = next.unwrap_or_else(|| Instant::now() + IDLE_RECHECK);
        tokio::select! {
            _ = tokio::time::sleep_until(sleep_until) => {}
            _ = hub.sweeper_notified() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
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
}
