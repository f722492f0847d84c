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
//! grow. Should the writer thread not get the CPU for that long, the
//! committer that reaches `CHECKPOINT_BACKSTOP_COMMITS` checkpoints itself,
//! so the WAL stays bounded however the threads are scheduled.
//!
//! Failure: a write that fails for a reason of its own (a constraint, see
//! `apply::is_fault_of_the_write`) is rejected alone and the batch commits
//! without it; its ticket is still published, and `rejected` tells its
//! waiter. A failure of the storage (a full disk) puts the batch back at the
//! queue's front, and the writer thread retries it with backoff while
//! waiters time out; `health` reports the stall, and requests are refused
//! at once while the queue is beyond `STORE_QUEUE_MAX`. The writer thread
//! runs under `run_supervised`: a panic is logged and the loop restarted.
//!
//! What a batch or a housekeeping pass writes is `apply`'s; this file
//! decides only when, on which thread, and what happens on failure.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{oneshot, watch};

use super::apply::{
    collect_deliveries, delivery_cutoff, is_fault_of_the_write, prune_history, retention_cutoff,
    write_batch, Outcome, Write, Written,
};
use super::faults::Faults;
use crate::config::{SyncMode, PRUNE_BATCH_ROWS, STORE_QUEUE_MAX};
use crate::store::{Account, Change, StoreError, StoreResult};

/// Jobs taken per transaction at most, so one commit stays bounded.
const MAX_JOBS_PER_COMMIT: usize = 4096;
/// Deliveries no mailbox holds any more are deleted at most this often.
const DELIVERY_GC_INTERVAL: Duration = Duration::from_secs(1);
/// Deliveries deleted per statement, so that the write connection is never
/// held long: a fan-out to 5 000 moves 5 000 windows, and deleting what they
/// release in one go would keep sends waiting.
pub(super) const DELIVERIES_PER_DELETE: u64 = 1024;
/// Pause between the chunks of a long delete (old deliveries, expired
/// history), in which sends that found the connection busy commit.
const PAUSE_BETWEEN_CHUNKS: Duration = Duration::from_millis(1);
/// How often old history is pruned when a retention is set.
const RETENTION_INTERVAL: Duration = Duration::from_secs(600);
/// Longest pause between retries of a failed commit.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(2);
/// Pause before the writer loop is restarted after a panic.
const RESTART_AFTER_PANIC: Duration = Duration::from_secs(1);
/// Once shutdown has begun, a failing commit is retried this long at most.
const SHUTDOWN_RETRY_LIMIT: Duration = Duration::from_secs(5);
/// Checkpoint after this many commits (a commit is a few WAL pages; SQLite's
/// own default is every 1 000 pages).
const CHECKPOINT_EVERY_COMMITS: u32 = 256;
/// A committer that finds this many commits since the last checkpoint
/// checkpoints itself, holding the write connection: the writer thread is
/// not getting the CPU (a starved or overloaded host), and without this the
/// WAL would grow for as long as that lasts.
const CHECKPOINT_BACKSTOP_COMMITS: u32 = 2 * CHECKPOINT_EVERY_COMMITS;
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
        account: Account,
        reply: oneshot::Sender<StoreResult<bool>>,
    },
}

impl Job {
    /// What `apply` writes for this job.
    fn write(&self) -> Write<'_> {
        match self {
            Job::Submit { changes, .. } => Write::Changes(changes),
            Job::CreateAccount { name, account, .. } => Write::CreateAccount { name, account },
        }
    }
}

/// A job, and when it was queued: the oldest tells whether commits keep up.
struct Queued {
    job: Job,
    at: Instant,
}

