//! /send and /history in cluster mode.
//!
//! TODO(cluster-conv): written by the cluster-conv branch; until then both
//! answer 503 `store_unavailable`.

use super::Cluster;
use crate::event::Message;
use crate::hub::{HubResult, Refusal};

impl Cluster {
    /// POST /send.
    pub async fn send(
        &self,
        _token: &str,
        _conversation: &str,
        _text: &str,
        _client_msg_id: Option<&str>,
    ) -> HubResult<Message> {
        Err(Refusal::StoreUnavailable)
    }

    /// GET /history.
    pub async fn history(
        &self,
        _token: &str,
        _conversation: &str,
        _before: Option<u64>,
        _limit: Option<usize>,
    ) -> HubResult<Vec<Message>> {
        Err(Refusal::StoreUnavailable)
    }
}
