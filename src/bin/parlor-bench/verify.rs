//! Delivery checks: reading a poll answer for the bench's own messages
//! (each `<run>.<stream>.<seq>`), and the counts of what was lost,
//! duplicated, out of order, unexpected or failed.

use serde_json::{json, Value};

use crate::api::PollAnswer;
use crate::Res;

/// What a receiver found in one poll answer.
pub struct Scan {
    pub cursor: u64,
    pub events: usize,
}

/// Reads a poll answer: checks every bench message of `stream` against the
/// next expected sequence number (counting duplicates and gaps), counts bench
/// messages of other streams as unexpected, and calls `on_new(seq)` for each
/// message delivered for the first time.
pub fn scan(
    body: &[u8],
    run: &str,
    stream: Option<&str>,
    expect: &mut u64,
    verify: &mut Verify,
    mut on_new: impl FnMut(u64),
) -> Res<Scan> {
    let answer: PollAnswer<'_> = serde_json::from_slice(body)?;
    for event in &answer.events {
        if event.kind != "message" {
            continue;
        }
        let Some(id) = event.client_msg_id else {
            continue;
        };
        let Some(rest) = id.strip_prefix(run).and_then(|r| r.strip_prefix('.')) else {
            continue; // someone else's message
        };
        let (from, seq) = rest.rsplit_once('.').ok_or("malformed bench message id")?;
        let seq: u64 = seq.parse()?;
        if Some(from) != stream {
            verify.unexpected += 1;
            continue;
        }
        if seq == *expect {
            *expect += 1;
            on_new(seq);
        } else if seq < *expect {
            verify.duplicated += 1;
        } else {
            verify.lost += seq - *expect;
            verify.out_of_order += 1;
            *expect = seq + 1;
            on_new(seq);
        }
    }
    Ok(Scan {
        cursor: answer.cursor,
        events: answer.events.len(),
    })
}

#[derive(Debug, Default, Clone)]
pub struct Verify {
    /// Messages sent (and acknowledged) that a receiver never got.
    pub lost: u64,
    /// Messages a receiver got twice.
    pub duplicated: u64,
    /// Messages that skipped ahead of one never received.
    pub out_of_order: u64,
    /// Bench messages a receiver should not have got.
    pub unexpected: u64,
    /// Failed requests (transport errors and unexpected statuses).
    pub errors: u64,
    /// 410 cursor_expired answers.
    pub expired: u64,
    /// What the first counted error was, so that a run full of errors says
    /// why (e.g. a bench user swept by a short `--inactivity-timeout`).
    pub first_error: Option<String>,
}

impl Verify {
    pub fn add(&mut self, other: &Verify) {
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.unexpected += other.unexpected;
        self.errors += other.errors;
        self.expired += other.expired;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "lost": self.lost, "duplicated": self.duplicated, "out_of_order": self.out_of_order,
            "unexpected": self.unexpected, "errors": self.errors, "cursor_expired": self.expired,
            "first_error": self.first_error,
        })
    }

    /// Counts a failed request, remembering the first one's description.
    pub fn error(&mut self, problem: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(problem.to_string());
        }
    }
}
