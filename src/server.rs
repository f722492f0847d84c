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
//! Shutdown: stop accepting, answer every parked poll at once (empty) so
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

use crate::config::{Config, MAX_HEADER_BYTES};
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

/// A parlor server with its store open, ready to serve on a listener.
pub struct Server {
    config: Config,
    hub: Hub,
    /// Checked when the server opens, so a bad `--allow-origin` stops the
    /// start before anything listens.
    cors: Cors,
    /// Bound at open when `--metrics-listen` is set (so that a taken port
    /// stops the start); served by `run` (see `scrape`).
    metrics_listener: Option<std::net::TcpListener>,
}

impl Server {
    /// Opens the store named by the configuration (SQLite in `--data-dir`,
    /// or memory with `--ephemeral`), resumes its state, builds the hub.
    pub fn open(config: Config) -> Result<Server, Error> {
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
        let hub = Hub::with_limits(
            store,
            HubConfig {
                poll_timeout: config.poll_timeout,
                inactivity_timeout: config.inactivity_timeout,
                argon2_memory_kib: config.argon2_memory_kib,
                argon2_iterations: config.argon2_iterations,
            },
            Limits::from_config(&config),
        )?;
        tracing::info!(stats = ?hub.stats(), resumed_in = ?started.elapsed(), "state resumed");
        let cors = Cors::new(&config.allow_origin)?;
        let metrics_listener = match config.metrics_listen {
            Some(address) => Some(bind_metrics(address)?),
            None => None,
        };
        Ok(Server {
            config,
            hub,
            cors,
            metrics_listener,
        })
    }

    /// Where `GET /metrics` is served, when `--metrics-listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        let listener = self.metrics_listener.as_ref()?;
        listener.local_addr().ok()
    }

    /// A handle on the live state (for tests and diagnostics).
    pub fn hub(&self) -> Hub {
        self.hub.clone()
    }

    /// Serves until `shutdown` completes, then shuts down gracefully.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let Server {
            config,
            hub,
            cors,
            metrics_listener,
        } = self;
        let app = App {
            hub: hub.clone(),
            admin_token: config.admin_token.as_deref().map(Arc::from),
            public_dir: Arc::new(PathBuf::from(&config.public_dir)),
            cors: Arc::new(cors),
            trusted_proxies: config.trusted_proxies.clone().into(),
        };
        let (stop_sweeper, sweeper_stop) = watch::channel(false);
        let sweeper = tokio::spawn(sweeper::run(hub.clone(), sweeper_stop.clone()));
        let visibility = tokio::spawn(hub.clone().run_visibility(sweeper_stop.clone()));

        // Bounded by u32 so that shutdown can wait for every permit at once.
        let most = Semaphore::MAX_PERMITS.min(u32::MAX as usize);
        let max_connections = config.max_connections.clamp(1, most) as u32;
        let connection_permits = Arc::new(Semaphore::new(max_connections as usize));
        let connections = Connections::new(config.max_connections_per_ip);
        let scrapes = match metrics_listener {
            Some(listener) => Some(tokio::spawn(scrape::serve(
                TcpListener::from_std(listener)?,
                hub.clone(),
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
        hub.shut_down();
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
        let _ = sweeper.await;
        let _ = visibility.await;
        if let Some(scrapes) = scrapes {
            let _ = scrapes.await;
        }
        // Everything acknowledged is already durable; this writes the rest
        // (presence copies, trims) so a restart resumes exactly here.
        hub.close_store();
        Ok(())
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
