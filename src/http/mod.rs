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
//! The path is looked up once per request, and what is kept of it for the
//! rest of the request is the row's `&'static` path, never the `Uri`: that
//! shares the bytes hyper read the request into, and a parked poll holding
//! it would pin hyper's 8 KiB read buffer until it is answered. Paths not
//! in the table are static files for GET and HEAD, 404 JSON otherwise.

pub mod client_addr;
pub mod cors;
pub mod request;
pub mod response;
pub mod static_files;

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, X_CONTENT_TYPE_OPTIONS};
use hyper::{Method, Request, Response, StatusCode};

use crate::access_log::{self, Caller};
use crate::api;
use crate::api::health::Readiness;
use crate::auth::join_token::JoinTokens;
use crate::engine::Engine;
use crate::error::{ApiError, ApiResult};
use request::Params;
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
pub async fn handle(
    app: Arc<App>,
    peer: IpAddr,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let logging = access_log::enabled();
    let started = logging.then(Instant::now);
    let method = request.method().clone();
    let index = Route::find_index(request.uri().path());
    let found = index.map(|index| &ROUTES[index]);
    // For the error log (see the module doc for why not the `Uri`). An API
    // path is its static name, with no allocation on the hot paths;
    // anything else is copied.
    let path: Cow<'static, str> = match found {
        Some(found) => Cow::Borrowed(found.path),
        None => Cow::Owned(request.uri().path().to_owned()),
    };
    let admitted = app.cors.admit(request.headers());
    let preflight = match (&admitted, found) {
        (Some(origin), Some(found))
            if method == Method::OPTIONS && cors::is_preflight(request.headers()) =>
        {
            Some(cors::preflight(origin.clone(), &found.allow()))
        }
        _ => None,
    };
    let mut caller = Caller::default();
    let answer = match preflight {
        Some(preflight) => Ok(preflight),
        None if logging => {
            let mut scoped = pin!(access_log::with_caller(route(&app, found, peer, request)));
            let answer = scoped.as_mut().await;
            caller = access_log::caller_of(scoped);
            answer
        }
        None => route(&app, found, peer, request).await,
    };
    let mut refused = None;
    let mut response = match answer {
        Ok(response) => response,
        Err(error) => {
            refused = Some(error.code);
            tracing::debug!(%method, %path, %error, "request failed");
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
    if let Some(origin) = admitted {
        cors::admit_answer(&mut response, origin);
    }
    let endpoint = index.unwrap_or(ROUTES.len());
    let metrics = app.engine.metrics();
    metrics.request(endpoint, response.status().as_u16());
    if let Some(started) = started {
        access_log::Line {
            method: &method,
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

/// Serves `request`; `found` is its path's row in `ROUTES`, if it has one.
async fn route(
    app: &App,
    found: Option<&'static Route>,
    peer: IpAddr,
    request: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let Some(found) = found else {
        let method = request.method();
        let path = request.uri().path();
        if method == Method::GET || method == Method::HEAD {
            let file = static_files::serve(&app.public_dir, method, path, request.headers());
            // Boxed for the reason `serve_brief` is.
            return Box::pin(file).await;
        }
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no endpoint {method} {path}"),
        ));
    };
    if !found.methods.contains(request.method()) {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} accepts {}", found.path, found.allow()),
        ));
    }
    match found.endpoint {
        Endpoint::Poll => api::session::poll(&app.engine, Params::read(request).await?).await,
        endpoint => Box::pin(serve_brief(app, endpoint, peer, request)).await,
    }
}

/// Serves an endpoint. `route` sends it every endpoint but /poll (the one
/// that waits long) and boxes its future (see the module doc), so that
/// /join's (the largest: password hashing or a JWT check, and in cluster
/// mode Redis scripts) never sizes a parked poll's connection.
async fn serve_brief(
    app: &App,
    endpoint: Endpoint,
    peer: IpAddr,
    request: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let engine = &app.engine;
    match endpoint {
        Endpoint::Healthz => api::health::healthz(engine).await,
        Endpoint::Readyz => api::health::readyz(engine, &app.readiness).await,
        Endpoint::Poll => api::session::poll(engine, Params::read(request).await?).await,
        Endpoint::Join => {
            // Only /join limits by address, so only it reads the headers.
            let client = client_addr::client_ip(peer, request.headers(), &app.trusted_proxies);
            let params = Params::read(request).await?;
            api::session::join(engine, app.join_tokens.as_deref(), client, params).await
        }
        Endpoint::Sync => api::session::sync(engine, Params::read(request).await?).await,
        Endpoint::Leave => api::session::leave(engine, Params::read(request).await?).await,
        Endpoint::Status => api::session::set_status(engine, Params::read(request).await?).await,
        Endpoint::Users => api::session::users(engine, Params::read(request).await?).await,
        Endpoint::Send => api::conversations::send(engine, Params::read(request).await?).await,
        Endpoint::History => {
            api::conversations::history(engine, Params::read(request).await?).await
        }
        Endpoint::Dialog => api::conversations::dialog(engine, Params::read(request).await?).await,
        Endpoint::RoomsJoin => {
            api::conversations::join_room(engine, Params::read(request).await?).await
        }
        Endpoint::RoomsLeave => {
            api::conversations::leave_room(engine, Params::read(request).await?).await
        }
        Endpoint::Publish => api::publish::publish(app, Params::read(request).await?).await,
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
        // parked poll pays for it (see the module doc): 2 344 bytes in a
        // release build, 3 040 with every endpoint inline. The bound is the
        // top of the allocator's size class it falls in (jemalloc's 2 560);
        // past it, every connection pays for the next one.
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
