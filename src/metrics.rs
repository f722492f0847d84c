//! Prometheus metrics: what parlor counts, and the text it is scraped as
//! (`GET /metrics` on `--metrics-listen`, served by `server`).
//!
//! What is counted: HTTP requests by endpoint and status class, how polls
//! were answered, messages, expired cursors, swept client processes, rate
//! limit refusals, and three histograms — store commit time and batch size,
//! and the wake time of a parked poll (events durable → answer built).
//! Gauges that the server already keeps as state (parked polls, client
//! processes, online users, open connections) are read at scrape time
//! (`Gauges`), never maintained per request.
//!
//! Why it is cheap on the hot path: every counter is a fixed slot found by
//! index (an endpoint's row, a status class, an enum), bumped with one
//! relaxed atomic add — no allocation, no lock, no label hashing, no string
//! formatting per request. A histogram observation is a scan of at most
//! `MAX_BUCKETS` bounds and two relaxed adds. All the formatting happens
//! at scrape time, once a scrape. (`prometheus-client`'s `Family` hashes
//! the label set into a map under a lock per access, and its histogram
//! takes a lock per observation; hence these hand-rolled fixed slots.)
//!
//! The store's histograms are process-wide (`STORE`): the SQLite writer
//! sits below the `Store` trait on a thread of its own, and a process has
//! one store.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::hub::Limited;

/// Most endpoints the request counter has slots for (API rows plus one
/// for everything else); `http` has 14.
pub const MAX_ENDPOINTS: usize = 32;
/// Status classes 1xx to 5xx.
const STATUS_CLASSES: usize = 5;
/// Most finite bucket bounds of a histogram.
const MAX_BUCKETS: usize = 20;

/// How a poll was answered (`parlor_poll_answers_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollAnswer {
    /// With events (also when they were there already).
    Events,
    /// Empty: nothing arrived before the poll's timeout.
    Timeout,
    /// Empty: a newer poll of the same client process took its place.
    Superseded,
    /// Empty: the server is shutting down.
    Shutdown,
}

impl PollAnswer {
    const ALL: [PollAnswer; 4] = [
        PollAnswer::Events,
        PollAnswer::Timeout,
        PollAnswer::Superseded,
        PollAnswer::Shutdown,
    ];

    fn label(self) -> &'static str {
        match self {
            PollAnswer::Events => "events",
            PollAnswer::Timeout => "timeout",
            PollAnswer::Superseded => "superseded",
            PollAnswer::Shutdown => "shutdown",
        }
    }
}

/// Which limit refused a request (`parlor_rate_limited_total{limit}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// `signup`: new accounts per client address.
    Signup,
    /// `password`: wrong passwords per (name, client address).
    Password,
    /// `bad_token`: invalid join JWTs per client address.
    BadToken,
    /// `status`: /status calls per client process.
    Status,
    /// `send`: messages per user.
    Send,
    /// `room_create`: rooms created per user.
    RoomCreate,
    /// `hash_queue`: too many /join requests waiting for password hashing.
    HashQueue,
    /// `clients`: a user's client processes (`too_many_clients`).
    Clients,
}

impl RateLimit {
    const ALL: [RateLimit; 8] = [
        RateLimit::Signup,
        RateLimit::Password,
        RateLimit::BadToken,
        RateLimit::Status,
        RateLimit::Send,
        RateLimit::RoomCreate,
        RateLimit::HashQueue,
        RateLimit::Clients,
    ];

    fn label(self) -> &'static str {
        match self {
            RateLimit::Signup => "signup",
            RateLimit::Password => "password",
            RateLimit::BadToken => "bad_token",
            RateLimit::Status => "status",
            RateLimit::Send => "send",
            RateLimit::RoomCreate => "room_create",
            RateLimit::HashQueue => "hash_queue",
            RateLimit::Clients => "clients",
        }
    }
}

impl From<Limited> for RateLimit {
    fn from(limited: Limited) -> RateLimit {
        match limited {
            Limited::Signups => RateLimit::Signup,
            Limited::WrongPasswords => RateLimit::Password,
            Limited::BadJoinTokens => RateLimit::BadToken,
            Limited::StatusChanges => RateLimit::Status,
            Limited::Sends => RateLimit::Send,
            Limited::RoomCreations => RateLimit::RoomCreate,
        }
    }
}

