//! The listener: accepts connections, serves each on its own task with
//! hyper's HTTP/1 connection, and shuts down gracefully.
//!
//! Bounds: at most `--max-connections` connections, each holding a
//! semaphore permit. When none is free, the one accepted connection waiting
//! for a slot has the connection idle the longest closed for it (see
//! `connections`; a parked poll is never idle), and the rest wait in the
//! kernel's backlog instead of costing memory. One client address holds at
//! most `--max-connections-per-ip` connections; further ones are closed at
//! once. A request's headers must arrive within `--header-timeout` and fit
//! in `MAX_HEADER_BYTES`, so a slow or bloated client is cut off without
//! holding up others.
//!
//! Shutdown: /readyz answers 503 at once, and for `--drain-delay` the
//! server serves on as before, so that load balancers stop sending; then
//! stop accepting, answer every parked poll at once (empty) so
//! clients re-poll promptly, let in-flight answers finish, close idle
//! keep-alive connections, and give up on stragglers after `SHUTDOWN_GRACE`.

mod connections;
mod scrape;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::api::health::Readiness;
use crate::auth::join_token::JoinTokens;
use crate::cluster::Cluster;
use crate::config::{Config, MAX_HEADER_BYTES};
use crate::engine::Engine;
use crate::http::cors::Cors;
use crate::http::{self, App};
use crate::hub::{sweeper, Hub, HubConfig};
use crate::limits::Limits;
use crate::store::memory::MemoryStore;
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::Store;
use crate::Error;
use connections::{Connections, PressureLog};

/// Longest shutdown waits for connections to finish their last answer.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest pause between retries when `accept` fails (e.g. out of file
/// descriptors); the server keeps retrying rather than exiting.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// While a connection waits for a slot, how long to wait for the one told
/// to close before telling the next-oldest idle one too (the first may have
/// taken a request just as it was chosen, or nothing was idle yet).
const CLOSE_IDLE_RETRY: Duration = Duration::from_millis(100);

/// A parlor server with its store open (or its Redis reached), ready to
/// serve on a listener.
pub struct Server {
    config: Config,
    engine: Engine,
    /// Checked when the server opens, so a bad `--allow-origin` stops the
    /// start before anything listens.
    cors: Cors,
    /// Checks /join's `auth` JWTs; built at open, so that a join secret too
    /// short stops the start.
    join_tokens: Option<Arc<JoinTokens>>,
    /// Bound at open when `--metrics-listen` is set (so that a taken port
    /// stops the start); served by `run` (see `scrape`).
    metrics_listener: Option<std::net::TcpListener>,
}

impl Server {
    /// Opens the server named by the configuration: single-node over its
    /// store (SQLite in `--data-dir`, or memory with `--ephemeral`), or a
    /// cluster node when `--redis` is set, waiting up to
    /// `cluster::START_WAIT` for Redis (then the error names the URL).
    pub async fn connect(config: Config) -> Result<Server, Error> {
        let engine = match &config.redis {
            Some(url) => {
                let cluster =
                    Cluster::connect(url, hub_config(&config), Limits::from_config(&config))
                        .await?;
                Engine::Cluster(cluster)
            }
            None => Engine::Single(open_hub(&config)?),
        };
        Server::with_engine(config, engine)
    }

    /// Opens a single-node server over the store named by the configuration
    /// (SQLite in `--data-dir`, or memory with `--ephemeral`), resuming its
    /// state. Cluster mode needs `Server::connect`, which can wait for Redis.
    pub fn open(config: Config) -> Result<Server, Error> {
        if config.redis.is_some() {
            return Err("cluster mode (--redis) is opened with Server::connect".into());
        }
        let hub = open_hub(&config)?;
        Server::with_engine(config, Engine::Single(hub))
    }

    fn with_engine(config: Config, engine: Engine) -> Result<Server, Error> {
        let cors = Cors::new(&config.allow_origin)?;
        let join_tokens = match &config.join_secret {
            Some(secret) => Some(Arc::new(JoinTokens::new(secret.as_bytes())?)),
            None => None,
        };
        let metrics_listener = match config.metrics_listen {
            Some(address) => Some(bind_metrics(address)?),
            None => None,
        };
        Ok(Server {
            config,
            engine,
            cors,
            join_tokens,
            metrics_listener,
        })
    }

