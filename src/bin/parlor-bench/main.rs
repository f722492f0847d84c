//! parlor-bench: a load generator for a running parlor server, in the spirit
//! of redis-benchmark and pgbench.
//!
//! It joins N users named `bench-<run id>-<n>`, parks their polls on
//! kept-alive connections (one connection per poller, separate connections
//! for senders and for control requests), drives one scenario, checks that
//! every message arrives exactly once and in order, and prints a table (or
//! one JSON object with `--json`). Scenarios:
//!
//! - `latency`: one sender, one measured receiver in a dialog, N-1 other
//!   polls parked. Wake latency is `/send` issued → the receiver holds the
//!   whole poll answer. Every sample is paired with a bare `GET /healthz`
//!   round trip on the same kind of connection (the floor), and the report
//!   gives their ratio.
//! - `fanout`: N polls parked in the lobby; one message; time until the last
//!   poller holds it. Repeated at `--rate`.
//! - `throughput`: N/2 sender/receiver pairs in dialogs; each sender sends its
//!   next message when the last one arrived. Deliveries per second and, with
//!   `--server-pid`, per server CPU-second.
//! - `soak`: N polls held for `--duration`, re-polling on each answer;
//!   counts answers on time and late, samples the server's RSS and CPU.
//! - `compare` (its own options, `parlor-bench compare --help`): the same
//!   shapes against parlor or Nchan, for `scripts/compare-nchan.sh`.
//!
//! Cost: one thread (a current-thread runtime and a `LocalSet`), one task
//! per poller, and each connection (`parlor::client::Conn`) is driven
//! inside the task that uses it (no connection task, no channel hop), so
//! the tool stays cheap next to the server it measures. Its own CPU time is
//! reported.
//!
//! Bounds: every run is bounded by `--duration` (and `--max-iterations`),
//! setup by `--setup-timeout`, the whole process by their sum plus a minute.
//!
//! Layout: `run` holds a run's shared state and the figures every report
//! gets; `users` joins, keeps alive and leaves the bench users; `pollers`
//! parks and drives their polls; `dialog` is a sender's messages to one
//! receiver; `floor` the bare round trip everything is compared with;
//! `verify` checks deliveries; `window` bounds the measured part; `nodes`
//! spreads connections over several `--url`s; `report`, `probe` and
//! `progress` measure and show; one file per scenario.

mod api;
mod compare;
mod dialog;
mod fanout;
mod floor;
mod latency;
mod nodes;
mod pollers;
mod probe;
mod progress;
mod report;
mod run;
mod soak;
mod throughput;
mod users;
mod verify;
mod window;

use std::time::Duration;

use clap::{Parser, ValueEnum};
use parlor::config::parse_duration;
use parlor::Error;
use tokio::task::LocalSet;

type Res<T> = Result<T, Error>;

/// Longest one exchange (a send and its delivery) may take before it is
/// counted as lost and the run moves on.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(10);

/// parlor-bench: load and latency measurements against a parlor server.
#[derive(Debug, Parser)]
#[command(
    name = "parlor-bench",
    version,
    about = "Load generator for any parlor server: wake latency, fan-out, throughput and soak runs that check every message arrives once and in order"
)]
struct Args {
    /// The scenario to run.
    #[arg(value_enum)]
    scenario: Scenario,

    /// Base URL of the server (http only). Repeat for a cluster's nodes:
    /// connections are spread over them round robin, and a sender and its
    /// receiver's poll use different nodes.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: Vec<String>,

    /// Pollers (latency, fanout, soak) or users in pairs (throughput: N/2 pairs).
    #[arg(long, default_value_t = 100)]
    clients: usize,

    /// How long to measure, after setup (e.g. 500ms, 25s, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,

    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,

    /// Messages per second: latency (default 200), fanout (default 2), soak
    /// (lobby messages, default 0), throughput (cap over all pairs, default none).
    #[arg(long)]
    rate: Option<f64>,

    /// Users get the password `<prefix><n>`.
    #[arg(long, default_value = "bench-pw-")]
    password_prefix: String,

    /// PID of the server process, to read its CPU time and RSS from /proc.
    /// Repeat (or separate with commas) to add up several (nodes and redis-server).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,

    /// /join requests in flight at once (each costs an argon2 hash on the server,
    /// unless --join-secret is given).
    #[arg(long, default_value_t = 8)]
    join_concurrency: usize,

    /// Join users with a JWT signed with this secret (the server's --join-secret)
    /// instead of a password, so that setting up thousands of users costs no argon2 hash.
    #[arg(long, hide_env_values = true)]
    join_secret: Option<String>,

    /// Latency samples taken during this first part of the run are dropped.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,

    /// Fanout: pause after every poller re-issued its poll, so that the server
    /// has parked them all before the next message (default 20ms + 40µs per poller).
    #[arg(long, value_parser = parse_duration)]
    gap: Option<Duration>,

    /// Stop after this many measured messages (latency, fanout) or exchanges.
    #[arg(long)]
    max_iterations: Option<u64>,

    /// Longest the joins and parking may take.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    setup_timeout: Duration,

    /// How often the soak samples the server's RSS and CPU.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    sample_interval: Duration,

    /// Leave the bench users online at the end (default: POST /leave each).
    #[arg(long)]
    no_leave: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Latency,
    Fanout,
    Throughput,
    Soak,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Latency => "latency",
            Scenario::Fanout => "fanout",
            Scenario::Throughput => "throughput",
            Scenario::Soak => "soak",
        }
    }
}

fn main() {
    // `compare` drives parlor or Nchan with its own options (compare/mod.rs).
    if std::env::args().nth(1).as_deref() == Some("compare") {
        return compare::main();
    }
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    let limit = args.setup_timeout + args.duration + Duration::from_secs(60);
    let result = LocalSet::new().block_on(&runtime, async {
        tokio::select! {
            result = run::run(&args) => result,
            _ = tokio::time::sleep(limit) => Err(format!("gave up after {limit:?} (setup + duration + 1 minute)").into()),
        }
    });
    match result {
        Ok(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report.json).expect("JSON values serialize")
                );
            } else {
                report.print();
            }
            if report.failed() {
                std::process::exit(1);
            }
        }
        Err(error) => {
            eprintln!("parlor-bench: {error}");
            std::process::exit(2);
        }
    }
}
