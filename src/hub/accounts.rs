//! Who may use a name: the account behind it, and the proof a /join brings
//! — a password (checked against its argon2id hash, or claiming the name)
//! or a JWT the application's backend signed (`auth::join_token`), which
//! needs no hashing and keeps no password.
//!
//! A name is of one kind for good (`store::Account`): a password /join of a
//! name created by a JWT is refused like a wrong password, and a JWT for a
//! password account is refused like a bad token, so neither kind of
//! credential can take over the other kind's users.

use std::net::IpAddr;

use super::delivery::SEND_DURABILITY_TIMEOUT;
use super::{Hub, HubResult, Refusal};
use crate::auth;
use crate::metrics::RateLimit;
use crate::store::{Account, StoreError};

impl Hub {
    /// Checks `password` for `name`, or claims the name with it. Limited
    /// before any hashing: wrong passwords per (name, address), new
    /// accounts per address, and the hashing queue (`Busy`).
    pub(super) async fn check_password(
        &self,
        name: &str,
        password: &str,
        from: IpAddr,
    ) -> HubResult<()> {
        let hasher = &self.shared.hasher;
        let rates = &self.shared.rates;
        rates.password_try(name, from)?;
        let account = match self.shared.store.account(name).await? {
            Some(account) => account,
            None => {
                rates.signup(name, from)?;
                let hash = hasher
                    .hash(password)
                    .await
                    .map_err(|busy| self.busy(busy))?;
                match self.claim(name, Account::Password(hash)).await? {
                    None => return Ok(()),
                    Some(account) => account,
                }
            }
        };
        let right = match &account {
            Account::Password(stored) => hasher
                .verify(password, stored)
                .await
                .map_err(|busy| self.busy(busy))?,
            // No password opens a JWT account: counted as a wrong one, so
            // trying costs the same as guessing.
            Account::Jwt => false,
        };
        if right {
            Ok(())
        } else {
            rates.wrong_password(name, from);
            Err(Refusal::BadCredentials {
                name: name.to_owned(),
            })
        }
    }

    /// Lets a name vouched for by a valid JWT in: a JWT account, or a new
    /// name claimed as one. The backend that signed the token decides who
    /// exists, so neither `--signup closed` nor the sign-up rate applies.
    pub(super) async fn check_vouched(&self, name: &str) -> HubResult<()> {
        let account = match self.shared.store.account(name).await? {
            Some(account) => account,
            None => match self.claim(name, Account::Jwt).await? {
                None => return Ok(()),
                Some(account) => account,
            },
        };
        match account {
            Account::Jwt => Ok(()),
            Account::Password(_) => Err(Refusal::BadAuthToken {
                why: format!("`{name}` is an account with a password; a JWT cannot join it"),
            }),
        }
    }

    /// Claims `name` as `account`: None once it is durable, or the account
    /// another /join claimed the name with first.
    async fn claim(&self, name: &str, account: Account) -> HubResult<Option<Account>> {
        let store = &self.shared.store;
        // Bounded like any wait for the store: a full disk answers 503,
        // not a hang.
        let claim = store.create_account(name, &account);
        let created = tokio::time::timeout(SEND_DURABILITY_TIMEOUT, claim)
            .await
            .map_err(|_| Refusal::NotStored)?
            .map_err(|_| StoreError("the store stopped while creating an account".into()))??;
        if created {
            return Ok(None);
        }
        let first = store
            .account(name)
            .await?
            .ok_or_else(|| StoreError(format!("account `{name}` vanished after being claimed")))?;
        Ok(Some(first))
    }

    fn busy(&self, auth::Busy(wait): auth::Busy) -> Refusal {
        self.shared.metrics.rate_limited(RateLimit::HashQueue);
        Refusal::Busy { wait }
    }

    /// Refuses a /join whose JWT is not valid (`why`): 401, or 429 once
    /// `from` has sent too many bad ones. A valid token is never refused
    /// for the failures of others at its address: guessing a 256-bit
    /// secret is hopeless, so the limit only slows a client stuck on a
    /// stale or broken token, and answers it with `Retry-After`.
    pub fn bad_join_token(&self, from: IpAddr, why: String) -> Refusal {
        match self.shared.rates.bad_join_token(from) {
            Ok(()) => Refusal::BadAuthToken { why },
            Err(limited) => limited,
        }
    }
}
