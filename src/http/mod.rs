//! The hand-rolled hyper service: one `match` from (method, path) to an
//! endpoint in `api`, with every failure turned into a JSON error. No
//! framework: the routing table below is the whole of it.

pub mod request;
pub mod response;
pub mod static_files;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW};
use hyper::{Method, Request, Response, StatusCode};

use crate::api;
use crate::error::{ApiError, ApiResult};
use crate::hub::Hub;
use request::Params;
use response::Body;

/// What every request handler needs; cheap to clone per connection.
#[derive(Clone)]
pub struct App {
    pub hub: Hub,
    /// Enables POST /api/publish when set.
    pub admin_token: Option<Arc<str>>,
    pub public_dir: Arc<PathBuf>,
}

/// The service function: never fails at the HTTP level, since every error
/// is an answer the client should read.
pub async fn handle(app: App, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = request.method().clone();
    // Not the `Uri`: it shares the bytes hyper read the request into, and
    // a parked poll holding it would pin that 8 KiB read buffer until it is
    // answered, making hyper allocate another to watch the connection.
    let path = LoggedPath::of(request.uri().path());
    let response = match route(&app, request).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%method, path = path.as_str(), %error, "request failed");
            let allowed = (error.status == StatusCode::METHOD_NOT_ALLOWED)
                .then(|| allowed_methods(path.as_str()))
                .flatten();
            let mut response = error.into_response();
            if let Some(allowed) = allowed {
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allowed));
            }
            response
        }
    };
    Ok(response)
}

/// A request's path as kept for the error log: an API path as the static
/// string it matched (no allocation on the hot paths), anything else
/// copied.
enum LoggedPath {
    Api(&'static str),
    Other(String),
}

impl LoggedPath {
    fn of(path: &str) -> LoggedPath {
        match api_endpoint(path) {
            Some((api, _)) => LoggedPath::Api(api),
            None => LoggedPath::Other(path.to_owned()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            LoggedPath::Api(path) => path,
            LoggedPath::Other(path) => path,
        }
    }
}

async fn route(app: &App, request: Request<Incoming>) -> ApiResult<Response<Body>> {
    let method = request.method().clone();
    // A static string, so that nothing borrowed from the request's bytes
    // outlives `Params::read` (see `handle`).
    let Some((path, allowed)) = api_endpoint(request.uri().path()) else {
        if method == Method::GET || method == Method::HEAD {
            let path = request.uri().path();
            return static_files::serve(&app.public_dir, &method, path, request.headers()).await;
        }
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no endpoint {method} {}", request.uri().path()),
        ));
    };
    if !allowed.split(", ").any(|m| m == method.as_str()) {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} accepts {allowed}"),
        ));
    }
    let hub = &app.hub;
    match path {
        "/healthz" => Ok(api::status::healthz()),
        "/join" => api::session::join(hub, Params::read(request).await?).await,
        "/sync" => api::session::sync(hub, Params::read(request).await?),
        "/poll" => api::session::poll(hub, Params::read(request).await?).await,
        "/leave" => api::session::leave(hub, Params::read(request).await?),
        "/status" => api::session::set_status(hub, Params::read(request).await?),
        "/users" => api::session::users(hub, Params::read(request).await?),
        "/send" => api::conversations::send(hub, Params::read(request).await?).await,
        "/history" => api::conversations::history(hub, Params::read(request).await?),
        "/dialog" => api::conversations::dialog(hub, Params::read(request).await?),
        "/rooms/join" => api::conversations::join_room(hub, Params::read(request).await?),
        "/rooms/leave" => api::conversations::leave_room(hub, Params::read(request).await?),
        "/api/publish" => api::publish::publish(app, Params::read(request).await?),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no endpoint {method} {path}"),
        )),
    }
}

/// Every API path, with the methods it accepts.
const API: &[(&str, &str)] = &[
    ("/healthz", "GET, HEAD"),
    ("/sync", "GET, HEAD"),
    ("/users", "GET, HEAD"),
    ("/history", "GET, HEAD"),
    ("/poll", "GET, POST"),
    ("/join", "POST"),
    ("/leave", "POST"),
    ("/status", "POST"),
    ("/send", "POST"),
    ("/dialog", "POST"),
    ("/rooms/join", "POST"),
    ("/rooms/leave", "POST"),
    ("/api/publish", "POST"),
];

/// The API path `path` names, as a static string, with its methods.
fn api_endpoint(path: &str) -> Option<(&'static str, &'static str)> {
    API.iter().copied().find(|(api, _)| *api == path)
}

/// The methods an API path accepts (None: not an API path).
fn allowed_methods(path: &str) -> Option<&'static str> {
    api_endpoint(path).map(|(_, methods)| methods)
}