/// A fixed-bucket histogram of integer observations. Buckets are counted
/// apart (not cumulatively) so an observation touches one; the scrape sums
/// them up.
pub struct Histogram {
    /// Upper bounds, ascending, in the observation's unit.
    bounds: &'static [u64],
    /// Per bound, then one for above the last.
    buckets: [AtomicU64; MAX_BUCKETS + 1],
    sum: AtomicU64,
    /// Observation unit per exported unit (1 000 000 for µs as seconds).
    scale: u64,
}

impl Histogram {
    const fn new(bounds: &'static [u64], scale: u64) -> Histogram {
        assert!(bounds.len() <= MAX_BUCKETS);
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; MAX_BUCKETS + 1],
            sum: AtomicU64::new(0),
            scale,
        }
    }

    pub fn observe(&self, value: u64) {
        let index = self
            .bounds
            .iter()
            .position(|&bound| value <= bound)
            .unwrap_or(self.bounds.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    fn observe_duration(&self, elapsed: Duration) {
        self.observe(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let scale = self.scale as f64;
        let mut count = 0;
        for (index, bound) in self.bounds.iter().enumerate() {
            count += self.buckets[index].load(Ordering::Relaxed);
            let le = *bound as f64 / scale;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
        }
        count += self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        let sum = self.sum.load(Ordering::Relaxed) as f64 / scale;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Bounds of the time histograms, in µs: 10 µs (a wake on an idle
/// server) to 2.5 s.
const MICROS: &[u64] = &[
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000,
];
/// Bounds of the batch size histogram, in jobs.
const JOBS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// The SQLite writer's histograms (process-wide: see the module doc).
pub struct StoreMetrics {
    commit_micros: Histogram,
    batch_size: Histogram,
}

pub static STORE: StoreMetrics = StoreMetrics {
    commit_micros: Histogram::new(MICROS, 1_000_000),
    batch_size: Histogram::new(JOBS, 1),
};

impl StoreMetrics {
    /// One transaction of `jobs` jobs took `elapsed` (retries included).
    pub fn committed(&self, elapsed: Duration, jobs: usize) {
        self.commit_micros.observe_duration(elapsed);
        self.batch_size.observe(jobs as u64);
    }
}

/// The gauges, read from the live state at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub parked_polls: usize,
    pub client_processes: usize,
    pub online_users: usize,
    pub open_connections: usize,
}

/// A cheap-to-clone handle on one server's counters. The hub creates it;
/// `Hub::metrics` hands it to the HTTP service and the server.
#[derive(Clone)]
pub struct Metrics {
    counters: Arc<Counters>,
}

struct Counters {
    /// By endpoint slot (see `http`), then status class.
    http_requests: [[AtomicU64; STATUS_CLASSES]; MAX_ENDPOINTS],
    /// By `PollAnswer`.
    poll_answers: [AtomicU64; PollAnswer::ALL.len()],
    messages: AtomicU64,
    cursor_expired: AtomicU64,
    swept_clients: AtomicU64,
    /// By `RateLimit`.
    rate_limited: [AtomicU64; RateLimit::ALL.len()],
    wake_micros: Histogram,
    /// When events last became durable, in µs since `epoch` (what a woken
    /// poll's wake time is measured from).
    durable_at: AtomicU64,
    epoch: Instant,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            counters: Arc::new(Counters {
                http_requests: [const { [const { AtomicU64::new(0) }; STATUS_CLASSES] };
                    MAX_ENDPOINTS],
                poll_answers: [const { AtomicU64::new(0) }; PollAnswer::ALL.len()],
                messages: AtomicU64::new(0),
                cursor_expired: AtomicU64::new(0),
                swept_clients: AtomicU64::new(0),
                rate_limited: [const { AtomicU64::new(0) }; RateLimit::ALL.len()],
                wake_micros: Histogram::new(MICROS, 1_000_000),
                durable_at: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// A request to endpoint slot `endpoint` was answered with `status`.
    pub fn request(&self, endpoint: usize, status: u16) {
        let class = usize::from(status / 100).clamp(1, STATUS_CLASSES) - 1;
        bump(&self.counters.http_requests[endpoint.min(MAX_ENDPOINTS - 1)][class]);
    }

    pub fn poll_answered(&self, how: PollAnswer) {
        bump(&self.counters.poll_answers[how as usize]);
    }

    pub fn message(&self) {
        bump(&self.counters.messages);
    }

    pub fn cursor_expired(&self) {
        bump(&self.counters.cursor_expired);
    }

    pub fn swept_client(&self) {
        bump(&self.counters.swept_clients);
    }

    pub fn rate_limited(&self, limit: RateLimit) {
        bump(&self.counters.rate_limited[limit as usize]);
    }

    fn since_epoch(&self) -> u64 {
        let elapsed = self.counters.epoch.elapsed().as_micros();
        u64::try_from(elapsed).unwrap_or(u64::MAX)
    }

    /// Events just became durable and their readers are being woken.
    pub fn durable_now(&self) {
        // At least 1: 0 stands for never.
        let now = self.since_epoch().max(1);
        self.counters.durable_at.store(now, Ordering::Relaxed);
    }

    /// A poll woken for events built its answer.
    pub fn woken_poll_answered(&self) {
        let durable_at = self.counters.durable_at.load(Ordering::Relaxed);
        if durable_at == 0 {
            return; // nothing was made durable yet: no wake to time
        }
        let waited = self.since_epoch().saturating_sub(durable_at);
        self.counters.wake_micros.observe(waited);
    }

    /// The Prometheus text exposition. `endpoints` names the endpoint
    /// slots in order; slots past it are not shown.
    pub fn render(&self, gauges: Gauges, endpoints: &[&str]) -> String {
        let counters = &*self.counters;
        let mut out = String::with_capacity(8 * 1024);
        for (name, help, value) in [
            (
                "parlor_parked_polls",
                "Polls parked waiting for events.",
                gauges.parked_polls,
            ),
            (
                "parlor_client_processes",
                "Open client processes.",
                gauges.client_processes,
            ),
            (
                "parlor_online_users",
                "Users with a client process.",
                gauges.online_users,
            ),
            (
                "parlor_open_connections",
                "Open HTTP connections.",
                gauges.open_connections,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let name = "parlor_http_requests_total";
        let _ = writeln!(out, "# HELP {name} HTTP requests answered, by endpoint and status class.\n# TYPE {name} counter");
        for (endpoint, by_class) in endpoints.iter().zip(&counters.http_requests) {
            for (class, count) in by_class.iter().enumerate() {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    let status = class + 1;
                    let _ = writeln!(
                        out,
                        "{name}{{endpoint=\"{endpoint}\",status=\"{status}xx\"}} {count}"
                    );
                }
            }
        }
        let answers =
            PollAnswer::ALL.map(|how| (how.label(), &counters.poll_answers[how as usize]));
        labelled(
            &mut out,
            "parlor_poll_answers_total",
            "Polls answered, by why.",
            "reason",
            answers,
        );
        for (name, help, counter) in [
            (
                "parlor_messages_total",
                "Messages sent.",
                &counters.messages,
            ),
            (
                "parlor_cursor_expired_total",
                "Polls refused for a cursor older than the mailbox keeps.",
                &counters.cursor_expired,
            ),
            (
                "parlor_swept_clients_total",
                "Client processes closed for inactivity.",
                &counters.swept_clients,
            ),
        ] {
            let count = counter.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {count}"
            );
        }
        let limits =
            RateLimit::ALL.map(|limit| (limit.label(), &counters.rate_limited[limit as usize]));
        labelled(
            &mut out,
            "parlor_rate_limited_total",
            "Requests refused by a limit, by limit.",
            "limit",
            limits,
        );
        STORE.commit_micros.render(
            &mut out,
            "parlor_store_commit_seconds",
            "Time to write and commit one store transaction.",
        );
        STORE.batch_size.render(
            &mut out,
            "parlor_store_batch_size",
            "Jobs per store transaction (group commit).",
        );
        counters.wake_micros.render(
            &mut out,
            "parlor_wake_seconds",
            "From events becoming durable to a parked poll's answer.",
        );
        out
    }
}

/// A counter with one label: a sample per value, zeros included (the
/// values are few and fixed).
fn labelled<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (&'a str, &'a AtomicU64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, count) in samples {
        let count = count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let histogram = Histogram::new(&[1, 10], 1);
        for value in [0, 1, 5, 10, 11] {
            histogram.observe(value);
        }
        let mut out = String::new();
        histogram.render(&mut out, "h", "help");
        assert!(out.contains("h_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"10\"} 4\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("h_sum 27\nh_count 5\n"), "{out}");
    }

    #[test]
    fn requests_are_counted_by_endpoint_and_status_class() {
        let metrics = Metrics::default();
        metrics.request(1, 200);
        metrics.request(1, 204);
        metrics.request(0, 410);
        let out = metrics.render(Gauges::default(), &["/a", "/b"]);
        assert!(out.contains("endpoint=\"/b\",status=\"2xx\"} 2\n"), "{out}");
        assert!(out.contains("endpoint=\"/a\",status=\"4xx\"} 1\n"), "{out}");
    }
}
