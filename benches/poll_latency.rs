//! Wake latency of a parked poll, end to end, against the floor of a bare
//! round trip measured in the same run.
//!
//! The real server runs in-process (`parlor::Server`, ephemeral, on
//! 127.0.0.1:0) on its own multi-thread runtime; the client is hyper's HTTP/1
//! client connection over a real `TcpStream`, kept alive, on a current-thread
//! runtime. Benchmarks in the group `poll_latency`, for N = 0, 1 000, 5 000
//! other polls parked:
//!
//! - `floor_healthz/parked=N`: `GET /healthz` on a kept-alive connection.
//! - `wake/parked=N`: `POST /send` into a dialog issued → the receiver's
//!   parked poll has its whole answer.
//!
//! Each wake iteration first checks (through `Hub::stats`, untimed) that the
//! receiver's poll is parked, so it always measures a wake, never a poll
//! that finds the message already there. After criterion's report, the bench
//! prints each wake median as a ratio to the floor median of the same N.
//!
//! Run: `cargo bench --bench poll_latency` (add `-- --sample-size 10
//! --measurement-time 2` for a quick look). Client and server share one
//! process: 5 000 parked polls hold 10 000 descriptors (`ulimit -n`).

mod support;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use hyper::StatusCode;
use support::{
    bench_floor, connect, medians, record, Answer, Bench, Conn, Cursor, Joined, Target, TEXT,
};

/// Polls parked besides the measured receiver's, one stage each.
const PARKED: [usize; 3] = [0, 1_000, 5_000];

fn poll_uri(token: &str, cursor: u64) -> String {
    format!("/poll?token={token}&cursor={cursor}")
}

/// Keeps one poll parked for a user, re-polling after every answer (the
/// first answers catch up on presence), until its connection is dropped.
async fn park_forever(target: Target, user: Joined) {
    let mut conn = connect(&target).await;
    let mut cursor = user.cursor;
    loop {
        let Ok(Answer {
            status: StatusCode::OK,
            body,
        }) = conn.get(poll_uri(&user.token, cursor)).await
        else {
            return;
        };
        cursor = serde_json::from_slice::<Cursor>(&body).map_or(cursor, |c| c.cursor);
    }
}

/// The measured pair: a sender and a receiver in a dialog.
struct Pair {
    sender: Conn,
    receiver: Conn,
    sender_token: String,
    receiver_token: String,
    dialog: String,
    cursor: u64,
}

fn poll_latency(c: &mut Criterion) {
    let bench = Bench::start();
    let others_needed = *PARKED.iter().max().unwrap_or(&0);
    let names: Vec<String> = (0..others_needed + 2).map(|n| format!("u{n}")).collect();
    // Everyone joins first, so no join wakes a parked poll later on.
    let mut users = bench.join_all(names).into_iter();
    let sender = users.next().expect("the sender joined");
    let receiver = users.next().expect("the receiver joined");
    let mut others: Vec<Joined> = users.collect();

    let pair = bench.client.block_on(async {
        let mut sender_conn = connect(&bench.target).await;
        let answer = sender_conn
            .post("/dialog", format!("token={}&with=u1", sender.token))
            .await
            .expect("/dialog answers");
        assert_eq!(answer.status, StatusCode::OK, "/dialog");
        let answer: serde_json::Value =
            serde_json::from_slice(&answer.body).expect("/dialog answers JSON");
        let dialog = answer["conversation"]["id"]
            .as_str()
            .expect("a dialog id")
            .to_owned();
        let mut receiver_conn = connect(&bench.target).await;
        // Catch up (presence, conversation_added) so the next poll parks.
        let mut cursor = receiver.cursor;
        loop {
            let answer = receiver_conn
                .get(format!("{}&timeout=0", poll_uri(&receiver.token, cursor)))
                .await
                .expect("/poll answers");
            let next = serde_json::from_slice::<Cursor>(&answer.body)
                .expect("a poll answer")
                .cursor;
            if next == cursor {
                break;
            }
            cursor = next;
        }
        Pair {
            sender: sender_conn,
            receiver: receiver_conn,
            sender_token: sender.token,
            receiver_token: receiver.token,
            dialog: dialog.replace(':', "%3A"),
            cursor,
        }
    });
    // Taken out by each measured batch and put back after (no borrow is
    // held across an await).
    let pair = Rc::new(Cell::new(Some(pair)));
    let floor_conn = Cell::new(Some(bench.client.block_on(connect(&bench.target))));

    let mut group = c.benchmark_group("poll_latency");
    let mut parked_now = 0;
    for parked in PARKED {
        // Park more polls up to this stage's count.
        for user in others.drain(..parked - parked_now) {
            bench.client.spawn(park_forever(bench.target.clone(), user));
        }
        parked_now = parked;
        bench.wait_parked(parked);

        let stage = format!("parked={parked}");
        bench_floor(&mut group, &bench.client, &stage, &floor_conn);

        let wake_name = format!("wake/parked={parked}");
        let hub = bench.hub.clone();
        group.bench_function(BenchmarkId::new("wake", format!("parked={parked}")), |b| {
            b.to_async(&bench.client).iter_custom(|iters| {
                let (pair, hub, name) = (pair.clone(), hub.clone(), wake_name.clone());
                async move {
                    let cell = pair;
                    let mut taken = cell.take().expect("the pair is back");
                    let pair = &mut taken;
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let uri = poll_uri(&pair.receiver_token, pair.cursor);
                        let mut poll = Box::pin(pair.receiver.get(uri));
                        // Untimed: write the poll, and wait until the server parked it.
                        loop {
                            tokio::select! {
                                biased;
                                answer = &mut poll => panic!("the poll was answered before the send: {:?}", answer.map(|a| a.body)),
                                _ = tokio::task::yield_now() => {}
                            }
                            if hub.stats().parked_polls > parked {
                                break;
                            }
                            std::thread::sleep(Duration::from_micros(20));
                        }
                        let form = format!(
                            "token={}&conversation={}&text={TEXT}",
                            pair.sender_token, pair.dialog
                        );
                        let started = Instant::now();
                        let (woken, sent) = tokio::join!(
                            async {
                                let answer = poll.await;
                                (answer, Instant::now())
                            },
                            pair.sender.post("/send", form)
                        );
                        let (answer, at) = (woken.0.expect("/poll answers"), woken.1);
                        total += at - started;
                        assert_eq!(answer.status, StatusCode::OK);
                        assert_eq!(sent.expect("/send answers").status, StatusCode::OK);
                        pair.cursor = serde_json::from_slice::<Cursor>(&answer.body).expect("a poll answer").cursor;
                    }
                    cell.set(Some(taken));
                    record(&name, total, iters);
                    total
                }
            })
        });
    }
    group.finish();

    println!("\npoll_latency: wake latency as a ratio to the floor (medians of batch means)");
    for parked in PARKED {
        let floor = format!("floor_healthz/parked={parked}");
        if let Some((floor, wake)) = medians(&floor, &format!("wake/parked={parked}")) {
            println!(
                "  parked={parked:<5} floor {:>7.1} µs   wake {:>7.1} µs   wake/floor {:.2}×",
                floor / 1e3,
                wake / 1e3,
                wake / floor
            );
        }
    }
    drop(bench);
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    poll_latency(&mut criterion);
    criterion.final_summary();
}
