//! The hub: parlor's live state and the only code that changes it.
//!
//! It owns who is online (users with at least one client process), the
//! client processes themselves, each online user's mailbox, presence,
//! dialogs, and the rooms' member lists (loaded from the store at start,
//! written through on change). Each endpoint calls one `Hub` method; each
//! takes its locks, does short synchronous work, and releases them before
//! any `.await` (mini-redis `db.rs`'s shape). A parked poll waits on a
//! oneshot outside every lock. The hub answers with domain values or a
//! [`Refusal`]; it knows nothing of HTTP.
//!
//! Where things are (`impl Hub` is spread over the files by concept):
//!
//! - here: the `Hub` handle and its `Shared` state, start, stats, shutdown;
//! - `locks`: the shards, the `Directory`, an operation's `Locked` view,
//!   and the lock order;
//! - `delivery`: the one way an event enters mailboxes and becomes
//!   visible: batches, tickets, the log, durability and the visibility task;
//! - `poll`: /poll — read or park, acknowledgement, presence copies;
//! - `send`: /send and /history, and `client_msg_id` dedupe;
//! - `conversations`: /dialog, /rooms/join, /rooms/leave, /api/publish;
//! - `membership`: /join, /sync, /leave, /status, /users — opening and
//!   closing client processes;
//! - `accounts`: who may use a name — passwords, and JWTs the application's
//!   backend signed;
//! - `rates`: the rate limits' state — per address, user, client process;
//! - `restore`: rebuilding the live state from the store at start;
//! - `sweeper`: the inactivity sweeper task and what it sweeps;
//! - the data structures they work on: `clients`, `mailbox`,
//!   `online`, `presence`.

mod accounts;
pub mod clients;
mod conversations;
mod delivery;
mod locks;
pub mod mailbox;
mod membership;
pub mod online;
mod poll;
pub(crate) use poll::jitter_fraction;
pub mod presence;
pub(crate) mod rates;
mod refusal;
mod restore;
mod send;
pub mod sweeper;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::auth::PasswordHasherPool;
use crate::limits::Limits;
use crate::metrics::{Gauges, Metrics};
use crate::store::{Store, StoreError};
use clients::Wake;
use delivery::{Committer, Log};
use locks::{Directory, Shard};
use sweeper::SweeperAlarm;

pub use conversations::PublishReport;
pub use membership::{valid_name, Session};
pub use refusal::{HubResult, Limited, Refusal};

/// Counts of everything the hub holds, for leak checks and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HubStats {
    pub online_users: usize,
    pub clients: usize,
    pub tokens: usize,
    pub parked_polls: usize,
    pub idle_clients: usize,
    pub dialogs: usize,
    pub rooms: usize,
    pub mailbox_events: usize,
    pub presence_entries: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    pub poll_timeout: Duration,
    pub inactivity_timeout: Duration,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
}

/// A cheap-to-clone handle on the shared hub.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// Everything behind the handle. The locks and the order they are taken in
/// are described in `locks`.
struct Shared {
    /// Who is online, rooms, dialogs, presence.
    directory: RwLock<Directory>,
    /// Users (with their clients and mailboxes) and client tokens.
    shards: Box<[Mutex<Shard>]>,
    /// The order in which operations' changes are submitted (see `delivery`).
    log: Mutex<Log>,
    /// Seeds which shard a user name belongs to, per process, so that names
    /// cannot be chosen to crowd one shard.
    shard_seed: u64,
    store: Arc<dyn Store>,
    config: HubConfig,
    hasher: PasswordHasherPool,
    /// Rate limits' state (see `rates`).
    rates: rates::Rates,
    /// Wakes the sweeper task early (see `sweeper::SweeperAlarm`).
    sweeper: Arc<SweeperAlarm>,
    /// The highest store ticket made durable.
    durable: watch::Receiver<u64>,
    /// `Store::keeps_live_state`, read once: when false, changes to live
    /// state (clients, mailboxes, presence, dialogs) are not described.
    keeps_live_state: bool,
    /// Set (with every shard locked) when the server stops: no poll parks.
    shutting_down: AtomicBool,
    last_message_id: AtomicU64,
    last_delivery_id: AtomicU64,
    last_client_id: AtomicU64,
    /// The highest durable ticket whose readers were woken. Written under
    /// the log's lock, read without it.
    woken_through: AtomicU64,
    /// Counters of what the hub does (`crate::metrics`).
    metrics: Metrics,
}

