//! A sender and a receiver in a dialog (latency, throughput): opening the
//! dialog, and the receiver's side, which polls until a given message of
//! the sender's stream arrives.

use std::rc::Rc;
use std::time::Instant;

use hyper::StatusCode;
use parlor::client::Conn;

use crate::api::{api_error, poll_uri, DialogAnswer};
use crate::users::Member;
use crate::verify::{scan, Verify};
use crate::Res;

/// Opens the dialog of `sender` with `receiver` on `conn`; returns its
/// conversation id. Messages in it reach the receiver only.
pub async fn open(conn: &mut Conn, sender: &Member, receiver: &Member) -> Res<String> {
    let answer = conn
        .post(
            "/dialog",
            format!("token={}&with={}", sender.token, receiver.name),
        )
        .await?;
    if answer.status != StatusCode::OK {
        return Err(api_error("/dialog", &answer));
    }
    Ok(serde_json::from_slice::<DialogAnswer>(&answer.body)?
        .conversation
        .id)
}

/// The receiver's side: its own poll connection, its cursor, and the next
/// message of the sender's stream it expects.
pub struct Inbox {
    /// Replaced by the scenario when a poll failed or was abandoned.
    pub conn: Conn,
    token: Rc<str>,
    cursor: u64,
    stream: String,
    /// The next sequence number of `stream` not received yet.
    pub expect: u64,
}

impl Inbox {
    /// Starts from the receiver's cursor as it is now: the caller stops the
    /// keep-alive for the receiver first, or the two would race on it.
    pub fn new(conn: Conn, receiver: &Member, stream: String) -> Inbox {
        Inbox {
            conn,
            token: receiver.token.clone(),
            cursor: receiver.cursor.get(),
            stream,
            expect: 0,
        }
    }

    /// Polls until message `seq` arrives, checking everything it reads
    /// (answers that wake it for anything else are read and skipped);
    /// returns when the answer carrying `seq` was whole.
    pub async fn until(&mut self, run: &str, seq: u64, verify: &mut Verify) -> Res<Instant> {
        loop {
            let answer = self
                .conn
                .get(poll_uri(&self.token, self.cursor, None))
                .await?;
            if answer.status != StatusCode::OK {
                return Err(api_error("/poll", &answer));
            }
            let mut got = false;
            self.cursor = scan(
                &answer.body,
                run,
                Some(&self.stream),
                &mut self.expect,
                verify,
                |s| got |= s == seq,
            )?
            .cursor;
            if got {
                return Ok(Instant::now());
            }
        }
    }
}
