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
    // Kept for the error log and Allow header: cloning a `Uri` shares its
    // bytes, where copying the path out would allocate on every request.
    let method = request.method().clone();
    let uri = request.uri().clone();
    let path = uri.path();
    let response = match route(&app, request).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%method, %path, %error, "request failed");
            let allowed = (error.status == StatusCode::METHOD_NOT_ALLOWED)
                .then(|| allowed_methods(path))
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

async fn route(app: &App, request: Request<Incoming>) -> ApiResult<Response<Body>> {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let path = uri.path();
    if let Some(allowed) = allowed_methods(path) {
        if !allowed.split(", ").any(|m| m == method.as_str()) {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{path} accepts {allowed}"),
            ));
        }
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
        _ if method == Method::GET || method == Method::HEAD => {
            static_files::serve(&app.public_dir, &method, path, request.headers()).await
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no endpoint {method} {path}"),
        )),
    }
}

/// The methods each API path accepts (None: not an API path).
fn allowed_methods(path: &str) -> Option<&'static str> {
    Some(match path {
        "/healthz" | "/sync" | "/users" | "/history" => "GET, HEAD",
        "/poll" => "GET, POST",
        "/join" | "/leave" | "/status" | "/send" | "/dialog" | "/rooms/join" | "/rooms/leave"
        | "/api/publish" => "POST",
        _ => return None,
    })
}
