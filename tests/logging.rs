//! What the `parlor` binary logs on stderr, as an operator collects it
//! (stderr a pipe, as under systemd or docker): no colour codes off a
//! terminal, JSON lines with `--log-format json`, and the access log — one
//! line per request on `parlor::access`, which never holds a secret.

#![cfg(unix)] // SIGTERM is sent with kill(1)

mod common;

use std::net::SocketAddr;
use std::process::Stdio;

use common::process::{http, join, parlor, start_with_stderr, stop_cleanly, PATIENCE};
use jsonwebtoken::{encode, get_current_timestamp, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

/// Runs a server with `args` and `RUST_LOG=rust_log`, makes `requests` of
/// it, stops it with SIGTERM, and returns everything it logged.
async fn log_of_a_run(
    args: &[&str],
    rust_log: &str,
    requests: impl AsyncFnOnce(SocketAddr),
) -> String {
    let mut command = parlor();
    command.env("RUST_LOG", rust_log);
    let mut server = start_with_stderr(command, args, Stdio::piped()).await;
    let mut stderr = server.child.stderr.take().expect("stderr is piped");
    let log = tokio::spawn(async move {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log).await;
        log
    });
    requests(server.addr).await;
    stop_cleanly(&mut server).await;
    tokio::time::timeout(PATIENCE, log)
        .await
        .expect("the log ends with the process")
        .expect("the log reader does not panic")
}

/// A run through one join.
async fn log_of_a_short_run(args: &[&str]) -> String {
    log_of_a_run(args, "info", async |addr| {
        join(addr, "ann").await;
    })
    .await
}

fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line:?}")))
        .collect()
}

/// The fields of the access lines of a JSON log.
fn access_lines(log: &str) -> Vec<Value> {
    json_lines(log)
        .into_iter()
        .filter(|line| line["target"] == "parlor::access")
        .map(|line| line["fields"].clone())
        .collect()
}

const JSON_LOG: &[&str] = &[
    "--listen",
    "127.0.0.1:0",
    "--ephemeral",
    "--log-format",
    "json",
];

#[tokio::test]
async fn a_log_that_is_not_a_terminal_has_no_colour_codes() {
    let log = log_of_a_short_run(&["--listen", "127.0.0.1:0", "--ephemeral"]).await;
    assert!(log.contains("parlor is serving"), "the log: {log}");
    let access = log
        .lines()
        .find(|line| line.contains("parlor::access: request method=POST endpoint=/join"))
        .unwrap_or_else(|| panic!("no access line for the join: {log}"));
    assert!(access.contains(" status=200 duration_us="), "{access}");
    assert!(access.ends_with(" user=ann client=1"), "{access}");
    assert!(
        !log.contains('\x1b'),
        "escape codes in a redirected log: {log:?}"
    );
}

#[tokio::test]
async fn log_format_json_writes_one_object_per_line() {
    let log = log_of_a_short_run(JSON_LOG).await;
    let lines = json_lines(&log);
    assert!(
        lines
            .iter()
            .any(|line| line["level"] == "INFO" && line["fields"]["message"] == "parlor is serving"),
        "no serving line in {log}"
    );
    assert!(!log.contains('\x1b'), "escape codes in a JSON log: {log:?}");
}

#[tokio::test]
async fn each_request_has_an_access_line_without_secrets() {
    let mut secrets = Vec::new();
    let log = log_of_a_run(JSON_LOG, "info", async |addr| {
        let joined = join(addr, "ann").await; // password pw-ann
        let token = joined["token"].as_str().unwrap().to_owned();
        let cursor = joined["cursor"].as_u64().unwrap();
        // The token in the query string, the worst place for it.
        let target = format!("/poll?token={token}&cursor={cursor}&timeout=0");
        assert_eq!(http(addr, "GET", &target, None).await.0, 200);
        let (status, _) = http(addr, "GET", "/users?token=no-such-token", None).await;
        assert_eq!(status, 401);
        secrets.push(token);
    })
    .await;
    let lines = access_lines(&log);
    let find = |endpoint: &str| {
        lines
            .iter()
            .find(|line| line["endpoint"] == endpoint)
            .unwrap_or_else(|| panic!("no {endpoint} line in {log}"))
    };
    let joined = find("/join");
    assert_eq!(joined["method"], "POST");
    assert_eq!(joined["status"], 200);
    assert_eq!(
        (&joined["user"], &joined["client"]),
        (&json!("ann"), &json!(1))
    );
    assert!(joined["duration_us"].is_u64(), "{joined}");
    let polled = find("/poll");
    assert_eq!(polled["method"], "GET");
    assert_eq!(polled["status"], 200);
    assert_eq!(
        (&polled["user"], &polled["client"]),
        (&json!("ann"), &json!(1))
    );
    let refused = find("/users");
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["error"], "unknown_client");
    assert!(refused.get("user").is_none(), "{refused}");

    for secret in secrets
        .iter()
        .map(String::as_str)
        .chain(["pw-ann", "no-such-token", "cursor="])
    {
        assert!(!log.contains(secret), "{secret:?} is in the log: {log}");
    }
}

#[tokio::test]
async fn a_jwt_join_is_logged_as_its_user_and_never_the_jwt() {
    const SECRET: &str = "a join secret of at least thirty-two bytes";
    let args = [JSON_LOG, &["--join-secret", SECRET]].concat();
    let claims = json!({"sub": "jo", "exp": get_current_timestamp() + 300});
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    let jwt = encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
    let log = log_of_a_run(&args, "info", async |addr| {
        let (status, answer) = http(addr, "POST", "/join", Some(&format!("auth={jwt}"))).await;
        assert_eq!(status, 200, "{answer}");
        let (status, _) = http(addr, "POST", "/join", Some(&format!("auth={jwt}x"))).await;
        assert_eq!(status, 401);
    })
    .await;
    let joins: Vec<Value> = access_lines(&log)
        .into_iter()
        .filter(|line| line["endpoint"] == "/join")
        .collect();
    assert_eq!(joins.len(), 2, "{log}");
    assert_eq!(
        (&joins[0]["user"], joins[0]["status"].as_u64()),
        (&json!("jo"), Some(200))
    );
    assert_eq!(joins[1]["error"], "bad_auth_token");
    let signature = jwt.rsplit('.').next().unwrap();
    assert!(!log.contains(signature), "the JWT is in the log: {log}");
}

#[tokio::test]
async fn the_access_log_turns_off_with_rust_log() {
    let log = log_of_a_run(JSON_LOG, "info,parlor::access=off", async |addr| {
        join(addr, "ann").await;
    })
    .await;
    assert!(log.contains("parlor is serving"), "the log: {log}");
    assert!(
        access_lines(&log).is_empty(),
        "access lines when off: {log}"
    );
}
