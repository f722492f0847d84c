//! Runtime configuration: the command-line flags (each also readable from a
//! `PARLOR_<NAME>` environment variable), their defaults, and the fixed
//! bounds that are not worth a flag. Every limit the server enforces is named
//! here so an operator can find what happens at each bound in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::http::client_addr::Cidr;

/// Longest a parked poll is held before it is answered empty. 25 s stays under
/// the 30 s idle limit common in proxies and load balancers.
pub const DEFAULT_POLL_TIMEOUT: &str = "25s";
/// A client process with no poll parked that has not polled for this long is swept.
pub const DEFAULT_INACTIVITY_TIMEOUT: &str = "30s";

/// Largest request body read; a bigger `Content-Length` is refused with 413
/// before any of the body is read.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// hyper's read buffer bound, which bounds the request line plus headers
/// (hyper answers 431 past it).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A body must arrive within this long once the headers are in, so a client
/// trickling its body cannot hold a connection (and its task) forever.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Events per user mailbox. Older events are dropped; a client whose cursor
/// falls behind them gets 410 `cursor_expired` and resyncs.
pub const MAILBOX_CAPACITY: usize = 4096;
/// Bytes of events per user mailbox, each event counted whole (its bytes
/// are shared by every mailbox it is in, but each can pin them). By count
/// alone, a client that polls with an old cursor, so that nothing is ever
/// acknowledged, could keep 4096 events of up to 64 KiB each; past this
/// the oldest are dropped as when the mailbox is full of events (410
/// `cursor_expired` for a client behind them).
pub const MAILBOX_MAX_BYTES: usize = 1024 * 1024;
/// Most events answered by one poll; the rest come with the next poll.
pub const MAX_EVENTS_PER_POLL: usize = 256;
/// Presence changes copied into a mailbox per poll (see `hub::presence`).
pub const PRESENCE_CHANGES_PER_POLL: usize = 256;
/// How long a parked poll with nothing but presence changes to answer waits
/// for more of them before answering (`hub::poll`). Each /status, join and
/// sweep wakes every poll that can see the user; without this, a storm of N
/// changes costs every poller N answers and re-polls. With it, a poller is
/// answered about once per window however many changes come. Messages and
/// every other event are answered at once. 75 ms is below what a person
/// notices in a status dot, and a few round trips' worth for a client.
pub const PRESENCE_COALESCE_WINDOW: Duration = Duration::from_millis(75);

