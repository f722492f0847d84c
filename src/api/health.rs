//! GET /healthz: liveness for load balancers, and the cheapest endpoint —
//! the floor that latency benchmarks compare against.

use hyper::Response;

use crate::http::response::{json_bytes, Body};

pub fn healthz() -> Response<Body> {
    json_bytes(hyper::StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}