    /// Where `GET /metrics` is served, when `--metrics-listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        let listener = self.metrics_listener.as_ref()?;
        listener.local_addr().ok()
    }

    /// The single-node hub (for tests and diagnostics).
    ///
    /// # Panics
    ///
    /// In cluster mode, which has no hub: use `engine`.
    pub fn hub(&self) -> Hub {
        match &self.engine {
            Engine::Single(hub) => hub.clone(),
            Engine::Cluster(_) => panic!("a cluster node has no hub; use Server::engine"),
        }
    }

    /// What serves the API: the hub, or this node's side of the cluster.
    pub fn engine(&self) -> Engine {
        self.engine.clone()
    }

    /// Serves until `shutdown` completes, then shuts down gracefully.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let Server {
            config,
            engine,
            cors,
            join_tokens,
            metrics_listener,
        } = self;
        let readiness = Arc::new(Readiness::default());
        // One `Arc` for all: each request holds the app for its whole life
        // (a parked poll too), so a clone is one reference count and a
        // pointer in the request's future, however many fields `App` has.
        let app = Arc::new(App {
            engine: engine.clone(),
            admin_token: config.admin_token.as_deref().map(Arc::from),
            join_tokens,
            readiness: readiness.clone(),
            public_dir: Arc::new(PathBuf::from(&config.public_dir)),
            cors: Arc::new(cors),
            trusted_proxies: config.trusted_proxies.clone().into(),
        });
        let (stop_sweeper, sweeper_stop) = watch::channel(false);
        let background = match &engine {
            Engine::Single(hub) => vec![
                tokio::spawn(sweeper::run(hub.clone(), sweeper_stop.clone())),
                tokio::spawn(hub.clone().run_visibility(sweeper_stop.clone())),
            ],
            Engine::Cluster(cluster) => {
                vec![tokio::spawn(
                    cluster.clone().run_background(sweeper_stop.clone()),
                )]
            }
        };

        // Bounded by u32 so that shutdown can wait for every permit at once.
        let most = Semaphore::MAX_PERMITS.min(u32::MAX as usize);
        let max_connections = config.max_connections.clamp(1, most) as u32;
        let connection_permits = Arc::new(Semaphore::new(max_connections as usize));
        let connections = Connections::new(config.max_connections_per_ip);
        let scrapes = match metrics_listener {
            Some(listener) => Some(tokio::spawn(scrape::serve(
                TcpListener::from_std(listener)?,
                engine.clone(),
                connections.clone(),
                sweeper_stop,
            ))),
            None => None,
        };
        let mut pressure = PressureLog::new();
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            .max_buf_size(MAX_HEADER_BYTES)
            .keep_alive(true);

        let shutdown = drain_after(shutdown, &readiness, config.drain_delay);
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = accept(&listener) => accepted,
                _ = &mut shutdown => break,
            };
            let ip = peer.ip();
            if !connections.admits(ip) {
                pressure.refused(ip, connections.per_ip_cap());
                continue;
            }
            let slot = free_slot(&connection_permits, &connections, &stream, &mut pressure);
            let permit = tokio::select! {
                permit = slot => match permit {
                    Some(permit) => permit,
                    None => continue,
                },
                _ = &mut shutdown => break,
            };
            let registration = connections.register(ip);
            let app = app.clone();
            let tracker = registration.clone();
            let service = service_fn(move |request| {
                tracker.answering(http::handle(app.clone(), ip, request))
            });
            // Boxed, so that the task's future holds a pointer rather than
            // the connection twice (captured, then pinned in place): a
            // connection lives as long as its client stays, and every byte
            // of it counts once per parked poll.
            let mut connection = Box::pin(builder.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                let ended = tokio::select! {
                    ended = connection.as_mut() => ended,
                    _ = registration.close_requested() => {
                        connection.as_mut().graceful_shutdown();
                        connection.as_mut().await
                    }
                };
                if let Err(error) = ended {
                    tracing::debug!(cause = %error, "connection ended with an error");
                }
                // The socket closed, then out of the registry, then the
                // slot free: so that the next connection sees its address's
                // count without this one.
                drop(connection);
                drop(registration);
                drop(permit);
            });
        }

        tracing::info!("shutting down: answering parked polls");
        drop(listener);
        engine.shut_down();
        let _ = stop_sweeper.send(true);
        connections.close_all();
        // Every permit back means every connection's task has ended.
        tokio::select! {
            _ = connection_permits.acquire_many(max_connections) => {
                tracing::info!("all connections closed")
            }
            _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
                tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; exiting anyway")
            }
        }
        for task in background {
            let _ = task.await;
        }
        if let Some(scrapes) = scrapes {
            let _ = scrapes.await;
        }
        // Everything acknowledged is already durable; this writes the rest
        // (presence copies, trims) so a restart resumes exactly here. (A
        // cluster node keeps nothing of its own.)
        if let Engine::Single(hub) = &engine {
            hub.close_store();
        }
        Ok(())
    }
}

