//! Cluster mode's /join limits hold across nodes: wrong passwords for one
//! name from one address, sign-ups from one address and bad join JWTs
//! from one address, spread over two nodes, are refused at single-node's
//! budget, not at twice it, and so are one client process's /status calls.

mod cluster_support;

use std::time::{Duration, Instant};

use cluster_support::{node_config, Node, Redis};
use jsonwebtoken::{encode, get_current_timestamp, Algorithm, EncodingKey, Header};
use parlor::config::{BAD_JOIN_TOKENS_PER_MINUTE, PASSWORD_FAILURES_PER_MINUTE, STATUS_BURST};
use serde_json::json;

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

/// An HS256 join JWT for `sub`, signed with `secret`, valid for an hour.
fn join_jwt(secret: &str, sub: &str) -> String {
    let claims = json!({"sub": sub, "exp": get_current_timestamp() + 3600});
    let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
    encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

#[tokio::test]
async fn bad_join_tokens_spread_over_two_nodes_share_one_budget() {
    const SECRET: &str = "the-backend-and-the-nodes-share-this-32+-byte-secret";
    let redis = Redis::start();
    let mut config = node_config(&redis.url(), Duration::from_secs(30));
    config.join_secret = Some(SECRET.to_owned());
    let a = Node::start_with(config.clone()).await;
    let b = Node::start_with(config).await;
    let bad = join_jwt("not the secret, but long enough too, 32+ bytes", "ann");
    let started = Instant::now();
    let (refused, status, json) =
        until_refused(&[&a, &b], 401, |_| vec![("auth", bad.clone())]).await;
    // 30 a minute refill one every 2 s: per node it would be twice that.
    let budget = BAD_JOIN_TOKENS_PER_MINUTE as usize;
    let most = budget + started.elapsed().as_secs() as usize / 2 + 1;
    assert!(
        (budget..=most).contains(&refused),
        "{refused} bad tokens before the refusal"
    );
    assert_eq!(status, 429, "{json}");
    assert_eq!(json["error"], "rate_limited", "{json}");
    // The bucket is empty on both nodes, yet a valid token joins on each.
    for (node, name) in [(&a, "ann"), (&b, "bob")] {
        let good = join_jwt(SECRET, name);
        let (status, json) = node.post("/join", &[("auth", good.as_str())]).await;
        assert_eq!(status, 200, "{json}");
        assert_eq!(json["user"], name, "{json}");
        let (status, json) = node.post("/join", &[("auth", bad.as_str())]).await;
        assert_eq!(status, 429, "{json}");
    }
}
