//! Rate limits: how often one client address, user or client process may
//! do something costly or lasting, as one token bucket per key.
//!
//! What it bounds (the policy is [`Limits`], read from the flags):
//!
//! - new accounts per client address (`--signups-per-ip` a minute), since
//!   every new name is an account forever;
//! - wrong passwords per (name, client address), so guessing is slowed
//!   without locking the owner out from elsewhere, and invalid join JWTs
//!   per client address;
//! - /status changes per client process, /send per user (`--send-rate`,
//!   `--send-burst`) and rooms created per user, so one client cannot make
//!   every other mailbox grow;
//! - and its own memory: each [`Limiter`] holds at most `MAX_RATE_KEYS`
//!   keys. A key whose bucket has refilled is the same as no key, so it is
//!   forgotten when room is needed; a new key that finds every slot taken
//!   by a bucket still refilling is refused (as if its bucket were empty)
//!   rather than growing the map.
//!
//! The bucket is kept as one instant per key (the generic cell rate
//! algorithm): the time at which it will be full again. Taking a token
//! pushes that time one `interval` later; a take that would push it more
//! than `burst` intervals past now is refused, and the caller is told how
//! long until it would not be. None of this is on the poll path.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{
    Config, SignupMode, BAD_JOIN_TOKENS_PER_MINUTE, HASH_WAIT_TIMEOUT, MAX_HASH_WAITERS,
    MAX_RATE_KEYS, PASSWORD_FAILURES_PER_MINUTE, ROOMS_PER_HOUR, SEND_BURST, SEND_PER_SECOND,
    SIGNUPS_PER_IP, STATUS_BURST, STATUS_PER_SECOND,
};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// At most `burst` at once, then one more every `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    burst: u32,
    interval: Duration,
}

impl Rate {
    /// `count` per `period`, all of which may be used at once; None (no
    /// limit) when `count` is 0.
    pub fn per(count: u32, period: Duration) -> Option<Rate> {
        (count > 0).then(|| Rate {
            burst: count,
            interval: period / count,
        })
    }

    /// How many may be taken at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// How long until one more may be taken.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// `per_second` a second with bursts of up to `burst`; None (no limit)
    /// when `per_second` is 0.
    pub fn per_second(per_second: u32, burst: u32) -> Option<Rate> {
        (per_second > 0).then(|| Rate {
            burst: burst.max(1),
            interval: Duration::from_secs(1) / per_second,
        })
    }
}

/// Which limits apply, from the flags. `Default` is the flags' defaults.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// New accounts per client address.
    pub signups_per_ip: Option<Rate>,
    /// Whether /join may create accounts at all.
    pub signup: SignupMode,
    /// Wrong passwords per (name, client address).
    pub password_failures: Option<Rate>,
    /// Invalid join JWTs per client address.
    pub bad_join_tokens: Option<Rate>,
    /// /status calls per client process.
    pub status_changes: Option<Rate>,
    /// Messages sent per user.
    pub sends: Option<Rate>,
    /// Rooms created per user.
    pub room_creations: Option<Rate>,
    /// /join requests that may wait for a password-hashing slot; past it,
    /// 503 `busy` at once.
    pub hash_waiters: usize,
    /// Longest a /join waits for a password-hashing slot (then 503 `busy`).
    pub hash_wait: Duration,
}

impl Limits {
    pub fn from_config(config: &Config) -> Limits {
        Limits {
            signups_per_ip: Rate::per(config.signups_per_ip, MINUTE),
            signup: config.signup,
            sends: Rate::per_second(config.send_rate.0, config.send_burst),
            hash_waiters: config.max_hash_waiters,
            ..Limits::default()
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            signups_per_ip: Rate::per(SIGNUPS_PER_IP, MINUTE),
            signup: SignupMode::Open,
            password_failures: Rate::per(PASSWORD_FAILURES_PER_MINUTE, MINUTE),
            bad_join_tokens: Rate::per(BAD_JOIN_TOKENS_PER_MINUTE, MINUTE),
            status_changes: Rate::per_second(STATUS_PER_SECOND, STATUS_BURST),
            sends: Rate::per_second(SEND_PER_SECOND, SEND_BURST),
            room_creations: Rate::per(ROOMS_PER_HOUR, HOUR),
            hash_waiters: MAX_HASH_WAITERS,
            hash_wait: HASH_WAIT_TIMEOUT,
        }
    }
}

/// A token bucket per key, behind its own mutex (held only for a map
/// look-up), at most `MAX_RATE_KEYS` keys.
#[derive(Debug)]
pub struct Limiter<K> {
    rate: Option<Rate>,
    buckets: Mutex<Buckets<K>>,
}

/// Each key's bucket, as the instant it is full again.
#[derive(Debug)]
struct Buckets<K> {
    full_at: HashMap<K, Instant>,
    /// When full buckets were last swept out: a sweep walks every key, so
    /// a map full of refilling buckets is not swept on every refusal.
    swept_at: Option<Instant>,
}

