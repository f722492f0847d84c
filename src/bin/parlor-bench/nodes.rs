//! Several nodes of one cluster (`--url` repeated): which node each
//! connection goes to.
//!
//! Node `n % nodes` serves whatever the scenario numbers `n`: joins go
//! round robin by worker, parked pollers by their index, and a sender talks
//! to a different node than its receiver polls (`sender_node` and
//! `receiver_node`), so that every delivery crosses nodes when there are
//! two or more. With one `--url` everything goes to it.

use parlor::client::Target;

use crate::run::{resolve, Ctx};
use crate::Res;

/// The servers of `--url`, looked up once, in the order given.
pub async fn resolve_all(urls: &[String]) -> Res<Vec<Target>> {
    let mut targets = Vec::with_capacity(urls.len());
    for url in urls {
        targets.push(resolve(url).await?);
    }
    if targets.is_empty() {
        return Err("give at least one --url".into());
    }
    Ok(targets)
}

impl Ctx {
    /// The node that connection `n` goes to.
    pub fn node(&self, n: usize) -> &Target {
        &self.targets[n % self.targets.len()]
    }

    /// The node sender `n` (of a latency or throughput pair) sends to.
    pub fn sender_node(&self, n: usize) -> &Target {
        self.node(n)
    }

    /// The node receiver `n` polls on: the next one after its sender's.
    pub fn receiver_node(&self, n: usize) -> &Target {
        self.node(n + 1)
    }
}
