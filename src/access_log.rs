//! The access log: one line per request at `info` on the target
//! `parlor::access`, with the method, the endpoint (the API path as routed,
//! or `other` for static files and unknown paths; never the raw path or its
//! query string), the status, the time until the answer's head was ready
//! (`duration_us`; for a parked poll, how long it was held), the error code
//! of a refusal, and the user and client id the request acted as, once
//! known. Never a token, password or JWT: only those fields are written.
//! `RUST_LOG=info,parlor::access=off` turns it off.
//!
//! The binary hands the log's writer to `write_to`, and each line is then
//! written here, in the exact text or JSON shape `tracing-subscriber` gives
//! every other line, rather than through `tracing`'s field visitors and
//! formatters: those took a quarter of the server's instructions in a
//! fan-out (docs/performance.md, the profiles of 2026-12-08). Without a
//! writer (the library in tests), lines go through `tracing` as any other.
//!
//! Who the request acted as is found deep in the hub, where its token is
//! resolved under the hub's locks, and nowhere else. Rather than thread a
//! parameter through every endpoint and hub method, the hub notes the
//! caller (`note_caller`) into a slot that lives as long as the request: a
//! tokio task-local, which `http::handle` sets up around the request only
//! when the log is on (`with_caller`). So the /poll path resolves its token
//! once, as before, and with the log off noting is one thread-local read
//! that finds no slot.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::Method;
use tokio::task::futures::TaskLocalFuture;
use tracing_appender::non_blocking::NonBlocking;

/// The log's target: filter on it with `RUST_LOG`.
pub const TARGET: &str = "parlor::access";

/// Who a request acted as, as far as the hub got.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: Option<String>,
    pub client: Option<u64>,
}

tokio::task_local! {
    /// The caller of the request being served, when the log is on.
    static CALLER: RefCell<Caller>;
}

/// Whether access lines are written now (`RUST_LOG`); asked once per
/// request, it costs an atomic load when the filter is static.
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// `request` with a caller slot: await it pinned, then take what the hub
/// noted with `caller_of`. A plain future rather than an `async fn`, so
/// that the request's future, which a parked poll holds for its whole
/// wait, is stored once in the connection's and not copied into a second
/// state machine (which doubled its size).
pub fn with_caller<F: Future>(request: F) -> Scoped<F> {
    CALLER.scope(RefCell::default(), request)
}

/// A request running with a caller slot (`with_caller`).
pub type Scoped<F> = TaskLocalFuture<RefCell<Caller>, F>;

/// What the hub noted in the slot of a request that has completed.
pub fn caller_of<F: Future>(scoped: Pin<&mut Scoped<F>>) -> Caller {
    scoped
        .take_value()
        .map(RefCell::into_inner)
        .unwrap_or_default()
}

/// Notes that the request acts as client `client` of `user` (called by the
/// hub wherever it resolves a token). Nothing when no slot is set up.
pub fn note_caller(user: &str, client: u64) {
    let _ = CALLER.try_with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.user.as_deref() != Some(user) {
            slot.user = Some(user.to_owned());
        }
        slot.client = Some(client);
    });
}

/// Whether a caller slot is set up: lets the hub skip a look-up it would
/// make only to call `note_caller`.
pub fn wants_caller() -> bool {
    CALLER.try_with(|_| ()).is_ok()
}

/// One request's line.
pub struct Line<'a> {
    pub method: &'a Method,
    pub endpoint: &'static str,
    pub status: u16,
    pub duration: Duration,
    /// The error code of a refused request.
    pub error: Option<&'static str>,
    pub caller: &'a Caller,
}

/// Where the lines go once the binary has set up its log (`write_to`).
static SINK: OnceLock<Sink> = OnceLock::new();

struct Sink {
    json: bool,
    /// The log's queue to its writer thread, shared with `tracing`'s lines.
    writer: NonBlocking,
}

/// From now on, access lines are formatted here, as JSON objects when
/// `json` (`--log-format json`) or else as text, and queued on `writer`.
/// The first call wins.
pub fn write_to(json: bool, writer: NonBlocking) {
    let _ = SINK.set(Sink { json, writer });
}

