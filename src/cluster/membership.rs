//! /join, /sync, /leave, /status and /users in cluster mode: opening and
//! closing client processes in Redis (`open_client.lua`, `sync.lua`,
//! `leave.lua`, `status.lua`), and the online list they answer with.
//!
//! Passwords are hashed and verified here, off Redis, by the node's
//! `PasswordHasherPool`; `claim_account.lua` only stores a hash if the name
//! is free (two nodes claiming one name at once: the first wins, the other
//! verifies against it). An account has a `kind`: a password join on a
//! `jwt` account is refused like a wrong password, and a JWT join on a
//! `password` account is refused as a bad token.
//!
//! Each node keeps a copy of the online list (`online` hash) with the
//! presence version it is current at: every change to who is online or to
//! a status bumps that version in the same script, so an answer whose
//! script saw that version or an older one reuses the copy, and a newer
//! one brings the copy up to date from the changes since (`online.lua`)
//! instead of reading the whole list: a join storm of N users costs N
//! small reads, not N² names. Answers list a page of that copy, cut while
//! it is locked.

use std::net::IpAddr;
use std::time::Duration;

use redis::Value;

use super::scripts::{self, array, integer, text, Args};
use super::{keys, Cluster};
use crate::auth::join_token::Vouched;
use crate::config::{SignupMode, MAX_PASSWORD_BYTES, ONLINE_PAGE};
use crate::conversation::{is_dialog, Conversation};
use crate::event::Status;
use crate::hub::online::{OnlineNames, OnlinePage};
use crate::hub::{valid_name, HubResult, Limited, Refusal, Session};
use crate::metrics::RateLimit;

script!(CLAIM_ACCOUNT, "claim_account");
script!(OPEN_CLIENT, "open_client");
script!(SYNC, "sync");
script!(LEAVE, "leave");
script!(STATUS, "status");
script!(ONLINE, "online");

/// The kind of account a password /join may use.
const PASSWORD_KIND: &str = "password";
/// The kind of account a JWT /join creates and may use.
const JWT_KIND: &str = "jwt";

