//! /dialog, /rooms/join, /rooms/leave and /api/publish in cluster mode:
//! each change is one Lua script (`dialog.lua`, `join_room.lua`,
//! `leave_room.lua`, `publish.lua`) that checks, changes and appends the
//! events it causes to the online recipients' mailboxes (publishing their
//! wake-ups) atomically, with single-node's checks in single-node's order.
//!
//! Room members are a Redis set: every answer and event lists them sorted
//! by name (single-node lists them in joining order).

use std::sync::LazyLock;

use super::keys::token_sha;
use super::scripts::{self, Args, ClusterScript};
use super::send::rate_args;
use super::Cluster;
use crate::conversation::Conversation;
use crate::event::Event;
use crate::hub::online::OnlineNames;
use crate::hub::{valid_name, HubResult, Limited, PublishReport, Refusal};

static DIALOG: LazyLock<ClusterScript> =
    LazyLock::new(|| ClusterScript::new("dialog", include_str!("scripts/dialog.lua")));
static JOIN_ROOM: LazyLock<ClusterScript> =
    LazyLock::new(|| ClusterScript::new("join_room", include_str!("scripts/join_room.lua")));
static LEAVE_ROOM: LazyLock<ClusterScript> =
    LazyLock::new(|| ClusterScript::new("leave_room", include_str!("scripts/leave_room.lua")));
static PUBLISH: LazyLock<ClusterScript> =
    LazyLock::new(|| ClusterScript::new("publish", include_str!("scripts/publish.lua")));

/// Users a notification is appended for per script run: a publish to
/// `MAX_PUBLISH_USERS` users is cut into runs of this many, so that Redis
/// is never held for more than a few milliseconds at once.
const PUBLISH_BATCH: usize = 500;

impl Cluster {
    /// POST /dialog: the dialog with `with`, created if there is none.
    pub async fn dialog(&self, token: &str, with: &str) -> HubResult<Conversation> {
        let args = Args::new().arg(token_sha(token)).arg(with);
        let answer = scripts::run(self.redis(), &DIALOG, &[], args).await?;
        match &answer[..] {
            [id, first, second] => Ok(Conversation::dialog(
                scripts::text(id),
                [scripts::text(first), scripts::text(second)],
            )),
            _ => {
                tracing::error!(?answer, "the dialog script answered something else");
                Err(Refusal::StoreUnavailable)
            }
        }
    }

    /// POST /rooms/join: joins (creating if needed, a few an hour per
    /// user) the room `name`.
    pub async fn join_room(&self, token: &str, name: &str) -> HubResult<Conversation> {
        if !valid_name(name) {
            return Err(Refusal::InvalidRoomName);
        }
        let (interval, burst) = rate_args(self.shared.limits.room_creations);
        let args = Args::new()
            .arg(token_sha(token))
            .arg(name)
            .arg(interval)
            .arg(burst);
        let answer = scripts::run(self.redis(), &JOIN_ROOM, &[], args).await?;
        let outcome = answer.first().map(scripts::text).unwrap_or_default();
        let members: Vec<String> = answer.iter().skip(1).map(scripts::text).collect();
        match outcome.as_str() {
            "limited" => Err(self.limited(Limited::RoomCreations, &answer)),
            "lobby" => {
                let sha = token_sha(token);
                self.online_list(&sha, None, OnlineNames::lobby).await
            }
            "room" => Ok(Conversation::room(name, members)),
            _ => {
                tracing::error!(?answer, "the join_room script answered something else");
                Err(Refusal::StoreUnavailable)
            }
        }
    }

    /// POST /rooms/leave. The last member to leave deletes the room, with
    /// its history.
    pub async fn leave_room(&self, token: &str, conversation: &str) -> HubResult<()> {
        let args = Args::new().arg(token_sha(token)).arg(conversation);
        scripts::run(self.redis(), &LEAVE_ROOM, &[], args).await?;
        Ok(())
    }

    /// POST /api/publish: a notification to each listed user's clients, in
    /// batches of `PUBLISH_BATCH` users (each batch atomic; a failure part
    /// way answers 503, and users of earlier batches keep theirs).
    pub async fn publish(
        &self,
        users: &[String],
        data: &serde_json::Value,
    ) -> HubResult<PublishReport> {
        let event = Event::Notification { data }.to_bytes();
        let mut report = PublishReport {
            delivered: Vec::new(),
            offline: Vec::new(),
        };
        for batch in users.chunks(PUBLISH_BATCH) {
            let mut args = Args::new().arg(event.as_bytes());
            for user in batch {
                args = args.arg(user.as_str());
            }
            let flags = scripts::run(self.redis(), &PUBLISH, &[], args).await?;
            for (user, flag) in batch.iter().zip(&flags) {
                if scripts::integer(flag) == Some(1) {
                    report.delivered.push(user.clone());
                } else {
                    report.offline.push(user.clone());
                }
            }
        }
        Ok(report)
    }
}
