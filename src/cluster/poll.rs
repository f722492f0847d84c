//! /poll in cluster mode, and the safety tick.
//!
//! A poll runs `read.lua` (copy lobby and presence into the mailbox,
//! acknowledge, answer or park; batched with other polls' reads by
//! `reads`) and, when there is nothing to answer,
//! parks in this node's `WakeTable` until a wake-up for its user, a
//! broadcast, a supersede, its timeout or shutdown. A wake-up re-runs the
//! read with the poll's generation, which also tells it whether a newer
//! poll took over meanwhile. Timing out needs no Redis: the parked
//! deadline `read.lua` set already covers the wait plus the inactivity
//! timeout.
//!
//! Presence changes are coalesced as single-node does: a poll with nothing
//! but presence to answer waits `PRESENCE_COALESCE_WINDOW` for more.
//!
//! The safety tick re-checks parked polls against Redis every
//! `SAFETY_TICK` (one pipelined read), so a lost pub/sub message delays an
//! answer by one tick at most.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use super::membership::millis;
use super::reads::ReadRequest;
use super::scripts::{self, bytes, integer, text};
use super::wake::{ParkedPoll, Seen, Wake};
use super::{keys, Cluster};
use crate::config::PRESENCE_COALESCE_WINDOW;
use crate::event::empty_poll_body;
use crate::hub::HubResult;
use crate::metrics::PollAnswer;

/// How often parked polls are re-checked against Redis.
pub const SAFETY_TICK: Duration = Duration::from_secs(2);

/// What one `read.lua` answered.
enum Read {
    Events(Vec<u8>),
    Empty,
    Superseded,
    Park(ParkedPoll),
}

impl Cluster {
    /// GET|POST /poll: answers the events after `cursor`, waiting up to
    /// the poll timeout (or `timeout`, if shorter) for one to arrive.
    pub async fn poll(
        &self,
        token: &str,
        cursor: u64,
        timeout: Option<Duration>,
    ) -> HubResult<Vec<u8>> {
        let poll_timeout = self.config().poll_timeout;
        let wait = match timeout {
            Some(asked) => asked.min(poll_timeout),
            None => poll_timeout.mul_f64(1.0 - 0.1 * crate::hub::jitter_fraction()),
        };
        let deadline = Instant::now() + wait;
        let sha: Arc<str> = keys::token_sha(token).into();
        let metrics = self.metrics();
        let wakes = &self.shared.wakes;
        let mut generation = 0;
        let mut presence_due: Option<Instant> = None;
        let mut ending = false;
        loop {
            let now = Instant::now();
            let may_park = !wait.is_zero() && !ending && now < deadline;
            let copy_presence = !may_park || presence_due.is_some_and(|due| now >= due);
            let park_for = if may_park {
                deadline - now
            } else {
                Duration::ZERO
            };
            let mark = wakes.mark();
            let read = self
                .read(&sha, cursor, park_for, copy_presence, generation)
                .await?;
            let (poll, coalescing) = match read {
                Read::Events(body) => {
                    metrics.poll_answered(PollAnswer::Events);
                    return Ok(body);
                }
                Read::Empty => {
                    metrics.poll_answered(PollAnswer::Timeout);
                    return Ok(empty_poll_body(cursor));
                }
                Read::Superseded => {
                    metrics.poll_answered(PollAnswer::Superseded);
                    return Ok(empty_poll_body(cursor));
                }
                Read::Park(poll) => {
                    let coalescing = poll.coalescing;
                    (poll, coalescing)
                }
            };
            generation = poll.generation;
            let mut wake_at = deadline;
            if coalescing {
                let due = *presence_due.get_or_insert_with(|| now + PRESENCE_COALESCE_WINDOW);
                wake_at = wake_at.min(due);
            }
            let mut parked = wakes.park(mark, poll);
            tokio::select! {
                woken = &mut parked.woken => {
                    let answer = match woken {
                        Ok(Wake::Recheck) | Err(_) => continue,
                        Ok(Wake::Superseded) => PollAnswer::Superseded,
                        Ok(Wake::ShuttingDown) => PollAnswer::Shutdown,
                    };
                    metrics.poll_answered(answer);
                    return Ok(empty_poll_body(cursor));
                }
                _ = tokio::time::sleep_until(wake_at) => {
                    drop(parked);
                    if !coalescing {
                        metrics.poll_answered(PollAnswer::Timeout);
                        return Ok(empty_poll_body(cursor));
                    }
                    // The window (or the poll) ended with presence held
                    // back: answer it now.
                    ending = wake_at >= deadline;
                }
            }
        }
    }