impl Hub {
    /// Builds the hub over a store, resuming the state it kept, with the
    /// default limits.
    pub fn new(store: Arc<dyn Store>, config: HubConfig) -> Result<Hub, StoreError> {
        Hub::with_limits(store, config, Limits::default())
    }

    /// Builds the hub over a store, resuming the state it kept.
    pub fn with_limits(
        store: Arc<dyn Store>,
        config: HubConfig,
        limits: Limits,
    ) -> Result<Hub, StoreError> {
        let snapshot = store.load()?;
        let sweeper = Arc::new(SweeperAlarm::default());
        let durable = store.durable();
        let metrics = Metrics::default();
        let shards = (0..locks::SHARDS)
            .map(|_| Mutex::new(Shard::new(sweeper.clone(), config.inactivity_timeout)))
            .collect();
        let hub = Hub {
            shared: Arc::new(Shared {
                directory: RwLock::new(Directory::new(presence::PresenceBoard::restore(
                    snapshot.presence.clone(),
                    snapshot.presence_version,
                ))),
                shards,
                log: Mutex::new(Log::default()),
                shard_seed: RandomState::new().hash_one(0x7061_726c_6f72_u64),
                keeps_live_state: store.keeps_live_state(),
                store,
                config,
                hasher: PasswordHasherPool::new(
                    config.argon2_memory_kib,
                    config.argon2_iterations,
                    limits.hash_waiters,
                    limits.hash_wait,
                ),
                rates: rates::Rates::new(&limits, metrics.clone()),
                sweeper,
                durable,
                shutting_down: AtomicBool::new(false),
                last_message_id: AtomicU64::new(snapshot.last_message_id),
                last_delivery_id: AtomicU64::new(snapshot.last_delivery_id),
                last_client_id: AtomicU64::new(snapshot.last_client_id),
                woken_through: AtomicU64::new(0),
                metrics,
            }),
        };
        {
            let mut locked = hub.lock_all();
            locked.restore(snapshot, Instant::now());
            // Whatever restoring had to tidy (e.g. a dialog of a user who
            // did not come back) is written like any other change.
            locked.flush(Committer::Store);
        }
        Ok(hub)
    }

    /// This server's counters, for the HTTP service and the scrape.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn config(&self) -> HubConfig {
        self.shared.config
    }

    /// Answers every parked poll at once (empty) and stops parking new ones.
    pub fn shut_down(&self) {
        let mut locked = self.lock_all();
        self.shared.shutting_down.store(true, Ordering::Release);
        locked.wake_all(Wake::ShuttingDown, Instant::now());
    }

    /// Writes whatever the store has queued; called at shutdown.
    pub fn close_store(&self) {
        self.shared.store.close();
    }

    /// The metrics' gauges the hub keeps as state. Each shard is locked
    /// alone and only its counts are read (O(shards)), so a scrape does not
    /// stop the hub as `stats` does.
    pub fn gauges(&self) -> Gauges {
        let mut gauges = Gauges::default();
        for index in 0..self.shared.shards.len() {
            let shard = self.shared.shard(index);
            gauges.parked_polls += shard.clients.parked();
            gauges.client_processes += shard.clients.len();
            gauges.online_users += shard.users.len();
        }
        gauges
    }

    pub fn stats(&self) -> HubStats {
        let locked = self.lock_all();
        let shards = || locked.shards.iter().flatten();
        HubStats {
            online_users: shards().map(|shard| shard.users.len()).sum(),
            clients: shards().map(|shard| shard.clients.len()).sum(),
            tokens: shards().map(|shard| shard.tokens.len()).sum(),
            parked_polls: shards().map(|shard| shard.clients.parked()).sum(),
            idle_clients: shards().map(|shard| shard.clients.idle()).sum(),
            dialogs: locked.dir.dialogs.len(),
            rooms: locked.dir.rooms.len(),
            mailbox_events: shards()
                .flat_map(|shard| shard.users.values())
                .map(|user| user.mailbox.len())
                .sum(),
            presence_entries: locked.dir.presence.len(),
        }
    }
}
