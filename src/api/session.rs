//! A client process's life: /join, /sync, /poll, /status, /users, /leave.

use std::time::Duration;

use hyper::{Response, StatusCode};
use serde_json::json;

use crate::error::{ApiError, ApiResult};
use crate::event::Status;
use crate::http::request::Params;
use crate::http::response::{json, json_bytes, Body};
use crate::hub::Hub;

pub async fn join(hub: &Hub, params: Params) -> ApiResult<Response<Body>> {
    let name = params.str("name")?;
    let password = params.str("password")?;
    let session = hub.join(name, password).await?;
    Ok(json_bytes(StatusCode::OK, session.to_json()))
}

pub fn sync(hub: &Hub, params: Params) -> ApiResult<Response<Body>> {
    let session = hub.sync(params.token()?)?;
    Ok(json_bytes(StatusCode::OK, session.to_json()))
}

pub async fn poll(hub: &Hub, params: Params) -> ApiResult<Response<Body>> {
    let token = params.token()?;
    let cursor = params.u64("cursor")?;
    let timeout = params.optional_u64("timeout")?.map(Duration::from_millis);
    let body = hub.poll(token, cursor, timeout).await?;
    Ok(json_bytes(StatusCode::OK, body))
}

pub fn set_status(hub: &Hub, params: Params) -> ApiResult<Response<Body>> {
    let token = params.token()?;
    let text = params.str("status")?;
    let status = Status::settable(text).ok_or_else(|| {
        ApiError::bad_request("invalid_status", "status must be online, busy or away")
    })?;
    hub.set_status(token, status)?;
    Ok(json(&json!({ "status": status })))
}

pub fn users(hub: &Hub, params: Params) -> ApiResult<Response<Body>> {
    let online = hub.users(params.token()?)?;
    let mut body = Vec::with_capacity(online.users.len() + 12);
    body.extend_from_slice(b"{\"users\":");
    body.extend_from_slice(online.users.as_bytes());
    body.push(b'}');
    Ok(json_bytes(StatusCode::OK, body))
}

pub fn leave(hub: &Hub, params: Params) -> ApiResult<Response<Body>> {
    hub.leave(params.token()?)?;
    Ok(json(&json!({})))
}