thread_local! {
    /// A line being formatted: one buffer per thread, reused.
    static FORMATTED: RefCell<String> = RefCell::new(String::with_capacity(256));
}

impl Line<'_> {
    pub fn write(&self) {
        let Some(sink) = SINK.get() else {
            return self.write_through_tracing();
        };
        FORMATTED.with(|formatted| {
            let mut line = formatted.borrow_mut();
            line.clear();
            if sink.json {
                self.push_json(&mut line, SystemTime::now());
            } else {
                self.push_text(&mut line, SystemTime::now());
            }
            // A full queue waits for the writer thread (never drops); an
            // error writing stderr has nowhere to be told.
            let _ = sink.writer.clone().write_all(line.as_bytes());
        });
    }

    /// As `tracing-subscriber`'s default format without colours:
    /// `TIME  INFO parlor::access: request method=GET endpoint=/poll ...`.
    fn push_text(&self, line: &mut String, now: SystemTime) {
        push_timestamp(line, now);
        line.push_str("  INFO ");
        line.push_str(TARGET);
        line.push_str(": request method=");
        line.push_str(self.method.as_str());
        let _ = write!(
            line,
            " endpoint={} status={} duration_us={}",
            self.endpoint,
            self.status,
            self.duration_us()
        );
        if let Some(error) = self.error {
            let _ = write!(line, " error={error}");
        }
        if let Some(user) = &self.caller.user {
            let _ = write!(line, " user={user}");
        }
        if let Some(client) = self.caller.client {
            let _ = write!(line, " client={client}");
        }
        line.push('\n');
    }

    /// As `tracing-subscriber`'s JSON format: `{"timestamp":...,"level":
    /// "INFO","fields":{"message":"request",...},"target":"parlor::access"}`.
    fn push_json(&self, line: &mut String, now: SystemTime) {
        line.push_str(r#"{"timestamp":""#);
        push_timestamp(line, now);
        line.push_str(r#"","level":"INFO","fields":{"message":"request","method":"#);
        push_json_string(line, self.method.as_str());
        line.push_str(r#","endpoint":"#);
        push_json_string(line, self.endpoint);
        let _ = write!(
            line,
            r#","status":{},"duration_us":{}"#,
            self.status,
            self.duration_us()
        );
        if let Some(error) = self.error {
            line.push_str(r#","error":"#);
            push_json_string(line, error);
        }
        if let Some(user) = &self.caller.user {
            line.push_str(r#","user":"#);
            push_json_string(line, user);
        }
        if let Some(client) = self.caller.client {
            let _ = write!(line, r#","client":{client}"#);
        }
        line.push_str(r#"},"target":"#);
        push_json_string(line, TARGET);
        line.push_str("}\n");
    }

    fn write_through_tracing(&self) {
        // Strings as Display: none needs escaping (endpoints are `ROUTES`
        // paths, error codes constants, user names plain ASCII).
        tracing::info!(
            target: TARGET,
            method = %self.method,
            endpoint = %self.endpoint,
            status = self.status,
            duration_us = self.duration_us(),
            error = self.error.map(tracing::field::display),
            user = self.caller.user.as_deref().map(tracing::field::display),
            client = self.caller.client,
            "request"
        );
    }

    fn duration_us(&self) -> u64 {
        u64::try_from(self.duration.as_micros()).unwrap_or(u64::MAX)
    }
}

/// `now` in UTC as RFC 3339 with microseconds (`2026-12-08T01:35:22.435870Z`),
/// as `tracing-subscriber` writes it.
fn push_timestamp(line: &mut String, now: SystemTime) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let of_day = seconds % 86_400;
    let _ = write!(
        line,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since_epoch.subsec_micros()
    );
}

/// The (year, month, day) of a count of days since 1970-01-01, by Howard
/// Hinnant's `civil_from_days` for dates from 1970 on.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// `text` as a JSON string. Every field is plain ASCII in practice (names,
/// codes, paths, method tokens); escaping keeps a line valid JSON anyway.
fn push_json_string(line: &mut String, text: &str) {
    line.push('"');
    for c in text.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(line, "\\u{:04x}", u32::from(c));
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::Value;

    use super::*;

    fn at(seconds: u64, micros: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_micros(micros)
    }

    #[test]
    fn timestamps_are_utc_rfc3339_with_microseconds() {
        for (time, expected) in [
            (at(0, 0), "1970-01-01T00:00:00.000000Z"),
            (at(951_782_400, 0), "2000-02-29T00:00:00.000000Z"),
            (at(1_709_164_800, 1), "2024-02-29T00:00:00.000001Z"),
            (at(1_796_693_722, 435_870), "2026-12-08T01:35:22.435870Z"),
        ] {
            let mut written = String::new();
            push_timestamp(&mut written, time);
            assert_eq!(written, expected);
        }
    }

    /// A `tracing-subscriber` writer that keeps what it is given.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// The line `tracing-subscriber` writes for `line`, in the binary's
    /// text or JSON format.
    fn through_tracing(line: &Line<'_>, json: bool) -> String {
        let captured = Captured::default();
        let writer = {
            let captured = captured.clone();
            move || captured.clone()
        };
        let logs = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false);
        if json {
            tracing::subscriber::with_default(logs.json().finish(), || {
                line.write_through_tracing()
            });
        } else {
            tracing::subscriber::with_default(logs.finish(), || line.write_through_tracing());
        }
        captured.text()
    }

    /// Access lines look exactly as the lines `tracing-subscriber` wrote
    /// for them, in both formats, whichever fields a request has, so log
    /// collectors parse them as before.
    #[test]
    fn lines_are_written_as_tracing_subscriber_writes_them() {
        let post = Method::POST;
        let odd = Method::from_bytes(b"PURGE").unwrap();
        let ann = Caller {
            user: Some("ann".into()),
            client: Some(3),
        };
        let nobody = Caller::default();
        let lines = [
            Line {
                method: &post,
                endpoint: "/join",
                status: 200,
                duration: Duration::from_micros(1967),
                error: None,
                caller: &ann,
            },
            Line {
                method: &odd,
                endpoint: "other",
                status: 405,
                duration: Duration::from_nanos(999),
                error: Some("method_not_allowed"),
                caller: &nobody,
            },
        ];
        for line in &lines {
            let theirs = through_tracing(line, false);
            let mut ours = String::new();
            line.push_text(&mut ours, SystemTime::now());
            // After the timestamps, which differ by when each was taken.
            let after_time = |text: &str| text.split_once(' ').unwrap().1.to_owned();
            assert_eq!(after_time(&ours), after_time(&theirs));
            assert!(ours.ends_with('\n'));

            let theirs = through_tracing(line, true);
            let mut ours = String::new();
            line.push_json(&mut ours, SystemTime::now());
            assert!(ours.ends_with('\n'));
            let mut theirs: Value = serde_json::from_str(&theirs).unwrap();
            let mut ours: Value = serde_json::from_str(&ours).unwrap();
            assert_eq!(
                ours["timestamp"].as_str().unwrap().len(),
                theirs["timestamp"].as_str().unwrap().len()
            );
            ours["timestamp"] = Value::Null;
            theirs["timestamp"] = Value::Null;
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut written = String::new();
        push_json_string(&mut written, "a\"b\\c\n");
        assert_eq!(written, r#""a\"b\\c\u000a""#);
        let _: Value = serde_json::from_str(&written).unwrap();
    }

    #[tokio::test]
    async fn the_caller_is_captured_in_the_slot_only() {
        let request = async {
            note_caller("ann", 7);
            note_caller("ann", 8);
            wants_caller()
        };
        let mut scoped = std::pin::pin!(with_caller(request));
        assert!(scoped.as_mut().await);
        assert_eq!(
            caller_of(scoped),
            Caller {
                user: Some("ann".into()),
                client: Some(8),
            }
        );
        // Without a slot, noting is nothing.
        note_caller("bob", 1);
        assert!(!wants_caller());
    }
}
