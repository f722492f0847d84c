//! `parlor-bench compare`: the same shapes driven against parlor or Nchan,
//! for the side-by-side table of issue 17 (`scripts/compare-nchan.sh` runs
//! a whole sitting and prints it).
//!
//! One run against one server, in this order:
//! - floors: kept-alive round trips to each `--floor` target in alternating
//!   rounds (nginx's `return 200`, a bare hyper service, the server's own);
//! - memory: RSS growth while `--subscribers` users join (parlor) and park
//!   a poll each on a connection of their own, per subscriber, with and
//!   without the user;
//! - wake latency, with the crowd parked: a pair whose sender polls, then
//!   one whose sender does not, each sample paired with a round trip to the
//!   first floor target;
//! - fan-out: one message to the crowd, `--fanout-rounds` times;
//! - throughput (the crowd's polls stopped, its users left online): closed-
//!   loop pairs, first with every sender also polling (a chat tab receives
//!   its own message; Nchan publishers long-poll their own channel), then
//!   with senders that do not poll (parlor-bench's shape).
//!
//! Every subscriber checks that every message of its stream arrives once
//! and in order. The output is one JSON object on stdout; progress goes to
//! stderr.

mod backend;
mod floors;
mod scenarios;
mod setup;
mod stats;
mod subs;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use parlor::client::Target;
use parlor::config::parse_duration;
use serde_json::json;
use tokio::task::LocalSet;

use self::backend::Kind;
use self::floors::FloorTarget;
use self::subs::{Board, Subs};
use crate::probe::Probe;
use crate::Res;

/// Streams: the crowd's, the two wake pairs', then throughput pairs.
const CROWD_STREAM: u32 = 0;
const WAKE_CHAT_STREAM: u32 = 1;
const WAKE_BENCH_STREAM: u32 = 2;
const THROUGHPUT_CHAT_FIRST: u32 = 1000;
const THROUGHPUT_BENCH_FIRST: u32 = 2000;

/// parlor-bench compare: one server of the parlor/Nchan comparison.
#[derive(Debug, Parser)]
#[command(name = "parlor-bench compare")]
struct Args {
    /// The server behind --url.
    #[arg(long, value_enum)]
    server: Kind,

    /// Base URL of the server (parlor's API, or nginx with Nchan's /pub and /sub).
    #[arg(long)]
    url: String,

    /// Where the parked count is read: parlor's --metrics-listen address
    /// (default: --url, which for Nchan serves /nchan_status).
    #[arg(long)]
    status_url: Option<String>,

    /// Floor targets `NAME=http://HOST:PORT/PATH`, measured in alternating
    /// rounds; the first is also paired with every wake sample.
    #[arg(long = "floor", required = true)]
    floors: Vec<String>,

    /// Parked subscribers for memory, wake latency and fan-out.
    #[arg(long, default_value_t = 5000)]
    subscribers: usize,

    /// Throughput pairs.
    #[arg(long, default_value_t = 100)]
    pairs: usize,

    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    throughput_duration: Duration,

    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    wake_duration: Duration,

    /// Wake messages per second.
    #[arg(long, default_value_t = 200.0)]
    wake_rate: f64,

    #[arg(long, default_value_t = 10)]
    fanout_rounds: usize,

    #[arg(long, default_value_t = 4)]
    floor_rounds: usize,

    /// Round trips per floor target per round.
    #[arg(long, default_value_t = 1000)]
    floor_samples: usize,

    /// The first part of each throughput and wake run, not measured.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,

    /// PID of the server process (the nginx worker for Nchan): CPU and RSS.
    #[arg(long)]
    server_pid: Option<u32>,

    /// /join (and catch-up) requests in flight at once.
    #[arg(long, default_value_t = 8)]
    join_concurrency: usize,

    /// parlor users get the password `<prefix><n>`.
    #[arg(long, default_value = "cmp-pw-")]
    password_prefix: String,
}

/// What every part of a run shares.
pub struct Ctx {
    kind: Kind,
    target: Target,
    status: Target,
    run: Rc<str>,
    password_prefix: String,
    join_concurrency: usize,
    probe: Probe,
    warmup: Duration,
    throughput_duration: Duration,
    wake_duration: Duration,
    wake_rate: f64,
    fanout_rounds: usize,
}

/// `http://HOST:PORT[/PATH]`: the target and the path (`/` if none).
fn parse_url(url: &str) -> Res<(Target, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (addr, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("{url}: HOST:PORT must be an IP address and port"))?;
    Ok((Target::at(addr), path.to_owned()))
}

pub fn main() {
    let args = Args::parse_from(std::env::args().skip(1));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    match LocalSet::new().block_on(&runtime, run(&args)) {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("JSON values serialize")
            );
        }
        Err(error) => {
            eprintln!("parlor-bench compare: {error}");
            std::process::exit(2);
        }
    }
}

