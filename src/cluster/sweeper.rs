//! The cluster-wide inactivity sweeper. Every node runs it every
//! `SWEEP_EVERY`; each run is one `sweep.lua`, which closes up to
//! `SWEEP_BATCH` client processes whose deadline passed by Redis's clock
//! (and the users whose last one it was) and prunes the presence board.
//! A script runs alone in Redis, so a client is closed exactly once however
//! many nodes sweep: its watchers get one presence offline and one
//! `conversation_removed` per dialog. A node that dies with polls parked
//! leaves deadlines that cover the wait, so they are swept one inactivity
//! timeout after the wait would have ended, by whichever node is alive.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::scripts::{self, integer, text, Args};
use super::Cluster;

script!(SWEEP, "sweep");

/// How often each node sweeps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Client processes closed per script run (a run stays short: Redis runs
/// nothing else meanwhile); a full batch is followed by another at once.
pub const SWEEP_BATCH: usize = 100;

impl Cluster {
    /// One sweep: how many client processes it closed.
    pub async fn sweep(&self) -> usize {
        let args = Args::new().arg(SWEEP_BATCH);
        let Ok(answer) = scripts::run(self.redis(), &SWEEP, &[], args).await else {
            return 0;
        };
        let closed = answer.first().and_then(integer).unwrap_or(0) as usize;
        for _ in 0..closed {
            self.metrics().swept_client();
        }
        let count = |index: usize| answer.get(index).and_then(integer).unwrap_or(0) as usize;
        self.shared
            .counts
            .online_users
            .store(count(1), Ordering::Relaxed);
        self.shared
            .counts
            .client_processes
            .store(count(2), Ordering::Relaxed);
        let offline: Vec<String> = answer.iter().skip(3).map(text).collect();
        if closed > 0 {
            tracing::debug!(closed, ?offline, "swept inactive client processes");
        }
        closed
    }
}

/// Sweeps every `SWEEP_EVERY` until `stop`.
pub async fn run(cluster: Cluster, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                while cluster.sweep().await == SWEEP_BATCH {}
            }
            _ = stop.changed() => {
                if *stop.borrow() {
                    return;
                }
            }
        }
    }
}
