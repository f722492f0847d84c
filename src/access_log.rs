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
//! when the log is on (`with_caller`). So the /poll path resolves its token
//! once, as before, and with the log off noting is one thread-local read
//! that finds no slot.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use hyper::Method;
use tokio::task::futures::TaskLocalFuture;

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

impl Line<'_> {
    pub fn write(&self) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