struct Queue {
    jobs: VecDeque<Queued>,
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
    /// `queue.jobs.len()`, written under the queue's lock, read without it.
    queued: AtomicUsize,
    /// Failures, and what became of failed writes (see `faults`).
    pub(super) faults: Faults,
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
            queued: AtomicUsize::new(0),
            faults: Faults::new(),
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
        queue.jobs.push_back(Queued {
            job,
            at: Instant::now(),
        });
        self.queued.store(queue.jobs.len(), Ordering::Relaxed);
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
        // While the storage fails, every inline try would apply the whole
        // queue only to fail again: the writer thread retries instead.
        if self.inline && !self.faults.storage_failing() {
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
    /// When the storage fails it, the batch goes back to the queue's front
    /// and this returns false: the writer thread retries after a pause, an
    /// inline committer (which must not sleep) leaves it to the writer.
    fn commit_queued(&self, connection: &mut Connection, retry: bool) -> bool {
        let batch: Vec<Queued> = {
            let mut queue = self.queue();
            let take = queue.jobs.len().min(MAX_JOBS_PER_COMMIT);
            let batch = queue.jobs.drain(..take).collect();
            self.queued.store(queue.jobs.len(), Ordering::Relaxed);
            batch
        };
        if batch.is_empty() {
            return true;
        }
        let started = Instant::now();
        let writes = || batch.iter().map(|queued| queued.job.write());
        let written = match write_batch(connection, writes(), false) {
            // One write's own fault: try again with each write apart, so
            // that only the culprit is left out.
            Err(e) if is_fault_of_the_write(&e) => write_batch(connection, writes(), true),
            result => result,
        };
        let written = match written {
            Ok(written) => written,
            Err(e) => {
                // Nothing is acknowledged until written: waiters time out
                // with 503 while the disk is failing, and a retried /send
                // finds its first attempt still queued here.
                if retry {
                    tracing::error!(error = %e, jobs = batch.len(), "store commit failed; retrying");
                } else {
                    tracing::warn!(error = %e, "inline store commit failed; the writer thread retries");
                }
                self.faults.storage_failed(&e);
                let mut queue = self.queue();
                for queued in batch.into_iter().rev() {
                    queue.jobs.push_front(queued);
                }
                self.queued.store(queue.jobs.len(), Ordering::Relaxed);
                queue.wake_writer = true;
                self.work.notify_one();
                return false;
            }
        };
        if self.faults.storage_recovered() {
            tracing::info!("store commits succeed again");
        }
        let batch: Vec<Job> = batch.into_iter().map(|queued| queued.job).collect();
        crate::metrics::STORE.committed(started.elapsed(), batch.len());
        if batch.iter().any(|job| {
            matches!(job, Job::Submit { changes, .. } if changes.iter().any(|change| {
                matches!(change, Change::MailboxWindow { .. } | Change::MailboxClosed { .. })
            }))
        }) {
            self.windows_moved.store(true, Ordering::Relaxed);
        }
        let Written {
            outcomes,
            duplicates,
        } = written;
        let mut highest_ticket = None;
        let mut rejected = Vec::new();
        for (job, outcome) in batch.into_iter().zip(outcomes) {
            match (job, outcome) {
                (Job::Submit { ticket, .. }, outcome) => {
                    highest_ticket = Some(ticket);
                    if let Outcome::Rejected(why) = outcome {
                        tracing::error!(ticket, error = %why, "a change could not be stored and was dropped");
                        rejected.push(ticket);
                    }
                }
                (Job::CreateAccount { reply, .. }, Outcome::Written { created }) => {
                    let _ = reply.send(Ok(created));
                }
                (Job::CreateAccount { reply, .. }, Outcome::Rejected(why)) => {
                    let _ = reply.send(Err(StoreError(why)));
                }
            }
        }
        // Recorded before the tickets are published: a waiter reads them
        // once its ticket is durable.
        self.faults.remember(rejected, duplicates);
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
        } else if commits >= CHECKPOINT_BACKSTOP_COMMITS {
            self.commits_since_checkpoint.store(0, Ordering::Relaxed);
            passive_checkpoint(connection);
        }
        true
    }

