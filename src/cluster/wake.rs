//! Wake-ups across nodes: the pub/sub listener, and this node's table of
//! parked polls.
//!
//! Pub/sub is only a wake-up, never the data: a woken poll re-reads its
//! mailbox in Redis. Messages on `keys::WAKE_CHANNEL` (published by the
//! scripts, in the script that made the change):
//!
//! - `u NAME`: NAME's mailbox changed; NAME's parked polls re-read;
//! - `b`: the lobby log changed; every parked poll re-reads;
//! - `p`: the presence board changed; every parked poll re-reads except
//!   those already waiting out their presence coalescing window (they copy
//!   the board when it ends);
//! - `s CLIENT GEN`: a poll of client CLIENT started with generation GEN;
//!   parked polls of CLIENT with an older generation answer at once.
//!
//! No wake-up is lost between a poll's read and its parking: the poll
//! takes a `Mark` (how many notices this node had applied) before it sends
//! its read script, and `park` checks the notices applied since then (the
//! last `RECENT_NOTICES` are kept; older than that, the poll re-reads).
//! A notice published after the script ran is applied after the mark.
//!
//! Pub/sub messages can still be lost (a reconnect, a wedged connection):
//! after every (re)subscription every parked poll re-reads, and the safety
//! tick (`Cluster::safety_tick`) re-checks parked polls against Redis every
//! `SAFETY_TICK`, so a lost message delays an answer by one tick at most.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{PushInfo, PushKind, Value};
use slab::Slab;
use tokio::sync::{mpsc, oneshot, watch};

use super::keys::WAKE_CHANNEL;

/// Notices remembered for polls between their read and their parking.
const RECENT_NOTICES: usize = 4096;
/// How often the listener pings its connection: keeps a dead connection
/// from going unnoticed and retries a subscription that failed.
const LISTENER_PING: Duration = Duration::from_secs(1);
/// Longest a listener's ping or subscribe may take.
const LISTENER_DEADLINE: Duration = Duration::from_secs(2);

/// Why a parked poll was woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Something it may answer changed: read again.
    Recheck,
    /// A newer poll of the same client started (on any node).
    Superseded,
    /// The server is stopping.
    ShuttingDown,
}

/// One wake-up message, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    User(Arc<str>),
    All,
    Presence,
    Supersede { client: u64, generation: u64 },
}

impl Notice {
    /// Parses a `parlor:wake` message; None for anything else.
    pub fn parse(message: &[u8]) -> Option<Notice> {
        let text = std::str::from_utf8(message).ok()?;
        match text.split_once(' ') {
            None if text == "b" => Some(Notice::All),
            None if text == "p" => Some(Notice::Presence),
            Some(("u", name)) if !name.is_empty() => Some(Notice::User(name.into())),
            Some(("s", rest)) => {
                let (client, generation) = rest.split_once(' ')?;
                Some(Notice::Supersede {
                    client: client.parse().ok()?,
                    generation: generation.parse().ok()?,
                })
            }
            _ => None,
        }
    }

    /// What this notice does to a parked poll, if anything.
    fn wakes(&self, poll: &ParkedPoll) -> Option<Wake> {
        let (user, client, generation) = (&*poll.user, poll.client, poll.generation);
        match self {
            Notice::All => Some(Wake::Recheck),
            Notice::Presence if !poll.coalescing => Some(Wake::Recheck),
            Notice::User(name) if &**name == user => Some(Wake::Recheck),
            Notice::Supersede {
                client: superseded,
                generation: newer,
            } if *superseded == client && *newer > generation => Some(Wake::Superseded),
            _ => None,
        }
    }
}

/// How many notices the table had applied when a poll started its read.
#[derive(Debug, Clone, Copy)]
pub struct Mark(u64);

/// What a parked poll last read, for the safety tick to compare with Redis:
/// the mailbox head, and the presence version and lobby message id it had
/// copied up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seen {
    pub head: u64,
    pub presence: u64,
    pub lobby: u64,
}

/// A parked poll's registration; dropping it unparks.
pub struct Parked<'a> {
    table: &'a WakeTable,
    key: usize,
    poll: u64,
    pub woken: oneshot::Receiver<Wake>,
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.table.unpark(self.key, self.poll);
    }
}

/// A parked poll, as the safety tick sees it.
#[derive(Debug, Clone)]
pub struct ParkedPoll {
    pub user: Arc<str>,
    pub token_key: Arc<str>,
    pub client: u64,
    pub generation: u64,
    pub seen: Seen,
    /// Waiting out its presence coalescing window: presence changes do not
    /// wake it.
    pub coalescing: bool,
}

