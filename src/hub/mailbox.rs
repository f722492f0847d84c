//! A user's mailbox: a bounded log of events numbered 1, 2, 3, ... that every
//! client process of the user reads with its own cursor.
//!
//! The cursor a client holds is the sequence number of the last event it has
//! seen. Reading never consumes: the same cursor reads the same events again,
//! which is what makes a retried poll safe. When the log is full (in events,
//! `MAILBOX_CAPACITY`, or in bytes, `MAILBOX_MAX_BYTES`) the oldest event is
//! dropped, and a cursor that points before what is kept is reported
//! as expired rather than silently skipped forward, so a client learns it
//! missed events (and re-syncs) instead of showing a gap.
//!
//! Each event carries the store ticket that makes it durable. Readers see
//! only events whose ticket is durable (a prefix of the log, since tickets
//! grow with it), so no client ever sees an event a crash could take back.

use std::collections::VecDeque;

use crate::config::{MAILBOX_CAPACITY, MAILBOX_MAX_BYTES};
use crate::event::EventBytes;

/// Trimmed logs are not shrunk below this many entries' room: shrinking
/// costs a copy, and a small log refills as soon as events arrive. Small,
/// because a trimmed log is usually empty (its clients read everything)
/// and is kept for as long as its user is online: after a burst (the
/// presence catch-up of a mass join) each online user keeps room for
/// `2 * SHRINK_FLOOR` entries of 32 bytes.
const SHRINK_FLOOR: usize = 4;

/// The ticket of an event appended by an operation that has not been given
/// its store ticket yet: never durable. The operation seals it (see
/// `Mailbox::seal`) before it releases the mailbox's lock, so no reader
/// ever meets it.
pub const UNSEALED: u64 = u64::MAX;

#[derive(Debug)]
struct Entry {
    event: EventBytes,
    ticket: u64,
    delivery: u64,
}

