//! /dialog, /rooms/join, /rooms/leave and /api/publish in cluster mode.
//!
//! TODO(cluster-conv): written by the cluster-conv branch; until then each
//! answers 503 `store_unavailable`.

use super::Cluster;
use crate::conversation::Conversation;
use crate::hub::{HubResult, PublishReport, Refusal};

impl Cluster {
    /// POST /dialog.
    pub async fn dialog(&self, _token: &str, _with: &str) -> HubResult<Conversation> {
        Err(Refusal::StoreUnavailable)
    }

    /// POST /rooms/join.
    pub async fn join_room(&self, _token: &str, _name: &str) -> HubResult<Conversation> {
        Err(Refusal::StoreUnavailable)
    }

    /// POST /rooms/leave.
    pub async fn leave_room(&self, _token: &str, _conversation: &str) -> HubResult<()> {
        Err(Refusal::StoreUnavailable)
    }

    /// POST /api/publish.
    pub async fn publish(
        &self,
        _users: &[String],
        _data: &serde_json::Value,
    ) -> HubResult<PublishReport> {
        Err(Refusal::StoreUnavailable)
    }
}
