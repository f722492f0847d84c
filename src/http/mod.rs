//! The hand-rolled hyper service: the routing table, and every failure
//! turned into a JSON error. No framework: `ROUTES` is the whole of it.
//!
//! Each row of `ROUTES` names an API path once, with the methods it
//! accepts (the `Allow` header of a 405 is derived from them) and the
//! `Endpoint` that serves it; `route` then has one `match` from
//! `Endpoint` to the function in `api`. Adding an endpoint is a row, a
//! variant and an arm; the compiler refuses a variant without its arm and
//! warns of one without its row.
//!
//! Why an enum rather than a handler pointer per row: the handlers differ
//! in shape (sync or async, `&Engine` or `&App`, /healthz reads no
//! parameters), and a common `fn(..) -> Pin<Box<dyn Future>>` would box a
//! future per request, parked polls included. The `match` costs a jump.
//!
//! Only /poll's future is inline in the connection's; every other
//! endpoint's is boxed for the length of its request (`serve_brief`).
//! hyper allocates room for the service's future once per connection, at
//! the size of the largest it may hold, and keeps it for the connection's
//! life. Inline, /join's or /send's (three times a parked poll's) would
//! set that size, and every connection parked on a poll would pay for it;
//! boxed, they cost an allocation per request instead.
//!
//! The request's head (method, `Uri`, headers) is read when hyper hands
//! the request over and dropped before anything waits: `handle` keeps only
//! the route's row, the parameters and the CORS origin. The head's bytes
//! share the buffer hyper read the request into, and a parked poll holding
//! any of them would pin hyper's 8 KiB read buffer until it is answered
//! (hyper, reading on to notice a closed connection, then allocates a
//! second one). Paths not in the table are static files for GET and HEAD
//! (which keep their head, boxed, for their brief life), 404 JSON
//! otherwise.

pub mod client_addr;
pub mod cors;
pub mod request;
pub mod response;
pub mod static_files;

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, X_CONTENT_TYPE_OPTIONS};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};

use crate::access_log::{self, Caller};
use crate::api;
use crate::api::health::Readiness;
use crate::auth::join_token::JoinTokens;
use crate::engine::Engine;
use crate::error::{ApiError, ApiResult};
use request::{Params, Unread};
use response::Body;

/// What every request handler needs; shared by every connection and
/// request behind one `Arc`.
#[derive(Clone)]
pub struct App {
    pub engine: Engine,
    /// Enables POST /api/publish when set.
    pub admin_token: Option<Arc<str>>,
    /// Checks /join's `auth` JWTs, when the server has a join secret.
    pub join_tokens: Option<Arc<JoinTokens>>,
    /// Whether shutdown has begun, for /readyz.
    pub readiness: Arc<Readiness>,
    pub public_dir: Arc<PathBuf>,
    /// The origins whose pages may call the API (`--allow-origin`).
    pub cors: Arc<cors::Cors>,
    /// Peers whose forwarding headers name the client (`--trusted-proxy`).
    pub trusted_proxies: Arc<[client_addr::Cidr]>,
}

/// An API endpoint: what a row of `ROUTES` names and `route` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Healthz,
    Readyz,
    Join,
    Sync,
    Poll,
    Leave,
    Status,
    Users,
    Send,
    History,
    Dialog,
    RoomsJoin,
    RoomsLeave,
    Publish,
}

/// One API path: the methods it accepts and the endpoint that serves it.
#[derive(Debug)]
struct Route {
    path: &'static str,
    methods: &'static [Method],
    endpoint: Endpoint,
}

/// Endpoints that only read: HEAD wherever GET.
const READ: &[Method] = &[Method::GET, Method::HEAD];
/// Endpoints that change state.
const WRITE: &[Method] = &[Method::POST];

