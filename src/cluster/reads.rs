//! Polls' reads, batched: every `read.lua` a poll needs goes through this
//! node's queue, and one script run answers a batch of them.
//!
//! When a lobby message wakes thousands of parked polls at once, each
//! re-reads, and each answered client polls again: run one script each,
//! these reads would queue thousands of scripts in Redis at once, and every
//! other command (another node's, a health check's) would wait behind
//! them. Here at most `IN_FLIGHT` scripts per node are in Redis at a time,
//! each reading up to `BATCH` polls; reads that arrive meanwhile wait in
//! the queue and go in the next batch. A lone read still goes at once, in
//! a batch of one.
//!
//! A batch changes nothing a poll sees: `read.lua` reads each poll in turn
//! exactly as it would alone, and answers each on its own (a refusal is
//! that poll's, not the batch's). A batch that fails (Redis down, a
//! timeout) fails each of its polls, as a lone script would.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use redis::Value;
use tokio::sync::oneshot;

use super::scripts::{self, Args};
use super::Cluster;
use crate::hub::HubResult;

script!(READ, "read");

/// Most polls one script reads: a woken poll that copies a lobby message
/// and acknowledges costs Redis 35–45 µs, so a batch takes it about a third
/// of a millisecond.
pub const BATCH: usize = 8;
/// Most read scripts of one node in Redis at once. Redis runs what has
/// arrived, then writes (and with `appendfsync always` syncs) its AOF once
/// for all of it before answering, so two batches share each sync; and a
/// command of another client waits behind at most `BATCH` × `IN_FLIGHT`
/// reads per node, about 0.7 ms each node: with 32 × 4, a PING waited
/// 13–15 ms at the median during a lobby message to 5 000 over 3 nodes,
/// with 8 × 2 about 3 ms, for a fan-out a quarter to a third slower
/// (docs/performance.md, 2026-12-08).
pub const IN_FLIGHT: usize = 2;

/// One poll's read, as `read.lua` takes it.
pub struct ReadRequest {
    pub sha: Arc<str>,
    pub cursor: u64,
    pub park_ms: u64,
    pub copy_presence: bool,
    pub generation: u64,
}

struct Waiting {
    request: ReadRequest,
    answer: oneshot::Sender<HubResult<Vec<Value>>>,
}

/// The reads waiting for a batch, and how many batches are running.
#[derive(Default)]
pub struct ReadQueue {
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    waiting: VecDeque<Waiting>,
    running: usize,
}

impl ReadQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next batch to run, or None (and one runner fewer) when nothing
    /// waits.
    fn next_batch(&self) -> Option<Vec<Waiting>> {
        let mut state = self.lock();
        if state.waiting.is_empty() {
            state.running -= 1;
            return None;
        }
        let take = state.waiting.len().min(BATCH);
        Some(state.waiting.drain(..take).collect())
    }
}

impl Cluster {
    /// Runs one poll's read (in a batch with whatever other reads wait):
    /// `read.lua`'s answer for it after the `'ok'`, or its refusal.
    pub(super) async fn read_batched(&self, request: ReadRequest) -> HubResult<Vec<Value>> {
        let (answer, answered) = oneshot::channel();
        let start_runner = {
            let mut state = self.shared.reads.lock();
            state.waiting.push_back(Waiting { request, answer });
            let start = state.running < IN_FLIGHT;
            if start {
                state.running += 1;
            }
            start
        };
        if start_runner {
            let cluster = self.clone();
            tokio::spawn(async move { cluster.run_reads().await });
        }
        // A runner always answers (a failed batch answers each read with
        // its error); a dropped sender means the runtime is going away.
        answered
            .await
            .unwrap_or(Err(crate::hub::Refusal::StoreUnavailable))
    }

    /// Runs batches until the queue is empty.
    async fn run_reads(self) {
        while let Some(batch) = self.shared.reads.next_batch() {
            let mut args =
                Args::new().arg(super::membership::millis(self.config().inactivity_timeout));
            for waiting in &batch {
                let request = &waiting.request;
                args = args
                    .arg(&*request.sha)
                    .arg(request.cursor)
                    .arg(request.park_ms)
                    .arg(if request.copy_presence { "1" } else { "0" })
                    .arg(request.generation);
            }
            // A read may run twice: a copy is not made again (lseen, pseen),
            // an acknowledgement is the same, and a second generation
            // supersedes only the first, which nobody parked.
            match scripts::run_repeatable(self.redis(), &READ, &[], args).await {
                Ok(answers) => {
                    let mut answers = answers.into_iter();
                    for waiting in batch {
                        let answer = answers
                            .next()
                            .map_or(Err(crate::hub::Refusal::StoreUnavailable), |answer| {
                                scripts::answer_of(READ.name(), answer)
                            });
                        let _ = waiting.answer.send(answer);
                    }
                }
                Err(refusal) => {
                    for waiting in batch {
                        let _ = waiting.answer.send(Err(refusal.clone()));
                    }
                }
            }
        }
    }
}
