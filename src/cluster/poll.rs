//! /poll in cluster mode, and the safety tick.
//!
//! TODO(phase 2): not written yet; /poll answers 503 `store_unavailable`.

use std::time::Duration;

use tokio::sync::watch;

use super::Cluster;
use crate::hub::{HubResult, Refusal};

impl Cluster {
    /// GET|POST /poll.
    pub async fn poll(
        &self,
        _token: &str,
        _cursor: u64,
        _timeout: Option<Duration>,
    ) -> HubResult<Vec<u8>> {
        Err(Refusal::StoreUnavailable)
    }
}

/// Re-checks parked polls against Redis every tick until `stop`.
pub async fn run_safety_tick(_cluster: Cluster, mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