/// Every API path. Matched exactly: not by prefix, not ignoring case.
static ROUTES: &[Route] = &[
    Route::new("/healthz", READ, Endpoint::Healthz),
    Route::new("/readyz", READ, Endpoint::Readyz),
    Route::new("/sync", READ, Endpoint::Sync),
    Route::new("/users", READ, Endpoint::Users),
    Route::new("/history", READ, Endpoint::History),
    // POST too, so the token and cursor can travel in a form body.
    Route::new("/poll", &[Method::GET, Method::POST], Endpoint::Poll),
    Route::new("/join", WRITE, Endpoint::Join),
    Route::new("/leave", WRITE, Endpoint::Leave),
    Route::new("/status", WRITE, Endpoint::Status),
    Route::new("/send", WRITE, Endpoint::Send),
    Route::new("/dialog", WRITE, Endpoint::Dialog),
    Route::new("/rooms/join", WRITE, Endpoint::RoomsJoin),
    Route::new("/rooms/leave", WRITE, Endpoint::RoomsLeave),
    Route::new("/api/publish", WRITE, Endpoint::Publish),
];

impl Route {
    const fn new(path: &'static str, methods: &'static [Method], endpoint: Endpoint) -> Route {
        Route {
            path,
            methods,
            endpoint,
        }
    }

    /// The row for an API path, if `path` is one.
    #[cfg(test)]
    fn find(path: &str) -> Option<&'static Route> {
        Route::find_index(path).map(|index| &ROUTES[index])
    }

    /// The index in `ROUTES` of an API path, if `path` is one.
    fn find_index(path: &str) -> Option<usize> {
        ROUTES.iter().position(|route| route.path == path)
    }

    /// The accepted methods as an `Allow` value, `GET, HEAD`. Built only
    /// for a 405, so it is not worth precomputing.
    fn allow(&self) -> String {
        let names: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
        names.join(", ")
    }
}

/// The service function: never fails at the HTTP level, since every error
/// is an answer the client should read. `peer` is the connection's
/// remote address (see `client_addr` for the client's).
///
/// Not an `async fn`: it reads what the request needs of its head (the
/// route, the CORS origin, the parameters, /join's client address) at once
/// and drops the head before returning the future that answers. So a
/// parked poll neither pins hyper's read buffer with the head's bytes nor
/// keeps room for the head in its future (an `async fn` stores its
/// arguments for its whole life, at every level they are passed down).
pub fn handle(
    app: Arc<App>,
    peer: IpAddr,
    request: Request<Incoming>,
) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send {
    let logging = access_log::enabled();
    let started = logging.then(Instant::now);
    let (head, body) = request.into_parts();
    let index = Route::find_index(head.uri.path());
    let found = index.map(|index| &ROUTES[index]);
    let admitted = app.cors.admit(&head.headers);
    let head_method = head.method.clone();
    let work = match (&admitted, found) {
        (Some(origin), Some(found))
            if head.method == Method::OPTIONS && cors::is_preflight(&head.headers) =>
        {
            Work::Done(Ok(cors::preflight(origin.clone(), &found.allow())))
        }
        _ => Work::start(&app, found, peer, head, body),
    };
    let call = Call {
        started,
        method: head_method,
        index,
        admitted,
    };
    answer(app, call, work)
}

/// What `handle` keeps of a request's head while it is answered.
struct Call {
    /// When the request arrived, if the access log is on.
    started: Option<Instant>,
    method: Method,
    /// Its path's row in `ROUTES`, if it has one.
    index: Option<usize>,
    /// The `Access-Control-Allow-Origin` of an admitted origin.
    admitted: Option<HeaderValue>,
}

/// What answering a request takes, once its head is read.
enum Work {
    /// Answered from the head alone: a preflight, or a refusal.
    Done(ApiResult<Response<Body>>),
    /// /poll, served inline (see the module doc).
    Poll(Unread),
    /// Any other endpoint: boxed into `serve_brief` when it runs.
    Brief(Endpoint, Unread, IpAddr),
    /// A static file, which needs the whole head; boxed for the reason
    /// `serve_brief` is.
    File(Pin<Box<dyn Future<Output = ApiResult<Response<Body>>> + Send>>),
}

