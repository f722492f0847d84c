//! What the writer knows of failures, for those who wait on it: whether
//! the storage is failing and why, the writes it rejected or kept out as
//! repeats (for their waiters), and whether the writer thread still runs.
//! `writer` records; the `Store` impl and /healthz read.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::ErrorCode;

use crate::config::STORE_STALL_AFTER;
use crate::event::Message;

/// Rejected tickets and duplicate messages remembered for their waiters
/// (the newest; a waiter reads its own within `SEND_DURABILITY_TIMEOUT`).
const OUTCOMES_REMEMBERED: usize = 4096;

pub(super) struct Faults {
    /// Whether the storage failed the last commit: inline committers then
    /// leave the retries to the writer thread's backoff...
    storage_failing: AtomicBool,
    /// ... and why, since when (the first failure in a row), for /healthz.
    why: Mutex<Option<(String, Instant)>>,
    /// What happened to some writes, for their waiters.
    outcomes: Mutex<Outcomes>,
    /// Whether `outcomes` holds anything, so that no send locks it in vain.
    any_outcome: AtomicBool,
    /// False once the writer thread has ended other than by `close`.
    alive: AtomicBool,
}

/// The newest rejected tickets and duplicate messages, bounded.
#[derive(Default)]
struct Outcomes {
    rejected: VecDeque<u64>,
    /// (id of the message kept out, the message stored first).
    duplicates: VecDeque<(u64, Message)>,
}

impl Faults {
    pub(super) fn new() -> Faults {
        Faults {
            storage_failing: AtomicBool::new(false),
            why: Mutex::new(None),
            outcomes: Mutex::new(Outcomes::default()),
            any_outcome: AtomicBool::new(false),
            alive: AtomicBool::new(true),
        }
    }

    /// A commit failed for the storage's reason.
    pub(super) fn storage_failed(&self, error: &rusqlite::Error) {
        let why = match error.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => "the disk is full".into(),
            _ => error.to_string(),
        };
        let mut failing = lock(&self.why);
        let since = failing
            .as_ref()
            .map_or_else(Instant::now, |(_, since)| *since);
        *failing = Some((why, since));
        self.storage_failing.store(true, Ordering::Relaxed);
    }

    /// A commit succeeded; true if the storage had been failing.
    pub(super) fn storage_recovered(&self) -> bool {
        let recovered = self.storage_failing.load(Ordering::Relaxed)
            && self.storage_failing.swap(false, Ordering::Relaxed);
        if recovered {
            *lock(&self.why) = None;
        }
        recovered
    }

    pub(super) fn storage_failing(&self) -> bool {
        self.storage_failing.load(Ordering::Relaxed)
    }

    /// The writer thread ended while the store was open.
    pub(super) fn writer_died(&self) {
        self.alive.store(false, Ordering::SeqCst);
    }

    /// Ok while commits keep up; otherwise why not. `oldest`: how long the
    /// oldest write in the queue has waited (None while the queue is empty,
    /// as it is for a moment whenever a committer has taken the batch: the
    /// storage failing since long says the same then).
    pub(super) fn health(&self, oldest: Option<Duration>) -> Result<(), String> {
        if !self.alive.load(Ordering::SeqCst) {
            return Err("the store writer has stopped; restart parlor".into());
        }
        let failing = lock(&self.why).clone();
        let failing_for = failing.as_ref().map(|(_, since)| since.elapsed());
        let waited = oldest.max(failing_for).unwrap_or_default();
        if waited <= STORE_STALL_AFTER {
            return Ok(());
        }
        let why = failing.map_or_else(|| "commits are not keeping up".into(), |(why, _)| why);
        Err(format!(
            "nothing was committed for {} s: {why}",
            waited.as_secs()
        ))
    }

    /// Records what a batch rejected or kept out, before its tickets are
    /// published (a waiter reads them once its ticket is durable).
    pub(super) fn remember(&self, rejected: Vec<u64>, duplicates: Vec<(u64, Message)>) {
        if rejected.is_empty() && duplicates.is_empty() {
            return;
        }
        let mut outcomes = lock(&self.outcomes);
        outcomes.rejected.extend(rejected);
        outcomes.duplicates.extend(duplicates);
        let excess = outcomes.rejected.len().saturating_sub(OUTCOMES_REMEMBERED);
        outcomes.rejected.drain(..excess);
        let excess = outcomes
            .duplicates
            .len()
            .saturating_sub(OUTCOMES_REMEMBERED);
        outcomes.duplicates.drain(..excess);
        self.any_outcome.store(true, Ordering::Release);
    }

    /// Whether the changes under `ticket` were rejected.
    pub(super) fn rejected(&self, ticket: u64) -> bool {
        self.any_outcome.load(Ordering::Acquire) && lock(&self.outcomes).rejected.contains(&ticket)
    }

    /// The message stored first, if message `id` was kept out as a repeat.
    pub(super) fn stored_first(&self, id: u64) -> Option<Message> {
        if !self.any_outcome.load(Ordering::Acquire) {
            return None;
        }
        let outcomes = lock(&self.outcomes);
        let found = outcomes
            .duplicates
            .iter()
            .find(|(kept_out, _)| *kept_out == id);
        found.map(|(_, first)| first.clone())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
