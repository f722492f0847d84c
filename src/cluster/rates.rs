//! The /join and /status rate limits in cluster mode: sign-ups per client
//! address, wrong passwords per (name, client address), bad join JWTs per
//! client address and /status calls per client process, each a token
//! bucket in Redis (lib.lua's `take_rate`, keys in `keys`), so one limit
//! holds across every node, as for sends and room creations (`send`).
//!
//! A correct password costs no more round trips than without a limit: the
//! account's look-up (`account.lua`) reads the (name, address) bucket in
//! the same script, and only a wrong password takes a token (`rate.lua`),
//! as single-node's `password_try` and `wrong_password` do. /status takes
//! its token inside `status.lua`.

use std::net::IpAddr;

use super::scripts::{self, Args};
use super::send::rate_args;
use super::{keys, Cluster};
use crate::hub::{HubResult, Limited, Refusal};
use crate::limits::Rate;

script!(RATE, "rate");
script!(ACCOUNT, "account");

/// An account as a password /join finds it.
pub(super) struct Account {
    /// `password` or `jwt`; None when the name is free.
    pub kind: Option<String>,
    /// The argon2 PHC string ('' for a `jwt` account).
    pub phc: String,
}

impl Cluster {
    /// The account `name`, unless `from` has had too many wrong passwords
    /// for it.
    pub(super) async fn account_to_try(&self, name: &str, from: IpAddr) -> HubResult<Account> {
        let (interval, burst) = rate_args(self.shared.limits.password_failures);
        let args = Args::new()
            .arg(name)
            .arg(keys::password_rate(name, &from.to_string()))
            .arg(interval)
            .arg(burst);
        let answer = scripts::run(self.redis(), &ACCOUNT, &[], args).await?;
        match answer.first().map(scripts::text).as_deref() {
            Some("limited") => Err(self.limited(Limited::WrongPasswords, &answer)),
            Some("account") => {
                let kind = answer.get(1).map(scripts::text).unwrap_or_default();
                let phc = answer.get(2).map(scripts::text).unwrap_or_default();
                Ok(Account {
                    kind: (!kind.is_empty()).then_some(kind),
                    phc,
                })
            }
            _ => {
                tracing::error!(?answer, "the account script answered something else");
                Err(Refusal::StoreUnavailable)
            }
        }
    }

    /// Counts a wrong password from `from` for `name`.
    pub(super) async fn wrong_password(&self, name: &str, from: IpAddr) -> HubResult<()> {
        let key = keys::password_rate(name, &from.to_string());
        let rate = self.shared.limits.password_failures;
        match self.take_rate(&key, rate, Limited::WrongPasswords).await {
            // Refused means the pair is used up already: the next try is.
            Err(Refusal::RateLimited { .. }) | Ok(()) => Ok(()),
            Err(refusal) => Err(refusal),
        }
    }

    /// Whether `from` may create an account now.
    pub(super) async fn signup(&self, from: IpAddr) -> HubResult<()> {
        let key = keys::signup_rate(&from.to_string());
        let rate = self.shared.limits.signups_per_ip;
        self.take_rate(&key, rate, Limited::Signups).await
    }

    /// Counts an invalid join JWT from `from`; refused once it sent too
    /// many.
    pub(super) async fn bad_join_token_from(&self, from: IpAddr) -> HubResult<()> {
        let key = keys::bad_join_token_rate(&from.to_string());
        let rate = self.shared.limits.bad_join_tokens;
        self.take_rate(&key, rate, Limited::BadJoinTokens).await
    }

    /// Takes a token from the bucket at `key`; the refusal for `limited`
    /// (counted) when it is empty.
    async fn take_rate(&self, key: &str, rate: Option<Rate>, limited: Limited) -> HubResult<()> {
        let (interval, burst) = rate_args(rate);
        if interval == 0 {
            return Ok(());
        }
        let args = Args::new().arg(key).arg(interval).arg(burst);
        let answer = scripts::run(self.redis(), &RATE, &[], args).await?;
        match answer.first().map(scripts::text).as_deref() {
            Some("limited") => Err(self.limited(limited, &answer)),
            _ => Ok(()),
        }
    }
}
