//! Events delivered to clients through their mailboxes, and the one place
//! they are serialized.
//!
//! An event is turned into JSON once, when it is published, and the bytes are
//! shared (`Arc`) by every mailbox that receives it: a message to a room of
//! 5 000 costs one serialization and 5 000 pointer copies. The per-mailbox
//! sequence number is not part of those bytes; `write_poll_body` splices it
//! in as each event is answered.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::conversation::Conversation;

/// The serialized JSON object of one event, without its `seq`. Always starts
/// with `{"type":`.
#[derive(Debug, Clone)]
pub struct EventBytes(Arc<[u8]>);

impl EventBytes {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether both are the same serialized event (not merely equal bytes).
    pub fn same_event(&self, other: &EventBytes) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// An event read back from the store (written by `Event::to_bytes`).
    pub fn from_stored(json: Vec<u8>) -> EventBytes {
        EventBytes(json.into())
    }
}

/// A user's availability as others see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Online,
    Busy,
    Away,
    Offline,
}

impl Status {
    /// The statuses a user may set for itself (`offline` only happens).
    pub fn settable(text: &str) -> Option<Status> {
        match text {
            "online" => Some(Status::Online),
            "busy" => Some(Status::Busy),
            "away" => Some(Status::Away),
            _ => None,
        }
    }
}

/// Why a conversation left a user's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemovalReason {
    /// The other member of a dialog went offline.
    UserOffline,
    /// The user left the room (seen by the user's other client processes).
    Left,
}

/// A chat message as stored and as delivered (and, in cluster mode, read
/// back from Redis's history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: u64,
    pub conversation: String,
    pub from: String,
    pub text: String,
    /// Milliseconds since the Unix epoch.
    pub at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
}

/// Everything a client can be told about.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event<'a> {
    Presence {
        user: &'a str,
        status: Status,
    },
    ConversationAdded {
        conversation: &'a Conversation,
    },
    ConversationRemoved {
        conversation: &'a str,
        reason: RemovalReason,
    },
    Message(&'a Message),
    MemberJoined {
        conversation: &'a str,
        user: &'a str,
    },
    MemberLeft {
        conversation: &'a str,
        user: &'a str,
    },
    Notification {
        data: &'a serde_json::Value,
    },
}

impl Event<'_> {
    /// Serializes the event once, for every mailbox that will hold it.
    pub fn to_bytes(&self) -> EventBytes {
        let json = serde_json::to_vec(self).expect("events are plain data and always serialize");
        debug_assert!(json.starts_with(b"{\"type\":"));
        EventBytes(json.into())
    }
}

/// Writes a poll answer, `{"cursor":C,"events":[{"seq":N,...},...]}`, from
/// events numbered `first_seq`, `first_seq + 1`, ...
pub fn write_poll_body<'a>(
    cursor: u64,
    first_seq: u64,
    events: impl ExactSizeIterator<Item = &'a EventBytes>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + events.len() * 160);
    out.extend_from_slice(b"{\"cursor\":");
    push_u64(&mut out, cursor);
    out.extend_from_slice(b",\"events\":[");
    for (index, event) in events.enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"seq\":");
        push_u64(&mut out, first_seq + index as u64);
        out.push(b',');
        // Skip the event's own opening brace: its fields follow ours.
        out.extend_from_slice(&event.as_bytes()[1..]);
    }
    out.extend_from_slice(b"]}");
    out
}

/// A poll answer with no events: the cursor stays where it was.
pub fn empty_poll_body(cursor: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(b"{\"cursor\":");
    push_u64(&mut out, cursor);
    out.extend_from_slice(b",\"events\":[]}");
    out
}

fn push_u64(out: &mut Vec<u8>, value: u64) {
    use std::io::Write;
    write!(out, "{value}").expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_body_splices_sequence_numbers_into_shared_bytes() {
        let first = Event::Presence {
            user: "ann",
            status: Status::Busy,
        }
        .to_bytes();
        let data = serde_json::json!({"invoice": 7});
        let second = Event::Notification { data: &data }.to_bytes();
        let body = write_poll_body(11, 10, [first, second].iter());
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"cursor": 11, "events": [
                {"seq": 10, "type": "presence", "user": "ann", "status": "busy"},
                {"seq": 11, "type": "notification", "data": {"invoice": 7}},
            ]})
        );
    }

    #[test]
    fn empty_poll_body_is_valid_json() {
        assert_eq!(empty_poll_body(3), b"{\"cursor\":3,\"events\":[]}");
    }
}
