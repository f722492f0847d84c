//! GET|POST /poll: answer the events after a cursor, or park until one
//! arrives. Read top-down: `Hub::poll` loops over `read_or_park`, which
//! takes the locks, copies in presence changes, acknowledges what the
//! cursor says was seen, and reads or parks; `ParkGuard` unparks a poll
//! whose future ends unwoken.
//!
//! Presence is coalesced: a poll that would be answered for presence
//! changes alone parks again for `PRESENCE_COALESCE_WINDOW` without copying
//! them, and meanwhile further presence changes do not wake it (it parks
//! *coalescing*, see `clients`). When the window ends it copies every change
//! at once; a message or any other event still wakes and answers it at
//! once. So a storm of status changes, joins or sweeps costs each poller one
//! answer per window rather than one per change.

use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::clients::Wake;
use super::delivery::Committer;
use super::locks::{ClientRef, Directory, Locked, Shard};
use super::mailbox::Read;
use super::{Hub, HubResult, Refusal};
use crate::auth::TokenHash;
use crate::config::{MAX_EVENTS_PER_POLL, PRESENCE_CHANGES_PER_POLL, PRESENCE_COALESCE_WINDOW};
use crate::event::{empty_poll_body, write_poll_body, EventBytes};
use crate::metrics::PollAnswer;

/// What one pass of a poll found.
enum ReadOrPark {
    /// The answer's body, and why it is answered now.
    Ready(Vec<u8>, PollAnswer),
    Parked(ParkedAt),
}

/// A parked poll and where its client lives.
struct ParkedAt {
    client: ClientRef,
    client_id: u64,
    poll_id: u64,
    woken: oneshot::Receiver<Wake>,
    /// Parked with presence changes left uncopied, to copy when the poll's
    /// coalescing window ends.
    coalescing: bool,
}

impl Hub {
    /// GET|POST /poll: answers the events after `cursor`, waiting up to the
    /// poll timeout (or `timeout`, if shorter) for one to arrive.
    pub async fn poll(
        &self,
        token: &str,
        cursor: u64,
        timeout: Option<Duration>,
    ) -> HubResult<Vec<u8>> {
        let poll_timeout = self.shared.config.poll_timeout;
        let wait = match timeout {
            Some(asked) => asked.min(poll_timeout),
            // Up to 10 % shorter at random: polls parked together (after a
            // restart, a fan-out) would otherwise all expire together and
            // re-poll in one storm every poll timeout.
            None => poll_timeout.mul_f64(1.0 - 0.1 * jitter_fraction()),
        };
        let deadline = Instant::now() + wait;
        let token = &TokenHash::of(token);
        // When the poll first held back presence changes: they are answered
        // once the window from there ends.
        let mut presence_due: Option<Instant> = None;
        // The deadline passed: one last pass answers what there is.
        let mut ending = false;
        let metrics = &self.shared.metrics;
        // Woken for events: the answer's wake time is measured.
        let mut woken_for_events = false;
        loop {
            let may_park = !wait.is_zero() && !ending;
            let copy_presence = !may_park || presence_due.is_some_and(|due| Instant::now() >= due);
            let parked = match self.read_or_park(token, cursor, may_park, copy_presence)? {
                ReadOrPark::Ready(body, how) => {
                    metrics.poll_answered(how);
                    if woken_for_events && how == PollAnswer::Events {
                        metrics.woken_poll_answered();
                    }
                    return Ok(body);
                }
                ReadOrPark::Parked(parked) => parked,
            };
            let mut wake_at = deadline;
            let coalescing = parked.coalescing;
            if coalescing {
                let due =
                    *presence_due.get_or_insert_with(|| Instant::now() + PRESENCE_COALESCE_WINDOW);
                wake_at = wake_at.min(due);
            }
            let mut guard = ParkGuard {
                hub: self,
                client: parked.client,
                client_id: parked.client_id,
                poll_id: parked.poll_id,
                armed: true,
            };
            tokio::select! {
                woken = parked.woken => {
                    // Whoever woke us already took the parked poll off the client.
                    guard.armed = false;
                    let answer = match woken {
                        Ok(Wake::Events) => {
                            woken_for_events = true;
                            continue;
                        }
                        Ok(Wake::Presence) => continue,
                        Ok(Wake::Superseded) => PollAnswer::Superseded,
                        Ok(Wake::ShuttingDown) => PollAnswer::Shutdown,
                        Ok(Wake::ClientGone) | Err(_) => return Err(Refusal::UnknownClient),
                    };
                    metrics.poll_answered(answer);
                    return Ok(empty_poll_body(cursor));
                }
                _ = tokio::time::sleep_until(wake_at) => {
                    drop(guard); // unparks: the client is idle from now
                    if !coalescing {
                        metrics.poll_answered(PollAnswer::Timeout);
                        return Ok(empty_poll_body(cursor));
                    }
                    // The window (or the poll) ended with presence held back:
                    // answer it now.
                    ending = wake_at >= deadline;
                }
            }
        }
    }

