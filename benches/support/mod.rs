//! Shared by the end-to-end benches: the server under test (in-process, on
//! its own runtime), kept-alive connections to it (`parlor::client`, the
//! client parlor-bench uses), joining users, the `GET /healthz` floor, and
//! the per-bench means printed as ratios after criterion's report.
#![allow(dead_code)] // each bench uses a different part

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId};
use hyper::StatusCode;
pub use parlor::client::{Answer, Conn, Target};
use parlor::hub::Hub;
use parlor::{Config, Server};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// The 64-byte message text of the reference measurements.
pub const TEXT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

// ---------------------------------------------------------------------------
// Client connections: parlor's own kept-alive client, as parlor-bench uses.

/// A kept-alive connection to the bench server.
pub async fn connect(target: &Target) -> Conn {
    Conn::open(target)
        .await
        .expect("connect to the bench server")
}

/// Benches `floor_healthz/<stage>`: bare `GET /healthz` round trips on
/// `conn` (taken out for each batch and put back), the floor that the
/// stage's other benches are compared with.
pub fn bench_floor(
    group: &mut BenchmarkGroup<'_, WallTime>,
    client: &Runtime,
    stage: &str,
    conn: &Cell<Option<Conn>>,
) {
    let name = format!("floor_healthz/{stage}");
    group.bench_function(BenchmarkId::new("floor_healthz", stage), |b| {
        b.to_async(client).iter_custom(|iters| {
            let name = &name;
            async move {
                let mut taken = conn.take().expect("the floor connection is back");
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let answer = taken.get("/healthz".to_owned()).await.expect("/healthz");
                    total += started.elapsed();
                    assert_eq!(answer.status, StatusCode::OK);
                }
                conn.set(Some(taken));
                record(name, total, iters);
                total
            }
        })
    });
}

// ---------------------------------------------------------------------------
// The server under test.

pub struct Bench {
    /// Runs the server's tasks; dropping it stops the server.
    _server: Runtime,
    pub client: Runtime,
    pub target: Target,
    pub hub: Hub,
    _stop: oneshot::Sender<()>,
}

impl Bench {
    pub fn start() -> Bench {
        let server = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        let client = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        let mut config = Config::for_tests();
        // Parked polls stay parked for the whole bench; idle users stay online.
        config.poll_timeout = Duration::from_secs(3600);
        config.inactivity_timeout = Duration::from_secs(3600);
        // Cheap password hashes: the bench joins thousands of users.
        config.argon2_memory_kib = 8;
        config.argon2_iterations = 1;
        // Thousands of joins, sends and connections from one address: no
        // rate or per-address limits.
        config.signups_per_ip = 0;
        config.max_connections_per_ip = 0;
        config.send_rate = parlor::config::SendRate(0);
        let parlor = Server::open(config).expect("open an ephemeral server");
        let hub = parlor.hub();
        let listener = server
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0");
        let target = Target::at(listener.local_addr().expect("bound address"));
        let (stop, stopped) = oneshot::channel::<()>();
        server.spawn(async move {
            let _ = parlor
                .run(listener, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Bench {
            _server: server,
            client,
            target,
            hub,
            _stop: stop,
        }
    }

    pub fn parked(&self) -> usize {
        self.hub.stats().parked_polls
    }

    /// Joins `names` with a few concurrent joiners.
    pub fn join_all(&self, names: Vec<String>) -> Vec<Joined> {
        let target = self.target.clone();
        self.client.block_on(async move {
            let chunk = names.len().div_ceil(4).max(1);
            let tasks: Vec<_> = names
                .chunks(chunk)
                .map(<[String]>::to_vec)
                .map(|chunk| {
                    let target = target.clone();
                    tokio::spawn(async move {
                        let mut conn = connect(&target).await;
                        let mut joined = Vec::with_capacity(chunk.len());
                        for name in &chunk {
                            joined.push(join(&mut conn, name).await);
                        }
                        joined
                    })
                })
                .collect();
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.expect("join task"));
            }
            all
        })
    }

    /// Waits (driving the client runtime) until `count` polls are parked.
    pub fn wait_parked(&self, count: usize) {
        let started = Instant::now();
        self.client.block_on(async {
            while self.parked() != count {
                assert!(
                    started.elapsed() < Duration::from_secs(300),
                    "polls never parked: {} of {count}",
                    self.parked()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
}

#[derive(Deserialize)]
pub struct Joined {
    pub token: String,
    pub cursor: u64,
}

#[derive(Deserialize)]
pub struct Cursor {
    pub cursor: u64,
}

pub async fn join(conn: &mut Conn, name: &str) -> Joined {
    let answer = conn
        .post("/join", format!("name={name}&password=pw-{name}"))
        .await
        .expect("/join answers");
    assert_eq!(answer.status, StatusCode::OK, "/join {name}");
    serde_json::from_slice(&answer.body).expect("/join answers JSON")
}

// ---------------------------------------------------------------------------
// Means per bench, for the ratio table printed after criterion's report.

thread_local! {
    /// Mean nanoseconds per iteration of every measured batch, by bench name.
    static MEANS: RefCell<BTreeMap<String, Vec<f64>>> = const { RefCell::new(BTreeMap::new()) };
}

pub fn record(name: &str, total: Duration, iters: u64) {
    MEANS.with(|means| {
        means
            .borrow_mut()
            .entry(name.to_owned())
            .or_default()
            .push(total.as_nanos() as f64 / iters.max(1) as f64)
    });
}

/// The medians of the batch means of two benches, if both ran.
pub fn medians(a: &str, b: &str) -> Option<(f64, f64)> {
    MEANS.with(|means| {
        let means = means.borrow();
        Some((median(means.get(a)?), median(means.get(b)?)))
    })
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}
