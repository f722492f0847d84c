//! Cluster mode's /join limits hold across nodes: wrong passwords for one
//! name from one address, and sign-ups from one address, spread over two
//! nodes are refused at single-node's budget, not at twice it, and so
//! are one client process's /status calls.

mod cluster_support;

use std::time::{Duration, Instant};

use cluster_support::{node_config, Node, Redis};
use parlor::config::{PASSWORD_FAILURES_PER_MINUTE, STATUS_BURST};

/// Posts `fields` to /join on each node in turn until an answer is not
/// `expected`: that answer, and how many were `expected` before it.
async fn until_refused(
    nodes: &[&Node],
    expected: u16,
    fields: impl Fn(usize) -> Vec<(&'static str, String)>,
) -> (usize, u16, serde_json::Value) {
    for n in 0..100 {
        let fields = fields(n);
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, json) = nodes[n % nodes.len()].post("/join", &fields).await;
        if status != expected {
            return (n, status, json);
        }
    }
    panic!("100 joins and never refused");
}

#[tokio::test]
async fn wrong_passwords_spread_over_two_nodes_share_one_budget() {
    let redis = Redis::start();
    let (a, b) = (Node::start(&redis).await, Node::start(&redis).await);
    a.join("ann").await;
    let (wrong, status, json) = until_refused(&[&a, &b], 401, |_| {
        vec![("name", "ann".into()), ("password", "guess".into())]
    })
    .await;
    // The bucket refills one a minute per `PASSWORD_FAILURES_PER_MINUTE`:
    // at most one more can slip in while the test runs.
    let budget = PASSWORD_FAILURES_PER_MINUTE as usize;
    assert!(
        (budget..=budget + 1).contains(&wrong),
        "{wrong} wrong passwords before the refusal"
    );
    assert_eq!(status, 429, "{json}");
    assert_eq!(json["error"], "rate_limited", "{json}");
    // Refused on both nodes, the right password too (as single-node)...
    for node in [&a, &b] {
        let (status, json) = node
            .post("/join", &[("name", "ann"), ("password", "pw")])
            .await;
        assert_eq!(status, 429, "{json}");
    }
    // ...but only for that name from that address.
    b.join("bob").await;
    let (status, json) = a.post("/join", &[("name", "bob"), ("password", "x")]).await;
    assert_eq!(status, 401, "{json}");
}

#[tokio::test]
async fn sign_ups_spread_over_two_nodes_share_one_budget() {
    let redis = Redis::start();
    let mut config = node_config(&redis.url(), Duration::from_secs(30));
    config.signups_per_ip = 3;
    let a = Node::start_with(config.clone()).await;
    let b = Node::start_with(config).await;
    let (created, status, json) = until_refused(&[&a, &b], 200, |n| {
        vec![("name", format!("user{n}")), ("password", "pw".into())]
    })
    .await;
    // 3 a minute: one every 20 s, so none refills while the test runs.
    assert_eq!(created, 3);
    assert_eq!(status, 429, "{json}");
    assert_eq!(json["error"], "rate_limited", "{json}");
    // An existing account still joins from that address, on either node.
    for node in [&a, &b] {
        let (status, json) = node
            .post("/join", &[("name", "user0"), ("password", "pw")])
            .await;
        assert_eq!(status, 200, "{json}");
    }
}

#[tokio::test]
async fn status_changes_spread_over_two_nodes_share_one_budget() {
    let redis = Redis::start();
    let (a, b) = (Node::start(&redis).await, Node::start(&redis).await);
    let (ann, _) = a.join("ann").await;
    let started = Instant::now();
    let statuses = ["busy", "away"];
    let mut done = 0;
    let (status, json) = loop {
        let node = [&a, &b][done % 2];
        let fields = [("token", ann.as_str()), ("status", statuses[done % 2])];
        let (status, json) = node.post("/status", &fields).await;
        if status != 200 || done == 100 {
            break (status, json);
        }
        done += 1;
    };
    // A burst of `STATUS_BURST`, then one a second: per node it would be
    // twice the burst.
    let most = STATUS_BURST as usize + started.elapsed().as_secs() as usize + 1;
    assert!(
        (STATUS_BURST as usize..=most).contains(&done),
        "{done} status changes"
    );
    assert_eq!(status, 429, "{json}");
    assert_eq!(json["error"], "rate_limited", "{json}");
}
