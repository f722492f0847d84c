//! /send and /history in cluster mode: one Lua script each (`send.lua`,
//! `history.lua`), so a message's number, its time (Redis's clock), its
//! place in history, its delivery and its `client_msg_id` answer are
//! committed together or not at all, whichever node runs them.
//!
//! Delivery: a lobby message is added once to the lobby log, which every
//! mailbox copies at poll time (O(log n) whatever the lobby's size); a
//! room's or dialog's message is appended to each online member's mailbox
//! inside the script (one append per member). A `client_msg_id` keeps the
//! first send's answer for `CLIENT_MSG_ID_TTL_SECS` and is looked up first
//! in the same script, so the same id sent through two nodes at once is one
//! message and both answers carry its id.
//!
//! The send rate and room-creation rate are token buckets kept in Redis
//! (lib.lua's `take_rate`), so one limit holds across every node.

use std::sync::LazyLock;

use serde::Deserialize;

use super::keys::token_sha;
use super::scripts::{self, Args, ClusterScript};
use super::Cluster;
use crate::config::{
    DEFAULT_HISTORY_LIMIT, MAX_CLIENT_MSG_ID_BYTES, MAX_HISTORY_LIMIT, MAX_TEXT_BYTES,
};
use crate::event::Message;
use crate::hub::{HubResult, Limited, Refusal};
use crate::limits::Rate;
use crate::metrics::RateLimit;

static SEND: LazyLock<ClusterScript> =
    LazyLock::new(|| ClusterScript::new("send", include_str!("scripts/send.lua")));
static HISTORY: LazyLock<ClusterScript> =
    LazyLock::new(|| ClusterScript::new("history", include_str!("scripts/history.lua")));

/// /send's answer as the script gives it (and keeps it for a retry).
#[derive(Deserialize)]
struct SendAnswer {
    id: u64,
    conversation: String,
    at: u64,
}

impl Cluster {
    /// POST /send: the message, or the first send's answer for a
    /// `client_msg_id` already used. Answers once Redis has applied it.
    pub async fn send(
        &self,
        token: &str,
        conversation: &str,
        text: &str,
        client_msg_id: Option<&str>,
    ) -> HubResult<Message> {
        if text.is_empty() || text.len() > MAX_TEXT_BYTES {
            return Err(Refusal::InvalidText);
        }
        if let Some(id) = client_msg_id {
            if id.is_empty() || id.len() > MAX_CLIENT_MSG_ID_BYTES {
                return Err(Refusal::InvalidClientMsgId);
            }
        }
        let (interval, burst) = rate_args(self.shared.limits.sends);
        let args = Args::new()
            .arg(token_sha(token))
            .arg(conversation)
            .arg(json_string(text))
            .arg(client_msg_id.unwrap_or(""))
            .arg(client_msg_id.map(json_string).unwrap_or_default())
            .arg(interval)
            .arg(burst);
        let answer = scripts::run(self.redis(), &SEND, &[], args).await?;
        let outcome = answer.first().map(scripts::text).unwrap_or_default();
        if outcome == "limited" {
            return Err(self.limited(Limited::Sends, &answer));
        }
        let parsed = answer
            .get(1)
            .and_then(|json| serde_json::from_slice::<SendAnswer>(scripts::bytes(json)).ok());
        let (Some(sent), Some(from)) = (parsed, answer.get(2).map(scripts::text)) else {
            tracing::error!(?answer, "the send script answered something else");
            return Err(Refusal::StoreUnavailable);
        };
        if outcome == "sent" {
            self.shared.metrics.message();
        }
        Ok(Message {
            id: sent.id,
            conversation: sent.conversation,
            from,
            text: text.to_owned(),
            at: sent.at,
            client_msg_id: client_msg_id.map(str::to_owned),
        })
    }

    /// GET /history: a page of a conversation's messages (oldest first),
    /// members only.
    pub async fn history(
        &self,
        token: &str,
        conversation: &str,
        before: Option<u64>,
        limit: Option<usize>,
    ) -> HubResult<Vec<Message>> {
        let limit = limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
        if limit == 0 || limit > MAX_HISTORY_LIMIT {
            return Err(Refusal::InvalidHistoryLimit);
        }
        let args = Args::new()
            .arg(token_sha(token))
            .arg(conversation)
            .arg(before.map(|id| id.to_string()).unwrap_or_default())
            .arg(limit);
        let newest_first = scripts::run(self.redis(), &HISTORY, &[], args).await?;
        newest_first
            .iter()
            .rev()
            .map(|json| {
                serde_json::from_slice(scripts::bytes(json)).map_err(|error| {
                    tracing::error!(%error, conversation, "a stored message does not parse");
                    Refusal::StoreUnavailable
                })
            })
            .collect()
    }

    /// The refusal for a script's `{'limited', WAIT_MS}`, counted.
    pub(super) fn limited(&self, limited: Limited, answer: &[redis::Value]) -> Refusal {
        let wait_ms = answer.get(1).and_then(scripts::integer).unwrap_or(1000);
        self.shared.metrics.rate_limited(RateLimit::from(limited));
        Refusal::RateLimited {
            limited,
            wait: std::time::Duration::from_millis(wait_ms),
        }
    }
}

/// A rate as the scripts take it: interval in µs (0: no limit) and burst.
pub(super) fn rate_args(rate: Option<Rate>) -> (u64, u32) {
    rate.map_or((0, 0), |rate| {
        let micros = u64::try_from(rate.interval().as_micros()).unwrap_or(u64::MAX);
        (micros.max(1), rate.burst())
    })
}

/// `text` as a JSON string literal, spliced by the scripts into the
/// message's JSON exactly as serde would write it.
fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn json_strings_escape_what_json_needs() {
        assert_eq!(json_string("a\"b\\c\n/é"), r#""a\"b\\c\n/é""#);
    }

    #[test]
    fn rates_become_microseconds() {
        assert_eq!(rate_args(None), (0, 0));
        assert_eq!(rate_args(Rate::per_second(20, 5)), (50_000, 5));
        let hourly = Rate::per(20, Duration::from_secs(3600));
        assert_eq!(rate_args(hourly), (180_000_000, 20));
    }
}
