//! Headers that proxies and browsers add or rely on: a proxy's own
//! `Authorization` does not hide the client's token, and no answer can be
//! sniffed into something other than its declared type.

mod common;

use common::{encode_form, of_type, Answer, TestServer};
use hyper::Method;
use serde_json::json;

fn assert_nosniff(answer: &Answer, what: &str) {
    assert_eq!(
        answer
            .headers
            .get("x-content-type-options")
            .and_then(|value| value.to_str().ok()),
        Some("nosniff"),
        "{what}: {answer:?}"
    );
}

#[tokio::test]
async fn a_proxys_basic_authorization_does_not_hide_the_token_parameter() {
    let server = TestServer::start().await;
    let ann = server.join("ann").await;
    let basic = [("authorization", "Basic cHJveHk6c2VjcmV0")];

    let users = server
        .request(
            Method::GET,
            &format!("/users?{}", encode_form(&[("token", &ann.token)])),
            &basic,
            Vec::new(),
        )
        .await;
    assert_eq!(users.status, 200, "{users:?}");
    assert_eq!(users.json["users"][0]["name"], "ann");

    let sent = server
        .request(
            Method::POST,
            "/send",
            &[basic[0], ("content-type", "application/json")],
            serde_json::to_vec(&json!({
                "token": ann.token,
                "conversation": "lobby",
                "text": "through a proxy with basic auth",
            }))
            .unwrap(),
        )
        .await;
    assert_eq!(sent.status, 200, "{sent:?}");

    let polled = server
        .request(
            Method::POST,
            "/poll",
            &[
                basic[0],
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            encode_form(&[("token", &ann.token), ("cursor", "0"), ("timeout", "0")]).into_bytes(),
        )
        .await;
    assert_eq!(polled.status, 200, "{polled:?}");
    let events = polled.json["events"].as_array().unwrap();
    let texts: Vec<&str> = of_type(events, "message")
        .iter()
        .filter_map(|event| event["text"].as_str())
        .collect();
    assert!(
        texts.contains(&"through a proxy with basic auth"),
        "{polled:?}"
    );

    // Without a token parameter, the proxy's credentials are not a token.
    let bare = server
        .request(Method::GET, "/users", &basic, Vec::new())
        .await;
    assert_eq!(bare.status, 401, "{bare:?}");
    assert_eq!(bare.code(), "missing_token");
    server.stop().await;
}

#[tokio::test]
async fn every_answer_says_nosniff() {
    let server = TestServer::start().await;
    let ann = server.join("ann").await;
    assert_nosniff(&server.get("/healthz", &[]).await, "healthz");
    assert_nosniff(
        &server.get("/users", &[("token", &ann.token)]).await,
        "users",
    );
    assert_nosniff(&server.get("/no-such-file", &[]).await, "404 static");
    assert_nosniff(
        &server
            .request(Method::DELETE, "/send", &[], Vec::new())
            .await,
        "405",
    );
    assert_nosniff(&server.post("/send", &[("token", "nope")]).await, "error");
    assert_nosniff(&server.get("/", &[]).await, "index");
    server.stop().await;
}