impl Cluster {
    /// POST /join from the client address `from`: checks or claims the
    /// name, then opens a client process.
    pub async fn join(&self, name: &str, password: &str, from: IpAddr) -> HubResult<Session> {
        if !valid_name(name) {
            return Err(Refusal::InvalidUserName);
        }
        if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
            return Err(Refusal::InvalidPassword);
        }
        self.check_password(name, password, from).await?;
        self.open_session(name).await
    }

    /// POST /join with a valid JWT (`auth::join_token`): claims the name as
    /// a `jwt` account if it is free, opens a client process, then joins
    /// the token's rooms; if one of them is refused, the client process is
    /// closed again and the join refused with it (all or none, as
    /// single-node).
    pub async fn join_vouched(&self, vouched: &Vouched) -> HubResult<Session> {
        let name = &vouched.user;
        let args = Args::new().arg(name).arg(JWT_KIND).arg("");
        let claimed = scripts::run(self.redis(), &CLAIM_ACCOUNT, &[], args).await?;
        if claimed.get(1).map(text).unwrap_or_default() != JWT_KIND {
            return Err(Refusal::BadAuthToken {
                why: format!("`{name}` is an account with a password; a JWT cannot join it"),
            });
        }
        let session = self.open_session(name).await?;
        if vouched.rooms.is_empty() {
            return Ok(session);
        }
        let token = session.token.unwrap_or_default();
        for room in &vouched.rooms {
            if let Err(refusal) = self.join_room(&token, room).await {
                if let Err(error) = self.leave(&token).await {
                    tracing::warn!(?error, user = %name, "cannot close a refused JWT join");
                }
                return Err(refusal);
            }
        }
        // The answer lists the rooms just joined, at the mailbox's head.
        let mut session = self.sync(&token).await?;
        session.token = Some(token);
        Ok(session)
    }

    /// The refusal of a /join whose JWT is bad, counted against the
    /// address's limit of bad tokens (cluster-wide, `rates`).
    pub async fn bad_join_token(&self, from: IpAddr, why: String) -> Refusal {
        match self.bad_join_token_from(from).await {
            Ok(()) => Refusal::BadAuthToken { why },
            Err(refusal) => refusal,
        }
    }

    /// Opens a client process of `name`, whose account is checked.
    async fn open_session(&self, name: &str) -> HubResult<Session> {
        let token = crate::auth::new_token();
        let args = Args::new()
            .arg(name)
            .arg(keys::token_sha(&token))
            .arg(millis(self.config().inactivity_timeout));
        let answer = scripts::run(self.redis(), &OPEN_CLIENT, &[], args).await;
        let answer = answer.inspect_err(|refusal| {
            if matches!(refusal, Refusal::TooManyClients { .. }) {
                self.metrics().rate_limited(RateLimit::Clients);
            }
        })?;
        let client = answer.first().and_then(integer).unwrap_or(0);
        let mut session = self.session(name, client, &answer[1..]).await?;
        session.token = Some(token);
        tracing::debug!(user = name, client, "client joined");
        Ok(session)
    }

    /// Checks `password` for `name`, or claims the name with it; limited as
    /// single-node limits it, across every node (`rates`).
    async fn check_password(&self, name: &str, password: &str, from: IpAddr) -> HubResult<()> {
        let account = self.account_to_try(name, from).await?;
        let (kind, phc) = match (account.kind, account.phc) {
            (Some(kind), phc) => (kind, phc),
            (None, _) => {
                if self.shared.limits.signup == SignupMode::Closed {
                    return Err(Refusal::SignupClosed {
                        name: name.to_owned(),
                    });
                }
                self.signup(from).await?;
                let hash = self.hash(password).await?;
                let args = Args::new().arg(name).arg(PASSWORD_KIND).arg(&hash);
                let claimed = scripts::run(self.redis(), &CLAIM_ACCOUNT, &[], args).await?;
                if claimed.first().and_then(integer) == Some(1) {
                    return Ok(());
                }
                // Another node claimed the name while we hashed.
                let kind = claimed.get(1).map(text).unwrap_or_default();
                let phc = claimed.get(2).map(text).unwrap_or_default();
                (kind, phc)
            }
        };
        let matches = kind == PASSWORD_KIND && self.verify(password, &phc).await?;
        if matches {
            Ok(())
        } else {
            self.wrong_password(name, from).await?;
            Err(Refusal::BadCredentials {
                name: name.to_owned(),
            })
        }
    }

    async fn hash(&self, password: &str) -> HubResult<String> {
        let hashed = self.shared.hasher.hash(password).await;
        hashed.map_err(|busy| self.busy(busy))
    }

    async fn verify(&self, password: &str, phc: &str) -> HubResult<bool> {
        let verified = self.shared.hasher.verify(password, phc).await;
        verified.map_err(|busy| self.busy(busy))
    }

    fn busy(&self, crate::auth::Busy(wait): crate::auth::Busy) -> Refusal {
        self.metrics().rate_limited(RateLimit::HashQueue);
        Refusal::Busy { wait }
    }

    /// GET /sync: a fresh session at the mailbox's head.
    pub async fn sync(&self, token: &str) -> HubResult<Session> {
        let args = Args::new()
            .arg(keys::token_sha(token))
            .arg(millis(self.config().inactivity_timeout));
        let answer = scripts::run(self.redis(), &SYNC, &[], args).await?;
        let client = answer.first().and_then(integer).unwrap_or(0);
        let user = answer.get(1).map(text).unwrap_or_default();
        self.session(&user, client, &answer[2..]).await
    }

    /// POST /status, a few times a second at most per client process.
    pub async fn set_status(&self, token: &str, status: Status) -> HubResult<()> {
        let sha = keys::token_sha(token);
        let status = match status {
            Status::Online => "online",
            Status::Busy => "busy",
            Status::Away => "away",
            Status::Offline => return Err(Refusal::StoreUnavailable),
        };
        let (interval, burst) = super::send::rate_args(self.shared.limits.status_changes);
        let args = Args::new().arg(sha).arg(status).arg(interval).arg(burst);
        let answer = scripts::run(self.redis(), &STATUS, &[], args).await?;
        match answer.first().map(text).as_deref() {
            Some("limited") => Err(self.limited(Limited::StatusChanges, &answer)),
            _ => Ok(()),
        }
    }

    /// POST /leave: ends the client process now.
    pub async fn leave(&self, token: &str) -> HubResult<()> {
        let args = Args::new().arg(keys::token_sha(token));
        scripts::run(self.redis(), &LEAVE, &[], args).await?;
        Ok(())
    }

    /// GET /users: at most `limit` online users with their status, in
    /// name order after `after`.
    pub async fn users(
        &self,
        token: &str,
        after: Option<&str>,
        limit: usize,
    ) -> HubResult<OnlinePage> {
        let sha = keys::token_sha(token);
        let page = |online: &OnlineNames| online.page(after, limit, false);
        self.online_list(&sha, None, page).await
    }

    /// A session from `session_of`'s answer (head, presence version, rooms,
    /// dialogs).
    async fn session(&self, user: &str, client: u64, answer: &[Value]) -> HubResult<Session> {
        crate::access_log::note_caller(user, client);
        let head = answer.first().and_then(integer).unwrap_or(0);
        let version = answer.get(1).and_then(integer).unwrap_or(0);
        let mut rooms = conversations(answer.get(2));
        rooms.sort_by(|a, b| a.id.cmp(&b.id));
        let mut dialogs = conversations(answer.get(3));
        dialogs.sort_by(|a, b| a.id.cmp(&b.id));
        rooms.extend(dialogs);
        let config = self.config();
        // The first page, and the user's own status, which it may not show.
        let page_and_status = |online: &OnlineNames| {
            let status = online.status_of(user).unwrap_or(Status::Online);
            (online.page(None, ONLINE_PAGE, true), status)
        };
        let (online, status) = self.online_list("", Some(version), page_and_status).await?;
        Ok(Session {
            user: user.to_owned(),
            client,
            token: None,
            cursor: head,
            poll_timeout_ms: millis(config.poll_timeout),
            inactivity_timeout_ms: millis(config.inactivity_timeout),
            status,
            online,
            rooms_and_dialogs: rooms,
        })
    }

    /// `cut` of the online list at presence version `at_least` or later
    /// (None: as Redis has it now, after checking token hash `sha`). This
    /// node's copy is brought up to date with the changes since its version
    /// (`online.lua`), or read whole when Redis cannot tell them; `cut`
    /// runs while the copy is locked.
    pub(super) async fn online_list<T>(
        &self,
        sha: &str,
        at_least: Option<u64>,
        cut: impl Fn(&OnlineNames) -> T,
    ) -> HubResult<T> {
        for attempt in 0..3 {
            let since = {
                let mirror = self.online_mirror();
                if let Some(wanted) = at_least {
                    if mirror.loaded && mirror.version >= wanted {
                        return Ok(cut(&mirror.names));
                    }
                }
                if mirror.loaded && attempt < 2 {
                    mirror.version
                } else {
                    0
                }
            };
            let args = Args::new().arg(sha).arg(since);
            let answer = scripts::run(self.redis(), &ONLINE, &[], args).await?;
            let version = answer.first().and_then(integer).unwrap_or(0);
            let full = answer.get(1).map(text).as_deref() == Some("full");
            let pairs = answer[2.min(answer.len())..].chunks_exact(2);
            let pairs = pairs.map(|pair| (text(&pair[0]), text(&pair[1])));
            let mut mirror = self.online_mirror();
            if full {
                let names = online_names(pairs.collect());
                if !mirror.loaded || version >= mirror.version {
                    *mirror = OnlineMirror {
                        loaded: true,
                        version,
                        names,
                    };
                    return Ok(cut(&mirror.names));
                }
                return Ok(cut(&names));
            }
            if mirror.loaded && mirror.version == since {
                for (name, status) in pairs {
                    match Status::settable(&status) {
                        Some(status) => {
                            mirror.names.insert(&name);
                            mirror.names.set_status(&name, status);
                        }
                        None => mirror.names.remove(&name),
                    }
                }
                mirror.version = version;
                return Ok(cut(&mirror.names));
            }
            if mirror.loaded && mirror.version >= version {
                return Ok(cut(&mirror.names));
            }
            // Another answer moved the copy meanwhile: ask again.
        }
        Err(Refusal::StoreUnavailable)
    }

    fn online_mirror(&self) -> std::sync::MutexGuard<'_, OnlineMirror> {
        let mirror = self.shared.online.lock();
        mirror.unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// This node's copy of who is online, at a presence version.
