//! The state of the hub's rate limits (policy and bounds in
//! `crate::limits`): when a client address may next create an account or
//! try a name's password, a client process change its status, and a user
//! send or create a room.
//!
//! Each limiter is a leaf lock: taken briefly, possibly while the hub's
//! locks are held, and nothing is taken while holding it. The per-user
//! send buckets are split like the shards (by the sender's shard), so
//! senders of different shards never share a lock; the others are on
//! paths that already serialize (/join hashing, `lock_all`). Cluster mode
//! keeps these buckets in Redis instead (`crate::cluster::rates`).

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::locks::SHARDS;
use super::{HubResult, Limited, Refusal};
use crate::config::SignupMode;
use crate::limits::{Limiter, Limits};
use crate::metrics::Metrics;

pub(crate) struct Rates {
    signup: SignupMode,
    /// New accounts by client address.
    signups: Limiter<IpAddr>,
    /// Wrong passwords by (name, client address).
    wrong_passwords: Limiter<(String, IpAddr)>,
    /// Invalid join JWTs by client address.
    bad_join_tokens: Limiter<IpAddr>,
    /// /status calls by client process id.
    statuses: Limiter<u64>,
    /// Rooms created by user.
    rooms: Limiter<String>,
    /// Messages by sender, one limiter per shard of the sender.
    sends: Box<[Limiter<String>]>,
    /// Counts each refusal (`parlor_rate_limited_total`).
    metrics: Metrics,
}

impl Rates {
    pub(crate) fn new(limits: &Limits, metrics: Metrics) -> Rates {
        Rates {
            signup: limits.signup,
            signups: Limiter::new(limits.signups_per_ip),
            wrong_passwords: Limiter::new(limits.password_failures),
            bad_join_tokens: Limiter::new(limits.bad_join_tokens),
            statuses: Limiter::new(limits.status_changes),
            rooms: Limiter::new(limits.room_creations),
            sends: (0..SHARDS).map(|_| Limiter::new(limits.sends)).collect(),
            metrics,
        }
    }

    /// Whether `client` may create the account `name` now.
    pub(crate) fn signup(&self, name: &str, client: IpAddr) -> HubResult<()> {
        if self.signup == SignupMode::Closed {
            return Err(Refusal::SignupClosed {
                name: name.to_owned(),
            });
        }
        let taken = self.signups.take(&client, Instant::now());
        taken.map_err(self.limited(Limited::Signups))
    }

    /// Whether `client` may try a password for `name` now: not after too
    /// many wrong ones.
    pub(crate) fn password_try(&self, name: &str, client: IpAddr) -> HubResult<()> {
        let key = (name.to_owned(), client);
        let checked = self.wrong_passwords.check(&key, Instant::now());
        checked.map_err(self.limited(Limited::WrongPasswords))
    }

    /// Counts a wrong password from `client` for `name`.
    pub(crate) fn wrong_password(&self, name: &str, client: IpAddr) {
        // Refused means the pair is used up already: the next try is.
        let _ = self
            .wrong_passwords
            .take(&(name.to_owned(), client), Instant::now());
    }

    /// Counts an invalid join JWT from `client`; refused once it sent too
    /// many.
    pub(crate) fn bad_join_token(&self, client: IpAddr) -> HubResult<()> {
        let taken = self.bad_join_tokens.take(&client, Instant::now());
        taken.map_err(self.limited(Limited::BadJoinTokens))
    }

    /// Whether client process `client` may call /status now.
    pub(crate) fn status_change(&self, client: u64) -> HubResult<()> {
        let taken = self.statuses.take(&client, Instant::now());
        taken.map_err(self.limited(Limited::StatusChanges))
    }

    /// Whether `user` may create a room now.
    pub(crate) fn room_creation(&self, user: &str) -> HubResult<()> {
        let taken = self.rooms.take(user, Instant::now());
        taken.map_err(self.limited(Limited::RoomCreations))
    }

    /// Whether `user`, of shard `shard`, may send a message now.
    pub(crate) fn send(&self, shard: usize, user: &str) -> HubResult<()> {
        let taken = self.sends[shard % SHARDS].take(user, Instant::now());
        taken.map_err(self.limited(Limited::Sends))
    }
}

impl Rates {
    /// The refusal of a request `limited` turned down, counted.
    fn limited(&self, limited: Limited) -> impl Fn(Duration) -> Refusal + '_ {
        move |wait| {
            self.metrics.rate_limited(limited.into());
            Refusal::RateLimited { limited, wait }
        }
    }
}
