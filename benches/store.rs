//! What durability costs, measured over real loopback HTTP:
//!
//! - `send_throughput`: /send answered per second by the in-memory store
//!   (`--ephemeral`), SQLite with `--sync normal` (the default) and SQLite
//!   with `--sync full`, with 32 concurrent senders on kept-alive
//!   connections. Group commit is what keeps the durable figures close.
//! - `startup`: `Server::open` on a database holding 1 000 000 messages and
//!   10 000 users (1 000 of them online with full mailboxes).
//!
//! - `send_while_pruning`: /send latency (p50, p99, max; printed, as
//!   criterion does not report percentiles) from 4 concurrent senders while
//!   `--history-retention` prunes 1 000 000 expired messages at start,
//!   against the same sends on the same database without retention. Pruning
//!   goes in bounded batches and commits between them, so p99 should stay
//!   within a few milliseconds of the baseline.
//!
//! Run: `cargo bench --bench store` (the databases for `startup` and
//! `send_while_pruning` are built once, in target/, and reused).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use parlor::config::SyncMode;
use parlor::{Config, Server};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

const SENDERS: usize = 32;
const SENDS_PER_SENDER: usize = 8;

/// A server on its own runtime (so client and server do not share workers).
struct Running {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn start(config: Config) -> Running {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            ready_tx.send(listener.local_addr().unwrap()).unwrap();
            let server = Server::open(config).unwrap();
            server
                .run(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
    });
    let addr = ready_rx.recv().unwrap();
    Running {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    }
}

fn config(data_dir: Option<&Path>, sync: SyncMode) -> Config {
    let mut config = Config::for_tests();
    config.argon2_memory_kib = 8;
    config.argon2_iterations = 1;
    // Thousands of joins and sends from one address: no rate limits.
    config.signups_per_ip = 0;
    config.send_rate = parlor::config::SendRate(0);
    config.inactivity_timeout = Duration::from_secs(600);
    config.sync = sync;
    if let Some(dir) = data_dir {
        config.ephemeral = false;
        config.data_dir = dir.to_owned();
    }
    config
}