async fn run(args: &Args) -> Res<serde_json::Value> {
    let (target, _) = parse_url(&args.url)?;
    let status = match &args.status_url {
        Some(url) => parse_url(url)?.0,
        None => target.clone(),
    };
    let floor_targets = args
        .floors
        .iter()
        .map(|spec| {
            let (name, url) = spec
                .split_once('=')
                .ok_or_else(|| format!("--floor {spec}: NAME=URL"))?;
            let (target, path) = parse_url(url)?;
            Ok(FloorTarget {
                name: name.to_owned(),
                target,
                path,
            })
        })
        .collect::<Res<Vec<_>>>()?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let ctx = Ctx {
        kind: args.server,
        target,
        status,
        run: format!("{:x}", nanos & 0xffff_ffff).into(),
        password_prefix: args.password_prefix.clone(),
        join_concurrency: args.join_concurrency,
        probe: Probe {
            server: args.server_pid.iter().map(|pid| pid.to_string()).collect(),
        },
        warmup: args.warmup,
        throughput_duration: args.throughput_duration,
        wake_duration: args.wake_duration,
        wake_rate: args.wake_rate,
        fanout_rounds: args.fanout_rounds,
    };
    let started = Instant::now();
    eprintln!("compare: floors");
    let floors = floors::measure(&floor_targets, args.floor_rounds, args.floor_samples).await?;
    eprintln!("compare: {floors}");

    // The crowd, and the two wake pairs among it.
    let board = Rc::new(Board::default());
    let rss_start = ctx.probe.server().map(|s| s.rss_kib);
    let crowd_users = match ctx.kind {
        Kind::Parlor => setup::join_users(&ctx, "c", args.subscribers).await?,
        Kind::Nchan => Vec::new(),
    };
    let (mut chat, chat_users) = setup::pairs(&ctx, WAKE_CHAT_STREAM, 1, true).await?;
    let (mut bench, bench_users) = setup::pairs(&ctx, WAKE_BENCH_STREAM, 1, false).await?;
    let (chat, bench) = (chat.remove(0), bench.remove(0));
    let rss_joined = ctx.probe.server().map(|s| s.rss_kib);
    let mut all = setup::crowd(&ctx, &crowd_users, args.subscribers, CROWD_STREAM);
    board.stream(CROWD_STREAM, args.subscribers);
    let lobby_outbox = chat.lobby_outbox(&ctx.run);
    let mut pairs = Vec::new();
    for mut pair in [chat, bench] {
        board.stream(pair.stream, pair.subs.len());
        all.append(&mut pair.subs);
        pairs.push(pair);
    }
    let parking = Instant::now();
    let subs = Subs::start(&ctx.target, all, &board, &ctx.run).await?;
    let all_parked = setup::wait_parked(&ctx, subs.count, Duration::from_secs(120)).await?;
    // Let the server finish what parking left (answers in flight, trimming).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_parked = ctx.probe.server().map(|s| s.rss_kib);
    let park_s = parking.elapsed().as_secs_f64();
    let per = |from: Option<u64>| -> Option<f64> {
        Some((rss_parked? as f64 - from? as f64) / args.subscribers.max(1) as f64)
    };
    let memory = json!({
        "subscribers": args.subscribers,
        "all_parked": all_parked,
        "park_s": park_s,
        "rss_start_kib": rss_start,
        "rss_joined_kib": rss_joined,
        "rss_parked_kib": rss_parked,
        "kib_per_subscriber_with_user": per(rss_start),
        "kib_per_subscriber_poll_only": per(rss_joined),
    });
    eprintln!("compare: memory {memory}");

    let (floor, pairs) = (&floor_targets[0], &pairs);
    let total = subs.count;
    let settled = || board.out.get() == total;
    let wake_chat = scenarios::wake(&ctx, &board, &pairs[0], floor, &settled).await?;
    eprintln!("compare: wake, sender polls: {wake_chat}");
    let wake_bench = scenarios::wake(&ctx, &board, &pairs[1], floor, &settled).await?;
    eprintln!("compare: wake, sender does not poll: {wake_bench}");
    let fanout = scenarios::fanout(
        &ctx,
        &board,
        &lobby_outbox,
        CROWD_STREAM,
        args.subscribers,
        &subs,
    )
    .await?;
    eprintln!("compare: fan-out {fanout}");
    subs.stop().await;
    let check = scenarios::board_check(&board);
    // The crowd stays online, idle: leaving 5 000 users would copy each
    // one's presence to everyone left. Throughput comes last, so that
    // memory is measured on a fresh server (the ephemeral store keeps every
    // message of the throughput runs).
    drop((crowd_users, chat_users, bench_users));
    let throughput_chat =
        scenarios::throughput(&ctx, THROUGHPUT_CHAT_FIRST, args.pairs, true).await?;
    let throughput_bench =
        scenarios::throughput(&ctx, THROUGHPUT_BENCH_FIRST, args.pairs, false).await?;
    Ok(json!({
        "server": format!("{:?}", ctx.kind).to_lowercase(),
        "url": args.url,
        "run": *ctx.run,
        "seconds": started.elapsed().as_secs_f64(),
        "floors": floors,
        "throughput_senders_poll": throughput_chat,
        "throughput_senders_do_not_poll": throughput_bench,
        "memory": memory,
        "wake_sender_polls": wake_chat,
        "wake_sender_does_not_poll": wake_bench,
        "fanout": fanout,
        "check": check,
    }))
}
