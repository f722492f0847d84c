//! The connection registry: every open connection, whether a request is in
//! flight on it, since when it has been idle, and how many connections each
//! client address holds. The listener asks it two things: may this address
//! open another connection, and, when every slot is taken, which connection
//! to close to make room.
//!
//! Making room: the connection idle the longest is told to close, as nginx
//! drains its reusable connections. Idle means no request in flight, i.e.
//! no handler future that has not returned; a parked poll is a request in
//! flight, so a poll is never closed to make room. Closing is hyper's
//! graceful shutdown: an idle HTTP/1 connection closes at once; one whose
//! next request arrived just as it was chosen answers that request first
//! (with `Connection: close`), which is the usual keep-alive race a client
//! already handles.
//!
//! Per-address cap (`--max-connections-per-ip`, by the socket peer's IP):
//! a connection beyond it is closed at once, without an answer. A `503`
//! would need the request read first (a task, a read buffer, up to the
//! header timeout) and a lingering close to reach the client reliably, i.e.
//! the very resources the cap protects; an address at its cap is either
//! misbehaving or a NAT far larger than a browser crowd.
//!
//! Cost: one `std::sync::Mutex` over a slab, an intrusive idle list and a
//! per-address count; each critical section is O(1) (a few pointer updates,
//! one hash-map update) and never spans an `.await`. A connection takes the
//! lock when it opens and closes; a request takes one atomic increment when
//! it starts and the lock once when it ends (to move its connection to the
//! newest end of the idle list). A connection whose request started stays
//! in the idle list until the next request ends or an eviction passes it by
//! (and unlinks it), so starting a request needs no lock.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use slab::Slab;
use tokio::sync::Notify;

/// How often the rate-limited summary of closed and refused connections
/// may be logged at info (each event is also logged at debug).
const PRESSURE_REPORT_EVERY: Duration = Duration::from_secs(10);

/// A handle on the registry; cheap to clone. Created by the listener, cloned
/// into each connection's `Registration`.
#[derive(Clone)]
pub(super) struct Connections {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Most connections per client address; 0 is no cap.
    per_ip_cap: usize,
}

struct State {
    entries: Slab<Entry>,
    /// Head of the idle list: the connection idle the longest.
    oldest: Option<usize>,
    /// Tail of the idle list: the one idle the shortest.
    newest: Option<usize>,
    /// Open connections per client address; an address with none is absent.
    per_ip: HashMap<IpAddr, usize>,
}

struct Entry {
    ip: IpAddr,
    tracked: Arc<Tracked>,
    /// Neighbours in the idle list, when `linked`.
    prev: Option<usize>,
    next: Option<usize>,
    linked: bool,
    /// When it was last linked: since when it has been idle, if it still is.
    idle_since: Instant,
    /// Told to close; never linked again.
    closing: bool,
}

/// What a connection's task, its service and the registry share.
struct Tracked {
    /// Requests whose handler has not returned (0 or 1 on HTTP/1).
    in_flight: AtomicUsize,
    /// Fired when the connection should close: to make room, or shutdown.
    close: Notify,
}

/// One open connection's place in the registry. The listener creates it;
/// the connection's task and its service each hold an `Arc` of it;
/// dropping the last removes the connection and frees its address's count.
pub(super) struct Registration {
    connections: Connections,
    key: usize,
    tracked: Arc<Tracked>,
}

/// A request in flight on a connection: created when hyper hands the
/// service a request, dropped when the handler returns (or is dropped with
/// the connection), which makes the connection idle again.
pub(super) struct InFlight(Arc<Registration>);

pin_project_lite::pin_project! {
    /// A request's handler, holding its `InFlight` until the answer is
    /// ready. A struct rather than an `async move` block that awaits the
    /// handler: such a block keeps the handler future twice (as captured
    /// and as awaited), and hyper allocates room for the service's future
    /// once per connection, so a parked poll would pay for both.
    pub(super) struct Answering<F> {
        #[pin]
        handler: F,
        in_flight: Option<InFlight>,
    }
}

impl<F: Future> Future for Answering<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let answer = ready!(this.handler.poll(cx));
        this.in_flight.take();
        Poll::Ready(answer)
    }
}

impl Connections {
    /// `per_ip_cap`: most connections per client address, 0 for no cap.
    pub(super) fn new(per_ip_cap: usize) -> Connections {
        Connections {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    entries: Slab::new(),
                    oldest: None,
                    newest: None,
                    per_ip: HashMap::new(),
                }),
                per_ip_cap,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before it
        // could panic, so a poisoned lock is still usable.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The per-address cap, 0 for none.
    pub(super) fn per_ip_cap(&self) -> usize {
        self.shared.per_ip_cap
    }

