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
//!
//! Cost: one thread (a current-thread runtime and a `LocalSet`), one task
//! per poller, and each hyper client connection is driven inside the task
//! that uses it (no connection task, no channel hop), so the tool stays
//! cheap next to the server it measures. Its own CPU time is reported.
//!
//! Bounds: every run is bounded by `--duration` (and `--max-iterations`),
//! setup by `--setup-timeout`, the whole process by their sum plus a minute.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use parlor::config::parse_duration;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::task::{JoinSet, LocalSet};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, Error>;

/// Message text length: the 64-byte messages of the reference measurements.
const TEXT_BYTES: usize = 64;
/// A poll answered empty within this much of the poll timeout is "on time";
/// later is "late", earlier (and empty) is "early".
const ON_TIME_TOLERANCE: Duration = Duration::from_secs(1);
/// parlor answers an idle poll up to this fraction before its timeout, at
/// random, so that polls parked together do not all expire together; such
/// an answer is on time too.
const POLL_TIMEOUT_JITTER: f64 = 0.1;
/// Polls are "parked" once every poller has a request out and no answer
/// came for this long. After a mass join the server is still copying
/// presence into every mailbox; with the durable store each batch waits
/// for a commit, and a gap of half a second between batches was seen to
/// pass for quiet while the server was still busy (its first timeouts then
/// came late).
const SETTLE_QUIET: Duration = Duration::from_secs(2);
/// Longest one exchange (a send and its delivery) may take before it is
/// counted as lost and the run moves on.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(10);
/// A connection idle for longer is replaced before its next request.
const IDLE_REOPEN: Duration = Duration::from_secs(2);
/// Reconnect attempts of one poller before it gives up.
const MAX_RECONNECTS: u32 = 5;

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

    /// Base URL of the server (http only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,

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
    #[arg(long)]
    server_pid: Option<u32>,

    /// /join requests in flight at once (each costs an argon2 hash on the server).
    #[arg(long, default_value_t = 8)]
    join_concurrency: usize,

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
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    let limit = args.setup_timeout + args.duration + Duration::from_secs(60);
    let result = LocalSet::new().block_on(&runtime, async {
        tokio::select! {
            result = run(&args) => result,
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

// ---------------------------------------------------------------------------
// HTTP: one kept-alive hyper connection, driven by the task that uses it.

struct Target {
    addr: SocketAddr,
    host: HeaderValue,
}

impl Target {
    async fn resolve(url: &str) -> Res<Target> {
        let rest = url
            .strip_prefix("http://")
            .ok_or("--url must start with http:// (https is not supported)")?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let with_port = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await?
            .next()
            .ok_or_else(|| format!("{authority} resolves to no address"))?;
        Ok(Target {
            addr,
            host: HeaderValue::from_str(authority)?,
        })
    }
}

struct Answer {
    status: StatusCode,
    body: Bytes,
}

/// A kept-alive HTTP/1 connection. hyper's `Connection` future does the I/O;
/// instead of spawning it, `call` polls it alongside the request, so a
/// request costs no task switch and no channel hop.
struct Conn {
    send: SendRequest<Full<Bytes>>,
    conn: Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>,
    host: HeaderValue,
    /// The connection future completed: the socket is gone.
    closed: bool,
    addr: SocketAddr,
    last_used: Instant,
}

impl Conn {
    async fn open(target: &Target) -> Res<Conn> {
        let stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let (send, conn) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(Conn {
            send,
            conn: Box::pin(conn),
            host: target.host.clone(),
            closed: false,
            addr: target.addr,
            last_used: Instant::now(),
        })
    }

    /// Reconnects a connection that sat idle: servers close idle kept-alive
    /// connections (parlor after its `--header-timeout`), and racing that
    /// close would fail a request now and then.
    async fn revive(&mut self) -> Res<()> {
        if self.closed || self.send.is_closed() || self.last_used.elapsed() > IDLE_REOPEN {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            let (send, conn) = http1::handshake(TokioIo::new(stream)).await?;
            self.send = send;
            self.conn = Box::pin(conn);
            self.closed = false;
        }
        self.last_used = Instant::now();
        Ok(())
    }

    async fn get(&mut self, uri: String) -> Res<Answer> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(HOST, self.host.clone())
            .body(Full::new(Bytes::new()))?;
        self.call(request).await
    }

    async fn post(&mut self, path: &'static str, form: String) -> Res<Answer> {
        const FORM: HeaderValue = HeaderValue::from_static("application/x-www-form-urlencoded");
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, FORM)
            .body(Full::new(Bytes::from(form)))?;
        self.call(request).await
    }

    async fn call(&mut self, request: Request<Full<Bytes>>) -> Res<Answer> {
        self.revive().await?;
        let Conn {
            send, conn, closed, ..
        } = self;
        let mut work = pin!(async move {
            send.ready().await?;
            let response = send.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Answer { status, body })
        });
        let result = poll_fn(|cx| {
            if let Poll::Ready(result) = work.as_mut().poll(cx) {
                return Poll::Ready(result.map_err(Error::from));
            }
            match conn.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(result) => {
                    *closed = true;
                    Poll::Ready(Err(match result {
                        Ok(()) => "the server closed the connection".into(),
                        Err(error) => error.into(),
                    }))
                }
            }
        })
        .await;
        self.last_used = Instant::now();
        result
    }
}

// ---------------------------------------------------------------------------
// The API calls the bench makes, and what it reads of the answers.

#[derive(Deserialize)]
struct Joined {
    token: String,
    cursor: u64,
    poll_timeout_ms: u64,
    inactivity_timeout_ms: u64,
}

#[derive(Deserialize)]
struct Synced {
    cursor: u64,
}

#[derive(Deserialize)]
struct PollAnswer<'a> {
    cursor: u64,
    #[serde(borrow)]
    events: Vec<PollEvent<'a>>,
}

#[derive(Deserialize)]
struct PollEvent<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow, default)]
    client_msg_id: Option<&'a str>,
}

#[derive(Deserialize)]
struct DialogAnswer {
    conversation: DialogConversation,
}

#[derive(Deserialize)]
struct DialogConversation {
    id: String,
}

fn poll_uri(token: &str, cursor: u64, timeout_ms: Option<u64>) -> String {
    match timeout_ms {
        Some(timeout) => format!("/poll?token={token}&cursor={cursor}&timeout={timeout}"),
        None => format!("/poll?token={token}&cursor={cursor}"),
    }
}

/// The form of a /send: a `TEXT_BYTES`-long text and a `client_msg_id`
/// `<run>.<stream>.<seq>` that receivers check order and duplicates with.
fn send_form(token: &str, conversation: &str, run: &str, stream: &str, seq: u64) -> String {
    let id = format!("{run}.{stream}.{seq}");
    let mut text = format!("{id}-");
    while text.len() < TEXT_BYTES {
        text.push('x');
    }
    let conversation = conversation.replace(':', "%3A");
    format!("token={token}&conversation={conversation}&client_msg_id={id}&text={text}")
}

