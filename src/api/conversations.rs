//! Conversations: /send, /history, /dialog, /rooms/join, /rooms/leave.

use hyper::Response;
use serde_json::json;

use crate::config::MAX_TEXT_BYTES;
use crate::error::{ApiError, ApiResult};
use crate::http::request::Params;
use crate::http::response::{json, Body};
use crate::hub::Hub;

pub async fn send(hub: &Hub, params: Params) -> ApiResult<Response<Body>> {
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
    let message = hub.send(token, conversation, text, client_msg_id).await?;
    Ok(json(&json!({
        "id": message.id,
        "conversation": message.conversation,
        "at": message.at,
    })))
}

pub async fn history(hub: &Hub, params: Params) -> ApiResult<Response<Body>> {
    let token = params.token()?;
    let conversation = params.str("conversation")?;
    let before = params.optional_u64("before")?;
    let limit = params
        .optional_u64("limit")?
        .map(|limit| usize::try_from(limit).unwrap_or(usize::MAX));
    let messages = hub.history(token, conversation, before, limit).await?;
    Ok(json(&json!({ "messages": messages })))
}

pub fn dialog(hub: &Hub, params: Params) -> ApiResult<Response<Body>> {
    let conversation = hub.dialog(params.token()?, params.str("with")?)?;
    Ok(json(&json!({ "conversation": conversation })))
}

pub fn join_room(hub: &Hub, params: Params) -> ApiResult<Response<Body>> {
    let conversation = hub.join_room(params.token()?, params.str("name")?)?;
    Ok(json(&json!({ "conversation": conversation })))
}

pub fn leave_room(hub: &Hub, params: Params) -> ApiResult<Response<Body>> {
    hub.leave_room(params.token()?, params.str("conversation")?)?;
    Ok(json(&json!({})))
}