/// User and room names: 1..=32 of ASCII letters, digits, `_`, `-`, `.`.
pub const MAX_NAME_LEN: usize = 32;
/// Passwords are 1..=256 bytes (argon2 hashes any length, but a bound keeps
/// hashing cost per request fixed).
pub const MAX_PASSWORD_BYTES: usize = 256;
/// A /join `auth` JWT: at most 8 KiB (a token naming a few dozen rooms is
/// well under 2 KiB); a longer one is refused before it is parsed.
pub const MAX_JOIN_TOKEN_BYTES: usize = 8 * 1024;
/// Rooms one join JWT may name (its `rooms` claim); each is joined as by
/// /rooms/join, creating it if needed within the room-creation rate.
pub const MAX_ROOMS_PER_JOIN_TOKEN: usize = 64;
/// Message text: 1..=4096 bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 4096;
/// `client_msg_id`: 1..=64 bytes.
pub const MAX_CLIENT_MSG_ID_BYTES: usize = 64;
/// Client processes one user may hold at once (tabs, scripts); the next /join
/// gets 429 `too_many_clients` until one leaves or is swept.
pub const MAX_CLIENTS_PER_USER: usize = 64;
/// Rooms in existence; creating one more gets 429 `too_many_rooms`.
pub const MAX_ROOMS: usize = 10_000;
/// Online users a /join or /sync answer lists (the first in name order),
/// and the lobby's members it lists; `users_total` and `member_count` say
/// how many there are, and GET /users pages through the rest.
pub const ONLINE_PAGE: usize = 200;
/// GET /users page size default and cap.
pub const MAX_USERS_PAGE: usize = 1000;
/// History page size default and cap.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;
pub const MAX_HISTORY_LIMIT: usize = 200;
/// Messages `--ephemeral` keeps per conversation, the newest; /history
/// answers from these. Nothing it holds outlives the process anyway, and
/// without a cap a long run would keep every message in memory for good.
/// (The SQLite store keeps all of them, up to `--history-retention`.)
pub const EPHEMERAL_HISTORY_PER_CONVERSATION: usize = 1000;
/// Users named by one /api/publish call.
pub const MAX_PUBLISH_USERS: usize = 10_000;
/// Password hashes computed at once. Argon2 costs ~19 MiB and tens of ms
/// each, so a burst of /join must queue rather than exhaust memory and CPU.
pub const MAX_CONCURRENT_PASSWORD_HASHES: usize = 4;
/// Threads (each with its own SQLite connection) that run the store reads
/// requests make: /history, a login's account look-up, a retried
/// `client_msg_id`. Reads beyond them queue (one per request in flight); a
/// read waiting for the disk holds one of these, never an async worker.
pub const STORE_READER_THREADS: usize = 2;
/// /join requests that may wait for a hashing slot (`--max-hash-waiters`);
/// past them a /join gets 503 `busy` at once instead of queuing without end.
pub const MAX_HASH_WAITERS: usize = 64;
/// Longest a /join waits for a hashing slot before 503 `busy`.
pub const HASH_WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// New accounts per client address per minute (`--signups-per-ip`).
pub const SIGNUPS_PER_IP: u32 = 30;
/// Wrong passwords for one name from one client address per minute; then
/// 429 for that pair (guessing slows to one try per 6 s; the owner joining
/// from another address is not locked out).
pub const PASSWORD_FAILURES_PER_MINUTE: u32 = 10;
/// Invalid JWTs in /join `auth` per client address per minute; past them
/// 429 `rate_limited`. A valid token is never refused for them (see
/// `hub::accounts`), so the limit only slows a client stuck on a stale or
/// broken token; generous, since a NAT of browsers shares an address.
pub const BAD_JOIN_TOKENS_PER_MINUTE: u32 = 30;
/// /status calls per client process: a burst of `STATUS_BURST`, then
/// `STATUS_PER_SECOND` a second; then 429 `rate_limited`.
pub const STATUS_BURST: u32 = 5;
pub const STATUS_PER_SECOND: u32 = 1;
/// Messages per user per second (`--send-rate`) and the burst allowed
/// above it (`--send-burst`); then 429 `rate_limited`.
pub const SEND_PER_SECOND: u32 = 20;
pub const SEND_BURST: u32 = 60;
/// Rooms one user may create per hour; then 429 `rate_limited`.
pub const ROOMS_PER_HOUR: u32 = 20;
/// Keys (addresses, users, client processes) one rate limit remembers;
/// a key whose bucket refilled is forgotten first (see `limits`).
pub const MAX_RATE_KEYS: usize = 65_536;

/// Changes queued for the SQLite writer beyond which requests that change
/// state are refused at once (503 `store_unavailable`) instead of queuing
/// behind a stalled disk without limit. Commits drain thousands a second,
/// so only a stall ever fills it.
pub const STORE_QUEUE_MAX: usize = 16_384;
/// /healthz answers 503 `store_stalled` once the oldest uncommitted change
/// has waited this long (commits normally take milliseconds).
pub const STORE_STALL_AFTER: Duration = Duration::from_secs(5);
/// Messages deleted per statement by history retention, so that sends
/// commit between batches rather than wait for the whole pruning.
pub const PRUNE_BATCH_ROWS: usize = 500;

/// How hard each commit is pushed to disk (`--sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// WAL without fsync per commit: survives a killed process.
    Normal,
    /// fsync per commit: survives a power cut.
    Full,
}