fn api_error(what: &str, answer: &Answer) -> Error {
    format!(
        "{what}: {} {}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    )
    .into()
}

/// What a receiver found in one poll answer.
struct Scan {
    cursor: u64,
    events: usize,
}

/// Reads a poll answer: checks every bench message of `stream` against the
/// next expected sequence number (counting duplicates and gaps), counts bench
/// messages of other streams as unexpected, and calls `on_new(seq)` for each
/// message delivered for the first time.
fn scan(
    body: &[u8],
    run: &str,
    stream: Option<&str>,
    expect: &mut u64,
    verify: &mut Verify,
    mut on_new: impl FnMut(u64),
) -> Res<Scan> {
    let answer: PollAnswer<'_> = serde_json::from_slice(body)?;
    for event in &answer.events {
        if event.kind != "message" {
            continue;
        }
        let Some(id) = event.client_msg_id else {
            continue;
        };
        let Some(rest) = id.strip_prefix(run).and_then(|r| r.strip_prefix('.')) else {
            continue; // someone else's message
        };
        let (from, seq) = rest.rsplit_once('.').ok_or("malformed bench message id")?;
        let seq: u64 = seq.parse()?;
        if Some(from) != stream {
            verify.unexpected += 1;
            continue;
        }
        if seq == *expect {
            *expect += 1;
            on_new(seq);
        } else if seq < *expect {
            verify.duplicated += 1;
        } else {
            verify.lost += seq - *expect;
            verify.out_of_order += 1;
            *expect = seq + 1;
            on_new(seq);
        }
    }
    Ok(Scan {
        cursor: answer.cursor,
        events: answer.events.len(),
    })
}

#[derive(Debug, Default, Clone)]
struct Verify {
    /// Messages sent (and acknowledged) that a receiver never got.
    lost: u64,
    /// Messages a receiver got twice.
    duplicated: u64,
    /// Messages that skipped ahead of one never received.
    out_of_order: u64,
    /// Bench messages a receiver should not have got.
    unexpected: u64,
    /// Failed requests (transport errors and unexpected statuses).
    errors: u64,
    /// 410 cursor_expired answers.
    expired: u64,
    /// What the first counted error was, so that a run full of errors says
    /// why (e.g. a bench user swept by a short `--inactivity-timeout`).
    first_error: Option<String>,
}

impl Verify {
    fn add(&mut self, other: &Verify) {
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.unexpected += other.unexpected;
        self.errors += other.errors;
        self.expired += other.expired;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    fn json(&self) -> Value {
        json!({
            "lost": self.lost, "duplicated": self.duplicated, "out_of_order": self.out_of_order,
            "unexpected": self.unexpected, "errors": self.errors, "cursor_expired": self.expired,
            "first_error": self.first_error,
        })
    }

    /// Counts a failed request, remembering the first one's description.
    fn error(&mut self, problem: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(problem.to_string());
        }
    }
}

/// What went wrong with a request that should have answered 200.
fn failure(what: &str, result: &Res<Answer>) -> String {
    match result {
        Ok(answer) => api_error(what, answer).to_string(),
        Err(error) => format!("{what}: {error}"),
    }
}

// ---------------------------------------------------------------------------
// /proc readings: CPU time and RSS of the server and of this process.

/// Clock ticks per second of /proc/PID/stat (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone, Copy)]
struct ProcSample {
    at: Instant,
    cpu_seconds: f64,
    rss_kib: u64,
}

fn proc_sample(pid: &str) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Some(ProcSample {
        at: Instant::now(),
        cpu_seconds: (utime + stime) as f64 / TICKS_PER_SECOND,
        rss_kib,
    })
}

struct Probe {
    server: Option<String>,
}

impl Probe {
    fn server(&self) -> Option<ProcSample> {
        self.server.as_deref().and_then(proc_sample)
    }

    fn me(&self) -> Option<ProcSample> {
        proc_sample("self")
    }
}

// ---------------------------------------------------------------------------
// Progress on stderr: a rewritten line on a terminal, a line every 5 s otherwise.

struct Progress {
    tty: bool,
    last: Cell<Option<Instant>>,
    shown: Cell<bool>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            last: Cell::new(None),
            shown: Cell::new(false),
        }
    }

    fn show(&self, line: &str) {
        let now = Instant::now();
        let every = if self.tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(5)
        };
        if self.last.get().is_some_and(|last| now - last < every) {
            return;
        }
        self.last.set(Some(now));
        let mut stderr = std::io::stderr().lock();
        if self.tty {
            let _ = write!(stderr, "\r{line}\x1b[K");
            self.shown.set(true);
        } else {
            let _ = writeln!(stderr, "{line}");
        }
        let _ = stderr.flush();
    }

    fn done(&self, line: &str) {
        let mut stderr = std::io::stderr().lock();
        if self.tty && self.shown.get() {
            let _ = write!(stderr, "\r\x1b[K");
        }
        let _ = writeln!(stderr, "{line}");
        self.shown.set(false);
        self.last.set(None);
    }
}

// ---------------------------------------------------------------------------
// Bench users, their joins, keep-alives and leaves.

/// One bench user with one client process.
struct Member {
    name: String,
    token: Rc<str>,
    cursor: Cell<u64>,
    /// Kept alive by the keep-alive task (it does not poll by itself).
    kept: Cell<bool>,
    last_active: Cell<Instant>,
}

/// Shared state of a run.
struct Ctx {
    target: Target,
    run: String,
    progress: Progress,
    probe: Probe,
    members: RefCell<Vec<Rc<Member>>>,
    poll_timeout: Cell<Duration>,
    inactivity_timeout: Cell<Duration>,
    verify: RefCell<Verify>,
}

