//! /join, /sync, /leave, /status and /users in cluster mode.
//!
//! TODO(phase 2): not written yet; each answers 503 `store_unavailable`.

use std::net::IpAddr;
use std::sync::Arc;

use super::Cluster;
use crate::event::Status;
use crate::hub::online::OnlineSnapshot;
use crate::hub::{HubResult, Refusal, Session};

impl Cluster {
    /// POST /join from the client address `from`.
    pub async fn join(&self, _name: &str, _password: &str, _from: IpAddr) -> HubResult<Session> {
        Err(Refusal::StoreUnavailable)
    }

    /// GET /sync.
    pub async fn sync(&self, _token: &str) -> HubResult<Session> {
        Err(Refusal::StoreUnavailable)
    }

    /// POST /status.
    pub async fn set_status(&self, _token: &str, _status: Status) -> HubResult<()> {
        Err(Refusal::StoreUnavailable)
    }

    /// POST /leave.
    pub async fn leave(&self, _token: &str) -> HubResult<()> {
        Err(Refusal::StoreUnavailable)
    }

    /// GET /users.
    pub async fn users(&self, _token: &str) -> HubResult<Arc<OnlineSnapshot>> {
        Err(Refusal::StoreUnavailable)
    }
}