#[derive(Default)]
pub struct OnlineMirror {
    /// Read from Redis at least once.
    loaded: bool,
    version: u64,
    names: OnlineNames,
}

/// The online list of (name, status) pairs.
fn online_names(mut users: Vec<(String, String)>) -> OnlineNames {
    users.sort_unstable();
    let mut names = OnlineNames::default();
    for (name, status) in users {
        names.insert(&name);
        names.set_status(&name, Status::settable(&status).unwrap_or(Status::Online));
    }
    names
}

/// Conversations answered as {id, member...} tables.
fn conversations(value: Option<&Value>) -> Vec<Conversation> {
    let Some(value) = value else {
        return Vec::new();
    };
    array(value)
        .iter()
        .filter_map(|conversation| {
            let items = array(conversation);
            let id = text(items.first()?);
            let mut members: Vec<String> = items[1..].iter().map(text).collect();
            members.sort_unstable();
            Some(if is_dialog(&id) {
                let [first, second]: [String; 2] = members.try_into().ok()?;
                Conversation::dialog(id, [first, second])
            } else {
                Conversation::room(&id, members)
            })
        })
        .collect()
}

pub(super) fn millis(duration: Duration) -> u64 {
    duration.as_millis().try_into().unwrap_or(u64::MAX)
}