async fn connect(addr: std::net::SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

async fn post(
    sender: &mut SendRequest<Full<Bytes>>,
    path: &str,
    body: String,
) -> serde_json::Value {
    sender.ready().await.unwrap();
    let request = Request::post(path)
        .header("host", "bench")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

fn bench_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn send_throughput(c: &mut Criterion) {
    let client = Runtime::new().unwrap();
    let mut group = c.benchmark_group("send_throughput");
    group.throughput(Throughput::Elements((SENDERS * SENDS_PER_SENDER) as u64));
    group.sample_size(20);
    for (label, durable, sync) in [
        ("ephemeral", false, SyncMode::Normal),
        ("sqlite_sync_normal", true, SyncMode::Normal),
        ("sqlite_sync_full", true, SyncMode::Full),
    ] {
        let dir = bench_dir(&format!("send-{label}"));
        let server = start(config(durable.then_some(dir.as_path()), sync));
        let addr = server.addr;
        // Each sender: its own user, a room of ten, a kept-alive connection.
        let senders: Vec<(SendRequest<Full<Bytes>>, String)> = client.block_on(async {
            let mut senders = Vec::new();
            for n in 0..SENDERS {
                let mut connection = connect(addr).await;
                let joined = post(&mut connection, "/join", format!("name=s{n}&password=pw")).await;
                let token = joined["token"].as_str().unwrap().to_owned();
                let room = format!("r{}", n % (SENDERS / 10 + 1));
                post(
                    &mut connection,
                    "/rooms/join",
                    format!("token={token}&name={room}"),
                )
                .await;
                senders.push((
                    connection,
                    format!("token={token}&conversation={room}&text="),
                ));
            }
            senders
        });
        let senders = Arc::new(tokio::sync::Mutex::new(senders));
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.to_async(&client).iter(|| {
                let senders = senders.clone();
                async move {
                    let mut senders = senders.lock().await;
                    let mut tasks = Vec::new();
                    for (mut connection, prefix) in senders.drain(..) {
                        tasks.push(tokio::spawn(async move {
                            for n in 0..SENDS_PER_SENDER {
                                post(&mut connection, "/send", format!("{prefix}message-{n}-of-64-bytes-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")).await;
                            }
                            (connection, prefix)
                        }));
                    }
                    for task in tasks {
                        senders.push(task.await.unwrap());
                    }
                }
            })
        });
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
    group.finish();
}

/// A database built once in target/ and reused: Err(its directory) when it
/// is complete already; else Ok with the directory and a connection to an
/// empty database at the current schema, to fill and mark "complete".
fn build_once(name: &str) -> Result<(PathBuf, rusqlite::Connection), PathBuf> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    if dir.join("complete").exists() {
        return Err(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut db = rusqlite::Connection::open(dir.join("parlor.db")).unwrap();
    db.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;")
        .unwrap();
    parlor::store::sqlite::migrate(&mut db, parlor::store::sqlite::SCHEMA_VERSION).unwrap();
    Ok((dir, db))
}

/// Builds (once) a database with 1M messages and 10k users, 1k of them
/// online with full mailboxes, through the same SQL the server uses.
fn large_database() -> PathBuf {
    let (dir, mut db) = match build_once("startup-1m-v3") {
        Ok(building) => building,
        Err(built) => return built,
    };
    let tx = db.transaction().unwrap();
    {
        let mut account = tx.prepare("INSERT INTO accounts (name, password_hash, created_at) VALUES (?1, '$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA', 0)").unwrap();
        for n in 0..10_000 {
            account.execute([format!("user{n}")]).unwrap();
        }
        let mut room = tx.prepare("INSERT INTO rooms VALUES (?1, ?2)").unwrap();
        for r in 0..100 {
            let members: Vec<String> = (0..100).map(|m| format!("user{}", r * 100 + m)).collect();
            room.execute((format!("room{r}"), serde_json::to_string(&members).unwrap()))
                .unwrap();
        }
        let mut message = tx
            .prepare("INSERT INTO messages VALUES (?1, ?2, ?3, ?4, ?5, NULL)")
            .unwrap();
        for id in 1..=1_000_000u64 {
            message
                .execute((
                    id,
                    format!("room{}", id % 100),
                    format!("user{}", id % 10_000),
                    "a typical chat line of about sixty-four bytes, give or take a few",
                    id,
                ))
                .unwrap();
        }
        let mut client = tx
            .prepare("INSERT INTO clients VALUES (?1, ?2, ?3)")
            .unwrap();
        let mut mailbox = tx
            .prepare(
                "INSERT INTO mailboxes (user, start, presence_seen, oldest_delivery) VALUES (?1, 0, 0, 1)",
            )
            .unwrap();
        let mut presence = tx
            .prepare("INSERT INTO presence VALUES (?1, 'online', ?2)")
            .unwrap();
        let online: Vec<String> = (0..1_000).map(|n| format!("user{n}")).collect();
        for (n, user) in online.iter().enumerate() {
            client
                .execute((n as u64 + 1, format!("token{n:036}"), user))
                .unwrap();
            mailbox.execute([user]).unwrap();
            presence.execute((user, n as u64 + 1)).unwrap();
        }
        // Full mailboxes: 4 096 lobby messages, each one delivery to all 1 000.
        let mut delivery = tx
            .prepare("INSERT INTO deliveries VALUES (?1, ?2, ?3)")
            .unwrap();
        let body: &[u8] = br#"{"type":"message","id":1,"conversation":"lobby","from":"user1","text":"a typical chat line","at":1}"#;
        for seq in 1..=parlor::config::MAILBOX_CAPACITY as u64 {
            let recipients: Vec<(&str, u64)> =
                online.iter().map(|user| (user.as_str(), seq)).collect();
            delivery
                .execute((seq, body, serde_json::to_string(&recipients).unwrap()))
                .unwrap();
        }
        tx.execute(
            "INSERT OR REPLACE INTO counters VALUES ('presence_version', 1000), ('last_client_id', 1000),
                 ('last_message_id', 1000000), ('last_delivery_id', 4096)",
            [],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    std::fs::write(dir.join("complete"), b"").unwrap();
    dir
}

fn startup(c: &mut Criterion) {
    let dir = large_database();
    let mut group = c.benchmark_group("startup");
    group.sample_size(10);
    group.bench_function("open_1m_messages_10k_users_1k_online", |b| {
        let runtime = Runtime::new().unwrap();
        b.iter(|| {
            let _guard = runtime.enter();
            let server = Server::open(config(Some(&dir), SyncMode::Normal)).unwrap();
            let stats = server.hub().stats();
            assert_eq!(stats.clients, 1_000);
            assert_eq!(
                stats.mailbox_events,
                1_000 * parlor::config::MAILBOX_CAPACITY
            );
            server.hub().close_store();
        })
    });
    group.finish();
}

/// Builds (once) a database holding 1M messages sent in January 1970: all
/// past any retention.
fn expired_history() -> PathBuf {
    let name = format!("expired-1m-v{}", parlor::store::sqlite::SCHEMA_VERSION);
    let (dir, mut db) = match build_once(&name) {
        Ok(building) => building,
        Err(built) => return built,
    };
    let tx = db.transaction().unwrap();
    {
        let mut message = tx
            .prepare("INSERT INTO messages VALUES (?1, 'lobby', ?2, ?3, ?1, NULL)")
            .unwrap();
        for id in 1..=1_000_000u64 {
            let text = "a typical chat line of about sixty-four bytes, give or take a few";
            message
                .execute((id, format!("old{}", id % 1_000), text))
                .unwrap();
        }
        tx.execute(
            "INSERT OR REPLACE INTO counters VALUES ('last_message_id', 1000000)",
            [],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    std::fs::write(dir.join("complete"), b"").unwrap();
    dir
}

/// Whether any message of January 1970 is left.
fn expired_left(database: &Path) -> bool {
    let db = rusqlite::Connection::open(database).unwrap();
    db.query_row(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE at <= 1000000)",
        [],
        |row| row.get(0),
    )
    .unwrap()
}

/// Sends from 4 concurrent senders, `rounds` each, or (`rounds` None)
/// until the expired history is gone; every send's latency.
fn send_latencies(
    client: &Runtime,
    addr: std::net::SocketAddr,
    database: &Path,
    rounds: Option<usize>,
) -> Vec<Duration> {
    const CONCURRENT: usize = 4;
    client.block_on(async {
        let mut tasks = Vec::new();
        for n in 0..CONCURRENT {
            let database = database.to_owned();
            tasks.push(tokio::spawn(async move {
                let mut connection = connect(addr).await;
                let joined = post(&mut connection, "/join", format!("name=p{n}&password=pw")).await;
                let token = joined["token"].as_str().unwrap().to_owned();
                let mut latencies = Vec::new();
                for round in 0.. {
                    if rounds.is_some_and(|rounds| round >= rounds)
                        || (rounds.is_none()
                            && round > 0
                            && round % 100 == 0
                            && !expired_left(&database))
                    {
                        break;
                    }
                    let started = Instant::now();
                    let body = format!("token={token}&conversation=lobby&text=during-{round}");
                    post(&mut connection, "/send", body).await;
                    latencies.push(started.elapsed());
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    })
}

fn send_while_pruning(_: &mut Criterion) {
    // Measured by hand rather than through criterion (which would rerun
    // it for each sample), so criterion's name filter is honoured here.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    if !filters.is_empty()
        && !filters
            .iter()
            .any(|filter| "send_while_pruning".contains(filter.as_str()))
    {
        return;
    }
    let source = expired_history();
    let client = Runtime::new().unwrap();
    let mut rounds = None;
    for (label, retention) in [
        ("pruning_1m", Some(Duration::from_secs(86_400))),
        ("no_pruning", None),
    ] {
        let dir = bench_dir(&format!("prune-{label}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(source.join("parlor.db"), dir.join("parlor.db")).unwrap();
        let mut config = config(Some(&dir), SyncMode::Normal);
        config.history_retention = retention;
        let started = Instant::now();
        let server = start(config);
        let mut latencies = send_latencies(&client, server.addr, &dir.join("parlor.db"), rounds);
        let elapsed = started.elapsed();
        // The baseline sends as many as were sent while pruning.
        rounds = Some(latencies.len() / 4);
        latencies.sort_unstable();
        let at = |fraction: f64| latencies[((latencies.len() - 1) as f64 * fraction) as usize];
        println!(
            "send_while_pruning/{label}: {} sends in {elapsed:.1?}: p50 {:?}, p99 {:?}, max {:?}",
            latencies.len(),
            at(0.5),
            at(0.99),
            at(1.0),
        );
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

criterion_group!(benches, send_throughput, startup, send_while_pruning);
criterion_main!(benches);
