//! The measured shapes: throughput of closed-loop pairs per server
//! CPU-second, wake latency of one parked receiver (each sample paired with
//! a floor round trip), and fan-out of one message to the parked crowd.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use parlor::client::Conn;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::backend::{publish, Outbox};
use super::floors::{round_trip, FloorTarget};
use super::setup::{self, Pair};
use super::stats::{micros, millis, percentile};
use super::subs::{Board, Subs};
use super::Ctx;
use crate::probe::cpu_delta;
use crate::Res;

/// Longest one message may take to reach everyone it is for before it is
/// counted as lost and the run moves on.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(10);
const FANOUT_LIMIT: Duration = Duration::from_secs(30);

/// `pairs` senders each sending its next message once its receiver (and,
/// with `sender_polls`, its own poll) has the last one; messages delivered
/// to receivers per second and per server CPU-second.
pub async fn throughput(ctx: &Ctx, first: u32, pairs: usize, sender_polls: bool) -> Res<Value> {
    let (pairs, users) = setup::pairs(ctx, first, pairs, sender_polls).await?;
    let board = Rc::new(Board::default());
    let mut subs = Vec::new();
    let mut senders = Vec::new();
    for pair in pairs {
        board.stream(pair.stream, pair.subs.len());
        subs.extend(pair.subs);
        senders.push((pair.stream, pair.outbox));
    }
    let polls = subs.len();
    let subs = Subs::start(&ctx.target, subs, &board, &ctx.run).await?;
    let parked = setup::wait_parked(ctx, polls, Duration::from_secs(30)).await?;
    let exchanges = Rc::new(Cell::new(0u64));
    let (stop, stopped) = watch::channel(false);
    let mut set = JoinSet::new();
    for (stream, outbox) in senders {
        let mut conn = Conn::open(&ctx.target).await?;
        let (board, exchanges, stopped, run) = (
            board.clone(),
            exchanges.clone(),
            stopped.clone(),
            ctx.run.clone(),
        );
        set.spawn_local(async move {
            while !*stopped.borrow() {
                let (id, round) = board.next(stream);
                if let Err(error) = publish(&mut conn, &outbox, &run, id).await {
                    board.error(error.to_string());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                match tokio::time::timeout(EXCHANGE_LIMIT, round.all.notified()).await {
                    Ok(()) => exchanges.set(exchanges.get() + 1),
                    Err(_) => board.error(format!("message {id:?} not delivered in time")),
                }
            }
        });
    }
    tokio::time::sleep(ctx.warmup).await;
    // Markers for a profiler attached to the server (scripts/profile-issue17.sh).
    eprintln!("compare: throughput measuring");
    let (count_start, cpu_start, me_start) = (exchanges.get(), ctx.probe.server(), ctx.probe.me());
    let started = Instant::now();
    tokio::time::sleep(ctx.throughput_duration).await;
    let (count_end, cpu_end, me_end) = (exchanges.get(), ctx.probe.server(), ctx.probe.me());
    eprintln!("compare: throughput measured");
    let seconds = started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    while set.join_next().await.is_some() {}
    subs.stop().await;
    setup::leave_all(ctx, users).await?;
    let delivered = count_end - count_start;
    let cpu = cpu_delta(cpu_start, cpu_end);
    eprintln!(
        "compare: throughput ({} pairs, senders poll: {sender_polls}): {delivered} in {seconds:.1}s, server CPU {cpu:?}",
        senders_len(polls, sender_polls)
    );
    Ok(json!({
        "pairs": senders_len(polls, sender_polls),
        "sender_polls": sender_polls,
        "all_parked_at_start": parked,
        "seconds": seconds,
        "delivered": delivered,
        "per_s": delivered as f64 / seconds,
        "server_cpu_s": cpu,
        "per_server_cpu_s": cpu.map(|cpu| delivered as f64 / cpu.max(1e-9)),
        "generator_cpu_s": cpu_delta(me_start, me_end),
        "check": board_check(&board),
    }))
}

fn senders_len(polls: usize, sender_polls: bool) -> usize {
    if sender_polls {
        polls / 2
    } else {
        polls
    }
}

/// Wake latency of `pair`'s receiver, whose poll is parked among the crowd:
/// at `rate` messages per second for `ctx.wake_duration` after the warm-up,
/// each sample followed by one round trip to `floor`.
pub async fn wake(
    ctx: &Ctx,
    board: &Rc<Board>,
    pair: &Pair,
    floor: &FloorTarget,
    settle: &dyn Fn() -> bool,
) -> Res<Value> {
    let mut conn = Conn::open(&ctx.target).await?;
    let mut floor_conn = Conn::open(&floor.target).await?;
    let interval = Duration::from_secs_f64(1.0 / ctx.wake_rate.max(1e-3));
    let started = Instant::now();
    let (measure_from, end) = (
        started + ctx.warmup,
        started + ctx.warmup + ctx.wake_duration,
    );
    let (mut wakes, mut floors) = (Vec::new(), Vec::new());
    let mut next = started;
    while Instant::now() < end {
        // The receiver (and the sender's own poll) re-polled and parked.
        while !settle() {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let (id, round) = board.next(pair.stream);
        let sent = Instant::now();
        publish(&mut conn, &pair.outbox, &ctx.run, id).await?;
        if tokio::time::timeout(EXCHANGE_LIMIT, round.all.notified())
            .await
            .is_err()
        {
            board.error(format!("message {id:?} not delivered in time"));
            continue;
        }
        let (timed, _) = board.times(pair.stream);
        let floor_sample = round_trip(&mut floor_conn, &floor.path).await?;
        if sent >= measure_from {
            if let Some(at) = timed {
                wakes.push(at - sent);
                floors.push(floor_sample);
            }
        }
        next += interval;
        let now = Instant::now();
        if next > now {
            tokio::time::sleep(next - now).await;
        } else {
            next = now;
        }
    }
    wakes.sort();
    floors.sort();
    let floor_p50 = percentile(&floors, 0.5);
    let ratio = |d: Duration| d.as_secs_f64() / floor_p50.as_secs_f64().max(1e-9);
    Ok(json!({
        "samples": wakes.len(),
        "p50_us": micros(percentile(&wakes, 0.5)),
        "p99_us": micros(percentile(&wakes, 0.99)),
        "paired_floor": floor.name,
        "paired_floor_p50_us": micros(floor_p50),
        "p50_over_floor": ratio(percentile(&wakes, 0.5)),
        "p99_over_floor": ratio(percentile(&wakes, 0.99)),
    }))
}

/// `rounds` messages from `outbox` to the crowd (stream `stream`, followed
/// by `crowd` subscribers): the time until the last of them has it.
pub async fn fanout(
    ctx: &Ctx,
    board: &Rc<Board>,
    outbox: &Outbox,
    stream: u32,
    crowd: usize,
    subs: &Subs,
) -> Res<Value> {
    let mut conn = Conn::open(&ctx.target).await?;
    // Time for the server to read and park every re-poll (parlor-bench's gap).
    let gap = Duration::from_millis(20) + Duration::from_micros(40) * crowd as u32;
    let mut lasts = Vec::new();
    let mut answered = Vec::new();
    for _ in 0..ctx.fanout_rounds {
        let deadline = Instant::now() + FANOUT_LIMIT;
        while board.out.get() < subs.count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(gap).await;
        let (id, round) = board.next(stream);
        let sent = Instant::now();
        publish(&mut conn, outbox, &ctx.run, id).await?;
        answered.push(sent.elapsed());
        if tokio::time::timeout(FANOUT_LIMIT, round.all.notified())
            .await
            .is_err()
        {
            board.error(format!("fan-out message {id:?} not everywhere in time"));
            continue;
        }
        if let (_, Some(last)) = board.times(stream) {
            lasts.push(last - sent);
        }
    }
    let shown: Vec<f64> = lasts.iter().copied().map(millis).collect();
    lasts.sort();
    answered.sort();
    Ok(json!({
        "crowd": crowd,
        "rounds": lasts.len(),
        "last_median_ms": millis(percentile(&lasts, 0.5)),
        "last_min_ms": millis(percentile(&lasts, 0.0)),
        "last_max_ms": millis(percentile(&lasts, 1.0)),
        "last_ms": shown,
        "publish_answer_median_ms": millis(percentile(&answered, 0.5)),
    }))
}

/// The delivery check of a board: every message once, in order.
pub fn board_check(board: &Board) -> Value {
    json!({
        "delivered": board.delivered.get(),
        "lost": board.lost.get(),
        "duplicated": board.duplicated.get(),
        "errors": board.errors.get(),
        "last_error": *board.last_error.borrow(),
    })
}
