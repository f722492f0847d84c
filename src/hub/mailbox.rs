//! A user's mailbox: a bounded log of events numbered 1, 2, 3, ... that every
//! client process of the user reads with its own cursor.
//!
//! The cursor a client holds is the sequence number of the last event it has
//! seen. Reading never consumes: the same cursor reads the same events again,
//! which is what makes a retried poll safe. When the log is full the oldest
//! event is dropped, and a cursor that points before what is kept is reported
//! as expired rather than silently skipped forward (field-notes item 2).

use std::collections::VecDeque;

use crate::config::MAILBOX_CAPACITY;
use crate::event::EventBytes;

#[derive(Debug)]
pub struct Mailbox {
    /// Sequence number of the newest event dropped (0 when none was): the
    /// oldest cursor that can still be served.
    start: u64,
    /// Events numbered `start + 1 ..= start + len`.
    events: VecDeque<EventBytes>,
    /// The presence-board version this mailbox has copied changes up to
    /// (see `presence`).
    pub presence_seen: u64,
}

/// What a cursor finds in the mailbox.
#[derive(Debug)]
pub enum Read<'a> {
    /// Events after the cursor, oldest first, numbered from `first_seq`.
    Events {
        first_seq: u64,
        events: Vec<&'a EventBytes>,
    },
    /// Nothing after the cursor yet.
    UpToDate,
    /// The cursor is older than the oldest event kept.
    Expired { oldest_cursor: u64 },
    /// The cursor is ahead of the newest event: never handed out by us.
    Ahead { head: u64 },
}

impl Mailbox {
    pub fn new(presence_seen: u64) -> Mailbox {
        Mailbox {
            start: 0,
            events: VecDeque::new(),
            presence_seen,
        }
    }

    /// Sequence number of the newest event (0 for an empty, new mailbox).
    pub fn head(&self) -> u64 {
        self.start + self.events.len() as u64
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Appends an event, dropping the oldest when full. Returns its number.
    pub fn push(&mut self, event: EventBytes) -> u64 {
        if self.events.len() == MAILBOX_CAPACITY {
            self.events.pop_front();
            self.start += 1;
        }
        self.events.push_back(event);
        self.head()
    }

    /// Events after `cursor`, at most `limit` of them.
    pub fn read(&self, cursor: u64, limit: usize) -> Read<'_> {
        if cursor < self.start {
            return Read::Expired {
                oldest_cursor: self.start,
            };
        }
        let head = self.head();
        if cursor > head {
            return Read::Ahead { head };
        }
        if cursor == head {
            return Read::UpToDate;
        }
        let skip = (cursor - self.start) as usize;
        Read::Events {
            first_seq: cursor + 1,
            events: self.events.iter().skip(skip).take(limit).collect(),
        }
    }

    /// Events after `cursor` (0 if the cursor is out of range).
    pub fn unread_after(&self, cursor: u64) -> usize {
        if cursor < self.start || cursor > self.head() {
            0
        } else {
            (self.head() - cursor) as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn event(n: u64) -> EventBytes {
        let data = serde_json::json!(n);
        Event::Notification { data: &data }.to_bytes()
    }

    fn seqs(read: Read<'_>) -> Vec<u64> {
        match read {
            Read::Events { first_seq, events } => {
                (first_seq..first_seq + events.len() as u64).collect()
            }
            other => panic!("expected events, got {other:?}"),
        }
    }

    #[test]
    fn same_cursor_reads_same_events() {
        let mut mailbox = Mailbox::new(0);
        for n in 0..5 {
            mailbox.push(event(n));
        }
        assert_eq!(seqs(mailbox.read(2, 10)), vec![3, 4, 5]);
        assert_eq!(seqs(mailbox.read(2, 10)), vec![3, 4, 5]);
        assert_eq!(seqs(mailbox.read(0, 2)), vec![1, 2]);
        assert!(matches!(mailbox.read(5, 10), Read::UpToDate));
        assert!(matches!(mailbox.read(6, 10), Read::Ahead { head: 5 }));
    }

    #[test]
    fn full_mailbox_drops_oldest_and_expires_old_cursors() {
        let mut mailbox = Mailbox::new(0);
        for n in 0..(MAILBOX_CAPACITY as u64 + 3) {
            mailbox.push(event(n));
        }
        assert_eq!(mailbox.len(), MAILBOX_CAPACITY);
        assert!(matches!(
            mailbox.read(2, 10),
            Read::Expired { oldest_cursor: 3 }
        ));
        assert_eq!(seqs(mailbox.read(3, 2)), vec![4, 5]);
        assert_eq!(mailbox.unread_after(3), MAILBOX_CAPACITY);
    }
}