impl Work {
    /// Reads what `found`'s endpoint needs of the head; `found` is the
    /// path's row in `ROUTES`, if it has one.
    fn start(
        app: &App,
        found: Option<&'static Route>,
        peer: IpAddr,
        head: Parts,
        body: Incoming,
    ) -> Work {
        let Some(found) = found else {
            let method = &head.method;
            if method == Method::GET || method == Method::HEAD {
                let public_dir = app.public_dir.clone();
                return Work::File(Box::pin(async move {
                    let path = head.uri.path();
                    static_files::serve(&public_dir, &head.method, path, &head.headers).await
                }));
            }
            let path = head.uri.path();
            return Work::Done(Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no endpoint {method} {path}"),
            )));
        };
        if !found.methods.contains(&head.method) {
            return Work::Done(Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} accepts {}", found.path, found.allow()),
            )));
        }
        // The health checks take no parameters.
        if let Endpoint::Healthz | Endpoint::Readyz = found.endpoint {
            return Work::Brief(found.endpoint, Unread::default(), peer);
        }
        let unread = match Params::from_head(&head, body) {
            Ok(unread) => unread,
            Err(error) => return Work::Done(Err(error)),
        };
        match found.endpoint {
            Endpoint::Poll => Work::Poll(unread),
            // Only /join limits by address, so only it reads the headers.
            Endpoint::Join => {
                let client = client_addr::client_ip(peer, &head.headers, &app.trusted_proxies);
                Work::Brief(Endpoint::Join, unread, client)
            }
            endpoint => Work::Brief(endpoint, unread, peer),
        }
    }
}

/// Answers a request whose head `handle` has read: runs its `work` (with a
/// caller slot when the access log is on), then adds the headers every
/// answer carries, counts it, and logs it.
async fn answer(app: Arc<App>, call: Call, work: Work) -> Result<Response<Body>, Infallible> {
    let found = call.index.map(|index| &ROUTES[index]);
    let mut caller = Caller::default();
    let answer = match call.started {
        Some(_) => {
            let mut scoped = pin!(access_log::with_caller(work.run(&app)));
            let answer = scoped.as_mut().await;
            caller = access_log::caller_of(scoped);
            answer
        }
        None => work.run(&app).await,
    };
    let mut refused = None;
    let mut response = match answer {
        Ok(response) => response,
        Err(error) => {
            refused = Some(error.code);
            let endpoint = found.map_or(OTHER_ENDPOINT, |route| route.path);
            tracing::debug!(method = %call.method, %endpoint, %error, "request failed");
            let allowed = found.filter(|_| error.status == StatusCode::METHOD_NOT_ALLOWED);
            let mut response = error.into_response();
            if let Some(allowed) = allowed {
                let allow = HeaderValue::try_from(allowed.allow())
                    .expect("method names are valid header values");
                response.headers_mut().insert(ALLOW, allow);
            }
            response
        }
    };
    // No browser may read an answer as anything but its declared type: a
    // JSON body carrying user text is never sniffed into HTML or script.
    response
        .headers_mut()
        .insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Some(origin) = call.admitted {
        cors::admit_answer(&mut response, origin);
    }
    let endpoint = call.index.unwrap_or(ROUTES.len());
    let metrics = app.engine.metrics();
    metrics.request(endpoint, response.status().as_u16());
    if let Some(started) = call.started {
        access_log::Line {
            method: &call.method,
            endpoint: found.map_or(OTHER_ENDPOINT, |route| route.path),
            status: response.status().as_u16(),
            duration: started.elapsed(),
            error: refused,
            caller: &caller,
        }
        .write();
    }
    Ok(response)
}

