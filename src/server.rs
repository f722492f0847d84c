//! The listener: accepts connections, serves each on its own task with
//! hyper's HTTP/1 connection, and shuts down gracefully.
//!
//! Bounds: at most `--max-connections` connections (a semaphore permit is
//! taken before `accept`, so excess connections wait in the kernel's backlog
//! instead of costing memory); a request's headers must arrive within
//! `--header-timeout` and fit in `MAX_HEADER_BYTES`, so a slow or bloated
//! client is cut off without holding up others.
//!
//! Shutdown: stop accepting, answer every parked poll at once (empty) so
//! clients re-poll promptly, let in-flight answers finish, close idle
//! keep-alive connections, and give up on stragglers after `SHUTDOWN_GRACE`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::config::{Config, MAX_HEADER_BYTES};
use crate::http::{self, App};
use crate::hub::{sweeper, Hub, HubConfig};
use crate::store::memory::MemoryStore;
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::Store;
use crate::Error;

/// Longest shutdown waits for connections to finish their last answer.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest pause between retries when `accept` fails (e.g. out of file
/// descriptors); the server keeps retrying rather than exiting.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// A parlor server with its store open, ready to serve on a listener.
pub struct Server {
    config: Config,
    hub: Hub,
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
        let hub = Hub::new(
            store,
            HubConfig {
                poll_timeout: config.poll_timeout,
                inactivity_timeout: config.inactivity_timeout,
                argon2_memory_kib: config.argon2_memory_kib,
                argon2_iterations: config.argon2_iterations,
            },
        )?;
        tracing::info!(stats = ?hub.stats(), resumed_in = ?started.elapsed(), "state resumed");
        Ok(Server { config, hub })
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
        let Server { config, hub } = self;
        let app = App {
            hub: hub.clone(),
            admin_token: config.admin_token.as_deref().map(Arc::from),
            public_dir: Arc::new(PathBuf::from(&config.public_dir)),
        };
        let (stop_sweeper, sweeper_stop) = watch::channel(false);
        let sweeper = tokio::spawn(sweeper::run(hub.clone(), sweeper_stop.clone()));
        let visibility = tokio::spawn(hub.clone().run_visibility(sweeper_stop));

        let graceful = GracefulShutdown::new();
        let connection_permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            .max_buf_size(MAX_HEADER_BYTES)
            .keep_alive(true);

        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                permit = connection_permits.clone().acquire_owned() => {
                    permit.expect("the connection semaphore is never closed")
                }
                _ = &mut shutdown => break,
            };
            let stream = tokio::select! {
                stream = accept(&listener) => stream,
                _ = &mut shutdown => break,
            };
            let app = app.clone();
            let service = service_fn(move |request| http::handle(app.clone(), request));
            let connection =
                graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(cause = %error, "connection ended with an error");
                }
                drop(permit);
            });
        }

        tracing::info!("shutting down: answering parked polls");
        drop(listener);
        hub.shut_down();
        let _ = stop_sweeper.send(true);
        tokio::select! {
            _ = graceful.shutdown() => tracing::info!("all connections closed"),
            _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
                tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; exiting anyway")
            }
        }
        let _ = sweeper.await;
        let _ = visibility.await;
        // Everything acknowledged is already durable; this writes the rest
        // (presence copies, trims) so a restart resumes exactly here.
        hub.close_store();
        Ok(())
    }
}

/// Accepts the next connection, retrying with capped exponential backoff on
/// errors such as EMFILE (they are transient: a connection closing frees a
/// descriptor).
async fn accept(listener: &TcpListener) -> TcpStream {
    let mut backoff = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                // Answers are small and latency matters more than packing.
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
}