    /// The poll path: the directory shared, the token's shard, then the
    /// user's shard; the log only if the poll changed something durable.
    /// Unless `copy_presence`, presence changes are left uncopied while
    /// nothing else is unread (the poll then parks coalescing).
    fn read_or_park(
        &self,
        token: &TokenHash,
        cursor: u64,
        may_park: bool,
        copy_presence: bool,
    ) -> HubResult<ReadOrPark> {
        let now = Instant::now();
        let directory = self.directory();
        let client = self.find_client(token)?;
        let mut locked = self.lock(directory, 1 << client.shard);
        let user_name = locked.user_of(client, token)?;
        locked
            .shard(client.shard)
            .clients
            .supersede(client.key, now);
        let coalescing = locked.copy_presence_changes(&user_name, cursor, copy_presence);
        locked.acknowledge(client, &user_name, cursor);
        locked.flush(Committer::Store);
        // Events are readable once durable, whether or not their readers
        // were woken yet: a /send answered 200 a moment ago reads now. Read
        // after the flush, so that what this poll copied in and the store
        // made durable at once (the in-memory store) is answered now.
        let durable_through = self.shared.durable_through();
        let shutting_down = self.shared.shutting_down.load(Ordering::Acquire);
        let Shard { users, clients, .. } = locked.shard(client.shard);
        let user = users
            .get_mut(&user_name)
            .expect("every client's user is online");
        let answer = match user
            .mailbox
            .read_durable(cursor, MAX_EVENTS_PER_POLL, durable_through)
        {
            Read::Events { first_seq, events } => {
                let last = first_seq + events.len() as u64 - 1;
                let body = write_poll_body(last, first_seq, events.into_iter());
                Ok(ReadOrPark::Ready(body, PollAnswer::Events))
            }
            Read::UpToDate if may_park && !shutting_down => {
                let parked = clients
                    .park(client.key, coalescing)
                    .ok_or(Refusal::UnknownClient)?;
                return Ok(ReadOrPark::Parked(ParkedAt {
                    client,
                    client_id: parked.client_id,
                    poll_id: parked.poll_id,
                    woken: parked.woken,
                    coalescing,
                }));
            }
            Read::UpToDate => {
                let how = match shutting_down {
                    true => PollAnswer::Shutdown,
                    false => PollAnswer::Timeout,
                };
                Ok(ReadOrPark::Ready(empty_poll_body(cursor), how))
            }
            Read::Expired { oldest_cursor } => {
                self.shared.metrics.cursor_expired();
                Err(Refusal::CursorExpired {
                    cursor,
                    oldest_cursor,
                })
            }
            Read::Ahead { head } => Err(Refusal::CursorAhead { cursor, head }),
        };
        // The poll ends now: the inactivity countdown starts over.
        clients.mark_idle(client.key, now);
        answer
    }

    fn unpark(&self, client: ClientRef, client_id: u64, poll_id: u64) {
        self.shared.shard(client.shard).clients.unpark(
            client.key,
            client_id,
            poll_id,
            Instant::now(),
        );
    }
}

/// Unparks a poll whose future ends without being woken: on timeout, or when
/// the server drops the request because its connection closed.
struct ParkGuard<'a> {
    hub: &'a Hub,
    client: ClientRef,
    client_id: u64,
    poll_id: u64,
    armed: bool,
}

