//! GET /readyz: ready while serving, 503 `not_ready` from the moment
//! shutdown begins, while parked polls are still held (`--drain-delay`),
//! so that a load balancer stops sending first; /healthz is unchanged.

mod common;

use std::time::{Duration, Instant};

use common::{test_config, TestServer};
use serde_json::json;

/// Longest any wait here may take: generous, the machine is shared.
const PATIENCE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn readyz_is_ready_while_serving() {
    let server = TestServer::start().await;
    let ready = server.get("/readyz", &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.json, json!({"status": "ready"}));
    let head = server
        .request(hyper::Method::HEAD, "/readyz", &[], Vec::new())
        .await;
    assert_eq!(head.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn readyz_goes_503_at_shutdown_while_a_poll_is_still_parked() {
    let mut config = test_config();
    config.poll_timeout = Duration::from_secs(60);
    // Longer than the test: the drain never ends while it looks.
    config.drain_delay = Duration::from_secs(120);
    let mut server = TestServer::start_with(config).await;
    let (token, cursor) = joined_and_read(&server).await;
    let addr = server.addr;
    let target = format!("/poll?token={token}&cursor={cursor}");
    let poll = tokio::spawn(async move {
        common::request_to(addr, hyper::Method::GET, &target, &[], Vec::new()).await
    });
    wait_for(
        || server.hub().stats().parked_polls == 1,
        "the poll to park",
    )
    .await;

    server.signal_stop();
    let started = Instant::now();
    let not_ready = loop {
        let answer = server.get("/readyz", &[]).await;
        if answer.status == 503 {
            break answer;
        }
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert!(started.elapsed() < PATIENCE, "/readyz stayed ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(not_ready.code(), "not_ready", "{}", not_ready.text);
    assert!(not_ready.json["message"]
        .as_str()
        .unwrap()
        .contains("shutting down"));

    // The poll is still held, the server still serves (each request here
    // is a new connection), and liveness is unchanged.
    assert!(!poll.is_finished(), "the parked poll was answered at once");
    assert_eq!(server.hub().stats().parked_polls, 1);
    let health = server.get("/healthz", &[]).await;
    assert_eq!(
        (health.status, health.json.clone()),
        (200, json!({"status": "ok"}))
    );
    let users = server.get("/users", &[("token", &token)]).await;
    assert_eq!(users.status, 200, "{}", users.text);
}

#[tokio::test]
async fn after_the_drain_delay_parked_polls_are_answered_and_the_server_stops() {
    let mut config = test_config();
    config.poll_timeout = Duration::from_secs(60);
    config.drain_delay = Duration::from_millis(300);
    let mut server = TestServer::start_with(config).await;
    let (token, cursor) = joined_and_read(&server).await;
    let addr = server.addr;
    let target = format!("/poll?token={token}&cursor={cursor}");
    let poll = tokio::spawn(async move {
        common::request_to(addr, hyper::Method::GET, &target, &[], Vec::new()).await
    });
    wait_for(
        || server.hub().stats().parked_polls == 1,
        "the poll to park",
    )
    .await;

    server.signal_stop();
    let answer = tokio::time::timeout(PATIENCE, poll)
        .await
        .expect("the parked poll is answered once the drain ends")
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json, json!({"cursor": cursor, "events": []}));
    tokio::time::timeout(PATIENCE, server.stop())
        .await
        .expect("the server stops after its drain");
}

/// Joins ann and reads what waits for her: her token, and a cursor a poll
/// parks at.
async fn joined_and_read(server: &TestServer) -> (String, u64) {
    let mut ann = server.join("ann").await;
    ann.events_until_empty().await;
    (ann.token, ann.cursor)
}

async fn wait_for(done: impl Fn() -> bool, what: &str) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < PATIENCE, "waited too long for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