    /// The writer thread: commits what nobody commits inline, and keeps the
    /// database tidy. Returns once the queue is closed and drained.
    /// `history_retention`: delete messages older than this (None: keep all).
    pub(super) fn run(&self, history_retention: Option<Duration>) {
        let mut next_pruning = Instant::now();
        let mut next_gc = Instant::now();
        let mut backoff = Duration::from_millis(10);
        let mut stopping_since: Option<Instant> = None;
        loop {
            if Instant::now() >= next_gc && self.windows_moved.swap(false, Ordering::Relaxed) {
                self.collect_deliveries();
                next_gc = Instant::now() + DELIVERY_GC_INTERVAL;
            }
            if let Some(retention) = history_retention {
                if Instant::now() >= next_pruning {
                    self.prune_history(retention);
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
            if self.commit_queued(&mut self.connection(), true) {
                backoff = Duration::from_millis(10);
                continue;
            }
            // The storage failed: pause (without the connection, so an
            // inline committer may try meanwhile), then retry. At shutdown,
            // give up after a bound rather than hang.
            if self.stopping.load(Ordering::SeqCst)
                && stopping_since.get_or_insert_with(Instant::now).elapsed() > SHUTDOWN_RETRY_LIMIT
            {
                let mut queue = self.queue();
                tracing::error!(
                    jobs = queue.jobs.len(),
                    "store commit still failing at shutdown; these changes are lost"
                );
                queue.jobs.clear();
                self.queued.store(0, Ordering::Relaxed);
                return;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
        }
    }

    /// Runs the writer thread's loop until it returns; a panic in it is
    /// logged and the loop started again (its state is all in `self`, and
    /// every lock here recovers from poisoning). Marks the writer dead if
    /// the loop ends before `close`.
    pub(super) fn run_supervised(&self, history_retention: Option<Duration>) {
        loop {
            match std::panic::catch_unwind(AssertUnwindSafe(|| self.run(history_retention))) {
                Ok(()) => break,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(panic = %what, "the store writer panicked; restarting it");
                    std::thread::sleep(RESTART_AFTER_PANIC);
                }
            }
        }
        if !self.stopping.load(Ordering::SeqCst) {
            tracing::error!("the store writer stopped; nothing will be committed");
            self.faults.writer_died();
        }
    }

    /// Whether the queue is below its bound (see `STORE_QUEUE_MAX`).
    pub(super) fn has_room(&self) -> bool {
        self.queued.load(Ordering::Relaxed) < STORE_QUEUE_MAX
    }

    /// Ok while commits keep up; otherwise why not (see `Faults::health`).
    pub(super) fn health(&self) -> Result<(), String> {
        let oldest = self.queue().jobs.front().map(|queued| queued.at.elapsed());
        self.faults.health(oldest)
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
    /// statement.
    fn collect_deliveries(&self) {
        let cutoff = match delivery_cutoff(&self.connection()) {
            Ok(Some(cutoff)) => cutoff,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "finding old deliveries failed");
                return;
            }
        };
        let deleted = self.delete_in_chunks("deleting old deliveries", |connection| {
            collect_deliveries(connection, cutoff, DELIVERIES_PER_DELETE)
        });
        if deleted > 0 {
            tracing::debug!(deleted, "deleted deliveries no mailbox holds");
        }
    }

    /// Deletes the messages older than `retention`, `PRUNE_BATCH_ROWS` per
    /// statement: a first pruning of a large history deletes millions.
    fn prune_history(&self, retention: Duration) {
        let cutoff = retention_cutoff(retention);
        let deleted = self.delete_in_chunks("pruning history", |connection| {
            prune_history(connection, cutoff, PRUNE_BATCH_ROWS)
        });
        if deleted > 0 {
            tracing::info!(deleted, "pruned messages past the history retention");
        }
    }

    /// Runs `delete` (one bounded DELETE, its own transaction) until it
    /// deletes nothing; returns how many rows went. The write connection is
    /// taken for each chunk only; what queued meanwhile is committed between
    /// chunks (with `--sync full` only this thread commits), and a pause
    /// lets sends commit on their own threads, so that sends keep committing
    /// through a delete of millions. The WAL is checkpointed as it grows.
    fn delete_in_chunks(
        &self,
        what: &str,
        mut delete: impl FnMut(&Connection) -> rusqlite::Result<usize>,
    ) -> usize {
        let mut deleted = 0;
        loop {
            let mut connection = self.connection();
            match delete(&connection) {
                Ok(0) => break,
                Ok(chunk) => deleted += chunk,
                Err(e) => {
                    tracing::error!(error = %e, "{what} failed");
                    break;
                }
            }
            if self.queued.load(Ordering::Relaxed) > 0 {
                self.commit_queued(&mut connection, true);
            }
            drop(connection);
            let chunks = self
                .commits_since_checkpoint
                .fetch_add(1, Ordering::Relaxed);
            if chunks + 1 >= CHECKPOINT_EVERY_COMMITS {
                self.commits_since_checkpoint.store(0, Ordering::Relaxed);
                self.checkpoint();
            }
            std::thread::sleep(PAUSE_BETWEEN_CHUNKS);
        }
        deleted
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
