//! POST /api/publish: how another backend pushes a notification ("you have
//! a new invoice") to users' client processes. Guarded by the admin token;
//! absent entirely (404) unless `--admin-token` is set.

use hyper::{Response, StatusCode};
use subtle::ConstantTimeEq;

use crate::config::MAX_PUBLISH_USERS;
use crate::error::{ApiError, ApiResult};
use crate::http::request::Params;
use crate::http::response::{json, Body};
use crate::http::App;

pub async fn publish(app: &App, params: Params) -> ApiResult<Response<Body>> {
    let Some(admin_token) = app.admin_token.as_deref() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "publishing is disabled: start parlor with --admin-token",
        ));
    };
    let authorized = params
        .bearer()
        .is_some_and(|given| constant_time_eq(given.as_bytes(), admin_token.as_bytes()));
    if !authorized {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_admin_token",
            "send `Authorization: Bearer ADMIN_TOKEN`",
        ));
    }
    if !params.json_body {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "POST /api/publish takes an application/json body",
        ));
    }
    let users = match params.value("users") {
        Some(serde_json::Value::Array(users)) => users,
        Some(_) => return Err(ApiError::invalid_param("users", "an array of user names")),
        None => return Err(ApiError::missing_param("users")),
    };
    if users.len() > MAX_PUBLISH_USERS {
        return Err(ApiError::invalid_param(
            "users",
            &format!("at most {MAX_PUBLISH_USERS} names"),
        ));
    }
    let users: Vec<String> = users
        .iter()
        .map(|user| user.as_str().map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or_else(|| ApiError::invalid_param("users", "an array of user names"))?;
    let data = params
        .value("data")
        .ok_or_else(|| ApiError::missing_param("data"))?;
    let report = app.engine.publish(&users, data).await?;
    Ok(json(&report))
}

/// Compares secrets in time that does not depend on where they first
/// differ, so response timing cannot reveal the token byte by byte (only its
/// length, which `subtle` compares first).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}
