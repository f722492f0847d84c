//! The cluster-wide inactivity sweeper.
//!
//! TODO(phase 2): not written yet.

use tokio::sync::watch;

use super::Cluster;

/// Sweeps expired client processes every second until `stop`.
pub async fn run(_cluster: Cluster, mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
