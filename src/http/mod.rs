//! The hand-rolled hyper service: one `match` from (method, path) to an
//! endpoint in `api`, with every failure turned into a JSON error. No
//! framework: the routing table below is the whole of it.

pub mod request;
pub mod response;
pub mod static_files;

use std::borrow::Cow;
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
    let endpoint = api_endpoint(request.uri().path());
    // For the error log. Not the `Uri`: it shares the bytes hyper read the
    // request into, and a parked poll holding it would pin that 8 KiB read
    // buffer until it is answered, making hyper allocate another to watch
    // the connection. An API path is its static name (no allocation on the
    // hot paths); anything else is copied.
    let path: Cow<'static, str> = match endpoint {
        Some((api, _)) => Cow::Borrowed(api),
        None => Cow::Owned(request.uri().path().to_owned()),
    };
    let response = match route(&app, endpoint, request).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%method, %path, %error, "request failed");
            let allowed = endpoint
                .filter(|_| error.status == StatusCode::METHOD_NOT_ALLOWED)
                .map(|(_, methods)| methods);
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

/// `endpoint`: the API path the request names, with its methods, as
/// `api_endpoint` found it; static strings, so that nothing borrowed from
/// the request's bytes outlives `Params::read` (see `handle`).
async fn route(
    app: &App,
    endpoint: Option<(&'static str, &'static str)>,
    request: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let method = request.method().clone();
    let Some((path, allowed)) = endpoint else {
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
