//! Cluster mode (`--redis URL`): every node keeps all shared state in one
//! Redis, so any node serves any request. This module owns everything
//! Redis; `crate::engine` dispatches each endpoint here or to the
//! single-node `hub`, and the answers (JSON, errors) are the same.
//!
//! Where things are:
//!
//! - here: the `Cluster` handle, connecting (a bounded wait at start), the
//!   background tasks, health, shutdown;
//! - `keys`: every key name and what bounds it; the Lua key builders;
//! - `scripts`: the Lua scripts (`scripts/*.lua`, each prefixed by
//!   `scripts/lib.lua`) and the one way to run them, which turns every
//!   Redis error or timeout into `Refusal::StoreUnavailable` (HTTP 503);
//! - `wake`: the pub/sub listener and the table of this node's parked polls;
//! - `poll`: /poll (read or park, wake, supersede, timeout) and the safety
//!   tick;
//! - `reads`: polls' reads, batched, with a bound on the scripts in flight;
//! - `membership`: /join, /sync, /leave, /status, /users;
//! - `send`: /send, /history;
//! - `conversations`: /dialog, /rooms/join, /rooms/leave, /api/publish;
//! - `sweeper`: the cluster-wide, exactly-once inactivity sweeper.
//!
//! Connections: one multiplexed `ConnectionManager` for commands (a
//! response timeout; reconnects forever, so a restarted Redis is found
//! again) and one for the subscription (`wake`). No blocking command ever
//! runs on them. Clocks: every timestamp and deadline comes from Redis's
//! `TIME` inside a script; nodes' clocks are never compared.

#[macro_use]
pub mod scripts;
mod conversations;
pub mod keys;
mod membership;
mod poll;
mod rates;
mod reads;
mod send;
mod sweeper;
pub mod wake;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;

use crate::auth::PasswordHasherPool;
use crate::config::RedisUrl;
use crate::hub::HubConfig;
use crate::limits::Limits;
use crate::metrics::{Gauges, Metrics};
use wake::WakeTable;

/// Longest a node waits for Redis at start before it gives up (and the
/// binary exits 1, for its supervisor to start it again).
pub const START_WAIT: Duration = Duration::from_secs(10);
/// Longest Redis may take to answer one command on a live connection.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest pause between reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// A cheap-to-clone handle on this node's side of the cluster.
#[derive(Clone)]
pub struct Cluster {
    shared: Arc<Shared>,
}

struct Shared {
    /// Commands and scripts (multiplexed; never a blocking command).
    redis: ConnectionManager,
    /// Where Redis is, for the subscription's own connection.
    info: redis::ConnectionInfo,
    /// The URL as logs show it (no password).
    shown_url: String,
    wakes: Arc<WakeTable>,
    /// Polls' reads waiting to run in a batch (`reads`).
    reads: reads::ReadQueue,
    config: HubConfig,
    hasher: PasswordHasherPool,
    /// The limits' policy. Every rate limit is a token bucket in Redis
    /// (lib.lua's `take_rate`), by these rates, across every node.
    limits: Limits,
    /// The online users as /join, /sync and /users answer them, at the
    /// presence version they are current at (see `membership`).
    online: Mutex<membership::OnlineMirror>,
    metrics: Metrics,
    /// Cluster-wide counts as the last sweep (by this node) read them.
    counts: Counts,
}

/// Cluster-wide gauges, refreshed by each sweep (every second).
#[derive(Default)]
struct Counts {
    online_users: AtomicUsize,
    client_processes: AtomicUsize,
}

