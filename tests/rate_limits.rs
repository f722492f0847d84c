//! Per-user and per-client rate limits: /status per client process, /send
//! per user (a retried `client_msg_id` is not a new send), rooms created
//! per user. Each test counts what got through until the first 429, with a
//! bound that allows for the bucket refilling while the test ran, so a slow
//! machine cannot fail it.

mod common;

use std::time::Instant;

use common::{encode_form, test_config, Answer, TestClient, TestServer};
use parlor::config::SendRate;

fn assert_rate_limited(answer: &Answer) {
    assert_eq!(answer.status, 429, "{}", answer.text);
    assert_eq!(answer.code(), "rate_limited");
    let retry_after: u64 = answer
        .headers
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in {answer:?}"));
    assert!(retry_after >= 1);
}

/// Calls `attempt(n)` until an answer is not 200: that answer, and how many
/// were 200 before it.
async fn until_refused<F, Fut>(mut attempt: F) -> (usize, Answer)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Answer>,
{
    for n in 0..1000 {
        let answer = attempt(n).await;
        if answer.status != 200 {
            return (n, answer);
        }
    }
    panic!("1000 calls and never refused");
}

/// POST /status to the first node (in cluster mode the limit is one
/// bucket in Redis, whichever node is asked).
async fn set_status(client: &TestClient<'_>, status: &str) -> Answer {
    let form = encode_form(&[("token", &client.token), ("status", status)]);
    common::request_to(
        client.server.addr,
        hyper::Method::POST,
        "/status",
        &[("content-type", "application/x-www-form-urlencoded")],
        form.into_bytes(),
    )
    .await
}

#[tokio::test]
async fn status_changes_are_limited_per_client_process() {
    let server = TestServer::start().await;
    let ann = server.join("ann").await;
    let started = Instant::now();
    let statuses = ["busy", "away"];
    let client = &ann;
    let (done, refused) =
        until_refused(|n| async move { set_status(client, statuses[n % 2]).await }).await;
    // A burst of 5, then one a second.
    let most = 5 + started.elapsed().as_secs() as usize + 1;
    assert!((5..=most).contains(&done), "{done} status changes");
    assert_rate_limited(&refused);
    // Another client process of the same user has its own allowance.
    let tab = server.join("ann").await;
    let answer = tab.post("/status", &[("status", "online")]).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    server.stop().await;
}

#[tokio::test]
async fn sends_are_limited_per_user_and_retries_still_get_their_answer() {
    let mut config = test_config();
    config.send_rate = SendRate(1);
    config.send_burst = 3;
    let server = TestServer::start_with(config).await;
    let ann = server.join("ann").await;
    let bob = server.join("bob").await;
    let started = Instant::now();
    let sender = &ann;
    let (sent, refused) = until_refused(|n| {
        let id = format!("m{n}");
        async move {
            sender
                .post(
                    "/send",
                    &[
                        ("conversation", "lobby"),
                        ("text", "hi"),
                        ("client_msg_id", &id),
                    ],
                )
                .await
        }
    })
    .await;
    let most = 3 + started.elapsed().as_secs() as usize + 1;
    assert!((3..=most).contains(&sent), "{sent} sends");
    assert_rate_limited(&refused);

    // A retry of an accepted send answers its first result, not a 429.
    let first = ann
        .post(
            "/send",
            &[
                ("conversation", "lobby"),
                ("text", "hi"),
                ("client_msg_id", "m0"),
            ],
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.json["id"].as_u64(), Some(1), "{}", first.text);
    // Another user is not held up by ann's rate.
    let answer = bob.send("lobby", "hello").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    server.stop().await;
}

#[tokio::test]
async fn rooms_created_per_user_are_limited() {
    let server = TestServer::start().await;
    let ann = server.join("ann").await;
    let bob = server.join("bob").await;
    let started = Instant::now();
    let made = bob.post("/rooms/join", &[("name", "bobs")]).await;
    assert_eq!(made.status, 200, "{}", made.text);
    let creator = &ann;
    let (created, refused) = until_refused(|n| {
        let name = format!("room{n}");
        async move { creator.post("/rooms/join", &[("name", &name)]).await }
    })
    .await;
    // 20 an hour: one more every 3 minutes.
    let most = 20 + started.elapsed().as_secs() as usize / 180;
    assert!((20..=most).contains(&created), "{created} rooms created");
    assert_rate_limited(&refused);
    // Joining a room that exists is not creating one.
    let joined = ann.post("/rooms/join", &[("name", "bobs")]).await;
    assert_eq!(joined.status, 200, "{}", joined.text);
    server.stop().await;
}
