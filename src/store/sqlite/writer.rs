//! The write side of `SqliteStore`: the queue of submitted jobs, the one
//! write connection, and who commits.
//!
//! Two committers share the connection, one at a time, and each takes
//! everything queued as one transaction (group commit):
//! - the writer thread, for operations nobody waits on (a poll's
//!   acknowledgement, a sweep) and for everything whenever the connection
//!   was busy; it also runs the housekeeping (WAL checkpoints, deleting
//!   deliveries no mailbox holds, history retention);
//! - the waiter itself: a /send or /join that must answer only once durable
//!   commits inline (`commit_through`) on its own runtime thread, after the
//!   hub's locks are released. With `--sync normal` a commit is a write
//!   into the WAL, tens of µs; handing it to the writer thread and back
//!   would add two thread wake-ups to every send, costlier than the write
//!   itself. With `--sync full` a commit is an fsync, which must not stall
//!   a runtime thread, so the writer thread does them all.
//!
//! Order: a committer holds the connection while it drains the queue,
//! writes and publishes, so batches are written and published in ticket
//! order whoever commits them.
//!
//! Checkpoints: SQLite's automatic checkpoint would run (with fsyncs) inside
//! whichever commit crossed 1 000 WAL pages, i.e. on a runtime thread. It is
//! off; the writer thread checkpoints after `CHECKPOINT_EVERY_COMMITS`
//! commits, and whenever it wakes up with nothing to do (at least every
//! `IDLE_WAKE_UP`) after some commit. It copies the bulk on a connection of
//! its own, alongside commits (holding the write connection through all of
//! it, tens of ms, would delay every send queued behind it), then finishes on
//! the write connection, holding it only for the frames appended meanwhile,
//! so that the checkpoint completes and the WAL starts over rather than
//! grow.
//!
//! What a batch or a housekeeping pass writes is `apply`'s; this file
//! decides only when, on which thread, and what happens on failure.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{oneshot, watch};

use super::apply::{collect_deliveries, delivery_cutoff, prune_history, write_batch, Write};
use crate::config::SyncMode;
use crate::store::{Change, StoreResult};

/// Jobs taken per transaction at most, so one commit stays bounded.
const MAX_JOBS_PER_COMMIT: usize = 4096;
/// Deliveries no mailbox holds any more are deleted at most this often.
const DELIVERY_GC_INTERVAL: Duration = Duration::from_secs(1);
/// Deliveries deleted per statement, so that the write connection is never
/// held long: a fan-out to 5 000 moves 5 000 windows, and deleting what they
/// release in one go would keep sends waiting.
pub(super) const DELIVERIES_PER_DELETE: u64 = 1024;
/// How often old history is pruned when a retention is set.
const RETENTION_INTERVAL: Duration = Duration::from_secs(600);
/// Longest pause between retries of a failed commit.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(2);
/// Once shutdown has begun, a failing commit is retried this long at most.
const SHUTDOWN_RETRY_LIMIT: Duration = Duration::from_secs(5);
/// Checkpoint after this many commits (a commit is a few WAL pages; SQLite's
/// own default is every 1 000 pages).
const CHECKPOINT_EVERY_COMMITS: u32 = 256;
/// Passes of the concurrent checkpoint at most, each copying what commits
/// appended during the one before...
const CHECKPOINT_PASSES: usize = 3;
/// ... until at most this many frames are left for the final pass, which
/// holds the write connection.
const FRAMES_LEFT_FOR_THE_WRITER: i64 = 256;
/// A job queued for an inline committer is taken by the writer thread if it
/// is still there after this long (a waiter that never came is a bug, but
/// must not strand the job)...
const UNCLAIMED_JOB_AFTER: Duration = Duration::from_millis(100);
/// ... and the writer thread looks at least this often, since such a job
/// does not wake it. Also the housekeeping's resolution.
const IDLE_WAKE_UP: Duration = Duration::from_secs(1);

/// A queued write, owned by the queue until a committer takes it.
pub(super) enum Job {
    /// The changes of one hub operation; `ticket` is published once durable.
    Submit { ticket: u64, changes: Vec<Change> },
    /// Claims a name; `reply` says whether it was free, once durable.
    CreateAccount {
        name: String,
        password_hash: String,
        reply: oneshot::Sender<StoreResult<bool>>,
    },
}

impl Job {
    /// What `apply` writes for this job.
    fn write(&self) -> Write<'_> {
        match self {
            Job::Submit { changes, .. } => Write::Changes(changes),
            Job::CreateAccount {
                name,
                password_hash,
                ..
            } => Write::CreateAccount {
                name,
                password_hash,
            },
        }
    }
}

struct Queue {
    jobs: VecDeque<Job>,
    /// False once the store is shutting down: the writer drains and exits.
    open: bool,
    /// Set by whoever wants the writer thread to run even with the queue
    /// empty (a checkpoint is due, or jobs need it).
    wake_writer: bool,
}