/// The hub's and cluster's settings from the configuration.
fn hub_config(config: &Config) -> HubConfig {
    HubConfig {
        poll_timeout: config.poll_timeout,
        inactivity_timeout: config.inactivity_timeout,
        argon2_memory_kib: config.argon2_memory_kib,
        argon2_iterations: config.argon2_iterations,
    }
}

/// Opens the single-node store and builds the hub over it.
fn open_hub(config: &Config) -> Result<Hub, Error> {
    let store: Arc<dyn Store> = if config.ephemeral {
        Arc::new(MemoryStore::new())
    } else {
        let started = std::time::Instant::now();
        let store = SqliteStore::open(
            &config.data_dir,
            SqliteOptions {
                sync: config.sync,
                history_retention: config.history_retention,
            },
        )?;
        tracing::info!(
            database = %store.path().display(),
            sync = ?config.sync,
            opened_in = ?started.elapsed(),
            "durable store open"
        );
        Arc::new(store)
    };
    let started = std::time::Instant::now();
    let hub = Hub::with_limits(store, hub_config(config), Limits::from_config(config))?;
    tracing::info!(stats = ?hub.stats(), resumed_in = ?started.elapsed(), "state resumed");
    Ok(hub)
}

/// Completes `delay` after `shutdown` does. From the moment `shutdown`
/// completes, /readyz answers 503, while everything is still served as
/// before (parked polls held, new connections taken): a load balancer that
/// checks /readyz stops sending here before the shutdown proper answers
/// parked polls and closes connections.
async fn drain_after(shutdown: impl Future<Output = ()>, readiness: &Readiness, delay: Duration) {
    shutdown.await;
    readiness.drain();
    if !delay.is_zero() {
        tracing::info!(
            ?delay,
            "shutting down: /readyz answers 503; serving until the drain delay ends"
        );
        tokio::time::sleep(delay).await;
    }
}

/// Binds the metrics listener; logs where it is, since operators point a
/// scraper at it.
fn bind_metrics(address: SocketAddr) -> Result<std::net::TcpListener, Error> {
    let listener = std::net::TcpListener::bind(address)
        .map_err(|e| format!("cannot listen for metrics on {address}: {e}"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        tracing::warn!(address = %bound, "metrics are served on a non-loopback address: keep it private");
    }
    tracing::info!(address = %bound, "serving metrics at /metrics");
    Ok(listener)
}

/// A connection slot for the accepted connection `waiting`. When none is
/// free, closes the connection idle the longest, and the next-oldest every
/// `CLOSE_IDLE_RETRY` until a slot frees up. None when the client gives up
/// first, so that it costs no one a connection.
async fn free_slot(
    permits: &Arc<Semaphore>,
    connections: &Connections,
    waiting: &TcpStream,
    pressure: &mut PressureLog,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = permits.clone().try_acquire_owned() {
        return Some(permit);
    }
    let gave_up = gave_up(waiting);
    tokio::pin!(gave_up);
    loop {
        if let Some(idle_for) = connections.close_oldest_idle() {
            pressure.closed_idle(idle_for);
        }
        tokio::select! {
            permit = permits.clone().acquire_owned() => {
                return Some(permit.expect("the connection semaphore is never closed"));
            }
            _ = &mut gave_up => return None,
            _ = tokio::time::sleep(CLOSE_IDLE_RETRY) => {}
        }
    }
}

/// Completes if the client closes or resets `stream` before sending a byte.
/// One that has sent its request keeps its place: hyper treats a close
/// after the request as the end of the connection anyway.
async fn gave_up(stream: &TcpStream) {
    let mut byte = [0; 1];
    if let Ok(1..) = stream.peek(&mut byte).await {
        std::future::pending::<()>().await;
    }
}

/// Accepts the next connection, retrying with capped exponential backoff on
/// errors such as EMFILE (they are transient: a connection closing frees a
/// descriptor).
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    let mut backoff = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Answers are small and latency matters more than packing.
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
}
