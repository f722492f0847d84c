//! GET /healthz: liveness for load balancers, and the cheapest endpoint —
//! the floor that latency benchmarks compare against. It answers 503
//! `store_stalled` while the store commits nothing (a full disk, a dead
//! writer): the server is up, yet every request that changes state fails,
//! and a balancer should know.

use hyper::{Response, StatusCode};

use crate::error::{ApiError, ApiResult};
use crate::http::response::{json_bytes, Body};
use crate::hub::Hub;

pub fn healthz(hub: &Hub) -> ApiResult<Response<Body>> {
    match hub.store_health() {
        Ok(()) => Ok(json_bytes(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())),
        Err(why) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_stalled",
            format!("the store is not committing: {why}"),
        )),
    }
}