/// Runs `count` jobs on `workers` connections, at most `workers` in flight;
/// returns the first error, if any.
async fn run_workers<F>(ctx: &Rc<Ctx>, workers: usize, count: usize, job: F) -> Res<()>
where
    F: AsyncFn(&mut Conn, usize) -> Res<()> + 'static,
{
    let job = Rc::new(job);
    let next = Rc::new(Cell::new(0usize));
    let mut set = JoinSet::new();
    for _ in 0..workers.clamp(1, count.max(1)) {
        let (ctx, job, next) = (ctx.clone(), job.clone(), next.clone());
        set.spawn_local(async move {
            let mut conn = Conn::open(&ctx.target).await?;
            loop {
                let index = next.get();
                if index >= count {
                    return Ok::<(), Error>(());
                }
                next.set(index + 1);
                if conn.closed {
                    conn = Conn::open(&ctx.target).await?;
                }
                (*job)(&mut conn, index).await?;
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    Ok(())
}

/// Joins `count` users concurrently, showing progress; they are kept alive
/// until something starts polling for them.
async fn join_users(ctx: &Rc<Ctx>, args: &Args, count: usize) -> Res<Duration> {
    let started = Instant::now();
    let joined = Rc::new(Cell::new(0usize));
    let job_ctx = ctx.clone();
    let job_joined = joined.clone();
    let prefix = args.password_prefix.clone();
    let workers = args.join_concurrency;
    let job = async move |conn: &mut Conn, n: usize| -> Res<()> {
        let name = format!("bench-{}-{n}", job_ctx.run);
        let form = format!("name={name}&password={prefix}{n}");
        let mut attempt = 0;
        let answer = loop {
            match conn.post("/join", form.clone()).await {
                Ok(answer) => break answer,
                Err(_) if attempt < 3 => {
                    attempt += 1;
                    *conn = Conn::open(&job_ctx.target).await?;
                }
                Err(error) => return Err(error),
            }
        };
        if answer.status != StatusCode::OK {
            return Err(api_error(&format!("/join {name}"), &answer));
        }
        let joined: Joined = serde_json::from_slice(&answer.body)?;
        job_ctx
            .poll_timeout
            .set(Duration::from_millis(joined.poll_timeout_ms));
        job_ctx
            .inactivity_timeout
            .set(Duration::from_millis(joined.inactivity_timeout_ms));
        job_ctx.members.borrow_mut().push(Rc::new(Member {
            name,
            token: joined.token.into(),
            cursor: Cell::new(joined.cursor),
            kept: Cell::new(true),
            last_active: Cell::new(Instant::now()),
        }));
        job_joined.set(job_joined.get() + 1);
        Ok(())
    };
    let joins = run_workers(ctx, workers, count, job);
    let mut joins = pin!(joins);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            result = &mut joins => {
                result?;
                break;
            }
            _ = tick.tick() => {
                let done = joined.get();
                let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
                ctx.progress.show(&format!("joining: {done}/{count} users ({rate:.0}/s, {workers} in flight)"));
            }
        }
    }
    let took = started.elapsed();
    ctx.progress.done(&format!(
        "joined {count} users in {:.1}s ({:.0}/s)",
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64().max(1e-3)
    ));
    Ok(took)
}

/// Keeps members that do not poll (senders, users waiting to be parked) from
/// being swept: a `timeout=0` poll every third of the inactivity timeout, on
/// up to `workers` connections at once (thousands may fall due together
/// while joins are still loading the server).
async fn keep_alive(ctx: Rc<Ctx>, workers: usize, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
        let interval = (ctx.inactivity_timeout.get() / 3).max(Duration::from_millis(500));
        let mut due: Vec<Rc<Member>> = ctx
            .members
            .borrow()
            .iter()
            .filter(|m| m.kept.get() && m.last_active.get().elapsed() >= interval)
            .cloned()
            .collect();
        if due.is_empty() {
            continue;
        }
        // The longest-waiting first.
        due.sort_by_key(|m| m.last_active.get());
        let count = due.len();
        let job_ctx = ctx.clone();
        let job = async move |conn: &mut Conn, n: usize| -> Res<()> {
            let member = &due[n];
            if member.kept.get() {
                if let Err(error) = touch(conn, member).await {
                    job_ctx.verify.borrow_mut().error(error);
                }
            }
            Ok(())
        };
        tokio::select! {
            _ = run_workers(&ctx, workers, count, job) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One `timeout=0` poll for a member (after a /sync if its cursor expired).
async fn touch(conn: &mut Conn, member: &Member) -> Res<()> {
    let mut answer = conn
        .get(poll_uri(&member.token, member.cursor.get(), Some(0)))
        .await?;
    if answer.status == StatusCode::GONE {
        let synced = conn.get(format!("/sync?token={}", member.token)).await?;
        if synced.status != StatusCode::OK {
            return Err(api_error("/sync", &synced));
        }
        let synced: Synced = serde_json::from_slice(&synced.body)?;
        member.cursor.set(synced.cursor);
        answer = conn
            .get(poll_uri(&member.token, synced.cursor, Some(0)))
            .await?;
    }
    if answer.status != StatusCode::OK {
        return Err(api_error("keep-alive /poll", &answer));
    }
    let polled: PollAnswer<'_> = serde_json::from_slice(&answer.body)?;
    member.cursor.set(polled.cursor);
    member.last_active.set(Instant::now());
    Ok(())
}

async fn leave_all(ctx: &Rc<Ctx>, args: &Args) -> Res<()> {
    let members: Vec<Rc<Member>> = ctx.members.borrow().clone();
    for member in &members {
        member.kept.set(false);
    }
    let count = members.len();
    let job = async move |conn: &mut Conn, n: usize| -> Res<()> {
        let answer = conn
            .post("/leave", format!("token={}", members[n].token))
            .await?;
        if answer.status != StatusCode::OK && answer.status != StatusCode::UNAUTHORIZED {
            return Err(api_error("/leave", &answer));
        }
        Ok(())
    };
    run_workers(ctx, args.join_concurrency.max(8), count, job).await
}

// ---------------------------------------------------------------------------
// Pollers: one task and one connection each, re-polling on every answer.

#[derive(Debug, Default, Clone, Copy)]
struct SoakCounts {
    /// Empty answers between the jittered and the full poll timeout, within
    /// ON_TIME_TOLERANCE.
    on_time: u64,
    /// Empty answers later than that.
    late: u64,
    /// Empty answers well before the timeout (superseded, shutting down).
    early: u64,
    /// Answers that carried events.
    woken: u64,
    /// Answers to polls issued before the soak began (not classified).
    from_setup: u64,
    /// Longest an answer took past the poll timeout.
    worst_overrun: Duration,
}

/// What pollers share with the scenario driving them.
struct Pollers {
    count: usize,
    /// The stream of bench messages they expect (None: expect none).
    stream: Option<String>,
    in_flight: Cell<usize>,
    answers: Cell<u64>,
    last_answer: Cell<Instant>,
    /// Bench messages delivered (first time) to any poller.
    deliveries: Cell<u64>,
    /// Fanout: the message being timed, and who has it.
    round: Cell<u64>,
    arrived: Cell<usize>,
    first: Cell<Option<Instant>>,
    last: Cell<Option<Instant>>,
    all_arrived: Notify,
    verify: RefCell<Verify>,
    soak: RefCell<SoakCounts>,
    /// Soak: polls issued before this are setup's, not counted (the server
    /// may still have been busy with the join storm when it read them).
    counting_since: Cell<Option<Instant>>,
    /// Each stopped poller's next expected sequence number.
    tails: RefCell<Vec<u64>>,
    gave_up: Cell<usize>,
    /// The last failure a poller saw, for the error message.
    last_error: RefCell<String>,
}

impl Pollers {
    fn new(count: usize, stream: Option<String>) -> Pollers {
        Pollers {
            count,
            stream,
            in_flight: Cell::new(0),
            answers: Cell::new(0),
            last_answer: Cell::new(Instant::now()),
            deliveries: Cell::new(0),
            round: Cell::new(u64::MAX),
            arrived: Cell::new(0),
            first: Cell::new(None),
            last: Cell::new(None),
            all_arrived: Notify::new(),
            verify: RefCell::new(Verify::default()),
            soak: RefCell::new(SoakCounts::default()),
            counting_since: Cell::new(None),
            tails: RefCell::new(Vec::new()),
            gave_up: Cell::new(0),
            last_error: RefCell::new(String::new()),
        }
    }

    fn arrived_now(&self, seq: u64, now: Instant) {
        self.deliveries.set(self.deliveries.get() + 1);
        if seq != self.round.get() {
            return;
        }
        self.arrived.set(self.arrived.get() + 1);
        if self.first.get().is_none() {
            self.first.set(Some(now));
        }
        self.last.set(Some(now));
        if self.arrived.get() == self.count {
            self.all_arrived.notify_one();
        }
    }
}

async fn poller(
    ctx: Rc<Ctx>,
    shared: Rc<Pollers>,
    member: Rc<Member>,
    mut conn: Conn,
    mut stop: watch::Receiver<bool>,
) {
    let mut expect = 0u64;
    let mut reconnects = 0;
    let poll_timeout = ctx.poll_timeout.get();
    loop {
        let issued = Instant::now();
        shared.in_flight.set(shared.in_flight.get() + 1);
        let uri = poll_uri(&member.token, member.cursor.get(), None);
        let result = tokio::select! {
            result = conn.get(uri) => result,
            _ = stop.changed() => Err::<Answer, Error>("stopped".into()),
        };
        shared.in_flight.set(shared.in_flight.get() - 1);
        if *stop.borrow() {
            break;
        }
        let now = Instant::now();
        shared.answers.set(shared.answers.get() + 1);
        shared.last_answer.set(now);
        let problem: Option<String> = match result {
            Ok(answer) if answer.status == StatusCode::OK => {
                let mut verify = shared.verify.borrow_mut();
                match scan(
                    &answer.body,
                    &ctx.run,
                    shared.stream.as_deref(),
                    &mut expect,
                    &mut verify,
                    |seq| shared.arrived_now(seq, now),
                ) {
                    Ok(found) => {
                        member.cursor.set(found.cursor);
                        let mut soak = shared.soak.borrow_mut();
                        let waited = now - issued;
                        if shared
                            .counting_since
                            .get()
                            .is_none_or(|since| issued < since)
                        {
                            soak.from_setup += 1;
                        } else if found.events > 0 {
                            soak.woken += 1;
                        } else {
                            if waited + ON_TIME_TOLERANCE
                                < poll_timeout.mul_f64(1.0 - POLL_TIMEOUT_JITTER)
                            {
                                soak.early += 1;
                            } else if waited <= poll_timeout + ON_TIME_TOLERANCE {
                                soak.on_time += 1;
                            } else {
                                soak.late += 1;
                            }
                            if waited > poll_timeout {
                                soak.worst_overrun = soak.worst_overrun.max(waited - poll_timeout);
                            }
                        }
                        None
                    }
                    Err(error) => Some(format!("unreadable poll answer: {error}")),
                }
            }
            Ok(answer) if answer.status == StatusCode::GONE => {
                shared.verify.borrow_mut().expired += 1;
                touch(&mut conn, &member).await.err().map(|e| e.to_string())
            }
            Ok(answer) => Some(api_error("/poll", &answer).to_string()),
            Err(error) => Some(error.to_string()),
        };
        if let Some(problem) = problem {
            shared.verify.borrow_mut().error(&problem);
            *shared.last_error.borrow_mut() = problem;
            reconnects += 1;
            if reconnects > MAX_RECONNECTS {
                shared.gave_up.set(shared.gave_up.get() + 1);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if conn.closed {
                match Conn::open(&ctx.target).await {
                    Ok(fresh) => conn = fresh,
                    Err(_) => continue,
                }
            }
        }
    }
    shared.tails.borrow_mut().push(expect);
}

/// Opens a connection per member and parks their polls; returns the
/// handles, the stop switch, and how long parking took.
async fn park(
    ctx: &Rc<Ctx>,
    shared: &Rc<Pollers>,
    members: &[Rc<Member>],
    limit: Duration,
) -> Res<(JoinSet<()>, watch::Sender<bool>, Duration)> {
    let started = Instant::now();
    let (stop, stopped) = watch::channel(false);
    let mut set = JoinSet::new();
    for (n, member) in members.iter().enumerate() {
        let conn = Conn::open(&ctx.target).await?;
        member.kept.set(false);
        set.spawn_local(poller(
            ctx.clone(),
            shared.clone(),
            member.clone(),
            conn,
            stopped.clone(),
        ));
        if n % 256 == 0 {
            ctx.progress
                .show(&format!("parking: {n}/{} connections open", members.len()));
            tokio::task::yield_now().await;
        }
    }
    settle(ctx, shared, limit.saturating_sub(started.elapsed())).await?;
    let took = started.elapsed();
    ctx.progress.done(&format!(
        "parked {} polls in {:.1}s",
        members.len(),
        took.as_secs_f64()
    ));
    Ok((set, stop, took))
}

/// Waits until every poller has a poll out and none was answered for
/// `SETTLE_QUIET` (they have read what was waiting and are parked).
async fn settle(ctx: &Ctx, shared: &Pollers, limit: Duration) -> Res<()> {
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let quiet = shared.last_answer.get().elapsed();
        if shared.in_flight.get() == shared.count && quiet >= SETTLE_QUIET {
            return Ok(());
        }
        if shared.gave_up.get() > 0 {
            return Err(format!(
                "{} pollers gave up while parking (last error: {})",
                shared.gave_up.get(),
                shared.last_error.borrow()
            )
            .into());
        }
        if started.elapsed() > limit {
            return Err(format!(
                "polls did not settle within {limit:?}: {}/{} out",
                shared.in_flight.get(),
                shared.count
            )
            .into());
        }
        ctx.progress.show(&format!(
            "parking: {}/{} polls out, {} answers so far",
            shared.in_flight.get(),
            shared.count,
            shared.answers.get()
        ));
    }
}

/// Stops the pollers and adds what they never received to the lost count.
async fn unpark(
    mut set: JoinSet<()>,
    stop: watch::Sender<bool>,
    shared: &Pollers,
    sent: u64,
) -> Verify {
    let _ = stop.send(true);
    while set.join_next().await.is_some() {}
    let mut verify = shared.verify.borrow().clone();
    if shared.stream.is_some() {
        for &tail in shared.tails.borrow().iter() {
            verify.lost += sent.saturating_sub(tail);
        }
    }
    verify
}

// ---------------------------------------------------------------------------
// Statistics.

#[derive(Debug, Clone, Copy)]
struct Summary {
    count: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

/// Percentiles (nearest rank) of samples in nanoseconds, returned in `unit`
/// nanoseconds (1e3: µs, 1e6: ms).
fn summarize(samples: &mut [u64], unit: f64) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let at = |p: f64| {
        let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1] as f64 / unit
    };
    Some(Summary {
        count: samples.len(),
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: samples[samples.len() - 1] as f64 / unit,
        mean: samples.iter().sum::<u64>() as f64 / samples.len() as f64 / unit,
    })
}

fn summary_json(summary: Option<Summary>) -> Value {
    match summary {
        None => Value::Null,
        Some(s) => json!({
            "count": s.count, "p50": round(s.p50), "p90": round(s.p90),
            "p99": round(s.p99), "max": round(s.max), "mean": round(s.mean),
        }),
    }
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn nanos(duration: Duration) -> u64 {
    duration.as_nanos().try_into().unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// The report.

struct Report {
    json: Value,
    rows: Vec<(String, String)>,
    verify: Verify,
}

impl Report {
    fn failed(&self) -> bool {
        let v = &self.verify;
        v.lost > 0 || v.duplicated > 0 || v.unexpected > 0
    }

    fn print(&self) {
        let width = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (key, value) in &self.rows {
            if key.is_empty() {
                println!();
            } else {
                println!("{key:<width$}  {value}");
            }
        }
    }
}

fn latency_row(summary: Option<Summary>, unit: &str) -> String {
    match summary {
        None => "no samples".to_owned(),
        Some(s) => format!(
            "p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1} {unit}  (n={})",
            s.p50, s.p90, s.p99, s.max, s.count
        ),
    }
}

/// The setup figures every scenario reports.
struct Setup {
    join: Duration,
    park: Duration,
    users: usize,
    pollers: usize,
    rss_start: Option<u64>,
    rss_joined: Option<u64>,
    rss_parked: Option<u64>,
}

impl Setup {
    fn per_poll_kib(&self) -> Option<f64> {
        let (joined, parked) = (self.rss_joined?, self.rss_parked?);
        (self.pollers > 0).then(|| (parked as f64 - joined as f64) / self.pollers as f64)
    }

    fn per_user_kib(&self) -> Option<f64> {
        let (start, parked) = (self.rss_start?, self.rss_parked?);
        (self.users > 0).then(|| (parked as f64 - start as f64) / self.users as f64)
    }

    fn json(&self) -> Value {
        json!({
            "users": self.users, "pollers": self.pollers,
            "join_s": round(self.join.as_secs_f64()), "park_s": round(self.park.as_secs_f64()),
            "joins_per_s": round(self.users as f64 / self.join.as_secs_f64().max(1e-3)),
            "server_rss_start_kib": self.rss_start, "server_rss_joined_kib": self.rss_joined,
            "server_rss_parked_kib": self.rss_parked,
            "server_rss_per_parked_poll_kib": self.per_poll_kib().map(round),
            "server_rss_per_user_and_poll_kib": self.per_user_kib().map(round),
        })
    }

    fn rows(&self, rows: &mut Vec<(String, String)>) {
        rows.push((
            "setup".into(),
            format!(
                "{} users joined in {:.1}s, {} polls parked in {:.1}s",
                self.users,
                self.join.as_secs_f64(),
                self.pollers,
                self.park.as_secs_f64()
            ),
        ));
        if let (Some(start), Some(joined), Some(parked)) =
            (self.rss_start, self.rss_joined, self.rss_parked)
        {
            rows.push((
                "server RSS".into(),
                format!(
                    "{start} KiB at start, {joined} KiB joined and caught up, {parked} KiB parked"
                ),
            ));
            if let Some(per_poll) = self.per_poll_kib() {
                rows.push((
                    "RSS per parked poll".into(),
                    format!(
                        "{per_poll:.2} KiB (connection + parked poll); {:.2} KiB with the user",
                        self.per_user_kib().unwrap_or(0.0)
                    ),
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Scenarios.

async fn run(args: &Args) -> Res<Report> {
    let target = Target::resolve(&args.url).await?;
    let mut id = [0u8; 4];
    getrandom::getrandom(&mut id)?;
    let run: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let ctx = Rc::new(Ctx {
        target,
        run,
        progress: Progress::new(),
        probe: Probe {
            server: args.server_pid.map(|pid| pid.to_string()),
        },
        members: RefCell::new(Vec::new()),
        poll_timeout: Cell::new(Duration::from_secs(25)),
        inactivity_timeout: Cell::new(Duration::from_secs(30)),
        verify: RefCell::new(Verify::default()),
    });
    if args.server_pid.is_some() && ctx.probe.server().is_none() {
        return Err(format!("cannot read /proc/{}/stat", args.server_pid.unwrap_or(0)).into());
    }
    let (stop_keep_alive, keep_alive_stopped) = watch::channel(false);
    let keeper = tokio::task::spawn_local(keep_alive(
        ctx.clone(),
        args.join_concurrency,
        keep_alive_stopped,
    ));
    let me_start = ctx.probe.me();

    let result = match args.scenario {
        Scenario::Latency => latency(&ctx, args).await,
        Scenario::Fanout => fanout(&ctx, args).await,
        Scenario::Throughput => throughput(&ctx, args).await,
        Scenario::Soak => soak(&ctx, args).await,
    };
    if !args.no_leave {
        let count = ctx.members.borrow().len();
        ctx.progress.show(&format!("leaving: {count} users"));
        if let Err(error) = leave_all(&ctx, args).await {
            eprintln!("parlor-bench: leaving failed: {error}");
        }
        ctx.progress.done(&format!("left {count} users"));
    }
    let _ = stop_keep_alive.send(true);
    let _ = keeper.await;
    let mut report = result?;

    let bench_cpu = match (me_start, ctx.probe.me()) {
        (Some(start), Some(end)) => Some(end.cpu_seconds - start.cpu_seconds),
        _ => None,
    };
    report.verify.add(&ctx.verify.borrow());
    if let Value::Object(map) = &mut report.json {
        map.insert("run_id".into(), json!(ctx.run));
        map.insert("url".into(), json!(args.url));
        map.insert("verify".into(), report.verify.json());
        map.insert("bench_cpu_s".into(), json!(bench_cpu.map(round)));
        map.insert(
            "bench_rss_kib".into(),
            json!(ctx.probe.me().map(|s| s.rss_kib)),
        );
    }
    let v = &report.verify;
    report.rows.push((
        "checks".into(),
        format!(
            "lost {}  duplicated {}  out of order {}  unexpected {}  errors {}  cursor expired {}",
            v.lost, v.duplicated, v.out_of_order, v.unexpected, v.errors, v.expired
        ),
    ));
    if let Some(first) = &v.first_error {
        report.rows.push(("first error".into(), first.clone()));
    }
    if let Some(cpu) = bench_cpu {
        report
            .rows
            .push(("parlor-bench CPU".into(), format!("{cpu:.2} s")));
    }
    report.rows.insert(
        0,
        (
            "scenario".into(),
            format!(
                "{} against {} (run {}, {} clients, {:?})",
                args.scenario.name(),
                args.url,
                ctx.run,
                args.clients,
                args.duration
            ),
        ),
    );
    Ok(report)
}

/// Joins `users` users and reads what waits for them (the presence of those
/// who joined later) on control connections, recording the server's RSS
/// before and after: the RSS growth after that, once polls are parked, is
/// what connections and parked polls cost.
async fn setup_users(ctx: &Rc<Ctx>, args: &Args, users: usize) -> Res<Setup> {
    let rss_start = ctx.probe.server().map(|s| s.rss_kib);
    let join = join_users(ctx, args, users).await?;
    let started = Instant::now();
    let members: Vec<Rc<Member>> = ctx.members.borrow().clone();
    let done = Rc::new(Cell::new(0usize));
    let counter = done.clone();
    let job = async move |conn: &mut Conn, n: usize| -> Res<()> {
        let member = &members[n];
        loop {
            let before = member.cursor.get();
            touch(conn, member).await?;
            if member.cursor.get() == before {
                counter.set(counter.get() + 1);
                return Ok(());
            }
        }
    };
    let catch_up = run_workers(ctx, args.join_concurrency, users, job);
    let mut catch_up = pin!(catch_up);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            result = &mut catch_up => { result?; break; }
            _ = tick.tick() => ctx.progress.show(&format!("catching up: {}/{users} users", done.get())),
        }
    }
    ctx.progress.done(&format!(
        "caught {users} users up in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    let rss_joined = ctx.probe.server().map(|s| s.rss_kib);
    Ok(Setup {
        join,
        park: Duration::ZERO,
        users,
        pollers: 0,
        rss_start,
        rss_joined,
        rss_parked: None,
    })
}

async fn latency(ctx: &Rc<Ctx>, args: &Args) -> Res<Report> {
    let pollers = args.clients.max(1);
    let mut setup = setup_users(ctx, args, pollers + 1).await?;
    let members = ctx.members.borrow().clone();
    let (sender, receiver, others) = (&members[0], &members[1], &members[2..]);

    let mut send_conn = Conn::open(&ctx.target).await?;
    let mut recv_conn = Conn::open(&ctx.target).await?;
    let mut floor_conn = Conn::open(&ctx.target).await?;
    // The dialog: messages in it reach the receiver only, not the others.
    let answer = send_conn
        .post(
            "/dialog",
            format!("token={}&with={}", sender.token, receiver.name),
        )
        .await?;
    if answer.status != StatusCode::OK {
        return Err(api_error("/dialog", &answer));
    }
    let dialog = serde_json::from_slice::<DialogAnswer>(&answer.body)?
        .conversation
        .id;
    receiver.kept.set(false);

    let shared = Rc::new(Pollers::new(others.len(), None));
    let (set, stop, park) = park(ctx, &shared, others, args.setup_timeout).await?;
    setup.park = park;
    setup.pollers = pollers;
    setup.rss_parked = ctx.probe.server().map(|s| s.rss_kib);

    let rate = args.rate.unwrap_or(200.0).max(0.1);
    let period = Duration::from_secs_f64(1.0 / rate);
    let max = args.max_iterations.unwrap_or(u64::MAX);
    let mut verify = Verify::default();
    let mut wake = Vec::with_capacity((args.duration.as_secs_f64() * rate) as usize + 16);
    let mut floor = Vec::with_capacity(wake.capacity());
    let (mut seq, mut expect, mut cursor) = (0u64, 0u64, receiver.cursor.get());
    let cpu_start = ctx.probe.server();
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut next = started;
    while Instant::now() < deadline && seq < max {
        // The floor: a bare round trip on a kept-alive connection.
        let t = Instant::now();
        match floor_conn.get("/healthz".to_owned()).await {
            Ok(answer) if answer.status == StatusCode::OK => {
                if t - started >= args.warmup {
                    floor.push(nanos(t.elapsed()));
                }
            }
            _ => verify.errors += 1,
        }
        // Park the receiver's poll and keep it parked until the next tick;
        // the receive loop reads (and skips) anything else that wakes it.
        next = (next + period).max(Instant::now() + Duration::from_millis(1));
        let want = seq;
        let mut receive = Box::pin(async {
            loop {
                let answer = recv_conn
                    .get(poll_uri(&receiver.token, cursor, None))
                    .await?;
                if answer.status != StatusCode::OK {
                    return Err(api_error("/poll", &answer));
                }
                let mut got = false;
                cursor = scan(
                    &answer.body,
                    &ctx.run,
                    Some("l"),
                    &mut expect,
                    &mut verify,
                    |s| {
                        got |= s == want;
                    },
                )?
                .cursor;
                if got {
                    return Ok::<Instant, Error>(Instant::now());
                }
            }
        });
        let early = tokio::select! {
            result = &mut receive => Some(result),
            _ = tokio::time::sleep_until(next.into()) => None,
        };
        let (t0, sent, received) = match early {
            // Only an error can end the receive loop before the send.
            Some(result) => (Instant::now(), None, Ok(result)),
            None => {
                let form = send_form(&sender.token, &dialog, &ctx.run, "l", seq);
                let t0 = Instant::now();
                let (sent, received) = tokio::join!(
                    send_conn.post("/send", form),
                    tokio::time::timeout(EXCHANGE_LIMIT, &mut receive)
                );
                (t0, Some(sent), received)
            }
        };
        drop(receive);
        match sent {
            None => {}
            Some(Ok(a)) if a.status == StatusCode::OK => seq += 1,
            Some(Ok(a)) => return Err(api_error("/send", &a)),
            Some(Err(error)) => return Err(error),
        }
        match received {
            Ok(Ok(at)) => {
                if t0 - started >= args.warmup {
                    wake.push(nanos(at - t0));
                }
            }
            Ok(Err(_)) => {
                verify.errors += 1;
                if recv_conn.closed {
                    recv_conn = Conn::open(&ctx.target).await?;
                }
            }
            Err(_) => {
                // Timed out: the poll was dropped mid-flight; start afresh.
                verify.errors += 1;
                recv_conn = Conn::open(&ctx.target).await?;
            }
        }
        if seq % 64 == 0 {
            let n = wake.len();
            ctx.progress.show(&format!(
                "latency: {:.0}s/{:.0}s  {n} samples  last {:.0} µs",
                started.elapsed().as_secs_f64(),
                args.duration.as_secs_f64(),
                wake.last().map_or(0.0, |&ns| ns as f64 / 1e3)
            ));
        }
    }
    let elapsed = started.elapsed();
    let cpu_end = ctx.probe.server();
    ctx.progress.done(&format!(
        "latency: {seq} messages in {:.1}s",
        elapsed.as_secs_f64()
    ));
    verify.lost += seq.saturating_sub(expect);
    verify.add(&unpark(set, stop, &shared, 0).await);

    let wake_s = summarize(&mut wake, 1e3);
    let floor_s = summarize(&mut floor, 1e3);
    let ratio = |f: fn(&Summary) -> f64| match (wake_s, floor_s) {
        (Some(w), Some(fl)) if f(&fl) > 0.0 => Some(f(&w) / f(&fl)),
        _ => None,
    };
    let (r50, r99) = (ratio(|s| s.p50), ratio(|s| s.p99));
    let server_cpu = cpu_delta(cpu_start, cpu_end);
    let json = json!({
        "scenario": "latency", "clients": pollers, "parked_others": others.len(),
        "duration_s": round(elapsed.as_secs_f64()), "rate": rate, "messages": seq,
        "wake_us": summary_json(wake_s), "floor_us": summary_json(floor_s),
        "ratio_p50": r50.map(round), "ratio_p99": r99.map(round),
        "ratio_p99_to_floor_p50": match (wake_s, floor_s) { (Some(w), Some(f)) => Some(round(w.p99 / f.p50)), _ => None },
        "server_cpu_s": server_cpu.map(round),
        "setup": setup.json(),
    });
    let mut rows = Vec::new();
    setup.rows(&mut rows);
    rows.push(("".into(), "".into()));
    rows.push(("floor (GET /healthz)".into(), latency_row(floor_s, "µs")));
    rows.push(("wake (/send → answer)".into(), latency_row(wake_s, "µs")));
    rows.push((
        "wake / floor".into(),
        format!(
            "p50 {:.2}×  p99 {:.2}×  (p99 / floor p50: {:.2}×)",
            r50.unwrap_or(f64::NAN),
            r99.unwrap_or(f64::NAN),
            match (wake_s, floor_s) {
                (Some(w), Some(f)) => w.p99 / f.p50,
                _ => f64::NAN,
            }
        ),
    ));
    rows.push((
        "messages".into(),
        format!(
            "{seq} in {:.1}s ({:.0}/s), {} other polls parked",
            elapsed.as_secs_f64(),
            seq as f64 / elapsed.as_secs_f64(),
            others.len()
        ),
    ));
    Ok(Report { json, rows, verify })
}

fn cpu_delta(start: Option<ProcSample>, end: Option<ProcSample>) -> Option<f64> {
    Some(end?.cpu_seconds - start?.cpu_seconds)
}

async fn fanout(ctx: &Rc<Ctx>, args: &Args) -> Res<Report> {
    let pollers = args.clients.max(1);
    let mut setup = setup_users(ctx, args, pollers + 1).await?;
    let members = ctx.members.borrow().clone();
    let (sender, receivers) = (&members[0], &members[1..]);
    let shared = Rc::new(Pollers::new(receivers.len(), Some("f".into())));
    let (set, stop, park) = park(ctx, &shared, receivers, args.setup_timeout).await?;
    setup.park = park;
    setup.pollers = pollers;
    setup.rss_parked = ctx.probe.server().map(|s| s.rss_kib);

    let mut send_conn = Conn::open(&ctx.target).await?;
    let mut floor_conn = Conn::open(&ctx.target).await?;
    let mut floor_ns = Vec::new();
    let rate = args.rate.unwrap_or(2.0).max(0.01);
    let period = Duration::from_secs_f64(1.0 / rate);
    let gap = args
        .gap
        .unwrap_or(Duration::from_millis(20) + Duration::from_micros(40) * pollers as u32);
    let max = args.max_iterations.unwrap_or(u64::MAX);
    let (mut last_ns, mut first_ns, mut send_ns) = (Vec::new(), Vec::new(), Vec::new());
    let mut incomplete = 0u64;
    let mut seq = 0u64;
    let cpu_start = ctx.probe.server();
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut next = started;
    while Instant::now() < deadline && seq < max {
        // Every poller has re-polled, and the server had `gap` to park them.
        let wait_from = Instant::now();
        while shared.in_flight.get() < shared.count {
            if wait_from.elapsed() > EXCHANGE_LIMIT {
                return Err("pollers did not re-poll within 10s".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(gap).await;
        tokio::time::sleep_until(next.into()).await;
        next = Instant::now() + period;
        // The floor, on the same kind of connection, between two fan-outs.
        for _ in 0..8 {
            let t = Instant::now();
            match floor_conn.get("/healthz".to_owned()).await {
                Ok(answer) if answer.status == StatusCode::OK => floor_ns.push(nanos(t.elapsed())),
                _ => shared.verify.borrow_mut().errors += 1,
            }
        }

        shared.round.set(seq);
        shared.arrived.set(0);
        shared.first.set(None);
        shared.last.set(None);
        let form = send_form(&sender.token, "lobby", &ctx.run, "f", seq);
        let t0 = Instant::now();
        let answer = send_conn.post("/send", form).await?;
        let t_sent = Instant::now();
        if answer.status != StatusCode::OK {
            return Err(api_error("/send", &answer));
        }
        seq += 1;
        let all = async {
            while shared.arrived.get() < shared.count {
                shared.all_arrived.notified().await;
            }
        };
        if tokio::time::timeout(EXCHANGE_LIMIT, all).await.is_err() {
            incomplete += 1;
        } else if let (Some(first), Some(last)) = (shared.first.get(), shared.last.get()) {
            last_ns.push(nanos(last - t0));
            first_ns.push(nanos(first - t0));
            send_ns.push(nanos(t_sent - t0));
        }
        shared.round.set(u64::MAX);
        ctx.progress.show(&format!(
            "fanout: {:.0}s/{:.0}s  {seq} messages to {pollers}  last {:.1} ms",
            started.elapsed().as_secs_f64(),
            args.duration.as_secs_f64(),
            last_ns.last().map_or(0.0, |&ns| ns as f64 / 1e6)
        ));
    }
    let elapsed = started.elapsed();
    let cpu_end = ctx.probe.server();
    ctx.progress
        .done(&format!("fanout: {seq} messages to {pollers} polls"));
    // Let stragglers arrive before counting what was lost.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let deliveries = shared.deliveries.get();
    let verify = unpark(set, stop, &shared, seq).await;

    let last_s = summarize(&mut last_ns, 1e6);
    let first_s = summarize(&mut first_ns, 1e6);
    let send_s = summarize(&mut send_ns, 1e6);
    let floor_s = summarize(&mut floor_ns, 1e3);
    let floors = match (last_s, floor_s) {
        (Some(l), Some(f)) if f.p50 > 0.0 => Some(l.p50 * 1e3 / f.p50),
        _ => None,
    };
    let server_cpu = cpu_delta(cpu_start, cpu_end);
    let json = json!({
        "scenario": "fanout", "clients": pollers, "messages": seq, "incomplete": incomplete,
        "duration_s": round(elapsed.as_secs_f64()), "rate": rate, "gap_ms": round(gap.as_secs_f64() * 1e3),
        "last_ms": summary_json(last_s), "first_ms": summary_json(first_s), "send_ms": summary_json(send_s),
        "floor_us": summary_json(floor_s), "last_p50_in_floors": floors.map(round),
        "deliveries": deliveries, "server_cpu_s": server_cpu.map(round),
        "setup": setup.json(),
    });
    let mut rows = Vec::new();
    setup.rows(&mut rows);
    rows.push(("".into(), "".into()));
    rows.push(("until the last has it".into(), latency_row(last_s, "ms")));
    rows.push(("until the first has it".into(), latency_row(first_s, "ms")));
    rows.push(("/send answered".into(), latency_row(send_s, "ms")));
    rows.push(("floor (GET /healthz)".into(), latency_row(floor_s, "µs")));
    if let Some(floors) = floors {
        rows.push((
            "last p50 / floor p50".into(),
            format!(
                "{floors:.0}× ({:.2} floors per poll)",
                floors / pollers as f64
            ),
        ));
    }
    rows.push((
        "messages".into(),
        format!("{seq} to {pollers} polls each ({deliveries} deliveries, {incomplete} incomplete)"),
    ));
    if let Some(cpu) = server_cpu {
        rows.push((
            "server CPU".into(),
            format!(
                "{cpu:.2} s ({:.0} deliveries per CPU-second)",
                deliveries as f64 / cpu.max(1e-9)
            ),
        ));
    }
    Ok(Report { json, rows, verify })
}

async fn throughput(ctx: &Rc<Ctx>, args: &Args) -> Res<Report> {
    let pairs = (args.clients / 2).max(1);
    let mut setup = setup_users(ctx, args, pairs * 2).await?;
    let members = ctx.members.borrow().clone();

    // Open the dialogs and connections first; the clock starts after.
    let mut lanes = Vec::with_capacity(pairs);
    let mut control = Conn::open(&ctx.target).await?;
    for pair in 0..pairs {
        let (sender, receiver) = (members[2 * pair].clone(), members[2 * pair + 1].clone());
        let answer = control
            .post(
                "/dialog",
                format!("token={}&with={}", sender.token, receiver.name),
            )
            .await?;
        if answer.status != StatusCode::OK {
            return Err(api_error("/dialog", &answer));
        }
        let dialog = serde_json::from_slice::<DialogAnswer>(&answer.body)?
            .conversation
            .id;
        lanes.push((
            sender,
            receiver,
            dialog,
            Conn::open(&ctx.target).await?,
            Conn::open(&ctx.target).await?,
        ));
        if pair % 16 == 0 {
            ctx.progress.show(&format!("dialogs: {pair}/{pairs}"));
        }
    }
    drop(control);
    setup.pollers = pairs;
    setup.rss_parked = ctx.probe.server().map(|s| s.rss_kib);

    let floor =
        floor_throughput(ctx, pairs, (args.duration / 4).min(Duration::from_secs(5))).await?;

    let delivered = Rc::new(Cell::new(0u64));
    let samples = Rc::new(RefCell::new(Vec::<u64>::new()));
    let verify = Rc::new(RefCell::new(Verify::default()));
    let sent_total = Rc::new(Cell::new(0u64));
    let pace = args
        .rate
        .map(|rate| Duration::from_secs_f64(pairs as f64 / rate.max(0.01)));
    let max = args.max_iterations.unwrap_or(u64::MAX);
    let cpu_start = ctx.probe.server();
    let started = Instant::now();
    let warm = started + args.warmup.min(args.duration / 2);
    let deadline = started + args.duration;
    let mut set = JoinSet::new();
    for (pair, (sender, receiver, dialog, mut send_conn, mut recv_conn)) in
        lanes.into_iter().enumerate()
    {
        let (ctx, delivered, samples, verify, sent_total) = (
            ctx.clone(),
            delivered.clone(),
            samples.clone(),
            verify.clone(),
            sent_total.clone(),
        );
        set.spawn_local(async move {
            let stream = format!("p{pair}");
            // From here on the receiver polls by itself. Until now (joins,
            // dialogs, the floor run) the keep-alive kept it from being
            // swept; it must stop now, or its polls would supersede ours.
            receiver.kept.set(false);
            let (mut seq, mut expect, mut cursor) = (0u64, 0u64, receiver.cursor.get());
            let mut next = Instant::now();
            while Instant::now() < deadline && sent_total.get() < max {
                if let Some(pace) = pace {
                    tokio::time::sleep_until(next.into()).await;
                    next += pace;
                }
                let form = send_form(&sender.token, &dialog, &ctx.run, &stream, seq);
                let t0 = Instant::now();
                let receive = async {
                    loop {
                        let answer = recv_conn
                            .get(poll_uri(&receiver.token, cursor, None))
                            .await?;
                        if answer.status != StatusCode::OK {
                            return Err(api_error("/poll", &answer));
                        }
                        let mut got = false;
                        let mut v = verify.borrow_mut();
                        cursor = scan(
                            &answer.body,
                            &ctx.run,
                            Some(&stream),
                            &mut expect,
                            &mut v,
                            |s| {
                                got |= s == seq;
                            },
                        )?
                        .cursor;
                        if got {
                            return Ok::<Instant, Error>(Instant::now());
                        }
                    }
                };
                let (sent, received) = tokio::join!(
                    send_conn.post("/send", form),
                    tokio::time::timeout(EXCHANGE_LIMIT, receive)
                );
                match &sent {
                    Ok(a) if a.status == StatusCode::OK => {
                        seq += 1;
                        sent_total.set(sent_total.get() + 1);
                    }
                    _ => verify.borrow_mut().error(failure("/send", &sent)),
                }
                match received {
                    Ok(Ok(at)) => {
                        delivered.set(delivered.get() + 1);
                        if t0 >= warm {
                            samples.borrow_mut().push(nanos(at - t0));
                        }
                    }
                    Ok(Err(error)) => verify.borrow_mut().error(error),
                    Err(_) => match Conn::open(&ctx.target).await {
                        Ok(fresh) => recv_conn = fresh,
                        Err(_) => break,
                    },
                }
            }
            verify.borrow_mut().lost += seq.saturating_sub(expect);
        });
    }
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let (mut warm_count, mut warm_cpu) = (None, None);
    loop {
        tokio::select! {
            done = set.join_next() => if done.is_none() { break },
            _ = tick.tick() => {
                if warm_count.is_none() && Instant::now() >= warm {
                    warm_count = Some((delivered.get(), Instant::now()));
                    warm_cpu = ctx.probe.server();
                }
                let secs = started.elapsed().as_secs_f64();
                ctx.progress.show(&format!(
                    "throughput: {secs:.0}s/{:.0}s  {} deliveries ({:.0}/s)",
                    args.duration.as_secs_f64(), delivered.get(), delivered.get() as f64 / secs.max(1e-3)
                ));
            }
        }
    }
    let end = Instant::now();
    let cpu_end = ctx.probe.server();
    let total = delivered.get();
    // Rates over the steady part of the run (after the warm-up).
    let (base, from) = warm_count.unwrap_or((0, started));
    let cpu_from = warm_cpu.or(cpu_start);
    let measured = total - base;
    let seconds = (end - from).as_secs_f64();
    let per_s = measured as f64 / seconds.max(1e-9);
    let server_cpu = cpu_delta(cpu_from, cpu_end);
    let per_cpu_s = server_cpu.map(|cpu| measured as f64 / cpu.max(1e-9));
    ctx.progress
        .done(&format!("throughput: {total} deliveries"));
    let mut lat = std::mem::take(&mut *samples.borrow_mut());
    let lat_s = summarize(&mut lat, 1e3);
    let verify = verify.borrow().clone();
    let json = json!({
        "scenario": "throughput", "clients": pairs * 2, "pairs": pairs,
        "duration_s": round((end - started).as_secs_f64()), "deliveries": total,
        "measured_deliveries": measured, "measured_s": round(seconds),
        "deliveries_per_s": round(per_s), "server_cpu_s": server_cpu.map(round),
        "server_cpu_share": server_cpu.map(|cpu| round(cpu / seconds.max(1e-9))),
        "deliveries_per_server_cpu_s": per_cpu_s.map(round),
        "delivery_us": summary_json(lat_s), "setup": setup.json(),
        "floor": { "connections": pairs, "requests": floor.requests, "seconds": round(floor.seconds),
                   "requests_per_s": round(floor.per_s()), "server_cpu_s": floor.cpu.map(round),
                   "requests_per_server_cpu_s": floor.per_cpu_s().map(round) },
        "deliveries_per_s_to_floor": round(per_s / floor.per_s().max(1e-9)),
        "per_server_cpu_s_to_floor": match (per_cpu_s, floor.per_cpu_s()) { (Some(d), Some(f)) => Some(round(d / f)), _ => None },
    });
    let mut rows = Vec::new();
    setup.rows(&mut rows);
    rows.push(("".into(), "".into()));
    rows.push((
        "deliveries".into(),
        format!("{total} ({measured} after warm-up in {seconds:.1}s: {per_s:.0}/s)"),
    ));
    if let (Some(cpu), Some(per_cpu)) = (server_cpu, per_cpu_s) {
        rows.push((
            "per server CPU-second".into(),
            format!(
                "{per_cpu:.0} deliveries (server used {cpu:.2} CPU-s, {:.0}% of one core)",
                100.0 * cpu / seconds.max(1e-9)
            ),
        ));
    }
    rows.push(("send → delivered".into(), latency_row(lat_s, "µs")));
    rows.push((
        "floor (GET /healthz)".into(),
        format!(
            "{:.0} requests/s on {pairs} connections{}",
            floor.per_s(),
            floor
                .per_cpu_s()
                .map(|f| format!(", {f:.0} per server CPU-second"))
                .unwrap_or_default()
        ),
    ));
    rows.push((
        "deliveries / floor".into(),
        format!(
            "{:.2}× per second{}",
            per_s / floor.per_s().max(1e-9),
            match (per_cpu_s, floor.per_cpu_s()) {
                (Some(d), Some(f)) => format!(", {:.2}× per server CPU-second", d / f),
                _ => String::new(),
            }
        ),
    ));
    Ok(Report { json, rows, verify })
}

/// Closed-loop `GET /healthz` on `connections` connections for `length`:
/// the floor that throughput is compared with.
struct FloorRate {
    requests: u64,
    seconds: f64,
    cpu: Option<f64>,
}

impl FloorRate {
    fn per_s(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }

    fn per_cpu_s(&self) -> Option<f64> {
        self.cpu.map(|cpu| self.requests as f64 / cpu.max(1e-9))
    }
}

async fn floor_throughput(ctx: &Rc<Ctx>, connections: usize, length: Duration) -> Res<FloorRate> {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(Conn::open(&ctx.target).await?);
    }
    let requests = Rc::new(Cell::new(0u64));
    let cpu_start = ctx.probe.server();
    let started = Instant::now();
    let deadline = started + length;
    let mut set = JoinSet::new();
    for mut conn in conns {
        let (requests, ctx) = (requests.clone(), ctx.clone());
        set.spawn_local(async move {
            while Instant::now() < deadline {
                match conn.get("/healthz".to_owned()).await {
                    Ok(answer) if answer.status == StatusCode::OK => {
                        requests.set(requests.get() + 1)
                    }
                    _ => ctx.verify.borrow_mut().errors += 1,
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_delta(cpu_start, ctx.probe.server());
    ctx.progress.done(&format!(
        "floor: {} GET /healthz in {seconds:.1}s on {connections} connections",
        requests.get()
    ));
    Ok(FloorRate {
        requests: requests.get(),
        seconds,
        cpu,
    })
}

async fn soak(ctx: &Rc<Ctx>, args: &Args) -> Res<Report> {
    let pollers = args.clients.max(1);
    let rate = args.rate.unwrap_or(0.0);
    let mut setup = setup_users(ctx, args, pollers + 1).await?;
    let members = ctx.members.borrow().clone();
    let (sender, receivers) = (&members[0], &members[1..]);
    let shared = Rc::new(Pollers::new(receivers.len(), Some("f".into())));
    let (set, stop, park) = park(ctx, &shared, receivers, args.setup_timeout).await?;
    setup.park = park;
    setup.pollers = pollers;
    setup.rss_parked = ctx.probe.server().map(|s| s.rss_kib);
    *shared.soak.borrow_mut() = SoakCounts::default();
    shared.counting_since.set(Some(Instant::now()));

    let mut send_conn = Conn::open(&ctx.target).await?;
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut samples = Vec::new();
    let first = ctx.probe.server();
    if let Some(s) = first {
        samples.push(json!([0.0, s.rss_kib, 0.0]));
    }
    let mut next_sample = started + args.sample_interval;
    let period = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let mut next_send = started;
    let mut seq = 0u64;
    let max = args.max_iterations.unwrap_or(u64::MAX);
    let mut max_rss = first.map_or(0, |s| s.rss_kib);
    while Instant::now() < deadline {
        let wake_at = match period {
            Some(_) if seq < max => next_send.min(next_sample),
            _ => next_sample,
        }
        .min(deadline);
        tokio::time::sleep_until(wake_at.into()).await;
        let now = Instant::now();
        if let Some(period) = period {
            if now >= next_send && seq < max {
                let form = send_form(&sender.token, "lobby", &ctx.run, "f", seq);
                match send_conn.post("/send", form).await {
                    Ok(a) if a.status == StatusCode::OK => seq += 1,
                    _ => shared.verify.borrow_mut().errors += 1,
                }
                next_send += period;
            }
        }
        if now >= next_sample {
            next_sample += args.sample_interval;
            if let (Some(s), Some(f)) = (ctx.probe.server(), first) {
                max_rss = max_rss.max(s.rss_kib);
                samples.push(json!([
                    round((s.at - started).as_secs_f64()),
                    s.rss_kib,
                    round(s.cpu_seconds - f.cpu_seconds)
                ]));
            }
        }
        let counts = *shared.soak.borrow();
        ctx.progress.show(&format!(
            "soak: {:.0}s/{:.0}s  {}/{} polls out  on time {}  late {}  woken {}",
            started.elapsed().as_secs_f64(),
            args.duration.as_secs_f64(),
            shared.in_flight.get(),
            shared.count,
            counts.on_time,
            counts.late,
            counts.woken
        ));
    }
    let elapsed = started.elapsed();
    let last = ctx.probe.server();
    let counts = *shared.soak.borrow();
    let in_flight_at_end = shared.in_flight.get();
    ctx.progress
        .done(&format!("soak: {:.0}s done", elapsed.as_secs_f64()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let deliveries = shared.deliveries.get();
    let verify = unpark(set, stop, &shared, seq).await;
    let server_cpu = cpu_delta(first, last);
    let json = json!({
        "scenario": "soak", "clients": pollers, "duration_s": round(elapsed.as_secs_f64()),
        "poll_timeout_ms": ctx.poll_timeout.get().as_millis() as u64,
        "answers": { "on_time": counts.on_time, "late": counts.late, "early": counts.early,
                     "woken": counts.woken, "from_setup": counts.from_setup, "worst_overrun_ms": round(counts.worst_overrun.as_secs_f64() * 1e3) },
        "polls_out_at_end": in_flight_at_end, "messages": seq, "deliveries": deliveries,
        "server_cpu_s": server_cpu.map(round), "server_rss_max_kib": max_rss,
        "server_rss_samples": samples, "setup": setup.json(),
    });
    let mut rows = Vec::new();
    setup.rows(&mut rows);
    rows.push(("".into(), "".into()));
    rows.push((
        "timed-out answers".into(),
        format!(
            "{} on time ({:.0}–100 % of the {:?} poll timeout, ±{}s), {} late (worst +{:.0} ms), {} early; {} to polls issued during setup, not counted",
            counts.on_time,
            100.0 * (1.0 - POLL_TIMEOUT_JITTER),
            ctx.poll_timeout.get(),
            ON_TIME_TOLERANCE.as_secs(),
            counts.late,
            counts.worst_overrun.as_secs_f64() * 1e3,
            counts.early,
            counts.from_setup
        ),
    ));
    rows.push((
        "woken answers".into(),
        format!(
            "{} ({seq} lobby messages, {deliveries} deliveries)",
            counts.woken
        ),
    ));
    rows.push((
        "polls out at the end".into(),
        format!("{in_flight_at_end}/{pollers}"),
    ));
    if let Some(cpu) = server_cpu {
        rows.push((
            "server".into(),
            format!(
                "{cpu:.2} CPU-s over {:.0}s; RSS max {max_rss} KiB, {} samples",
                elapsed.as_secs_f64(),
                samples.len()
            ),
        ));
    }
    Ok(Report { json, rows, verify })
}
