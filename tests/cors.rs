//! `--allow-origin`: preflights from admitted origins are answered, their
//! answers are marked readable, and every other origin gets no CORS header.

mod common;

use common::{test_config, Answer, TestServer};
use hyper::Method;

fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    answer
        .headers
        .get(name)
        .and_then(|value| value.to_str().ok())
}

async fn preflight(server: &TestServer, origin: &str) -> Answer {
    server
        .request(
            Method::OPTIONS,
            "/send",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization, content-type",
                ),
            ],
            Vec::new(),
        )
        .await
}

#[tokio::test]
async fn an_admitted_origin_gets_its_preflight_and_readable_answers() {
    let mut config = test_config();
    config.allow_origin = vec!["https://app.example.com".to_owned()];
    let server = TestServer::start_with(config).await;

    let answer = preflight(&server, "https://app.example.com").await;
    assert_eq!(answer.status, 204, "{answer:?}");
    assert_eq!(
        header(&answer, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        header(&answer, "access-control-allow-methods"),
        Some("POST")
    );
    let allowed_headers = header(&answer, "access-control-allow-headers").unwrap_or("");
    assert!(allowed_headers.contains("Authorization"), "{answer:?}");

    let health = server
        .request(
            Method::GET,
            "/healthz",
            &[("origin", "https://app.example.com")],
            Vec::new(),
        )
        .await;
    assert_eq!(health.status, 200);
    assert_eq!(
        header(&health, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(header(&health, "vary"), Some("Origin"));

    // Another origin: no CORS headers on its preflight or its answers.
    let refused = preflight(&server, "https://evil.example.com").await;
    assert_eq!(refused.status, 405, "{refused:?}");
    assert_eq!(header(&refused, "access-control-allow-origin"), None);
    let health = server
        .request(
            Method::GET,
            "/healthz",
            &[("origin", "https://evil.example.com")],
            Vec::new(),
        )
        .await;
    assert_eq!(header(&health, "access-control-allow-origin"), None);
    server.stop().await;
}

#[tokio::test]
async fn without_allow_origin_no_origin_is_admitted() {
    let server = TestServer::start().await;
    let answer = preflight(&server, "https://app.example.com").await;
    assert_eq!(answer.status, 405, "{answer:?}");
    assert_eq!(header(&answer, "access-control-allow-origin"), None);
    server.stop().await;
}
