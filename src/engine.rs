//! `Engine`: what the API calls — the single-node `Hub` or the Redis
//! `Cluster` — with one method per endpoint forwarding to either. A `match`
//! rather than a trait object, so the single-node path pays one branch and
//! no allocation. Both answer the same domain values and `Refusal`s, so the
//! API's JSON and errors are the same in either mode.

use std::net::IpAddr;
use std::time::Duration;

use crate::auth::join_token::Vouched;
use crate::cluster::Cluster;
use crate::conversation::Conversation;
use crate::event::{Message, Status};
use crate::hub::online::OnlinePage;
use crate::hub::{Hub, HubResult, PublishReport, Refusal, Session};
use crate::metrics::{Gauges, Metrics};

/// Where the live state is.
#[derive(Clone)]
pub enum Engine {
    /// In this process (memory or SQLite store).
    Single(Hub),
    /// In Redis, shared by every node given the same URL.
    Cluster(Cluster),
}

/// Why /healthz answers 503.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unhealthy {
    /// The single-node store commits nothing (a full disk, a dead writer).
    StoreStalled(String),
    /// Redis does not answer, or wake-ups are not subscribed.
    StoreUnavailable(String),
}

impl Engine {
    /// The single-node hub, if that is the engine (tests and diagnostics).
    pub fn hub(&self) -> Option<&Hub> {
        match self {
            Engine::Single(hub) => Some(hub),
            Engine::Cluster(_) => None,
        }
    }

    pub fn cluster(&self) -> Option<&Cluster> {
        match self {
            Engine::Single(_) => None,
            Engine::Cluster(cluster) => Some(cluster),
        }
    }

    /// This node's counters.
    pub fn metrics(&self) -> &Metrics {
        match self {
            Engine::Single(hub) => hub.metrics(),
            Engine::Cluster(cluster) => cluster.metrics(),
        }
    }

    /// The gauges for a scrape (in cluster mode, this node's share).
    pub fn gauges(&self) -> Gauges {
        match self {
            Engine::Single(hub) => hub.gauges(),
            Engine::Cluster(cluster) => cluster.gauges(),
        }
    }

    /// The poll timeout and inactivity timeout in force.
    pub fn poll_timeout(&self) -> Duration {
        match self {
            Engine::Single(hub) => hub.config().poll_timeout,
            Engine::Cluster(cluster) => cluster.config().poll_timeout,
        }
    }

    /// GET /healthz.
    pub async fn health(&self) -> Result<(), Unhealthy> {
        match self {
            Engine::Single(hub) => hub.store_health().map_err(Unhealthy::StoreStalled),
            Engine::Cluster(cluster) => cluster.health().await.map_err(Unhealthy::StoreUnavailable),
        }
    }

    /// Answers every parked poll at once (empty) and stops parking new ones.
    pub fn shut_down(&self) {
        match self {
            Engine::Single(hub) => hub.shut_down(),
            Engine::Cluster(cluster) => cluster.shut_down(),
        }
    }

    /// POST /join from the client address `from`.
    pub async fn join(&self, name: &str, password: &str, from: IpAddr) -> HubResult<Session> {
        match self {
            Engine::Single(hub) => hub.join_from(name, password, from).await,
            Engine::Cluster(cluster) => cluster.join(name, password, from).await,
        }
    }

    /// POST /join with a valid JWT (`auth::join_token`).
    pub async fn join_vouched(&self, vouched: &Vouched) -> HubResult<Session> {
        match self {
            Engine::Single(hub) => hub.join_vouched(vouched).await,
            Engine::Cluster(cluster) => cluster.join_vouched(vouched).await,
        }
    }

    /// The refusal of a /join whose JWT is bad, counted against the
    /// address's limit of bad tokens (across every node in cluster mode).
    pub async fn bad_join_token(&self, from: IpAddr, why: String) -> Refusal {
        match self {
            Engine::Single(hub) => hub.bad_join_token(from, why),
            Engine::Cluster(cluster) => cluster.bad_join_token(from, why).await,
        }
    }