/// How often a full map is walked for buckets that refilled.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl<K: Hash + Eq> Limiter<K> {
    /// A limiter at `rate`; with None, every take succeeds and nothing is
    /// kept.
    pub fn new(rate: Option<Rate>) -> Limiter<K> {
        Limiter {
            rate,
            buckets: Mutex::new(Buckets {
                full_at: HashMap::new(),
                swept_at: None,
            }),
        }
    }

    /// Takes a token from `key`'s bucket; Err with how long until one is
    /// there when it is empty.
    pub fn take<Q>(&self, key: &Q, now: Instant) -> Result<(), Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let mut buckets = self.lock();
        let full_at = buckets.full_at.get(key).copied();
        let after = wait(rate, full_at, now)?;
        match buckets.full_at.get_mut(key) {
            Some(slot) => *slot = after,
            None => {
                buckets.make_room(now)?;
                buckets.full_at.insert(key.to_owned(), after);
            }
        }
        Ok(())
    }

    /// Whether `key` has a token left, without taking it.
    pub fn check<Q>(&self, key: &Q, now: Instant) -> Result<(), Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let full_at = self.lock().full_at.get(key).copied();
        wait(rate, full_at, now).map(|_| ())
    }

    /// Keys held (for tests of the bound).
    pub fn len(&self) -> usize {
        self.lock().full_at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets<K>> {
        // A panic elsewhere cannot leave a bucket half-written: each update
        // is one store of an instant.
        self.buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<K: Hash + Eq> Buckets<K> {
    /// Room for one more key, forgetting refilled buckets if the map is at
    /// its bound; Err (retry in a second) if every bucket is still in use.
    fn make_room(&mut self, now: Instant) -> Result<(), Duration> {
        if self.full_at.len() < MAX_RATE_KEYS {
            return Ok(());
        }
        if self.swept_at.is_none_or(|swept| now >= swept + SWEEP_EVERY) {
            self.swept_at = Some(now);
            self.full_at.retain(|_, full_at| *full_at > now);
        }
        if self.full_at.len() < MAX_RATE_KEYS {
            Ok(())
        } else {
            Err(SWEEP_EVERY)
        }
    }
}

/// When the bucket will be full again after one more take, or how long
/// until a take is allowed.
fn wait(rate: Rate, full_at: Option<Instant>, now: Instant) -> Result<Instant, Duration> {
    let after = full_at.map_or(now, |full_at| full_at.max(now)) + rate.interval;
    let allowed = now + rate.interval * rate.burst;
    if after <= allowed {
        Ok(after)
    } else {
        Err(after - allowed)
    }
}

/// Whole seconds to announce in `Retry-After`: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let limiter = Limiter::<String>::new(Rate::per(3, Duration::from_secs(30)));
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.take("ann", start), Ok(()));
        }
        assert_eq!(limiter.take("ann", start), Err(Duration::from_secs(10)));
        // Another key has its own bucket.
        assert_eq!(limiter.take("bob", start), Ok(()));
        // One token back every 10 s.
        let later = start + Duration::from_secs(10);
        assert_eq!(limiter.check("ann", later), Ok(()));
        assert_eq!(limiter.take("ann", later), Ok(()));
        assert!(limiter.take("ann", later).is_err());
    }

    #[test]
    fn check_takes_nothing() {
        let limiter = Limiter::<u64>::new(Rate::per_second(1, 1));
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(limiter.check(&7, now), Ok(()));
        }
        assert_eq!(limiter.take(&7, now), Ok(()));
        assert_eq!(limiter.check(&7, now), Err(Duration::from_secs(1)));
    }

    #[test]
    fn no_rate_is_no_limit_and_keeps_nothing() {
        let limiter = Limiter::<u64>::new(Rate::per(0, MINUTE));
        let now = Instant::now();
        for key in 0..1000 {
            assert_eq!(limiter.take(&(key % 3), now), Ok(()));
        }
        assert!(limiter.is_empty());
    }

    #[test]
    fn keys_are_bounded_and_refilled_ones_make_room() {
        let limiter = Limiter::<u64>::new(Rate::per_second(1, 1));
        let now = Instant::now();
        for key in 0..MAX_RATE_KEYS as u64 {
            assert_eq!(limiter.take(&key, now), Ok(()));
        }
        assert_eq!(limiter.len(), MAX_RATE_KEYS);
        // Every bucket is still refilling: a new key is refused, not added.
        assert!(limiter.take(&u64::MAX, now).is_err());
        assert_eq!(limiter.len(), MAX_RATE_KEYS);
        // Once they have refilled they are forgotten for the new one.
        let later = now + Duration::from_secs(2);
        assert_eq!(limiter.take(&u64::MAX, later), Ok(()));
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(200)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::from_secs(6)), 6);
    }
}