struct Entry {
    poll: ParkedPoll,
    id: u64,
    sender: oneshot::Sender<Wake>,
}

#[derive(Default)]
struct Table {
    /// Notices applied so far.
    applied: u64,
    /// The last `RECENT_NOTICES` notices; the newest is number `applied`.
    recent: VecDeque<Notice>,
    entries: Slab<Entry>,
    by_user: HashMap<Arc<str>, Vec<usize>>,
    by_client: HashMap<u64, usize>,
    next_poll: u64,
    shutting_down: bool,
}

/// This node's parked polls, keyed by user and by client.
#[derive(Default)]
pub struct WakeTable {
    table: Mutex<Table>,
    /// Whether the listener is subscribed (for /healthz).
    subscribed: AtomicBool,
}

impl WakeTable {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Taken before a poll's read script is sent.
    pub fn mark(&self) -> Mark {
        Mark(self.lock().applied)
    }

    /// Parks a poll that read nothing to answer at `mark`. Its receiver is
    /// ready at once when a notice since the mark concerns it, when an
    /// older local poll of the same client is superseded by it, or when the
    /// server is shutting down.
    pub fn park(&self, mark: Mark, poll: ParkedPoll) -> Parked<'_> {
        let (sender, woken) = oneshot::channel();
        let mut table = self.lock();
        let missed = table.applied - mark.0;
        let early = if table.shutting_down {
            Some(Wake::ShuttingDown)
        } else if missed > table.recent.len() as u64 {
            Some(Wake::Recheck)
        } else {
            let skip = table.recent.len() - missed as usize;
            table.recent.iter().skip(skip).fold(None, |found, notice| {
                match (found, notice.wakes(&poll)) {
                    (Some(Wake::Superseded), _) | (_, Some(Wake::Superseded)) => {
                        Some(Wake::Superseded)
                    }
                    (found, wake) => found.or(wake),
                }
            })
        };
        table.next_poll += 1;
        let id = table.next_poll;
        if let Some(wake) = early {
            let _ = sender.send(wake);
            return Parked {
                table: self,
                key: usize::MAX,
                poll: id,
                woken,
            };
        }
        // One parked poll per client here: an older one is superseded.
        if let Some(&older) = table.by_client.get(&poll.client) {
            if table.entries[older].poll.generation < poll.generation {
                table.wake_entry(older, Wake::Superseded);
            }
        }
        let user = poll.user.clone();
        let client = poll.client;
        let key = table.entries.insert(Entry { poll, id, sender });
        table.by_user.entry(user).or_default().push(key);
        table.by_client.insert(client, key);
        Parked {
            table: self,
            key,
            poll: id,
            woken,
        }
    }

    fn unpark(&self, key: usize, poll: u64) {
        if key == usize::MAX {
            return;
        }
        let mut table = self.lock();
        if table.entries.get(key).is_some_and(|entry| entry.id == poll) {
            table.remove(key);
        }
    }

    /// Applies one received notice: wakes the polls it concerns.
    pub fn notice(&self, notice: Notice) {
        let mut table = self.lock();
        let woken: Vec<(usize, Wake)> = match &notice {
            Notice::All | Notice::Presence => table
                .entries
                .iter()
                .filter_map(|(key, entry)| notice.wakes(&entry.poll).map(|wake| (key, wake)))
                .collect(),
            Notice::User(name) => table
                .by_user
                .get(name)
                .map(|keys| keys.iter().map(|&key| (key, Wake::Recheck)).collect())
                .unwrap_or_default(),
            Notice::Supersede { client, .. } => table
                .by_client
                .get(client)
                .copied()
                .and_then(|key| {
                    let wake = notice.wakes(&table.entries[key].poll)?;
                    Some(vec![(key, wake)])
                })
                .unwrap_or_default(),
        };
        for (key, wake) in woken {
            table.wake_entry(key, wake);
        }
        table.applied += 1;
        if table.recent.len() == RECENT_NOTICES {
            table.recent.pop_front();
        }
        table.recent.push_back(notice);
    }

    /// Wakes the polls of these users to re-read (the safety tick found
    /// their mailbox or what they copy from moved).
    pub fn recheck_users<'a>(&self, users: impl IntoIterator<Item = &'a str>) {
        let mut table = self.lock();
        for user in users {
            let keys = table.by_user.get(user).cloned().unwrap_or_default();
            for key in keys {
                table.wake_entry(key, Wake::Recheck);
            }
        }
    }

    /// Answers this client's parked poll here as superseded, if it is
    /// older than `generation` (the safety tick found a newer one).
    pub fn supersede(&self, client: u64, generation: u64) {
        let notice = Notice::Supersede { client, generation };
        let mut table = self.lock();
        if let Some(&key) = table.by_client.get(&client) {
            if let Some(wake) = notice.wakes(&table.entries[key].poll) {
                table.wake_entry(key, wake);
            }
        }
    }

    /// Every parked poll re-reads: after a (re)subscription, when messages
    /// may have been missed.
    pub fn recheck_all(&self) {
        self.notice(Notice::All);
    }

    /// Answers every parked poll (empty) and parks no more.
    pub fn shut_down(&self) {
        let mut table = self.lock();
        table.shutting_down = true;
        let keys: Vec<usize> = table.entries.iter().map(|(key, _)| key).collect();
        for key in keys {
            table.wake_entry(key, Wake::ShuttingDown);
        }
    }

    /// The parked polls, for the safety tick.
    pub fn parked(&self) -> Vec<ParkedPoll> {
        let table = self.lock();
        table
            .entries
            .iter()
            .map(|(_, entry)| entry.poll.clone())
            .collect()
    }

    pub fn parked_count(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }
}

