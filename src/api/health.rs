//! GET /healthz: liveness for load balancers, and the cheapest endpoint —
//! the floor that latency benchmarks compare against. It answers 503
//! `store_stalled` while the store commits nothing (a full disk, a dead
//! writer), and in cluster mode 503 `store_unavailable` while Redis does
//! not answer or wake-ups are not subscribed: the server is up, yet
//! requests fail or parked polls would not be woken, and a balancer should
//! know.

use hyper::{Response, StatusCode};

use crate::engine::{Engine, Unhealthy};
use crate::error::{ApiError, ApiResult};
use crate::http::response::{json_bytes, Body};

pub async fn healthz(engine: &Engine) -> ApiResult<Response<Body>> {
    match engine.health().await {
        Ok(()) => Ok(json_bytes(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())),
        Err(Unhealthy::StoreStalled(why)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_stalled",
            format!("the store is not committing: {why}"),
        )),
        Err(Unhealthy::StoreUnavailable(why)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("the store is unavailable: {why}"),
        )),
    }
}