/// parlor: a long-polling Comet chat and notification server.
#[derive(Debug, Clone, Parser)]
#[command(name = "parlor", version, about)]
pub struct Config {
    /// Address to listen on (use port 0 for any free port; the bound address is printed).
    #[arg(long, env = "PARLOR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Serve Prometheus metrics (GET /metrics) on this address; off unless set. Keep it private:
    /// loopback, or a network only the scraper reaches (the metrics describe load and users).
    #[arg(long, env = "PARLOR_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Directory of the durable store.
    #[arg(long, env = "PARLOR_DATA_DIR", default_value = "./parlor-data")]
    pub data_dir: PathBuf,

    /// Keep everything in memory; nothing is written to disk.
    #[arg(long, env = "PARLOR_EPHEMERAL")]
    pub ephemeral: bool,

    /// Cluster mode: keep all state in this Redis (e.g. `redis://127.0.0.1:6379/0`), shared by every
    /// parlor node given the same URL; no local store is used.
    #[arg(
        long,
        env = "PARLOR_REDIS",
        value_parser = parse_redis_url,
        conflicts_with_all = ["ephemeral", "data_dir", "sync", "history_retention"]
    )]
    pub redis: Option<RedisUrl>,

    /// How hard commits are pushed to disk: `normal` survives a killed
    /// process, `full` (an fsync per commit) also a power cut.
    #[arg(long, env = "PARLOR_SYNC", value_enum, default_value = "normal")]
    pub sync: SyncMode,

    /// Delete messages older than this (e.g. 30d); unset keeps all.
    #[arg(long, env = "PARLOR_HISTORY_RETENTION", value_parser = parse_duration)]
    pub history_retention: Option<Duration>,

    /// Longest a poll is held when nothing arrives (e.g. 500ms, 25s, 2m).
    #[arg(long, env = "PARLOR_POLL_TIMEOUT", default_value = DEFAULT_POLL_TIMEOUT, value_parser = parse_duration)]
    pub poll_timeout: Duration,

    /// A client process that has not polled for this long is removed.
    #[arg(long, env = "PARLOR_INACTIVITY_TIMEOUT", default_value = DEFAULT_INACTIVITY_TIMEOUT, value_parser = parse_duration)]
    pub inactivity_timeout: Duration,

    /// Bearer token that enables POST /api/publish (disabled when unset).
    #[arg(long, env = "PARLOR_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// File holding the admin token (a trailing newline is trimmed), read
    /// at start, so the secret shows neither in `ps` nor in the environment.
    #[arg(
        long,
        env = "PARLOR_ADMIN_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "admin_token"
    )]
    pub admin_token_file: Option<PathBuf>,

    /// Secret with which the application's backend signs join JWTs (HS256,
    /// at least 32 bytes): POST /join then accepts `auth=JWT` instead of a
    /// password. Prefer --join-secret-file, which keeps it out of `ps`.
    #[arg(long, env = "PARLOR_JOIN_SECRET", hide_env_values = true)]
    pub join_secret: Option<String>,

    /// File holding the join secret (a trailing newline is trimmed), read at start.
    #[arg(
        long,
        env = "PARLOR_JOIN_SECRET_FILE",
        value_name = "PATH",
        conflicts_with = "join_secret"
    )]
    pub join_secret_file: Option<PathBuf>,

    /// Directory of the browser client's static files.
    #[arg(long, env = "PARLOR_PUBLIC_DIR", default_value_os_t = default_public_dir())]
    pub public_dir: PathBuf,

    /// Most open connections. When all are taken, the connection idle the
    /// longest (no request in flight; a parked poll is in flight) is closed
    /// for a new one; if none is idle, new ones wait in the kernel's accept queue.
    #[arg(long, env = "PARLOR_MAX_CONNECTIONS", default_value_t = 16_384)]
    pub max_connections: usize,

    /// Most open connections from one client address (0: no cap); further
    /// ones are closed at once. 256 fits a NAT of browsers.
    #[arg(long, env = "PARLOR_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,

    /// Argon2id memory cost in KiB for new password hashes (OWASP's 19 MiB by
    /// default). Stored hashes carry their own parameters, so changing this
    /// never locks anyone out. Lowered only by test suites.
    #[arg(long, env = "PARLOR_ARGON2_MEMORY_KIB", default_value_t = 19 * 1024, hide = true)]
    pub argon2_memory_kib: u32,

    /// Argon2id passes for new password hashes.
    #[arg(
        long,
        env = "PARLOR_ARGON2_ITERATIONS",
        default_value_t = 2,
        hide = true
    )]
    pub argon2_iterations: u32,

    /// On Ctrl-C or SIGTERM, keep serving this long with /readyz answering 503 before parked polls
    /// are answered and connections closed, so that a load balancer stops sending first (0: at once).
    #[arg(long, env = "PARLOR_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,

    /// A connection must send a request's headers within this long, or it is closed.
    #[arg(long, env = "PARLOR_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// An origin whose pages may call the API from the browser (CORS), e.g.
    /// `https://app.example.com`, or `*` for any; repeatable. Others get no CORS headers.
    #[arg(long, env = "PARLOR_ALLOW_ORIGIN", value_delimiter = ',')]
    pub allow_origin: Vec<String>,

    /// How log lines on stderr are written: `text` for people, `json` (one object per line) for
    /// log collectors. Levels come from RUST_LOG (default `info`).
    #[arg(long, env = "PARLOR_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// A peer whose `X-Forwarded-For`/`Forwarded` headers name the client
    /// (an address or CIDR, e.g. 10.0.0.0/8; repeatable). Without one, the
    /// socket's peer is the client address and those headers are ignored.
    #[arg(long = "trusted-proxy", env = "PARLOR_TRUSTED_PROXY", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Vec<Cidr>,

    /// New accounts one client address may create per minute (0: no limit);
    /// then 429 `rate_limited`.
    #[arg(long, env = "PARLOR_SIGNUPS_PER_IP", default_value_t = SIGNUPS_PER_IP)]
    pub signups_per_ip: u32,

    /// `open`: /join with a new name creates the account; `closed`: only
    /// existing accounts may join (403 `signup_closed`).
    #[arg(long, env = "PARLOR_SIGNUP", value_enum, default_value = "open")]
    pub signup: SignupMode,

    /// Messages one user may send per second, as `N/s` or `N` (0: no
    /// limit); then 429 `rate_limited`.
    #[arg(long, env = "PARLOR_SEND_RATE", default_value = "20/s", value_parser = parse_send_rate)]
    pub send_rate: SendRate,

    /// Messages one user may send at once above `--send-rate`.
    #[arg(long, env = "PARLOR_SEND_BURST", default_value_t = SEND_BURST)]
    pub send_burst: u32,

    /// /join requests that may wait for a password-hashing slot; past them,
    /// 503 `busy` at once.
    #[arg(long, env = "PARLOR_MAX_HASH_WAITERS", default_value_t = MAX_HASH_WAITERS)]
    pub max_hash_waiters: usize,
}

