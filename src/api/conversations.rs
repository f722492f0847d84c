//! Conversations: /send, /history, /dialog, /rooms/join, /rooms/leave.

use hyper::Response;
use serde_json::json;

use crate::config::MAX_TEXT_BYTES;
use crate::engine::Engine;
use crate::error::{ApiError, ApiResult};
use crate::http::request::Params;
use crate::http::response::{json, Body};

pub async fn send(engine: &Engine, params: Params) -> ApiResult<Response<Body>> {
    let token = params.token()?;
    let conversation = params.str("conversation")?;
    // Its length is the hub's to check; only its absence is answered here.
    let text = params.optional_str("text")?.ok_or_else(|| {
        ApiError::bad_request(
            "invalid_text",
            format!("text is required (1 to {MAX_TEXT_BYTES} bytes)"),
        )
    })?;
    let client_msg_id = params.optional_str("client_msg_id")?;
    let message = engine
        .send(token, conversation, text, client_msg_id)
        .await?;
    Ok(json(&json!({
        "id": message.id,
        "conversation": message.conversation,
        "at": message.at,
    })))
}

pub async fn history(engine: &Engine, params: Params) -> ApiResult<Response<Body>> {
    let token = params.token()?;
    let conversation = params.str("conversation")?;
    let before = params.optional_u64("before")?;
    let limit = params
        .optional_u64("limit")?
        .map(|limit| usize::try_from(limit).unwrap_or(usize::MAX));
    let messages = engine.history(token, conversation, before, limit).await?;
    Ok(json(&json!({ "messages": messages })))
}

pub async fn dialog(engine: &Engine, params: Params) -> ApiResult<Response<Body>> {
    let (token, with) = (params.token()?, params.str("with")?);
    let conversation = engine.dialog(token, with).await?;
    Ok(json(&json!({ "conversation": conversation })))
}

pub async fn join_room(engine: &Engine, params: Params) -> ApiResult<Response<Body>> {
    let (token, name) = (params.token()?, params.str("name")?);
    let conversation = engine.join_room(token, name).await?;
    Ok(json(&json!({ "conversation": conversation })))
}

pub async fn leave_room(engine: &Engine, params: Params) -> ApiResult<Response<Body>> {
    let (token, conversation) = (params.token()?, params.str("conversation")?);
    engine.leave_room(token, conversation).await?;
    Ok(json(&json!({})))
}