impl Table {
    fn wake_entry(&mut self, key: usize, wake: Wake) {
        if let Some(entry) = self.remove(key) {
            let _ = entry.sender.send(wake);
        }
    }

    fn remove(&mut self, key: usize) -> Option<Entry> {
        let entry = self.entries.try_remove(key)?;
        if let Some(keys) = self.by_user.get_mut(&entry.poll.user) {
            keys.retain(|&other| other != key);
            if keys.is_empty() {
                self.by_user.remove(&entry.poll.user);
            }
        }
        if self.by_client.get(&entry.poll.client) == Some(&key) {
            self.by_client.remove(&entry.poll.client);
        }
        Some(entry)
    }
}

/// The pub/sub listener: subscribes to `WAKE_CHANNEL` on its own connection
/// (RESP3 pushes, resubscribed by the connection manager after a
/// reconnect), applies every message to `table`, and makes every parked
/// poll re-read after each (re)subscription. Runs until `stop` turns true.
pub async fn listen(
    info: redis::ConnectionInfo,
    config: redis::aio::ConnectionManagerConfig,
    table: Arc<WakeTable>,
    mut stop: watch::Receiver<bool>,
) {
    let info = info.clone().set_redis_settings(
        info.redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3),
    );
    let (pushes, mut received) = mpsc::unbounded_channel::<PushInfo>();
    let config = config
        .set_push_sender(pushes)
        .set_automatic_resubscription();
    let connection = redis::Client::open(info)
        .and_then(|client| ConnectionManager::new_lazy_with_config(client, config));
    let mut connection = match connection {
        Ok(connection) => connection,
        Err(error) => {
            tracing::error!(%error, "cannot set up the wake-up subscription");
            return;
        }
    };
    let mut ping = tokio::time::interval(LISTENER_PING);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut asked_to_subscribe = false;
    loop {
        tokio::select! {
            push = received.recv() => {
                let Some(push) = push else { return };
                on_push(&table, push);
            }
            _ = ping.tick() => {
                if !asked_to_subscribe {
                    let subscribe = connection.subscribe(WAKE_CHANNEL);
                    match tokio::time::timeout(LISTENER_DEADLINE, subscribe).await {
                        Ok(Ok(())) => asked_to_subscribe = true,
                        Ok(Err(error)) => tracing::warn!(%error, "cannot subscribe to wake-ups"),
                        Err(_) => tracing::warn!("subscribing to wake-ups timed out"),
                    }
                    continue;
                }
                let ping = redis::cmd("PING");
                let pinged = ping.query_async::<Value>(&mut connection);
                match tokio::time::timeout(LISTENER_DEADLINE, pinged).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "the wake-up connection failed");
                        table.subscribed.store(false, Ordering::Release);
                    }
                    Err(_) => {
                        tracing::warn!("the wake-up connection does not answer");
                        table.subscribed.store(false, Ordering::Release);
                    }
                }
            }
            _ = stop.changed() => {
                if *stop.borrow() {
                    return;
                }
            }
        }
    }
}