impl Drop for ParkGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.hub.unpark(self.client, self.client_id, self.poll_id);
        }
    }
}

impl<D: Deref<Target = Directory>> Locked<'_, D> {
    /// Copies presence changes the user's mailbox has not seen into it, at
    /// most as many as fit in the next poll's answer, so presence never
    /// grows a backlog that could expire a reader's cursor. Unless `now`,
    /// copies nothing while nothing else is unread after `cursor`, and
    /// returns true: the changes wait for the poll's coalescing window.
    fn copy_presence_changes(&mut self, user: &str, cursor: u64, now: bool) -> bool {
        let index = self.hub.shard_of_user(user);
        let Locked {
            hub,
            dir,
            shards,
            batch,
        } = self;
        let presence = &dir.presence;
        let Some(online) = shards[index]
            .as_deref_mut()
            .and_then(|shard| shard.users.get_mut(user))
        else {
            return false;
        };
        let mailbox = &mut online.mailbox;
        if mailbox.presence_seen >= presence.version() {
            return false;
        }
        let unread = mailbox.unread_after(cursor);
        if unread == 0 && !now {
            return true;
        }
        let room = PRESENCE_CHANGES_PER_POLL.min(MAX_EVENTS_PER_POLL.saturating_sub(unread));
        if room == 0 {
            return false;
        }
        let copied: Vec<(u64, EventBytes)> = presence
            .changes_since(mailbox.presence_seen, room)
            .map(|(version, event)| (version, event.clone()))
            .collect();
        // Fewer than asked for: every change up to the board's version is in.
        let mut seen = mailbox.presence_seen;
        if copied.len() < room {
            seen = presence.version();
        }
        let seen = copied
            .iter()
            .fold(seen, |seen, &(version, _)| seen.max(version));
        let copies = copied.into_iter().map(|(_, event)| event);
        batch.append_presence_copies(hub, mailbox, user, copies, seen);
        false
    }

    /// A poll with `cursor` acknowledges every event up to it: once all the
    /// user's clients have seen an event, the mailbox drops it. Without this
    /// a mailbox keeps its last `MAILBOX_CAPACITY` events for good, which
    /// after a mass join is thousands of presence copies per user.
    fn acknowledge(&mut self, client: ClientRef, user: &str, cursor: u64) {
        let durable_through = self.hub.durable_through();
        let next_delivery = self.hub.last_delivery_id.load(Ordering::Relaxed) + 1;
        let keeps_live_state = self.hub.keeps_live_state;
        let batch = &mut self.batch;
        let Some(Shard { users, clients, .. }) = self.shards[client.shard].as_deref_mut() else {
            return;
        };
        let Some(online) = users.get_mut(user) else {
            return;
        };
        let mailbox = &mut online.mailbox;
        // A cursor outside what is kept (expired, or ahead of what was ever
        // handed out) acknowledges nothing.
        if cursor < mailbox.start() || cursor > mailbox.visible_head(durable_through) {
            return;
        }
        clients.acknowledge(client.key, cursor);
        let seen_by_all = online
            .clients
            .iter()
            .filter_map(|&key| clients.get(key))
            .map(|client| client.acked)
            .min()
            .unwrap_or(cursor);
        if mailbox.trim_through(seen_by_all) && keeps_live_state {
            batch.note_window(mailbox, user, next_delivery);
        }
    }
}

/// A number in [0, 1) that differs from call to call (not for secrets).
pub(crate) fn jitter_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded per process, and the counter makes every call
    // hash something new: cheap, well spread, and needs no RNG crate.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    thread_local! {
        static SEED: std::collections::hash_map::RandomState = std::collections::hash_map::RandomState::new();
    }
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let bits = SEED.with(|seed| {
        let mut hasher = seed.build_hasher();
        hasher.write_u64(call);
        hasher.finish()
    });
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_spreads_over_the_unit_interval() {
        let samples: Vec<f64> = (0..1000).map(|_| jitter_fraction()).collect();
        assert!(samples.iter().all(|x| (0.0..1.0).contains(x)));
        let below_half = samples.iter().filter(|x| **x < 0.5).count();
        assert!(
            (350..650).contains(&below_half),
            "{below_half} of 1000 below 0.5"
        );
    }
}