impl Cluster {
    /// Connects to the Redis at `url`, waiting up to `START_WAIT` for it to
    /// answer a script; the error names the URL and the last failure.
    pub async fn connect(
        url: &RedisUrl,
        config: HubConfig,
        limits: Limits,
    ) -> Result<Cluster, crate::Error> {
        let shown_url = format!("{url:?}");
        let client = redis::Client::open(url.as_str())
            .map_err(|error| format!("`{shown_url}` is not a usable Redis URL: {error}"))?;
        let info = client.get_connection_info().clone();
        let started = tokio::time::Instant::now();
        let redis = loop {
            let attempt = async {
                // One plain connection first, whose error says why (the
                // manager would retry forever).
                let probe_config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT));
                let mut probe = client
                    .get_multiplexed_async_connection_with_config(&probe_config)
                    .await?;
                redis::cmd("PING").query_async::<()>(&mut probe).await?;
                ConnectionManager::new_with_config(client.clone(), manager_config()).await
            };
            let failure = match tokio::time::timeout(CONNECT_TIMEOUT * 2, attempt).await {
                Ok(Ok(redis)) => break redis,
                Ok(Err(error)) => error.to_string(),
                Err(_) => "no answer in time".to_owned(),
            };
            if started.elapsed() >= START_WAIT {
                return Err(format!(
                    "cannot reach Redis at {shown_url} (waited {START_WAIT:?}): {failure}"
                )
                .into());
            }
            tracing::warn!(url = %shown_url, %failure, "waiting for Redis");
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        // The scripts run (an old Redis without Lua, or a URL to something
        // that is not Redis, stops the start here).
        scripts::run(&redis, &scripts::PING_SCRIPT, &[], scripts::Args::new())
            .await
            .map_err(|_| format!("Redis at {shown_url} does not run parlor's scripts"))?;
        tracing::info!(url = %shown_url, "connected to Redis: cluster mode");
        let metrics = Metrics::default();
        Ok(Cluster {
            shared: Arc::new(Shared {
                redis,
                info,
                shown_url,
                wakes: Arc::new(WakeTable::default()),
                reads: reads::ReadQueue::default(),
                hasher: PasswordHasherPool::new(
                    config.argon2_memory_kib,
                    config.argon2_iterations,
                    limits.hash_waiters,
                    limits.hash_wait,
                ),
                config,
                limits,
                online: Mutex::default(),
                metrics,
                counts: Counts::default(),
            }),
        })
    }

    /// The background work of a node, until `stop` turns true: the wake-up
    /// listener, the sweeper and the safety tick.
    pub async fn run_background(self, stop: watch::Receiver<bool>) {
        let listener = tokio::spawn(wake::listen(
            self.shared.info.clone(),
            manager_config(),
            self.shared.wakes.clone(),
            stop.clone(),
        ));
        let sweeper = tokio::spawn(sweeper::run(self.clone(), stop.clone()));
        let tick = tokio::spawn(poll::run_safety_tick(self.clone(), stop));
        let _ = listener.await;
        let _ = sweeper.await;
        let _ = tick.await;
    }

    /// This node's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn config(&self) -> HubConfig {
        self.shared.config
    }

    /// The gauges: this node's parked polls, and the cluster's online
    /// users and client processes as of this node's last sweep.
    pub fn gauges(&self) -> Gauges {
        let counts = &self.shared.counts;
        Gauges {
            parked_polls: self.shared.wakes.parked_count(),
            online_users: counts.online_users.load(Ordering::Relaxed),
            client_processes: counts.client_processes.load(Ordering::Relaxed),
            ..Gauges::default()
        }
    }

    /// Ok while Redis answers and wake-ups are subscribed; otherwise why
    /// not (for /healthz).
    pub async fn health(&self) -> Result<(), String> {
        let ping = redis::cmd("PING");
        scripts::command::<()>(&self.shared.redis, &ping)
            .await
            .map_err(|_| format!("Redis at {} does not answer", self.shared.shown_url))?;
        if !self.shared.wakes.subscribed() {
            return Err("not subscribed to wake-ups (reconnecting)".to_owned());
        }
        Ok(())
    }

    /// Answers every parked poll here at once (empty) and parks no more.
    pub fn shut_down(&self) {
        self.shared.wakes.shut_down();
    }

    /// The command connection (for `scripts::run`).
    fn redis(&self) -> &ConnectionManager {
        &self.shared.redis
    }
}

/// Both connections' settings: a response timeout, and reconnection that
/// never gives up (a command meanwhile fails after `scripts::COMMAND_DEADLINE`).
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_number_of_retries(usize::MAX)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(MAX_RECONNECT_DELAY)
}
