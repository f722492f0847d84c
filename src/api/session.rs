//! A client process's life: /join, /sync, /poll, /status, /users, /leave.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use hyper::{Response, StatusCode};
use serde::Serialize;
use serde_json::json;

use crate::auth::join_token::{BadToken, JoinTokens};
use crate::config::MAX_USERS_PAGE;
use crate::conversation::LOBBY;
use crate::engine::Engine;
use crate::error::{ApiError, ApiResult};
use crate::event::Status;
use crate::http::request::Params;
use crate::http::response::{json, json_bytes, Body};
use crate::hub::{valid_name, Session};

/// POST /join, with a `password` or, when the server has a join secret,
/// an `auth` JWT; `client` is the client's address (see
/// `http::client_addr`).
pub async fn join(
    engine: &Engine,
    join_tokens: Option<&JoinTokens>,
    client: IpAddr,
    params: Params,
) -> ApiResult<Response<Body>> {
    let session = match params.optional_str("auth")? {
        Some(jwt) => join_with_token(engine, join_tokens, client, &params, jwt).await?,
        None => {
            let name = params.str("name")?;
            let password = params.str("password")?;
            engine.join(name, password, client).await?
        }
    };
    Ok(json_bytes(StatusCode::OK, session_json(&session)))
}

/// A /join vouched for by the application's backend (`auth::join_token`).
async fn join_with_token(
    engine: &Engine,
    join_tokens: Option<&JoinTokens>,
    client: IpAddr,
    params: &Params,
    jwt: &str,
) -> ApiResult<Session> {
    let Some(join_tokens) = join_tokens else {
        return Err(ApiError::bad_request(
            "jwt_join_disabled",
            "this server takes no `auth` JWT (it has no --join-secret-file); join with a password",
        ));
    };
    if params.optional_str("password")?.is_some() {
        return Err(ApiError::bad_request(
            "invalid_param",
            "give `password` or `auth`, not both",
        ));
    }
    let vouched = match join_tokens.verify(jwt) {
        Ok(vouched) => vouched,
        Err(BadToken(why)) => return Err(engine.bad_join_token(client, why).await.into()),
    };
    if params
        .optional_str("name")?
        .is_some_and(|name| name != vouched.user)
    {
        return Err(ApiError::invalid_param(
            "name",
            "the JWT's `sub`, or left out",
        ));
    }
    Ok(engine.join_vouched(&vouched).await?)
}

pub async fn sync(engine: &Engine, params: Params) -> ApiResult<Response<Body>> {
    let session = engine.sync(params.token()?).await?;
    Ok(json_bytes(StatusCode::OK, session_json(&session)))
}

