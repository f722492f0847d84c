//! The parlor API as the bench speaks it: the URIs and forms it sends, what
//! it reads of the answers, and how a failed answer becomes an error.

use parlor::client::Answer;
use serde::Deserialize;

use crate::{Error, Res};

/// Message text length: the 64-byte messages of the reference measurements.
const TEXT_BYTES: usize = 64;

#[derive(Deserialize)]
pub struct Joined {
    pub token: String,
    pub cursor: u64,
    pub poll_timeout_ms: u64,
    pub inactivity_timeout_ms: u64,
}

#[derive(Deserialize)]
pub struct Synced {
    pub cursor: u64,
}

#[derive(Deserialize)]
pub struct PollAnswer<'a> {
    pub cursor: u64,
    #[serde(borrow)]
    pub events: Vec<PollEvent<'a>>,
}

#[derive(Deserialize)]
pub struct PollEvent<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(borrow, default)]
    pub client_msg_id: Option<&'a str>,
}

#[derive(Deserialize)]
pub struct DialogAnswer {
    pub conversation: DialogConversation,
}

#[derive(Deserialize)]
pub struct DialogConversation {
    pub id: String,
}

pub fn poll_uri(token: &str, cursor: u64, timeout_ms: Option<u64>) -> String {
    match timeout_ms {
        Some(timeout) => format!("/poll?token={token}&cursor={cursor}&timeout={timeout}"),
        None => format!("/poll?token={token}&cursor={cursor}"),
    }
}

/// The form of a /send: a `TEXT_BYTES`-long text and a `client_msg_id`
/// `<run>.<stream>.<seq>` that receivers check order and duplicates with.
pub fn send_form(token: &str, conversation: &str, run: &str, stream: &str, seq: u64) -> String {
    let id = format!("{run}.{stream}.{seq}");
    let mut text = format!("{id}-");
    while text.len() < TEXT_BYTES {
        text.push('x');
    }
    let conversation = conversation.replace(':', "%3A");
    format!("token={token}&conversation={conversation}&client_msg_id={id}&text={text}")
}

pub fn api_error(what: &str, answer: &Answer) -> Error {
    format!(
        "{what}: {} {}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    )
    .into()
}

/// What went wrong with a request that should have answered 200.
pub fn failure(what: &str, result: &Res<Answer>) -> String {
    match result {
        Ok(answer) => api_error(what, answer).to_string(),
        Err(error) => format!("{what}: {error}"),
    }
}