/// The shape of log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; coloured only when stderr is a terminal.
    Text,
    /// One JSON object per line, never coloured.
    Json,
}

/// Whether /join may create accounts (`--signup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SignupMode {
    /// A new name creates an account.
    Open,
    /// Only existing accounts may join.
    Closed,
}

/// Messages per second (`--send-rate`), 0 for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendRate(pub u32);

/// Parses `--send-rate`: `20/s` or `20`.
pub fn parse_send_rate(text: &str) -> Result<SendRate, String> {
    let text = text.trim();
    let count = text.strip_suffix("/s").unwrap_or(text);
    count
        .parse()
        .map(SendRate)
        .map_err(|_| format!("`{text}` is not a rate like 20/s"))
}

/// A Redis URL that parsed (`redis://`, `rediss://` or `unix://`). Its
/// `Debug` leaves out a password the URL may carry.
#[derive(Clone)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = match self.0.split_once('@') {
            Some((before, after)) => match before.split_once("://") {
                Some((scheme, _credentials)) => format!("{scheme}://***@{after}"),
                None => "***".to_owned(),
            },
            None => self.0.clone(),
        };
        f.write_str(&shown)
    }
}

fn parse_redis_url(text: &str) -> Result<RedisUrl, String> {
    if redis::parse_redis_url(text).is_none() {
        return Err(format!(
            "`{text}` is not a Redis URL (expected redis://HOST:PORT/DB, rediss://... or unix://PATH)"
        ));
    }
    redis::IntoConnectionInfo::into_connection_info(text)
        .map(|_| RedisUrl(text.to_owned()))
        .map_err(|error| format!("`{text}` is not a usable Redis URL: {error}"))
}