/// The /join and /sync answer: `{"user", "client", "token"?, "cursor",
/// "poll_timeout_ms", "inactivity_timeout_ms", "status", "users",
/// "users_total", "users_next"?, "conversations"}`, with the first page of
/// online users spliced in as the hub wrote it; the lobby's `members` are
/// the same page, and its `member_count` is `users_total`.
fn session_json(session: &Session) -> Vec<u8> {
    #[derive(Serialize)]
    struct Head<'a> {
        user: &'a str,
        client: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a str>,
        cursor: u64,
        poll_timeout_ms: u64,
        inactivity_timeout_ms: u64,
        status: Status,
    }
    let head = Head {
        user: &session.user,
        client: session.client,
        token: session.token.as_deref(),
        cursor: session.cursor,
        poll_timeout_ms: session.poll_timeout_ms,
        inactivity_timeout_ms: session.inactivity_timeout_ms,
        status: session.status,
    };
    let online = &session.online;
    let names = online.names.as_deref().unwrap_or("[]");
    let mut out = Vec::with_capacity(
        320 + online.users.len() + names.len() + 128 * session.rooms_and_dialogs.len(),
    );
    serde_json::to_writer(&mut out, &head).expect("a session serializes");
    out.pop(); // the head's closing brace: the object goes on
    out.extend_from_slice(b",\"users\":");
    out.extend_from_slice(online.users.as_bytes());
    push_total_and_next(
        &mut out,
        "users_total",
        online.total,
        "users_next",
        &online.next,
    );
    out.extend_from_slice(
        format!(r#","conversations":[{{"id":"{LOBBY}","kind":"room","name":"{LOBBY}","members":"#)
            .as_bytes(),
    );
    out.extend_from_slice(names.as_bytes());
    out.extend_from_slice(format!(r#","member_count":{}}}"#, online.total).as_bytes());
    for conversation in &session.rooms_and_dialogs {
        out.push(b',');
        serde_json::to_writer(&mut out, conversation).expect("a conversation serializes");
    }
    out.extend_from_slice(b"]}");
    out
}

/// `,"TOTAL":N` and, when more follow the page, `,"NEXT":"NAME"`.
fn push_total_and_next(
    out: &mut Vec<u8>,
    total_key: &str,
    total: usize,
    next_key: &str,
    next: &Option<String>,
) {
    out.extend_from_slice(format!(r#","{total_key}":{total}"#).as_bytes());
    if let Some(next) = next {
        out.extend_from_slice(format!(r#","{next_key}":"#).as_bytes());
        serde_json::to_writer(&mut *out, next).expect("a name serializes");
    }
}

///
/// Not an `async fn`: the parameters are read, and all but the token
/// dropped, before the poll waits, so a parked poll keeps one string of
/// them rather than every parameter's (an `async fn` would keep its
/// arguments for its whole life).
pub fn poll(
    engine: &Engine,
    params: Params,
) -> impl Future<Output = ApiResult<Response<Body>>> + Send + '_ {
    let asked = poll_params(params);
    async move {
        let (token, cursor, timeout) = asked?;
        let body = engine.poll(&token, cursor, timeout).await?;
        Ok(json_bytes(StatusCode::OK, body))
    }
}

/// /poll's token, cursor and timeout.
fn poll_params(params: Params) -> ApiResult<(String, u64, Option<Duration>)> {
    // The token's errors first, as every endpoint's.
    params.token()?;
    let cursor = params.u64("cursor")?;
    let timeout = params.optional_u64("timeout")?.map(Duration::from_millis);
    Ok((params.into_token()?, cursor, timeout))
}

pub async fn set_status(engine: &Engine, params: Params) -> ApiResult<Response<Body>> {
    let token = params.token()?;
    let text = params.str("status")?;
    let status = Status::settable(text).ok_or_else(|| {
        ApiError::bad_request("invalid_status", "status must be online, busy or away")
    })?;
    engine.set_status(token, status).await?;
    Ok(json(&json!({ "status": status })))
}

/// GET /users: `{"users", "total", "next"?}`, a page of at most `limit`
/// (1..=`MAX_USERS_PAGE`, default the most) online users in name order,
/// after `after` (a user name, exclusive) or from the first.
pub async fn users(engine: &Engine, params: Params) -> ApiResult<Response<Body>> {
    let token = params.token()?;
    // Empty, as a form or query may send a blank field: from the first.
    let after = params
        .optional_str("after")?
        .filter(|name| !name.is_empty());
    if after.is_some_and(|name| !valid_name(name)) {
        return Err(ApiError::invalid_param("after", "a user name"));
    }
    let limit = match params.optional_u64("limit")? {
        None => MAX_USERS_PAGE,
        Some(limit @ 1..) if limit <= MAX_USERS_PAGE as u64 => limit as usize,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "limit",
                &format!("between 1 and {MAX_USERS_PAGE}"),
            ))
        }
    };
    let page = engine.users(token, after, limit).await?;
    let mut body = Vec::with_capacity(page.users.len() + 80);
    body.extend_from_slice(b"{\"users\":");
    body.extend_from_slice(page.users.as_bytes());
    push_total_and_next(&mut body, "total", page.total, "next", &page.next);
    body.push(b'}');
    Ok(json_bytes(StatusCode::OK, body))
}

pub async fn leave(engine: &Engine, params: Params) -> ApiResult<Response<Body>> {
    let token = params.token()?;
    engine.leave(token).await?;
    Ok(json(&json!({})))
}