/// One push from the subscription connection.
fn on_push(table: &WakeTable, push: PushInfo) {
    match push.kind {
        PushKind::Message => {
            // [channel, payload]
            let Some(Value::BulkString(payload)) = push.data.get(1) else {
                return;
            };
            match Notice::parse(payload) {
                Some(notice) => table.notice(notice),
                None => tracing::warn!(
                    message = %String::from_utf8_lossy(payload),
                    "unknown wake-up message"
                ),
            }
        }
        PushKind::Subscribe => {
            tracing::info!("subscribed to wake-ups");
            table.subscribed.store(true, Ordering::Release);
            // Whatever was published while unsubscribed is re-read.
            table.recheck_all();
        }
        PushKind::Disconnection => {
            tracing::warn!("the wake-up connection dropped; reconnecting");
            table.subscribed.store(false, Ordering::Release);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(user: &str, client: u64, generation: u64) -> ParkedPoll {
        ParkedPoll {
            user: user.into(),
            token_key: "t".into(),
            client,
            generation,
            seen: Seen::default(),
            coalescing: false,
        }
    }

    #[test]
    fn messages_parse() {
        assert_eq!(Notice::parse(b"b"), Some(Notice::All));
        assert_eq!(Notice::parse(b"p"), Some(Notice::Presence));
        assert_eq!(Notice::parse(b"u ann"), Some(Notice::User("ann".into())));
        assert_eq!(
            Notice::parse(b"s 7 12"),
            Some(Notice::Supersede {
                client: 7,
                generation: 12
            })
        );
        assert_eq!(Notice::parse(b"s 7"), None);
        assert_eq!(Notice::parse(b"x"), None);
        assert_eq!(Notice::parse(b"u "), None);
    }

    #[test]
    fn a_user_notice_wakes_only_that_users_polls() {
        let table = WakeTable::default();
        let mut ann = table.park(table.mark(), poll("ann", 1, 1));
        let mut bob = table.park(table.mark(), poll("bob", 2, 1));
        table.notice(Notice::User("ann".into()));
        assert_eq!(ann.woken.try_recv(), Ok(Wake::Recheck));
        assert!(bob.woken.try_recv().is_err());
        assert_eq!(table.parked_count(), 1);
        drop(bob);
        assert_eq!(table.parked_count(), 0);
    }

    #[test]
    fn a_notice_between_read_and_park_is_not_lost() {
        let table = WakeTable::default();
        let mark = table.mark();
        table.notice(Notice::User("ann".into()));
        let mut ann = table.park(mark, poll("ann", 1, 1));
        assert_eq!(ann.woken.try_recv(), Ok(Wake::Recheck));
        let mark = table.mark();
        table.notice(Notice::Supersede {
            client: 1,
            generation: 3,
        });
        let mut old = table.park(mark, poll("ann", 1, 2));
        assert_eq!(old.woken.try_recv(), Ok(Wake::Superseded));
        let mut new = table.park(mark, poll("ann", 1, 3));
        assert!(new.woken.try_recv().is_err());
    }

    #[test]
    fn supersede_answers_only_older_generations() {
        let table = WakeTable::default();
        let mut parked = table.park(table.mark(), poll("ann", 1, 5));
        table.notice(Notice::Supersede {
            client: 1,
            generation: 5,
        });
        assert!(parked.woken.try_recv().is_err());
        table.notice(Notice::Supersede {
            client: 1,
            generation: 6,
        });
        assert_eq!(parked.woken.try_recv(), Ok(Wake::Superseded));
        // A newer local poll of the same client supersedes an older one.
        let mut first = table.park(table.mark(), poll("ann", 2, 1));
        let _second = table.park(table.mark(), poll("ann", 2, 2));
        assert_eq!(first.woken.try_recv(), Ok(Wake::Superseded));
    }

    #[test]
    fn presence_changes_do_not_wake_a_coalescing_poll() {
        let table = WakeTable::default();
        let mut plain = table.park(table.mark(), poll("ann", 1, 1));
        let mut waiting = table.park(
            table.mark(),
            ParkedPoll {
                coalescing: true,
                ..poll("bob", 2, 1)
            },
        );
        table.notice(Notice::Presence);
        assert_eq!(plain.woken.try_recv(), Ok(Wake::Recheck));
        assert!(waiting.woken.try_recv().is_err());
        table.notice(Notice::All);
        assert_eq!(waiting.woken.try_recv(), Ok(Wake::Recheck));
    }

    #[test]
    fn shutting_down_answers_parked_and_later_polls() {
        let table = WakeTable::default();
        let mut parked = table.park(table.mark(), poll("ann", 1, 1));
        table.shut_down();
        assert_eq!(parked.woken.try_recv(), Ok(Wake::ShuttingDown));
        let mut late = table.park(table.mark(), poll("bob", 2, 1));
        assert_eq!(late.woken.try_recv(), Ok(Wake::ShuttingDown));
    }
}