#[derive(Debug)]
pub struct Mailbox {
    /// Sequence number of the newest event dropped (0 when none was): the
    /// oldest cursor that can still be served.
    start: u64,
    /// Events numbered `start + 1 ..= start + len`, each with the store
    /// ticket that makes it durable (0: already durable) and the store's
    /// delivery id for it (0 when the store keeps no live state).
    events: VecDeque<Entry>,
    /// Bytes of the events' JSON, summed.
    bytes: usize,
    /// The window (start, oldest delivery) as last written to the store;
    /// written in steps, so it may lag behind (never ahead of) the real one.
    pub persisted_window: Option<(u64, u64)>,
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
            bytes: 0,
            persisted_window: None,
            presence_seen,
        }
    }

    /// A mailbox as the store kept it. `stored` are (seq, delivery id,
    /// event), all after `start`, in seq order; the mailbox runs to `head`
    /// or its last stored event, whichever is newer. Seqs with no stored
    /// event held presence copies, which are not stored: each is filled
    /// with `filler`, so every cursor a client holds stays valid. Returns
    /// the mailbox and whether anything was filled in.
    pub fn restore(
        start: u64,
        head: u64,
        presence_seen: u64,
        stored: impl IntoIterator<Item = (u64, u64, EventBytes)>,
        filler: &EventBytes,
        next_delivery: u64,
    ) -> (Mailbox, bool) {
        let mut events: VecDeque<Entry> = VecDeque::new();
        let mut filled = false;
        let mut seq = start;
        // A filled slot needs the deliveries after it, like the event that
        // follows it; slots after the last stored event need the next one.
        let mut fill_to = |events: &mut VecDeque<Entry>, seq: &mut u64, until: u64, delivery| {
            while *seq + 1 < until {
                events.push_back(Entry {
                    event: filler.clone(),
                    ticket: 0,
                    delivery,
                });
                *seq += 1;
                filled = true;
            }
        };
        for (stored_seq, delivery, event) in stored {
            if stored_seq <= seq {
                continue;
            }
            fill_to(&mut events, &mut seq, stored_seq, delivery);
            events.push_back(Entry {
                event,
                ticket: 0,
                delivery,
            });
            seq = stored_seq;
        }
        fill_to(&mut events, &mut seq, head.saturating_add(1), next_delivery);
        let bytes = events
            .iter()
            .map(|entry| entry.event.as_bytes().len())
            .sum();
        let mut mailbox = Mailbox {
            start,
            events,
            bytes,
            persisted_window: None,
            presence_seen,
        };
        mailbox.drop_oldest_over_bounds();
        mailbox.persisted_window = mailbox
            .events
            .front()
            .map(|entry| (mailbox.start, entry.delivery));
        (mailbox, filled)
    }

    /// The store delivery id of the oldest event kept.
    pub fn oldest_delivery(&self) -> Option<u64> {
        self.events.front().map(|entry| entry.delivery)
    }

    /// Sequence number of the oldest cursor still served.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The newest event readers may see when tickets up to `durable` are durable.
    pub fn visible_head(&self, durable: u64) -> u64 {
        let pending = self
            .events
            .iter()
            .rev()
            .take_while(|entry| entry.ticket > durable)
            .count();
        self.head() - pending as u64
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

    /// Appends an already durable event, dropping the oldest when full (in
    /// events or in bytes).
    /// Returns its number.
    pub fn push(&mut self, event: EventBytes) -> u64 {
        self.push_pending(event, 0)
    }

    /// Appends an event that becomes durable with store ticket `ticket`.
    pub fn push_pending(&mut self, event: EventBytes, ticket: u64) -> u64 {
        self.push_delivered(event, ticket, 0)
    }

    /// Appends an event stored as delivery `delivery`, durable with `ticket`.
    pub fn push_delivered(&mut self, event: EventBytes, ticket: u64, delivery: u64) -> u64 {
        self.bytes += event.as_bytes().len();
        self.events.push_back(Entry {
            event,
            ticket,
            delivery,
        });
        self.drop_oldest_over_bounds();
        self.head()
    }

    /// Drops the oldest events while the log holds more than its bounds
    /// allow, always keeping the newest.
    fn drop_oldest_over_bounds(&mut self) {
        while self.events.len() > MAILBOX_CAPACITY
            || (self.bytes > MAILBOX_MAX_BYTES && self.events.len() > 1)
        {
            let Some(dropped) = self.events.pop_front() else {
                return;
            };
            self.bytes -= dropped.event.as_bytes().len();
            self.start += 1;
        }
    }

    /// Gives the events appended with ticket `UNSEALED` (the newest ones)
    /// their store ticket.
    pub fn seal(&mut self, ticket: u64) {
        for entry in self.events.iter_mut().rev() {
            if entry.ticket != UNSEALED {
                break;
            }
            entry.ticket = ticket;
        }
    }

    /// Events after `cursor`, at most `limit` of them, all treated as durable.
    pub fn read(&self, cursor: u64, limit: usize) -> Read<'_> {
        self.read_durable(cursor, limit, u64::MAX)
    }

    /// Events after `cursor` whose tickets are durable, at most `limit`.
    pub fn read_durable(&self, cursor: u64, limit: usize, durable: u64) -> Read<'_> {
        if cursor < self.start {
            return Read::Expired {
                oldest_cursor: self.start,
            };
        }
        let head = self.head();
        if cursor > head {
            return Read::Ahead { head };
        }
        let skip = (cursor - self.start) as usize;
        let events: Vec<&EventBytes> = self
            .events
            .iter()
            .skip(skip)
            .take(limit)
            .take_while(|entry| entry.ticket <= durable)
            .map(|entry| &entry.event)
            .collect();
        if events.is_empty() {
            return Read::UpToDate;
        }
        Read::Events {
            first_seq: cursor + 1,
            events,
        }
    }

    /// Drops the events up to `seq` (every reader has seen them). Returns
    /// whether the start moved. Gives memory back when the log shrank far
    /// below what it once held (a burst of presence after a mass join).
    pub fn trim_through(&mut self, seq: u64) -> bool {
        let seq = seq.min(self.head());
        if seq <= self.start {
            return false;
        }
        for dropped in self.events.drain(..(seq - self.start) as usize) {
            self.bytes -= dropped.event.as_bytes().len();
        }
        self.start = seq;
        if self.events.capacity() > 4 * self.events.len().max(SHRINK_FLOOR) {
            self.events
                .shrink_to(2 * self.events.len().max(SHRINK_FLOOR));
        }
        true
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

    #[test]
    fn trimming_drops_acknowledged_events_and_keeps_cursors_valid() {
        let mut mailbox = Mailbox::new(0);
        for n in 0..1000 {
            mailbox.push(event(n));
        }
        assert!(mailbox.trim_through(998));
        assert_eq!(mailbox.len(), 2);
        assert!(mailbox.events.capacity() < 1000, "memory is given back");
        assert_eq!(seqs(mailbox.read(998, 10)), vec![999, 1000]);
        assert!(matches!(
            mailbox.read(997, 10),
            Read::Expired { oldest_cursor: 998 }
        ));
        assert!(!mailbox.trim_through(500), "never moves back");
        assert!(mailbox.trim_through(5000), "capped at the head");
        assert_eq!((mailbox.start(), mailbox.head()), (1000, 1000));
        assert!(
            mailbox.events.capacity() <= 8,
            "an emptied log keeps room for a few entries, not {}",
            mailbox.events.capacity()
        );
        assert_eq!(mailbox.push(event(0)), 1001);
    }

    #[test]
    fn readers_see_only_durable_events() {
        let mut mailbox = Mailbox::new(0);
        mailbox.push(event(1));
        mailbox.push_pending(event(2), 7);
        mailbox.push_pending(event(3), 8);
        assert_eq!(seqs(mailbox.read_durable(0, 10, 6)), vec![1]);
        assert!(matches!(mailbox.read_durable(1, 10, 6), Read::UpToDate));
        assert_eq!(seqs(mailbox.read_durable(0, 10, 7)), vec![1, 2]);
        assert_eq!(mailbox.visible_head(7), 2);
        assert_eq!(seqs(mailbox.read_durable(1, 10, 8)), vec![2, 3]);
        assert_eq!(mailbox.visible_head(8), 3);
    }

    #[test]
    fn unsealed_events_stay_hidden_until_sealed_with_their_ticket() {
        let mut mailbox = Mailbox::new(0);
        mailbox.push_pending(event(1), 3);
        mailbox.push_pending(event(2), UNSEALED);
        mailbox.push_pending(event(3), UNSEALED);
        assert_eq!(seqs(mailbox.read_durable(0, 10, u64::MAX - 1)), vec![1]);
        assert_eq!(mailbox.visible_head(u64::MAX - 1), 1);
        mailbox.seal(9);
        assert_eq!(seqs(mailbox.read_durable(0, 10, 8)), vec![1]);
        assert_eq!(seqs(mailbox.read_durable(0, 10, 9)), vec![1, 2, 3]);
        mailbox.push_pending(event(4), UNSEALED);
        mailbox.seal(10);
        assert_eq!(
            mailbox.visible_head(9),
            3,
            "sealing touches only the unsealed tail"
        );
        assert_eq!(mailbox.visible_head(10), 4);
    }

    #[test]
    fn a_mailbox_over_its_byte_bound_drops_oldest_and_expires_old_cursors() {
        let mut mailbox = Mailbox::new(0);
        let data = serde_json::json!("x".repeat(10_000));
        let big = Event::Notification { data: &data }.to_bytes();
        let fit = MAILBOX_MAX_BYTES / big.as_bytes().len();
        for _ in 0..fit + 3 {
            mailbox.push(big.clone());
        }
        assert_eq!(mailbox.len(), fit);
        assert!(mailbox.bytes <= MAILBOX_MAX_BYTES);
        assert!(matches!(
            mailbox.read(2, 10),
            Read::Expired { oldest_cursor: 3 }
        ));
        assert_eq!(seqs(mailbox.read(3, 2)), vec![4, 5]);
        assert!(mailbox.trim_through(mailbox.head() - 1));
        assert_eq!(mailbox.bytes, big.as_bytes().len(), "trims count too");
    }
}