    /// Whether `ip` may open another connection.
    pub(super) fn admits(&self, ip: IpAddr) -> bool {
        let cap = self.shared.per_ip_cap;
        cap == 0 || self.lock().per_ip.get(&ip).copied().unwrap_or(0) < cap
    }

    /// Registers a newly accepted connection from `ip`, idle until its
    /// first request.
    pub(super) fn register(&self, ip: IpAddr) -> Arc<Registration> {
        let tracked = Arc::new(Tracked {
            in_flight: AtomicUsize::new(0),
            close: Notify::new(),
        });
        let mut state = self.lock();
        let key = state.entries.insert(Entry {
            ip,
            tracked: tracked.clone(),
            prev: None,
            next: None,
            linked: false,
            idle_since: Instant::now(),
            closing: false,
        });
        state.link_newest(key);
        *state.per_ip.entry(ip).or_insert(0) += 1;
        Arc::new(Registration {
            connections: self.clone(),
            key,
            tracked,
        })
    }

    /// Tells the connection idle the longest to close; how long it had
    /// been idle, or None when no connection is idle. Connections found
    /// busy (or already closing) on the way are unlinked: a request's end
    /// links its connection again.
    pub(super) fn close_oldest_idle(&self) -> Option<Duration> {
        let mut state = self.lock();
        while let Some(key) = state.oldest {
            state.unlink(key);
            let entry = &mut state.entries[key];
            if entry.closing || entry.tracked.in_flight.load(Ordering::Acquire) > 0 {
                continue;
            }
            // A request may arrive between this check and the close: hyper
            // then answers it before closing.
            entry.closing = true;
            entry.tracked.close.notify_one();
            return Some(entry.idle_since.elapsed());
        }
        None
    }

    /// How many connections are open (for the metrics scrape).
    pub(super) fn open(&self) -> usize {
        self.lock().entries.len()
    }

    /// Tells every connection to close (shutdown): idle ones close at once,
    /// busy ones after their answer.
    pub(super) fn close_all(&self) {
        let mut state = self.lock();
        for (_, entry) in state.entries.iter_mut() {
            entry.closing = true;
            entry.tracked.close.notify_one();
        }
    }

    /// A request on connection `key` ended: if none is left in flight, the
    /// connection becomes the newest idle one.
    fn request_ended(&self, key: usize, tracked: &Tracked) {
        let mut state = self.lock();
        // Under the lock, so that an eviction sees either the request in
        // flight or the connection linked as idle, never neither.
        if tracked.in_flight.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        if state.entries.get(key).is_some_and(|entry| !entry.closing) {
            state.unlink(key);
            state.link_newest(key);
        }
    }

    fn deregister(&self, key: usize) {
        let mut state = self.lock();
        if !state.entries.contains(key) {
            return;
        }
        state.unlink(key);
        let entry = state.entries.remove(key);
        if let Some(count) = state.per_ip.get_mut(&entry.ip) {
            *count -= 1;
            if *count == 0 {
                state.per_ip.remove(&entry.ip);
            }
        }
    }
}

impl State {
    fn link_newest(&mut self, key: usize) {
        let prev = self.newest;
        let entry = &mut self.entries[key];
        entry.prev = prev;
        entry.next = None;
        entry.linked = true;
        entry.idle_since = Instant::now();
        match prev {
            Some(prev) => self.entries[prev].next = Some(key),
            None => self.oldest = Some(key),
        }
        self.newest = Some(key);
    }

    fn unlink(&mut self, key: usize) {
        let entry = &mut self.entries[key];
        if !entry.linked {
            return;
        }
        entry.linked = false;
        let (prev, next) = (entry.prev.take(), entry.next.take());
        match prev {
            Some(prev) => self.entries[prev].next = next,
            None => self.oldest = next,
        }
        match next {
            Some(next) => self.entries[next].prev = prev,
            None => self.newest = prev,
        }
    }
}