    /// One poll's `read.lua` (batched with other polls' reads).
    async fn read(
        &self,
        sha: &Arc<str>,
        cursor: u64,
        park_for: Duration,
        copy_presence: bool,
        generation: u64,
    ) -> HubResult<Read> {
        let request = ReadRequest {
            sha: sha.clone(),
            cursor,
            park_ms: millis(park_for),
            copy_presence,
            generation,
        };
        let answer = self.read_batched(request).await;
        let answer = answer.inspect_err(|refusal| {
            if matches!(refusal, crate::hub::Refusal::CursorExpired { .. }) {
                self.metrics().cursor_expired();
            }
        })?;
        let number = |index: usize| answer.get(index).and_then(integer).unwrap_or(0);
        Ok(match answer.first().map(text).as_deref() {
            Some("events") => Read::Events(poll_body(number(1), &answer[2..])),
            Some("park") => Read::Park({
                let user = answer.get(6).map(text).unwrap_or_default();
                crate::access_log::note_caller(&user, number(7));
                ParkedPoll {
                    generation: number(1),
                    seen: Seen {
                        head: number(2),
                        presence: number(3),
                        lobby: number(4),
                    },
                    user: user.into(),
                    client: number(7),
                    token_key: sha.clone(),
                    coalescing: number(5) == 1,
                }
            }),
            Some("superseded") => Read::Superseded,
            _ => Read::Empty,
        })
    }

    /// Re-checks this node's parked polls against Redis: a poll whose
    /// user's mailbox head moved, or that has presence or lobby messages
    /// to copy, re-reads; one whose client has a newer poll is superseded.
    async fn safety_tick(&self) -> HubResult<()> {
        let parked = self.shared.wakes.parked();
        if parked.is_empty() {
            return Ok(());
        }
        let mut users: HashMap<&str, usize> = HashMap::new();
        for poll in &parked {
            let next = users.len();
            users.entry(&poll.user).or_insert(next);
        }
        let mut names: Vec<&str> = vec![""; users.len()];
        for (name, &index) in &users {
            names[index] = name;
        }
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("GET")
            .arg(keys::PRESENCE_VERSION)
            .cmd("ZRANGE")
            .arg(keys::LOBBY_LOG)
            .arg(-1)
            .arg(-1)
            .arg("WITHSCORES");
        for name in &names {
            pipeline
                .cmd("HGET")
                .arg(keys::mailbox_meta(name))
                .arg("head");
        }
        for poll in &parked {
            pipeline
                .cmd("HGET")
                .arg(keys::token(&poll.token_key))
                .arg("gen");
        }
        let answers: Vec<Value> = scripts::pipeline(self.redis(), &pipeline).await?;
        let presence = answers.first().and_then(integer).unwrap_or(0);
        let lobby = answers
            .get(1)
            .map(scripts::array)
            .and_then(|newest| newest.get(1))
            .and_then(|score| text(score).parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        let heads = &answers[2.min(answers.len())..];
        let generations = &heads[names.len().min(heads.len())..];
        let mut stale: Vec<&str> = Vec::new();
        for (index, poll) in parked.iter().enumerate() {
            let head = heads.get(users[&*poll.user]).and_then(integer);
            let generation = generations.get(index).and_then(integer);
            match generation {
                Some(newest) if newest > poll.generation => {
                    self.shared.wakes.supersede(poll.client, newest);
                    continue;
                }
                None => stale.push(&poll.user),
                Some(_) => {}
            }
            let moved = head != Some(poll.seen.head)
                || (presence > poll.seen.presence && !poll.coalescing)
                || lobby > poll.seen.lobby;
            if moved {
                stale.push(&poll.user);
            }
        }
        if !stale.is_empty() {
            tracing::debug!(polls = stale.len(), "safety tick: re-reading parked polls");
            self.shared.wakes.recheck_users(stale);
        }
        Ok(())
    }
}

/// `{"cursor":LAST,"events":[...]}` from events that already carry their
/// `seq`.
fn poll_body(last: u64, events: &[Value]) -> Vec<u8> {
    let size: usize = events.iter().map(|event| bytes(event).len() + 1).sum();
    let mut out = Vec::with_capacity(40 + size);
    out.extend_from_slice(b"{\"cursor\":");
    out.extend_from_slice(last.to_string().as_bytes());
    out.extend_from_slice(b",\"events\":[");
    for (index, event) in events.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(bytes(event));
    }
    out.extend_from_slice(b"]}");
    out
}

/// Re-checks parked polls against Redis every `SAFETY_TICK` until `stop`.
pub async fn run_safety_tick(cluster: Cluster, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SAFETY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // A failure is logged by `scripts`; the next tick retries.
                let _ = cluster.safety_tick().await;
            }
            _ = stop.changed() => {
                if *stop.borrow() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_bodies_join_events_as_stored() {
        let events = [
            Value::BulkString(
                br#"{"seq":4,"type":"presence","user":"a","status":"away"}"#.to_vec(),
            ),
            Value::BulkString(br#"{"seq":5,"type":"notification","data":1}"#.to_vec()),
        ];
        let body = poll_body(5, &events);
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["cursor"], 5);
        assert_eq!(parsed["events"][1]["seq"], 5);
    }
}