    /// GET /sync.
    pub async fn sync(&self, token: &str) -> HubResult<Session> {
        match self {
            Engine::Single(hub) => hub.sync(token),
            Engine::Cluster(cluster) => cluster.sync(token).await,
        }
    }

    /// GET|POST /poll.
    pub async fn poll(
        &self,
        token: &str,
        cursor: u64,
        timeout: Option<Duration>,
    ) -> HubResult<Vec<u8>> {
        match self {
            Engine::Single(hub) => hub.poll(token, cursor, timeout).await,
            // Boxed: hyper keeps room for the largest request future once
            // per connection, and the cluster's (Redis calls inside) would
            // size every single-node parked poll's (`http`'s module doc).
            Engine::Cluster(cluster) => Box::pin(cluster.poll(token, cursor, timeout)).await,
        }
    }

    /// POST /status.
    pub async fn set_status(&self, token: &str, status: Status) -> HubResult<()> {
        match self {
            Engine::Single(hub) => hub.durably(|hub| hub.set_status(token, status)).await,
            Engine::Cluster(cluster) => cluster.set_status(token, status).await,
        }
    }

    /// GET /users: at most `limit` online users, after `after` in name
    /// order.
    pub async fn users(
        &self,
        token: &str,
        after: Option<&str>,
        limit: usize,
    ) -> HubResult<OnlinePage> {
        match self {
            Engine::Single(hub) => hub.users(token, after, limit),
            Engine::Cluster(cluster) => cluster.users(token, after, limit).await,
        }
    }

    /// POST /leave.
    pub async fn leave(&self, token: &str) -> HubResult<()> {
        match self {
            // A left token must not come back after a crash.
            Engine::Single(hub) => hub.durably(|hub| hub.leave(token)).await,
            Engine::Cluster(cluster) => cluster.leave(token).await,
        }
    }

    /// POST /send.
    pub async fn send(
        &self,
        token: &str,
        conversation: &str,
        text: &str,
        client_msg_id: Option<&str>,
    ) -> HubResult<Message> {
        match self {
            Engine::Single(hub) => hub.send(token, conversation, text, client_msg_id).await,
            Engine::Cluster(cluster) => {
                cluster.send(token, conversation, text, client_msg_id).await
            }
        }
    }

    /// GET /history.
    pub async fn history(
        &self,
        token: &str,
        conversation: &str,
        before: Option<u64>,
        limit: Option<usize>,
    ) -> HubResult<Vec<Message>> {
        match self {
            Engine::Single(hub) => hub.history(token, conversation, before, limit).await,
            Engine::Cluster(cluster) => cluster.history(token, conversation, before, limit).await,
        }
    }

    /// POST /dialog.
    pub async fn dialog(&self, token: &str, with: &str) -> HubResult<Conversation> {
        match self {
            Engine::Single(hub) => hub.durably(|hub| hub.dialog(token, with)).await,
            Engine::Cluster(cluster) => cluster.dialog(token, with).await,
        }
    }

    /// POST /rooms/join.
    pub async fn join_room(&self, token: &str, name: &str) -> HubResult<Conversation> {
        match self {
            Engine::Single(hub) => hub.durably(|hub| hub.join_room(token, name)).await,
            Engine::Cluster(cluster) => cluster.join_room(token, name).await,
        }
    }

    /// POST /rooms/leave.
    pub async fn leave_room(&self, token: &str, conversation: &str) -> HubResult<()> {
        match self {
            Engine::Single(hub) => hub.durably(|hub| hub.leave_room(token, conversation)).await,
            Engine::Cluster(cluster) => cluster.leave_room(token, conversation).await,
        }
    }

    /// POST /api/publish.
    pub async fn publish(
        &self,
        users: &[String],
        data: &serde_json::Value,
    ) -> HubResult<PublishReport> {
        match self {
            Engine::Single(hub) => hub.durably(|hub| Ok(hub.publish(users, data))).await,
            Engine::Cluster(cluster) => cluster.publish(users, data).await,
        }
    }
}