pub(super) struct Writer {
    connection: Mutex<Connection>,
    /// Used by the writer thread only, for checkpoints.
    checkpointer: Mutex<Connection>,
    queue: Mutex<Queue>,
    work: Condvar,
    durable: watch::Sender<u64>,
    /// Waiters may commit on their own thread (`--sync normal`).
    inline: bool,
    /// Set when shutdown begins, so a failing writer gives up in time.
    stopping: AtomicBool,
    /// Some batch moved a mailbox window: old deliveries may be deletable.
    windows_moved: AtomicBool,
    commits_since_checkpoint: AtomicU32,
}

impl Writer {
    pub(super) fn new(
        connection: Connection,
        checkpointer: Connection,
        sync: SyncMode,
    ) -> rusqlite::Result<Writer> {
        connection.execute_batch("PRAGMA wal_autocheckpoint = 0;")?;
        Ok(Writer {
            connection: Mutex::new(connection),
            checkpointer: Mutex::new(checkpointer),
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                open: true,
                wake_writer: false,
            }),
            work: Condvar::new(),
            durable: watch::Sender::new(0),
            inline: sync == SyncMode::Normal,
            stopping: AtomicBool::new(false),
            windows_moved: AtomicBool::new(false),
            commits_since_checkpoint: AtomicU32::new(0),
        })
    }

    pub(super) fn durable(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `read` on the write connection if nobody holds it right now.
    /// Between transactions it sees exactly what is committed, i.e. durable.
    pub(super) fn try_read<T>(&self, read: impl FnOnce(&Connection) -> T) -> Option<T> {
        match self.connection.try_lock() {
            Ok(connection) => Some(read(&connection)),
            Err(TryLockError::Poisoned(poisoned)) => Some(read(&poisoned.into_inner())),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn connection(&self) -> MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a job. `waiter_commits`: the submitter will call
    /// `commit_through` next, so the writer thread need not be woken.
    pub(super) fn push(&self, job: Job, waiter_commits: bool) {
        let mut queue = self.queue();
        if !queue.open {
            tracing::error!("the store writer has stopped; a write was dropped");
            return;
        }
        queue.jobs.push_back(job);
        if !(waiter_commits && self.inline) {
            queue.wake_writer = true;
            self.work.notify_one();
        }
    }

    /// Makes everything queued through `ticket` durable before returning
    /// when it can do so on this thread; otherwise (connection busy, `--sync
    /// full`, a failed write) hands the work to the writer thread and
    /// returns at once: the caller then waits for `durable` as usual.
    pub(super) fn commit_through(&self, ticket: u64) {
        if *self.durable.borrow() >= ticket {
            return;
        }
        if self.inline {
            let committed = match self.connection.try_lock() {
                Ok(mut connection) => self.commit_queued(&mut connection, false),
                Err(TryLockError::Poisoned(poisoned)) => {
                    self.commit_queued(&mut poisoned.into_inner(), false)
                }
                // The holder may have drained the queue before this job
                // was pushed; the writer thread takes it once it is free.
                Err(TryLockError::WouldBlock) => false,
            };
            if committed && *self.durable.borrow() >= ticket {
                return;
            }
        }
        let mut queue = self.queue();
        queue.wake_writer = true;
        self.work.notify_one();
    }

    /// Drains the queue into one transaction and publishes its tickets.
    /// With `retry`, a failing write is retried with backoff (the writer
    /// thread); without, the batch goes back to the queue's front and this
    /// returns false (an inline committer, which must not sleep).
    fn commit_queued(&self, connection: &mut Connection, retry: bool) -> bool {
        let batch: Vec<Job> = {
            let mut queue = self.queue();
            let take = queue.jobs.len().min(MAX_JOBS_PER_COMMIT);
            queue.jobs.drain(..take).collect()
        };
        if batch.is_empty() {
            return true;
        }
        let started = Instant::now();
        let mut backoff = Duration::from_millis(10);
        let mut stopping_since: Option<Instant> = None;
        let outcome = loop {
            match write_batch(connection, batch.iter().map(Job::write)) {
                Ok(outcome) => break outcome,
                Err(e) if !retry => {
                    tracing::warn!(error = %e, "inline store commit failed; the writer thread retries");
                    let mut queue = self.queue();
                    for job in batch.into_iter().rev() {
                        queue.jobs.push_front(job);
                    }
                    return false;
                }
                Err(e) => {
                    // Nothing is acknowledged until written: senders wait (and
                    // time out with 503) while the disk is failing. At
                    // shutdown, give up after a bound rather than hang.
                    if self.stopping.load(Ordering::SeqCst) {
                        let since = *stopping_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > SHUTDOWN_RETRY_LIMIT {
                            tracing::error!(error = %e, jobs = batch.len(), "store commit still failing at shutdown; these changes are lost");
                            return false;
                        }
                    }
                    tracing::error!(error = %e, "store commit failed; retrying in {backoff:?}");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
                }
            }
        };
        crate::metrics::STORE.committed(started.elapsed(), batch.len());
        if batch.iter().any(|job| {
            matches!(job, Job::Submit { changes, .. } if changes.iter().any(|change| {
                matches!(change, Change::MailboxWindow { .. } | Change::MailboxClosed { .. })
            }))
        }) {
            self.windows_moved.store(true, Ordering::Relaxed);
        }
        let mut highest_ticket = None;
        for (job, created) in batch.into_iter().zip(outcome) {
            match job {
                Job::Submit { ticket, .. } => highest_ticket = Some(ticket),
                Job::CreateAccount { reply, .. } => {
                    let _ = reply.send(Ok(created));
                }
            }
        }
        if let Some(ticket) = highest_ticket {
            // Published while the connection is held: tickets only grow.
            self.durable.send_replace(ticket);
        }
        let commits = self
            .commits_since_checkpoint
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if commits == CHECKPOINT_EVERY_COMMITS && !retry {
            let mut queue = self.queue();
            queue.wake_writer = true;
            self.work.notify_one();
        }
        true
    }

    /// The writer thread: commits what nobody commits inline, and keeps the
    /// database tidy. Returns once the queue is closed and drained.
    /// `history_retention`: delete messages older than this (None: keep all).
    pub(super) fn run(&self, history_retention: Option<Duration>) {
        let mut next_pruning = Instant::now();
        let mut next_gc = Instant::now();
        loop {
            if Instant::now() >= next_gc && self.windows_moved.swap(false, Ordering::Relaxed) {
                self.collect_deliveries();
                next_gc = Instant::now() + DELIVERY_GC_INTERVAL;
            }
            if let Some(retention) = history_retention {
                if Instant::now() >= next_pruning {
                    prune_history(&self.connection(), retention);
                    next_pruning = Instant::now() + RETENTION_INTERVAL;
                }
            }
            if self.commits_since_checkpoint.load(Ordering::Relaxed) >= CHECKPOINT_EVERY_COMMITS {
                self.commits_since_checkpoint.store(0, Ordering::Relaxed);
                self.checkpoint();
            }
            let mut queue = self.queue();
            if !queue.wake_writer && queue.open {
                let timeout = if queue.jobs.is_empty() {
                    IDLE_WAKE_UP
                } else {
                    UNCLAIMED_JOB_AFTER
                };
                let (woken, result) = self
                    .work
                    .wait_timeout(queue, timeout)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                queue = woken;
                if result.timed_out() && queue.jobs.is_empty() && queue.open {
                    drop(queue);
                    // Idle: a good moment to checkpoint what was written.
                    if self.commits_since_checkpoint.swap(0, Ordering::Relaxed) > 0 {
                        self.checkpoint();
                    }
                    continue;
                }
            }
            queue.wake_writer = false;
            let closed = !queue.open;
            let idle = queue.jobs.is_empty();
            drop(queue);
            if idle {
                if closed {
                    if self.windows_moved.swap(false, Ordering::Relaxed) {
                        self.collect_deliveries();
                    }
                    return;
                }
                continue;
            }
            let mut connection = self.connection();
            // Returns false only when giving up at shutdown.
            if !self.commit_queued(&mut connection, true) {
                return;
            }
        }
    }

    /// Stops taking jobs; the writer thread writes what is queued and exits.
    pub(super) fn close(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let mut queue = self.queue();
        queue.open = false;
        queue.wake_writer = true;
        self.work.notify_one();
    }
}

impl Writer {
    /// Deletes the deliveries no mailbox holds any more, a chunk per
    /// statement, taking the write connection for each chunk only.
    fn collect_deliveries(&self) {
        let cutoff = match delivery_cutoff(&self.connection()) {
            Ok(Some(cutoff)) => cutoff,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "finding old deliveries failed");
                return;
            }
        };
        let mut deleted = 0;
        loop {
            match collect_deliveries(&self.connection(), cutoff, DELIVERIES_PER_DELETE) {
                Ok(0) => break,
                Ok(chunk) => deleted += chunk,
                Err(e) => {
                    tracing::error!(error = %e, "deleting old deliveries failed");
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::debug!(deleted, "deleted deliveries no mailbox holds");
        }
    }

    fn checkpoint(&self) {
        // The bulk of the copying, alongside commits: again while commits
        // appended much during the previous pass.
        {
            let checkpointer = self
                .checkpointer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for _ in 0..CHECKPOINT_PASSES {
                if passive_checkpoint(&checkpointer) <= FRAMES_LEFT_FOR_THE_WRITER {
                    break;
                }
            }
        }
        // Then what was appended meanwhile, with the write connection held
        // so that nothing is appended during it: the checkpoint completes,
        // and the next commit starts the WAL over from its beginning.
        // Without this, under a steady stream of commits no checkpoint ever
        // catches up, and the WAL grows by gigabytes a minute.
        passive_checkpoint(&self.connection());
    }
}

/// Runs a passive checkpoint; returns how many WAL frames it left
/// uncopied (0 when it failed: retried at the next checkpoint).
fn passive_checkpoint(connection: &Connection) -> i64 {
    let frames = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
    });
    match frames {
        Ok((in_wal, copied)) => (in_wal - copied).max(0),
        Err(e) => {
            tracing::warn!(error = %e, "WAL checkpoint failed; retried later");
            0
        }
    }
}
