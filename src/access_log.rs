//! The access log: one line per request at `info` on the target
//! `parlor::access`, with the method, the endpoint (the API path as routed,
//! or `other` for static files and unknown paths; never the raw path or its
//! query string), the status, the time until the answer's head was ready
//! (`duration_us`; for a parked poll, how long it was held), the error code
//! of a refusal, and the user and client id the request acted as, once
//! known. Never a token, password or JWT: only those fields are written.
//! `RUST_LOG=info,parlor::access=off` turns it off.
//!
//! Who the request acted as is found deep in the hub, where its token is
//! resolved under the hub's locks, and nowhere else. Rather than thread a
//! parameter through every endpoint and hub method, the hub notes the
//! caller (`note_caller`) into a slot that lives as long as the request: a
//! tokio task-local, which `http::handle` sets up around the request only
//! when the log is on (`capture`). So the /poll path resolves its token
//! once, as before, and with the log off noting is one thread-local read
//! that finds no slot.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use hyper::Method;

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

/// Runs `request` with a caller slot when `on`, and returns what the hub
/// noted in it.
pub async fn capture<F: Future>(on: bool, request: F) -> (F::Output, Caller) {
    if !on {
        return (request.await, Caller::default());
    }
    let served = async {
        let answer = request.await;
        (answer, CALLER.with(RefCell::take))
    };
    CALLER.scope(RefCell::default(), served).await
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

impl Line<'_> {
    pub fn write(&self) {
        let duration_us = u64::try_from(self.duration.as_micros()).unwrap_or(u64::MAX);
        tracing::info!(
            target: TARGET,
            method = %self.method,
            endpoint = self.endpoint,
            status = self.status,
            duration_us,
            error = self.error,
            user = self.caller.user.as_deref(),
            client = self.caller.client,
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_caller_is_captured_only_when_on() {
        let request = async {
            note_caller("ann", 7);
            note_caller("ann", 8);
            wants_caller()
        };
        let (wanted, caller) = capture(true, request).await;
        assert!(wanted);
        assert_eq!(
            caller,
            Caller {
                user: Some("ann".into()),
                client: Some(8),
            }
        );
        let (wanted, caller) = capture(false, async {
            note_caller("bob", 1);
            wants_caller()
        })
        .await;
        assert!(!wanted);
        assert_eq!(caller, Caller::default());
    }
}
