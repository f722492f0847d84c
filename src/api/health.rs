//! GET /healthz and GET /readyz, for load balancers and orchestrators.
//!
//! /healthz is liveness, and the cheapest endpoint — the floor that latency
//! benchmarks compare against. It answers 503 `store_stalled` while the
//! store commits nothing (a full disk, a dead writer): the server is up,
//! yet every request that changes state fails, and a balancer should know.
//! In cluster mode it answers 503 `store_unavailable` while Redis does not
//! answer or wake-ups are not subscribed.
//!
//! /readyz is whether to send this server requests: 503 `not_ready` from
//! the moment shutdown begins ([`Readiness`]), so that a balancer checking
//! it stops sending while parked polls are still held (`--drain-delay`),
//! and while the store is stalled or unavailable. parlor restores its state before it
//! binds its port, so while it restores, connections are refused, which a
//! balancer counts as not ready too.

use std::sync::atomic::{AtomicBool, Ordering};

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

/// Whether the server still takes new work. Created by `Server::run`,
/// which marks it draining when the shutdown signal comes; read by every
/// /readyz.
#[derive(Debug, Default)]
pub struct Readiness {
    draining: AtomicBool,
}

impl Readiness {
    /// Shutdown has begun: /readyz answers 503 from now on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

pub async fn readyz(engine: &Engine, readiness: &Readiness) -> ApiResult<Response<Body>> {
    let not_ready = |message: String| {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            message,
        ))
    };
    if readiness.is_draining() {
        return not_ready("the server is shutting down; send requests elsewhere".into());
    }
    match engine.health().await {
        Ok(()) => Ok(json_bytes(
            StatusCode::OK,
            br#"{"status":"ready"}"#.to_vec(),
        )),
        Err(Unhealthy::StoreStalled(why)) => {
            not_ready(format!("the store is not committing: {why}"))
        }
        Err(Unhealthy::StoreUnavailable(why)) => {
            not_ready(format!("the store is unavailable: {why}"))
        }
    }
}