fn parse_cidr(text: &str) -> Result<Cidr, String> {
    text.parse()
}

impl Config {
    /// Defaults suited to tests and embedding: an ephemeral store on any free port.
    pub fn for_tests() -> Config {
        Config::parse_from(["parlor", "--listen", "127.0.0.1:0", "--ephemeral"])
    }
}

impl Config {
    /// Reads `--admin-token-file` into `admin_token` (the binary calls this
    /// before `Server::open`). A file that cannot be read or holds only a
    /// newline is an error: a server started without the publishing its
    /// operator meant to enable would fail later and more quietly.
    pub fn read_admin_token_file(&mut self) -> Result<(), String> {
        let Some(path) = self.admin_token_file.take() else {
            return Ok(());
        };
        if self.admin_token.is_some() {
            return Err("give --admin-token or --admin-token-file, not both".into());
        }
        self.admin_token = Some(read_secret_file(&path, "admin token")?);
        Ok(())
    }

    /// Reads `--join-secret-file` into `join_secret`, as
    /// `read_admin_token_file` does the admin token (the binary calls this
    /// before `Server::open`).
    pub fn read_join_secret_file(&mut self) -> Result<(), String> {
        let Some(path) = self.join_secret_file.take() else {
            return Ok(());
        };
        if self.join_secret.is_some() {
            return Err("give --join-secret or --join-secret-file, not both".into());
        }
        self.join_secret = Some(read_secret_file(&path, "join secret")?);
        Ok(())
    }
}

/// The secret `what` held in the file at `path`, less one trailing newline;
/// an error if the file cannot be read or holds nothing else.
fn read_secret_file(path: &std::path::Path, what: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read the {what} file {}: {error}", path.display()))?;
    let secret = text.strip_suffix('\n').map_or(text.as_str(), |line| {
        line.strip_suffix('\r').unwrap_or(line)
    });
    if secret.is_empty() {
        return Err(format!("the {what} file {} is empty", path.display()));
    }
    Ok(secret.to_owned())
}

/// `public/` next to Cargo.toml when run from a checkout, else `./public`.
fn default_public_dir() -> PathBuf {
    let beside_manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("public");
    if beside_manifest.is_dir() {
        beside_manifest
    } else {
        PathBuf::from("public")
    }
}

/// Parses a duration flag with `humantime`: `250ms`, `25s`, `5m`, `1h`,
/// `30d`, `1h30m`, or a bare number of seconds (`3`).
///
/// A value is one word, as `--help` and the README write it. humantime
/// alone would also read `5 days`, but a space is where a shell or an
/// environment file splits a value that was not quoted, so refusing it
/// keeps one spelling that survives every place a flag is set from.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
        return text
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("duration `{text}` is too large"));
    }
    if text.contains(char::is_whitespace) {
        return Err(format!(
            "`{text}` is not one word: write a duration like 30d or 1h30m"
        ));
    }
    humantime::parse_duration(text)
        .map_err(|error| format!("`{text}` is not a duration like 250ms, 25s, 5m or 30d ({error})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("25s"), Ok(Duration::from_secs(25)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn send_rates_read_with_or_without_per_second() {
        assert_eq!(parse_send_rate("20/s"), Ok(SendRate(20)));
        assert_eq!(parse_send_rate("5"), Ok(SendRate(5)));
        assert_eq!(parse_send_rate("0"), Ok(SendRate(0)));
        for bad in ["", "fast", "20/m", "-1/s"] {
            assert!(parse_send_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_take_days_and_compound_units() {
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(parse_duration("30d"), Ok(30 * day));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 10s "), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "-5s", "5x", "1.5.2h", "99999999999999999999"] {
            let error = parse_duration(bad).expect_err(bad);
            assert!(error.contains(bad.trim()), "{error:?} quotes {bad:?}");
        }
    }
}