/// The label of each slot of `Metrics::request`'s endpoint: the API paths
/// in `ROUTES` order, then `other` (static files, unknown paths).
pub fn endpoint_labels() -> Vec<&'static str> {
    let paths = ROUTES.iter().map(|route| route.path);
    paths.chain([OTHER_ENDPOINT]).collect()
}

/// What metrics and the access log call a path not in `ROUTES`.
const OTHER_ENDPOINT: &str = "other";

impl Work {
    /// Serves the request.
    async fn run(self, app: &App) -> ApiResult<Response<Body>> {
        match self {
            Work::Done(answer) => answer,
            Work::Poll(unread) => api::session::poll(&app.engine, unread.read().await?).await,
            Work::Brief(endpoint, unread, client) => {
                Box::pin(serve_brief(app, endpoint, client, unread)).await
            }
            Work::File(file) => file.await,
        }
    }
}

/// Serves an endpoint. `Work::run` sends it every endpoint but /poll (the
/// one that waits long) and boxes its future (see the module doc), so that
/// /join's (the largest: password hashing or a JWT check, and in cluster
/// mode Redis scripts) never sizes a parked poll's connection. `client` is
/// the client's address for /join, the peer's for the rest.
async fn serve_brief(
    app: &App,
    endpoint: Endpoint,
    client: IpAddr,
    unread: Unread,
) -> ApiResult<Response<Body>> {
    let engine = &app.engine;
    let params = unread.read().await?;
    match endpoint {
        Endpoint::Healthz => api::health::healthz(engine).await,
        Endpoint::Readyz => api::health::readyz(engine, &app.readiness).await,
        Endpoint::Poll => api::session::poll(engine, params).await,
        Endpoint::Join => {
            api::session::join(engine, app.join_tokens.as_deref(), client, params).await
        }
        Endpoint::Sync => api::session::sync(engine, params).await,
        Endpoint::Leave => api::session::leave(engine, params).await,
        Endpoint::Status => api::session::set_status(engine, params).await,
        Endpoint::Users => api::session::users(engine, params).await,
        Endpoint::Send => api::conversations::send(engine, params).await,
        Endpoint::History => api::conversations::history(engine, params).await,
        Endpoint::Dialog => api::conversations::dialog(engine, params).await,
        Endpoint::RoomsJoin => api::conversations::join_room(engine, params).await,
        Endpoint::RoomsLeave => api::conversations::leave_room(engine, params).await,
        Endpoint::Publish => api::publish::publish(app, params).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_path_has_one_row_and_each_endpoint_one_path() {
        for (index, row) in ROUTES.iter().enumerate() {
            for other in &ROUTES[..index] {
                assert_ne!(row.path, other.path);
                assert_ne!(row.endpoint, other.endpoint, "{}", row.path);
            }
            assert!(!row.methods.is_empty(), "{} accepts no method", row.path);
            assert!(std::ptr::eq(Route::find(row.path).unwrap(), row));
        }
    }

    /// The size of the future that `f` returns, without calling it.
    fn future_size<A, B, C, F: std::future::Future>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn the_service_future_is_sized_by_the_poll() {
        // hyper keeps room for this future once per connection, so every
        // parked poll pays for it (see the module doc). The bound is the
        // top of a jemalloc size class (2 560) that the future, with the
        // head read before it starts, stays well inside in debug and
        // release builds; past it, every connection pays for the next one.
        let size = future_size(handle);
        assert!(size <= 2560, "the service's future grew to {size} bytes");
    }

    #[test]
    fn every_endpoint_has_a_metrics_slot() {
        assert!(endpoint_labels().len() <= crate::metrics::MAX_ENDPOINTS);
    }

    #[test]
    fn allow_lists_the_methods_in_order() {
        assert_eq!(Route::find("/healthz").unwrap().allow(), "GET, HEAD");
        assert_eq!(Route::find("/poll").unwrap().allow(), "GET, POST");
        assert_eq!(Route::find("/join").unwrap().allow(), "POST");
        assert!(Route::find("/healthz/").is_none());
    }
}
