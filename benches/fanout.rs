//! Fan-out: one message into a room of N parked polls, until the last poller
//! has the whole answer, end to end.
//!
//! The real server runs in-process (`parlor::Server`, ephemeral, on
//! 127.0.0.1:0) on its own multi-thread runtime; N pollers (100, 1 000,
//! 5 000), each on its own kept-alive hyper client connection, keep a poll
//! parked in the lobby on a current-thread runtime. One `POST /send` to the
//! lobby is timed until the last of the N has read its answer. The room is
//! exactly the pollers plus the sender: between stages every poller leaves
//! (its connection drops) and the next stage joins the missing users.
//!
//! Each iteration first waits (untimed, through `Hub::stats`) until every
//! poller has re-parked. The time includes the client reading N answers on
//! one thread, as a single load generator would. After criterion's report
//! the bench prints each median as a ratio to a `GET /healthz` round trip
//! measured in the same run.
//!
//! Run: `cargo bench --bench fanout` (add `-- --sample-size 10
//! --measurement-time 5` for a quick look).

mod support;

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode};
use hyper::StatusCode;
use support::{bench_floor, connect, medians, record, Answer, Bench, Cursor, Joined, Target, TEXT};
use tokio::sync::{watch, Notify};

/// Parked polls in the room, one stage each.
const ROOM_SIZES: [usize; 3] = [100, 1_000, 5_000];

/// What the pollers of one stage share with the timed loop.
struct Arrivals {
    count: AtomicUsize,
    target: usize,
    all: Notify,
}

/// Keeps a poll parked for a user, re-polling after every answer, and counts
/// answers that carry a message; stops (dropping its connection, so the
/// server unparks it) when `stop` flips.
async fn poller(
    target: Target,
    token: String,
    mut cursor: u64,
    arrivals: Arc<Arrivals>,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    let mut conn = connect(&target).await;
    loop {
        let answer = tokio::select! {
            answer = conn.get(format!("/poll?token={token}&cursor={cursor}")) => answer,
            _ = stop.changed() => return cursor,
        };
        let Ok(Answer {
            status: StatusCode::OK,
            body,
        }) = answer
        else {
            return cursor;
        };
        cursor = serde_json::from_slice::<Cursor>(&body).map_or(cursor, |c| c.cursor);
        const MESSAGE: &[u8] = b"\"type\":\"message\"";
        if body.windows(MESSAGE.len()).any(|w| w == MESSAGE)
            && arrivals.count.fetch_add(1, Ordering::AcqRel) + 1 == arrivals.target
        {
            arrivals.all.notify_one();
        }
    }
}

fn fanout(c: &mut Criterion) {
    let bench = Bench::start();
    let sender = bench
        .join_all(vec!["sender".to_owned()])
        .pop()
        .expect("the sender joined");
    let sender_conn = Cell::new(Some(bench.client.block_on(connect(&bench.target))));
    let floor_conn = Cell::new(Some(bench.client.block_on(connect(&bench.target))));
    let mut users: Vec<Joined> = Vec::new();
    let mut stop_previous: Option<(watch::Sender<bool>, Vec<tokio::task::JoinHandle<u64>>)> = None;

    let mut group = c.benchmark_group("fanout");
    group.sampling_mode(SamplingMode::Flat);
    for size in ROOM_SIZES {
        // Stop the previous stage's pollers, keeping their cursors.
        if let Some((stop, tasks)) = stop_previous.take() {
            let _ = stop.send(true);
            let cursors: Vec<u64> = bench.client.block_on(async {
                let mut cursors = Vec::new();
                for task in tasks {
                    cursors.push(task.await.expect("poller task"));
                }
                cursors
            });
            for (user, cursor) in users.iter_mut().zip(cursors) {
                user.cursor = cursor;
            }
            bench.wait_parked(0);
        }
        let names = (users.len()..size).map(|n| format!("u{n}")).collect();
        users.extend(bench.join_all(names));
        let arrivals = Arc::new(Arrivals {
            count: AtomicUsize::new(0),
            target: size,
            all: Notify::new(),
        });
        let (stop, stopped) = watch::channel(false);
        let tasks = users
            .iter()
            .map(|user| {
                bench.client.spawn(poller(
                    bench.target.clone(),
                    user.token.clone(),
                    user.cursor,
                    arrivals.clone(),
                    stopped.clone(),
                ))
            })
            .collect();
        stop_previous = Some((stop, tasks));
        bench.wait_parked(size);

        bench_floor(
            &mut group,
            &bench.client,
            &format!("room={size}"),
            &floor_conn,
        );

        let name = format!("last_poller/room={size}");
        let hub = bench.hub.clone();
        group.bench_function(
            BenchmarkId::new("last_poller", format!("room={size}")),
            |b| {
                b.to_async(&bench.client).iter_custom(|iters| {
                    let (arrivals, hub, name, sender_conn) =
                        (arrivals.clone(), hub.clone(), name.clone(), &sender_conn);
                    let token = sender.token.clone();
                    async move {
                        let mut conn = sender_conn.take().expect("the sender connection is back");
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            // Untimed: every poller has re-parked.
                            while hub.stats().parked_polls < size {
                                tokio::time::sleep(Duration::from_micros(500)).await;
                            }
                            arrivals.count.store(0, Ordering::Release);
                            let started = Instant::now();
                            let all = async {
                                while arrivals.count.load(Ordering::Acquire) < size {
                                    arrivals.all.notified().await;
                                }
                                Instant::now()
                            };
                            let (sent, done) = tokio::join!(
                                conn.post(
                                    "/send",
                                    format!("token={token}&conversation=lobby&text={TEXT}")
                                ),
                                tokio::time::timeout(Duration::from_secs(30), all)
                            );
                            assert_eq!(sent.expect("/send answers").status, StatusCode::OK);
                            total +=
                                done.expect("every poller got the message within 30 s") - started;
                        }
                        sender_conn.set(Some(conn));
                        record(&name, total, iters);
                        total
                    }
                })
            },
        );
    }
    group.finish();

    println!("\nfanout: time until the last poller has the message (medians of batch means)");
    for size in ROOM_SIZES {
        let floor = format!("floor_healthz/room={size}");
        if let Some((floor, last)) = medians(&floor, &format!("last_poller/room={size}")) {
            println!(
                "  room={size:<5} floor {:>6.1} µs   last poller {:>8.2} ms   = {:>6.0} floors   {:.2} µs per poll",
                floor / 1e3,
                last / 1e6,
                last / floor,
                last / 1e3 / size as f64
            );
        }
    }
    drop(stop_previous);
    drop(bench);
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    fanout(&mut criterion);
    criterion.final_summary();
}
