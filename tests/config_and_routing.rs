//! Two contracts an operator and a client read in the README: duration flags
//! as they are written there (`--history-retention 30d`), and the API's
//! paths with the methods each accepts.

mod common;

use std::time::Duration;

use clap::Parser;
use hyper::Method;
use parlor::Config;

use common::{test_config, TestServer};

/// A fresh data directory for this test process.
fn data_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("parlor-config-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test]
async fn history_retention_in_days_starts_and_keeps_recent_messages() {
    let dir = data_dir("retention");
    let dir_arg = dir.to_str().expect("the temp dir is UTF-8");
    // Parsed as the binary parses its command line.
    let parsed = Config::try_parse_from([
        "parlor",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir_arg,
        "--history-retention",
        "30d",
    ])
    .unwrap_or_else(|error| panic!("--history-retention 30d is refused: {error}"));
    assert_eq!(
        parsed.history_retention,
        Some(Duration::from_secs(30 * 24 * 3600))
    );

    let mut config = test_config();
    config.ephemeral = false;
    config.data_dir = parsed.data_dir;
    config.history_retention = parsed.history_retention;
    let server = TestServer::start_with(config).await;
    let ann = server.join("ann").await;
    assert_eq!(ann.send("lobby", "still here").await.status, 200);
    let history = ann.get("/history", &[("conversation", "lobby")]).await;
    assert_eq!(history.status, 200, "{}", history.text);
    assert_eq!(history.json["messages"][0]["text"], "still here");
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn every_api_path_answers_its_methods_and_names_them_otherwise() {
    let mut config = test_config();
    config.admin_token = Some("admin-secret".into());
    let server = TestServer::start_with(config).await;
    const GET_HEAD: &[Method] = &[Method::GET, Method::HEAD];
    const POST: &[Method] = &[Method::POST];
    let api: [(&str, &[Method]); 13] = [
        ("/healthz", GET_HEAD),
        ("/sync", GET_HEAD),
        ("/users", GET_HEAD),
        ("/history", GET_HEAD),
        ("/poll", &[Method::GET, Method::POST]),
        ("/join", POST),
        ("/leave", POST),
        ("/status", POST),
        ("/send", POST),
        ("/dialog", POST),
        ("/rooms/join", POST),
        ("/rooms/leave", POST),
        ("/api/publish", POST),
    ];
    for (path, methods) in api {
        for method in methods {
            // No parameters: the endpoint itself answers (200, 400 or 401),
            // never the router's 404 or 405.
            let answer = server.request(method.clone(), path, &[], Vec::new()).await;
            assert!(
                ![404, 405].contains(&answer.status),
                "{method} {path}: {} {}",
                answer.status,
                answer.text
            );
        }
        let allow: Vec<&str> = methods.iter().map(Method::as_str).collect();
        let answer = server.request(Method::DELETE, path, &[], Vec::new()).await;
        assert_eq!(answer.status, 405, "DELETE {path}");
        assert_eq!(answer.code(), "method_not_allowed", "DELETE {path}");
        assert_eq!(
            answer.headers.get("allow").and_then(|v| v.to_str().ok()),
            Some(allow.join(", ").as_str()),
            "DELETE {path}"
        );
    }
    server.stop().await;
}