impl Registration {
    /// Marks a request in flight until the returned guard drops.
    pub(super) fn request_started(self: &Arc<Self>) -> InFlight {
        self.tracked.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Marks a request in flight until `handler` has its answer (or is
    /// dropped with the connection).
    pub(super) fn answering<F: Future>(self: &Arc<Self>, handler: F) -> Answering<F> {
        Answering {
            handler,
            in_flight: Some(self.request_started()),
        }
    }

    /// Completes once the connection has been told to close.
    pub(super) async fn close_requested(&self) {
        self.tracked.close.notified().await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.connections.deregister(self.key);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let registration = &self.0;
        registration
            .connections
            .request_ended(registration.key, &registration.tracked);
    }
}

/// Logs connections closed to make room and connections refused: each at
/// debug, and a summary at info at most once per `PRESSURE_REPORT_EVERY`,
/// so a client hammering the limits cannot flood the log. Owned by the
/// accept loop.
pub(super) struct PressureLog {
    /// When the summary was last logged; None before the first, which is
    /// logged at once.
    reported: Option<Instant>,
    closed_idle: u64,
    refused: u64,
    last_refused: Option<IpAddr>,
}

impl PressureLog {
    pub(super) fn new() -> PressureLog {
        PressureLog {
            reported: None,
            closed_idle: 0,
            refused: 0,
            last_refused: None,
        }
    }

    pub(super) fn closed_idle(&mut self, idle_for: Duration) {
        tracing::debug!(?idle_for, "connections full: closing the one idle longest");
        self.closed_idle += 1;
        self.report();
    }

    pub(super) fn refused(&mut self, ip: IpAddr, cap: usize) {
        tracing::debug!(%ip, cap, "refused a connection: its address is at its cap");
        self.refused += 1;
        self.last_refused = Some(ip);
        self.report();
    }

    fn report(&mut self) {
        if self
            .reported
            .is_some_and(|reported| reported.elapsed() < PRESSURE_REPORT_EVERY)
        {
            return;
        }
        tracing::info!(
            closed_idle = self.closed_idle,
            refused = self.refused,
            last_refused = self.last_refused.map(tracing::field::display),
            "connection limits reached (counts since the last such line): closed idle connections to make room, refused connections over --max-connections-per-ip"
        );
        *self = PressureLog {
            reported: Some(Instant::now()),
            ..PressureLog::new()
        };
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    /// Whether the registration has been told to close.
    fn told_to_close(registration: &Registration) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let closed = std::pin::pin!(registration.close_requested());
        closed.poll(&mut cx).is_ready()
    }

    /// Makes room, and checks that `expected` was the one told to close.
    fn closes_next(connections: &Connections, expected: &Registration) {
        assert!(connections.close_oldest_idle().is_some());
        assert!(told_to_close(expected));
    }

    #[test]
    fn the_connection_idle_longest_is_closed_first() {
        let connections = Connections::new(0);
        let first = connections.register(A);
        let second = connections.register(A);
        let third = connections.register(B);
        // `first` answers a request, so `second` is now idle the longest.
        drop(first.request_started());

        closes_next(&connections, &second);
        assert!(!told_to_close(&first) && !told_to_close(&third));
        closes_next(&connections, &third);
        closes_next(&connections, &first);
        assert_eq!(connections.close_oldest_idle(), None);
    }

    #[test]
    fn a_request_in_flight_is_never_closed_to_make_room() {
        let connections = Connections::new(0);
        let polling = connections.register(A);
        let idle = connections.register(A);
        let parked = polling.request_started();

        closes_next(&connections, &idle);
        assert_eq!(connections.close_oldest_idle(), None);
        assert!(!told_to_close(&polling));

        // Answered, it is idle again and can make room.
        drop(parked);
        closes_next(&connections, &polling);
    }

    #[test]
    fn a_closing_connection_is_not_offered_again() {
        let connections = Connections::new(0);
        let only = connections.register(A);
        let request = only.request_started();
        connections.close_all();
        drop(request);
        assert_eq!(connections.close_oldest_idle(), None);
    }

    #[test]
    fn each_address_holds_at_most_its_cap() {
        let connections = Connections::new(2);
        let first = connections.register(A);
        let _second = connections.register(A);
        assert!(!connections.admits(A));
        assert!(connections.admits(B));
        drop(first);
        assert!(connections.admits(A));
        assert_eq!(connections.lock().per_ip.get(&A), Some(&1));

        let uncapped = Connections::new(0);
        let _held: Vec<_> = (0..10).map(|_| uncapped.register(A)).collect();
        assert!(uncapped.admits(A));
    }

    #[test]
    fn closed_connections_leave_nothing_behind() {
        let connections = Connections::new(4);
        let registrations: Vec<_> = (0..3).map(|_| connections.register(A)).collect();
        let request = registrations[1].request_started();
        drop(registrations);
        drop(request);
        let state = connections.lock();
        assert!(state.entries.is_empty() && state.per_ip.is_empty());
        assert_eq!((state.oldest, state.newest), (None, None));
    }
}
