//! Bad input and HTTP bounds, as a client sees them.
//!
//! Every refusal is asserted the way clients rely on it: the status, the
//! stable `error` code, a `message` for people, and `Cache-Control: no-store`
//! (so no proxy keeps an error around). Bounds are probed on both sides
//! (exactly at the limit is accepted, one past is refused), and the
//! connection-level ones (oversized bodies and headers, slow clients) are
//! driven over raw TCP so that nothing in a client library hides what the
//! server does. Each test ends by checking the server still answers
//! /healthz: no input may take it down or earn a 5xx.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{of_type, test_config, Answer, TestClient, TestServer};
use hyper::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The request body bound (config::MAX_BODY_BYTES), restated so a change to
/// it is a deliberate change to this contract.
const MAX_BODY: usize = 64 * 1024;
/// Longest any single exchange in this file may take before the test fails
/// instead of hanging. Generous: the machine is shared.
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Asserts a JSON error answer: status, code, a non-empty message, nothing
/// else in the body, and headers that keep it out of caches.
#[track_caller]
fn assert_error(answer: &Answer, status: u16, code: &str) {
    assert_eq!(
        answer.status, status,
        "expected {status} {code}, got: {}",
        answer.text
    );
    assert_eq!(answer.code(), code, "wrong error code: {}", answer.text);
    let object = answer
        .json
        .as_object()
        .unwrap_or_else(|| panic!("error body is not a JSON object: {:?}", answer.text));
    let message = object["message"].as_str().unwrap_or("");
    assert!(
        !message.trim().is_empty(),
        "error without a message: {}",
        answer.text
    );
    assert_eq!(
        object.len(),
        2,
        "an error is exactly {{error, message}}: {}",
        answer.text
    );
    assert_eq!(
        header(answer, "cache-control"),
        "no-store",
        "{code}: errors must not be cached"
    );
    assert!(
        header(answer, "content-type").starts_with("application/json"),
        "{code}: content-type {:?}",
        header(answer, "content-type")
    );
}

#[track_caller]
fn assert_ok(answer: &Answer) {
    assert_eq!(answer.status, 200, "expected 200, got: {}", answer.text);
}

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer
        .headers
        .get(name)
        .map(|value| value.to_str().unwrap_or("<not ascii>"))
        .unwrap_or("")
}

/// The server is alive and well: /healthz answers at once.
async fn assert_alive(server: &TestServer) {
    let answer = tokio::time::timeout(PATIENCE, server.get("/healthz", &[]))
        .await
        .expect("/healthz did not answer: the server is stuck");
    assert_ok(&answer);
    assert_eq!(answer.text, r#"{"status":"ok"}"#);
}

async fn post_raw_body(server: &TestServer, path: &str, content_type: &str, body: &[u8]) -> Answer {
    server
        .request(
            Method::POST,
            path,
            &[("content-type", content_type)],
            body.to_vec(),
        )
        .await
}

/// A response read off a raw connection.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    /// Header lines, names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses one complete response (head, then a `Content-Length` body) from
/// the start of `bytes`; None while it is incomplete.
fn parse_response(bytes: &[u8]) -> Option<RawAnswer> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..head_end]).expect("response head is ASCII");
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map_or(0, |(_, value)| {
            value.parse().expect("numeric content-length")
        });
    let body_start = head_end + 4;
    if bytes.len() < body_start + length {
        return None;
    }
    Some(RawAnswer {
        status,
        headers,
        body: bytes[body_start..body_start + length].to_vec(),
    })
}

/// Reads one response from `stream`, returning as soon as it is complete
/// (not when the connection closes). Panics after `PATIENCE`; returns None
/// if the connection ends (EOF or reset) before a whole response came.
async fn read_response(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<RawAnswer> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    let read_all = async {
        loop {
            if let Some(answer) = parse_response(&received) {
                return Some(answer);
            }
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return parse_response(&received),
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(PATIENCE, read_all)
        .await
        .expect("the server neither answered nor closed the connection")
}

/// Sends `head` and then `body` on a new connection (the body from a
/// separate task, ignoring write errors, so a server that answers early and
/// closes cannot wedge the test), and reads the first response.
async fn exchange(addr: SocketAddr, head: Vec<u8>, body: Vec<u8>) -> (Option<RawAnswer>, Duration) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&head).await;
        let _ = writer.write_all(&body).await;
        // Keep the write half open until the reader is done: a FIN from us
        // must not be what ends the exchange.
        tokio::time::sleep(PATIENCE).await;
        drop(writer);
    });
    let answer = read_response(&mut reader).await;
    let elapsed = started.elapsed();
    writing.abort();
    (answer, elapsed)
}

/// Waits for the server to close `stream`: Ok(bytes it sent first) on EOF or
/// reset, Err(bytes) if it is still open after `limit`.
async fn wait_for_close(stream: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    let until_closed = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    match tokio::time::timeout(limit, until_closed).await {
        Ok(()) => Ok(received),
        Err(_) => Err(received),
    }
}

/// Joins with a JSON body and explicit password; returns the answer.
async fn join_json(server: &TestServer, name: &str, password: &str) -> Answer {
    server
        .post_json("/join", &json!({"name": name, "password": password}))
        .await
}

// ---------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unknown_paths_are_json_404s() {
    let server = TestServer::start().await;
    assert_error(&server.post("/nope", &[]).await, 404, "not_found");
    assert_error(&server.get("/nope", &[]).await, 404, "not_found");
    assert_error(
        &server
            .request(Method::PUT, "/nope", &[], b"x".to_vec())
            .await,
        404,
        "not_found",
    );
    // API paths are matched exactly, not by prefix or case.
    assert_error(&server.get("/healthz/", &[]).await, 404, "not_found");
    assert_error(&server.get("/HEALTHZ", &[]).await, 404, "not_found");
    assert_alive(&server).await;
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow() {
    let server = TestServer::start().await;
    let cases = [
        (Method::DELETE, "/join", "POST"),
        (Method::GET, "/join", "POST"),
        (Method::POST, "/healthz", "GET, HEAD"),
        (Method::GET, "/send", "POST"),
        (Method::PUT, "/poll", "GET, POST"),
        (Method::POST, "/history", "GET, HEAD"),
        (Method::GET, "/api/publish", "POST"),
    ];
    for (method, path, allowed) in cases {
        let answer = server.request(method.clone(), path, &[], Vec::new()).await;
        assert_error(&answer, 405, "method_not_allowed");
        assert_eq!(header(&answer, "allow"), allowed, "{method} {path}");
    }
    // HEAD works wherever GET does, without a body.
    let head = server
        .request(Method::HEAD, "/healthz", &[], Vec::new())
        .await;
    assert_eq!(head.status, 200);
    assert!(head.text.is_empty());
    assert_alive(&server).await;
}

// ---------------------------------------------------------------------------
// Parameters and bodies
// ---------------------------------------------------------------------------

#[tokio::test]
async fn malformed_bodies_are_named_400s() {
    let server = TestServer::start().await;
    let json = "application/json";
    let form = "application/x-www-form-urlencoded";

    assert_error(
        &post_raw_body(&server, "/join", json, b"{\"name\": ").await,
        400,
        "invalid_json",
    );
    assert_error(
        &post_raw_body(&server, "/join", json, b"{name: 'x'}").await,
        400,
        "invalid_json",
    );
    assert_error(
        &post_raw_body(&server, "/join", json, b"{} trailing").await,
        400,
        "invalid_json",
    );
    // JSON, but not an object.
    for not_object in [&b"[1]"[..], b"\"ann\"", b"42", b"null", b"true"] {
        let answer = post_raw_body(&server, "/join", json, not_object).await;
        assert_error(&answer, 400, "invalid_json");
    }
    // Nesting deep enough to overflow a naive recursive parser's stack must
    // be refused, not crash the process.
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    assert_error(
        &post_raw_body(&server, "/join", json, deep.as_bytes()).await,
        400,
        "invalid_json",
    );
    let deep_object = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    assert_error(
        &post_raw_body(&server, "/join", json, deep_object.as_bytes()).await,
        400,
        "invalid_json",
    );
    // Raw bytes that are not UTF-8 inside a JSON string.
    assert_error(
        &post_raw_body(
            &server,
            "/join",
            json,
            b"{\"name\":\"\xff\xfe\",\"password\":\"x\"}",
        )
        .await,
        400,
        "invalid_json",
    );

    // Forms: a `%` must be followed by two hex digits, and decode to UTF-8.
    for bad_escape in [
        &b"name=%zz&password=x"[..],
        b"name=ann&password=%4",
        b"name=%",
    ] {
        assert_error(
            &post_raw_body(&server, "/join", form, bad_escape).await,
            400,
            "invalid_form",
        );
    }
    assert_error(
        &post_raw_body(&server, "/join", form, b"name=%ff&password=x").await,
        400,
        "invalid_utf8",
    );
    assert_error(
        &post_raw_body(&server, "/join", form, b"name=%c3&password=x").await,
        400,
        "invalid_utf8",
    );
    // The same rules hold in the query string.
    assert_error(
        &server.get("/users?token=%zz", &[]).await,
        400,
        "invalid_form",
    );
    assert_error(
        &server.get("/users?token=%ff", &[]).await,
        400,
        "invalid_utf8",
    );

    // A body in a type the server does not read is refused, not ignored.
    assert_error(
        &post_raw_body(&server, "/join", "text/plain", b"name=ann").await,
        415,
        "unsupported_media_type",
    );
    assert_error(
        &server
            .request(
                Method::POST,
                "/join",
                &[],
                b"{\"name\":\"ann\",\"password\":\"x\"}".to_vec(),
            )
            .await,
        415,
        "unsupported_media_type",
    );
    assert_error(
        &post_raw_body(
            &server,
            "/join",
            "multipart/form-data; boundary=x",
            b"--x--",
        )
        .await,
        415,
        "unsupported_media_type",
    );
    assert_alive(&server).await;
}

#[tokio::test]
async fn media_types_match_case_insensitively_and_with_parameters() {
    let server = TestServer::start().await;
    let body = br#"{"name":"ann","password":"pw"}"#;
    assert_ok(&post_raw_body(&server, "/join", "application/json; charset=utf-8", body).await);
    assert_ok(&post_raw_body(&server, "/join", "Application/JSON", body).await);
    assert_ok(
        &post_raw_body(
            &server,
            "/join",
            "application/x-www-form-urlencoded; charset=UTF-8",
            b"name=ann&password=pw",
        )
        .await,
    );
    assert_alive(&server).await;
}

#[tokio::test]
async fn wrong_types_and_missing_params_are_400s() {
    let server = TestServer::start().await;
    let ann = server.join("ann").await;

    assert_error(
        &server
            .post_json("/join", &json!({"name": 5, "password": "x"}))
            .await,
        400,
        "invalid_param",
    );
    assert_error(
        &server
            .post_json("/join", &json!({"name": "ann", "password": ["x"]}))
            .await,
        400,
        "invalid_param",
    );
    assert_error(
        &server
            .post_json("/join", &json!({"name": {"n": 1}, "password": "x"}))
            .await,
        400,
        "invalid_param",
    );
    assert_error(
        &server.post_json("/join", &json!({"name": "ann"})).await,
        400,
        "missing_param",
    );
    assert_error(
        &server
            .post_json("/join", &json!({"name": "ann", "password": null}))
            .await,
        400,
        "missing_param",
    );
    assert_error(
        &server.post("/join", &[("password", "x")]).await,
        400,
        "missing_param",
    );
    assert_error(&server.post("/join", &[]).await, 400, "missing_param");

    // Cursors are non-negative integers, as JSON numbers or decimal text.
    for bad in ["abc", "-1", "1.5", "0x10", "18446744073709551616"] {
        let answer = ann.get("/poll", &[("cursor", bad), ("timeout", "0")]).await;
        assert_error(&answer, 400, "invalid_param");
    }
    for bad in [json!(-1), json!(1.5), json!("abc"), json!(true), json!([0])] {
        let answer = server
            .post_json(
                "/poll",
                &json!({"token": ann.token, "cursor": bad, "timeout": 0}),
            )
            .await;
        assert_error(&answer, 400, "invalid_param");
    }
    assert_error(
        &ann.get("/poll", &[("timeout", "0")]).await,
        400,
        "missing_param",
    );
    assert_error(
        &ann.get("/poll", &[("cursor", "0"), ("timeout", "soon")])
            .await,
        400,
        "invalid_param",
    );
    // A cursor past the newest event is the client's mistake, not a wait.
    // (A cluster cannot tell it from Redis having lost events: 410, resync.)
    let ahead = ann
        .get("/poll", &[("cursor", "1000000"), ("timeout", "0")])
        .await;
    if server.is_cluster() {
        assert_error(&ahead, 410, "cursor_expired");
    } else {
        assert_error(&ahead, 400, "invalid_cursor");
    }
    // Text must be a string.
    assert_error(
        &server
            .post_json(
                "/send",
                &json!({"token": ann.token, "conversation": "lobby", "text": 5}),
            )
            .await,
        400,
        "invalid_param",
    );
    assert_error(
        &ann.post("/send", &[("text", "hi")]).await,
        400,
        "missing_param",
    );
    assert_alive(&server).await;
}

// ---------------------------------------------------------------------------
// Body and header bounds
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_body_at_the_limit_is_read_and_one_byte_more_is_413() {
    let server = TestServer::start().await;
    let mut body = br#"{"name":"ann","password":"pw"}"#.to_vec();
    body.resize(MAX_BODY, b' '); // JSON allows trailing whitespace
    assert_ok(&post_raw_body(&server, "/join", "application/json", &body).await);

    body.push(b' ');
    let answer = post_raw_body(&server, "/join", "application/json", &body).await;
    assert_error(&answer, 413, "body_too_large");
    assert_alive(&server).await;
}

#[tokio::test]
async fn a_declared_huge_body_is_refused_before_it_is_sent() {
    let server = TestServer::start().await;
    // Only the head and a few bytes of a "10 MB" body are ever sent: a server
    // that tried to read the body first would wait forever.
    let head = b"POST /join HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                 Content-Length: 10000000\r\n\r\n"
        .to_vec();
    let (answer, elapsed) = exchange(server.addr, head, b"{\"name\":".to_vec()).await;
    let answer = answer.expect("a 413 answer, not a closed connection");
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert_eq!(answer.json()["error"], "body_too_large");
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    assert!(elapsed < Duration::from_secs(3), "the 413 took {elapsed:?}");

    // With `Expect: 100-continue`, the client is told no before it sends a byte.
    let head = b"POST /send HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                 Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n"
        .to_vec();
    let (answer, elapsed) = exchange(server.addr, head, Vec::new()).await;
    let answer = answer.expect("a 413 answer");
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert_eq!(answer.json()["error"], "body_too_large");
    assert!(elapsed < Duration::from_secs(3), "the 413 took {elapsed:?}");
    assert_alive(&server).await;
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413() {
    let server = TestServer::start().await;
    let head = b"POST /join HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                 Transfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    let mut body = Vec::new();
    let chunk = vec![b' '; 8 * 1024];
    for _ in 0..(MAX_BODY / chunk.len() + 1) {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let (answer, _) = exchange(server.addr, head, body).await;
    let answer = answer.expect("a 413 answer");
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert_eq!(answer.json()["error"], "body_too_large");

    // A chunked body within the limit is read like any other.
    let head = b"POST /join HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                 Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    let json = br#"{"name":"ann","password":"pw"}"#;
    let mut body = format!("{:x}\r\n", json.len()).into_bytes();
    body.extend_from_slice(json);
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    let (answer, _) = exchange(server.addr, head, body).await;
    let answer = answer.expect("an answer");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_alive(&server).await;
}

#[tokio::test]
async fn oversized_headers_get_431_or_a_close_never_a_hang() {
    let server = TestServer::start().await;
    let mut request = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 64 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    let (answer, _) = exchange(server.addr, request, Vec::new()).await;
    // None: closed (or reset) without an answer, which is also acceptable.
    if let Some(answer) = answer {
        assert_eq!(answer.status, 431, "headers over the bound: {answer:?}");
    }

    // Many small headers add up the same way.
    let mut request = b"GET /healthz HTTP/1.1\r\nHost: t\r\n".to_vec();
    for n in 0..2000 {
        request.extend_from_slice(format!("X-H{n}: {}\r\n", "v".repeat(20)).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let (answer, _) = exchange(server.addr, request, Vec::new()).await;
    if let Some(answer) = answer {
        assert!(
            matches!(answer.status, 431 | 400),
            "too many headers: {answer:?}"
        );
    }

    // An over-long request line likewise.
    let request = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(64 * 1024));
    let (answer, _) = exchange(server.addr, request.into_bytes(), Vec::new()).await;
    if let Some(answer) = answer {
        assert!(
            matches!(answer.status, 414 | 431 | 404),
            "long URI: {answer:?}"
        );
    }
    assert_alive(&server).await;
}

#[tokio::test]
async fn slow_headers_are_cut_off_without_holding_up_others() {
    let mut config = test_config();
    config.header_timeout = Duration::from_millis(300);
    let server = TestServer::start_with(config).await;

    // A request line, then nothing.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    // A connection that never sends a byte.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();

    // Meanwhile, others are served at once.
    let started = Instant::now();
    assert_alive(&server).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a slow client held up /healthz for {:?}",
        started.elapsed()
    );

    let closed = wait_for_close(&mut slow, Duration::from_secs(3)).await;
    let sent = closed.unwrap_or_else(|sent| {
        panic!(
            "a connection stuck mid-headers was still open after 3 s (header timeout 300 ms); got {:?}",
            String::from_utf8_lossy(&sent)
        )
    });
    let sent = String::from_utf8_lossy(&sent);
    assert!(
        sent.is_empty() || sent.starts_with("HTTP/1.1 408"),
        "slow client got {sent:?}"
    );

    let closed = wait_for_close(&mut silent, Duration::from_secs(3)).await;
    assert!(
        closed.is_ok(),
        "a silent connection was still open after 3 s (header timeout 300 ms)"
    );

    // A slowloris: headers that keep coming, one byte at a time, never
    // finish. The timeout bounds the whole head, not the gap between bytes.
    let trickle = TcpStream::connect(server.addr).await.unwrap();
    let (mut trickle_read, mut trickle_write) = trickle.into_split();
    let dripping = tokio::spawn(async move {
        let head = b"GET /healthz HTTP/1.1\r\nX-Slow: "
            .iter()
            .chain(std::iter::repeat(&b'a'));
        for byte in head.take(200) {
            if trickle_write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(3), trickle_read.read_to_end(&mut rest)).await;
    dripping.abort();
    assert!(
        closed.is_ok(),
        "a client trickling its headers was still connected after 3 s (header timeout 300 ms)"
    );

    // A keep-alive connection that finished a request and then goes quiet
    // is closed too, not kept forever.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut idle).await.expect("an answer");
    assert_eq!(answer.status, 200);
    let closed = wait_for_close(&mut idle, Duration::from_secs(3)).await;
    assert!(
        closed.is_ok(),
        "an idle keep-alive connection outlived the header timeout"
    );
    assert_alive(&server).await;
}

#[tokio::test]
async fn a_full_server_frees_slots_held_by_silent_clients() {
    let mut config = test_config();
    config.max_connections = 1;
    config.header_timeout = Duration::from_millis(300);
    let server = TestServer::start_with(config).await;

    // Takes the only connection slot and sends nothing.
    let _silent = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Queued in the backlog, then served once the silent one is cut off.
    let answer = tokio::time::timeout(Duration::from_secs(5), server.get("/healthz", &[]))
        .await
        .expect("a silent client held the only connection slot for good");
    assert_ok(&answer);
    assert_alive(&server).await;
}

// ---------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------

#[tokio::test]
async fn tokens_are_required_and_checked() {
    let server = TestServer::start().await;
    let ann = server.join("ann").await;

    assert_error(&server.get("/users", &[]).await, 401, "missing_token");
    assert_error(
        &server
            .post("/send", &[("conversation", "lobby"), ("text", "x")])
            .await,
        401,
        "missing_token",
    );
    assert_error(
        &server
            .get("/users", &[("token", "0123456789abcdef0123456789abcdef")])
            .await,
        401,
        "unknown_client",
    );
    assert_error(
        &server.get("/sync", &[("token", "")]).await,
        401,
        "unknown_client",
    );
    assert_error(
        &server
            .get("/poll", &[("token", "nope"), ("cursor", "0")])
            .await,
        401,
        "unknown_client",
    );

    for bad in ["Bearer", "Bearer ", "bearer"] {
        let answer = server
            .request(Method::GET, "/users", &[("authorization", bad)], Vec::new())
            .await;
        assert_error(&answer, 401, "invalid_authorization");
    }
    // Other schemes are a proxy's credentials, not a token.
    for other in ["Basic x", "Basic YW5uOnB3", "Token abc"] {
        let answer = server
            .request(
                Method::GET,
                "/users",
                &[("authorization", other)],
                Vec::new(),
            )
            .await;
        assert_error(&answer, 401, "missing_token");
    }

    // The Bearer header stands in for the token field (any case of scheme).
    let bearer = format!("Bearer {}", ann.token);
    let answer = server
        .request(
            Method::GET,
            "/users",
            &[("authorization", &bearer)],
            Vec::new(),
        )
        .await;
    assert_ok(&answer);
    assert_eq!(answer.json["users"][0]["name"], "ann");
    let lower = format!("bearer {}", ann.token);
    let answer = server
        .request(
            Method::POST,
            "/send",
            &[
                ("authorization", &lower),
                ("content-type", "application/json"),
            ],
            serde_json::to_vec(&json!({"conversation": "lobby", "text": "via bearer"})).unwrap(),
        )
        .await;
    assert_ok(&answer);
    // An unknown bearer is an unknown client, even with a valid token field.
    let answer = server
        .request(
            Method::GET,
            &format!("/users?token={}", ann.token),
            &[("authorization", "Bearer not-a-token")],
            Vec::new(),
        )
        .await;
    assert_error(&answer, 401, "unknown_client");

    // After /leave the token is dead.
    assert_ok(&ann.post("/leave", &[]).await);
    assert_error(&ann.get("/users", &[]).await, 401, "unknown_client");
    assert_alive(&server).await;
}

// ---------------------------------------------------------------------------
// /join
// ---------------------------------------------------------------------------

#[tokio::test]
async fn join_validates_names_and_passwords() {
    let server = TestServer::start().await;
    let long = "x".repeat(33);
    for bad in [
        "",
        long.as_str(),
        "a b",
        "<script>",
        "é",
        "émile",
        "a:b",
        "a/b",
        "ann\n",
        "dialog:ann:bob",
    ] {
        assert_error(&join_json(&server, bad, "pw").await, 400, "invalid_name");
        assert_error(
            &server
                .post("/join", &[("name", bad), ("password", "pw")])
                .await,
            400,
            "invalid_name",
        );
    }
    // 32 characters of every allowed kind is fine.
    let longest = format!("A-b_c.9{}", "z".repeat(25));
    assert_eq!(longest.len(), 32);
    assert_ok(&join_json(&server, &longest, "pw").await);

    assert_error(
        &join_json(&server, "ann", "").await,
        400,
        "invalid_password",
    );
    assert_error(
        &server
            .post("/join", &[("name", "ann"), ("password", "")])
            .await,
        400,
        "invalid_password",
    );
    assert_error(
        &join_json(&server, "ann", &"p".repeat(257)).await,
        400,
        "invalid_password",
    );
    assert_ok(&join_json(&server, "ann", &"p".repeat(256)).await);
    assert_ok(&join_json(&server, "bob", "mot de passe é 😀").await);
    assert_ok(
        &server
            .post(
                "/join",
                &[("name", "bob"), ("password", "mot de passe é 😀")],
            )
            .await,
    );
    assert_alive(&server).await;
}

#[tokio::test]
async fn a_name_is_claimed_by_its_password() {
    let server = TestServer::start().await;
    let first = server
        .post("/join", &[("name", "ann"), ("password", "right")])
        .await;
    assert_ok(&first);

    assert_error(
        &join_json(&server, "ann", "wrong").await,
        401,
        "bad_credentials",
    );
    assert_error(
        &join_json(&server, "ann", "Right").await,
        401,
        "bad_credentials",
    );
    assert_error(
        &join_json(&server, "ann", "right ").await,
        401,
        "bad_credentials",
    );

    // The right password, by JSON this time, opens a second client process.
    let second = join_json(&server, "ann", "right").await;
    assert_ok(&second);
    assert_eq!(second.json["user"], "ann");
    assert_ne!(first.json["token"], second.json["token"]);
    assert_ne!(first.json["client"], second.json["client"]);
    for answer in [&first, &second] {
        let token = answer.json["token"].as_str().unwrap();
        assert!(
            token.len() >= 32,
            "a token of {} hex chars is under 128 bits",
            token.len()
        );
        assert!(
            token.bytes().all(|b| b.is_ascii_hexdigit()),
            "token {token:?} is not hex"
        );
        assert_eq!(header(answer, "cache-control"), "no-store");
    }
    // Names are case-sensitive: `Ann` is someone else.
    assert_ok(&join_json(&server, "Ann", "other").await);
    assert_alive(&server).await;
}

// ---------------------------------------------------------------------------
// /send
// ---------------------------------------------------------------------------

#[tokio::test]
async fn send_bounds_text_by_bytes() {
    let server = TestServer::start().await;
    let ann = server.join("ann").await;

    assert_error(&ann.send("lobby", "").await, 400, "invalid_text");
    assert_error(
        &ann.send("lobby", &"a".repeat(4097)).await,
        400,
        "invalid_text",
    );
    // 2048 two-byte characters and one more byte: 4097 bytes, 2049 chars.
    assert_error(
        &ann.send("lobby", &format!("{}a", "é".repeat(2048))).await,
        400,
        "invalid_text",
    );
    assert_error(
        &server
            .post_json(
                "/send",
                &json!({"token": ann.token, "conversation": "lobby", "text": ""}),
            )
            .await,
        400,
        "invalid_text",
    );

    // Exactly 4096 bytes, counted as bytes not characters, is accepted.
    for text in [
        "a".repeat(4096),
        "é".repeat(2048),
        "😀".repeat(1024),
        format!("{}€", "é".repeat(2046) + "a"),
    ] {
        assert_eq!(text.len(), 4096);
        assert_ok(&ann.send("lobby", &text).await);
        assert_ok(
            &server
                .post_json(
                    "/send",
                    &json!({"token": ann.token, "conversation": "lobby", "text": text}),
                )
                .await,
        );
    }

    // client_msg_id is 1..=64 bytes.
    let send_with_id = |id: String| {
        let token = ann.token.clone();
        let server = &server;
        async move {
            server
                .post_json(
                    "/send",
                    &json!({"token": token, "conversation": "lobby", "text": "x", "client_msg_id": id}),
                )
                .await
        }
    };
    assert_error(&send_with_id("i".repeat(65)).await, 400, "invalid_param");
    assert_error(&send_with_id(String::new()).await, 400, "invalid_param");
    assert_ok(&send_with_id("i".repeat(64)).await);
    assert_alive(&server).await;
}

#[tokio::test]
async fn send_checks_the_conversation_and_membership() {
    let server = TestServer::start().await;
    let ann = server.join("ann").await;
    let bob = server.join("bob").await;

    assert_error(
        &ann.send("nowhere", "hi").await,
        404,
        "unknown_conversation",
    );
    assert_error(
        &ann.send("dialog:ann:zed", "hi").await,
        404,
        "unknown_conversation",
    );
    assert_error(
        &ann.get("/history", &[("conversation", "nowhere")]).await,
        404,
        "unknown_conversation",
    );

    assert_ok(&bob.post("/rooms/join", &[("name", "bobs-room")]).await);
    assert_error(&ann.send("bobs-room", "let me in").await, 403, "not_member");
    assert_error(
        &ann.get("/history", &[("conversation", "bobs-room")]).await,
        403,
        "not_member",
    );
    assert_error(
        &ann.post("/rooms/leave", &[("conversation", "bobs-room")])
            .await,
        403,
        "not_member",
    );
    assert_ok(&bob.send("bobs-room", "private").await);

    // Bad room names and dialog partners.
    assert_error(
        &ann.post("/rooms/join", &[("name", "a b")]).await,
        400,
        "invalid_name",
    );
    assert_error(
        &ann.post("/rooms/join", &[("name", "dialog:ann:bob")]).await,
        400,
        "invalid_name",
    );
    assert_error(
        &ann.post("/rooms/leave", &[("conversation", "lobby")]).await,
        400,
        "cannot_leave_lobby",
    );
    assert_error(
        &ann.post("/dialog", &[("with", "ann")]).await,
        400,
        "invalid_user",
    );
    assert_error(
        &ann.post("/dialog", &[("with", "zed")]).await,
        404,
        "unknown_user",
    );
    assert_alive(&server).await;
}

#[tokio::test]
async fn hostile_and_exotic_text_round_trips_byte_exact() {
    let server = TestServer::start().await;
    let mut ann = server.join("ann").await;
    let bob = server.join("bob").await;
    ann.poll_until(|event| event["type"] == "presence" && event["user"] == "bob")
        .await;

    let texts = [
        r#"<script>alert("x")</script><img src=x onerror=alert(1)>"#,
        "&amp; &lt; &#39; ' \" ` ${x} {{x}} %s %00 %ff",
        "😀 👩‍👩‍👧 🏳️‍🌈 e\u{301} ñ 中文 עברית \u{202e}desrever",
        "line1\nline2\r\n\ttab \\ backslash \u{2028}\u{2029}",
        "\u{0}nul and \u{7f} del and \u{feff} bom",
        " a+b c=d&e ",
        "\"]}, {\"type\":\"notification\"",
    ];
    let mut sent = Vec::new();
    for (index, text) in texts.iter().enumerate() {
        // Alternate encodings: both must carry the text unchanged.
        let answer = if index % 2 == 0 {
            bob.send("lobby", text).await
        } else {
            server
                .post_json(
                    "/send",
                    &json!({"token": bob.token, "conversation": "lobby", "text": text}),
                )
                .await
        };
        assert_ok(&answer);
        sent.push((answer.json["id"].as_u64().unwrap(), *text));
    }

    let last_id = sent.last().unwrap().0;
    let events = ann
        .poll_until(|event| event["type"] == "message" && event["id"] == last_id)
        .await;
    let messages = of_type(&events, "message");
    for (id, text) in &sent {
        let message = messages
            .iter()
            .find(|message| message["id"] == *id)
            .unwrap_or_else(|| panic!("message {id} not polled"));
        assert_eq!(
            message["text"].as_str().unwrap().as_bytes(),
            text.as_bytes(),
            "polled text"
        );
        assert_eq!(message["from"], "bob");
    }
    // The notification-looking text stayed text: no event was injected.
    assert!(of_type(&events, "notification").is_empty());

    let history = ann.get("/history", &[("conversation", "lobby")]).await;
    assert_ok(&history);
    let stored = history.json["messages"].as_array().unwrap();
    for (id, text) in &sent {
        let message = stored
            .iter()
            .find(|message| message["id"] == *id)
            .unwrap_or_else(|| panic!("message {id} not in history"));
        assert_eq!(
            message["text"].as_str().unwrap().as_bytes(),
            text.as_bytes(),
            "history text"
        );
    }
    assert_alive(&server).await;
}

// ---------------------------------------------------------------------------
// /api/publish
// ---------------------------------------------------------------------------

#[tokio::test]
async fn publish_is_absent_without_an_admin_token() {
    let server = TestServer::start().await;
    let answer = server
        .request(
            Method::POST,
            "/api/publish",
            &[
                ("authorization", "Bearer anything"),
                ("content-type", "application/json"),
            ],
            br#"{"users":["ann"],"data":1}"#.to_vec(),
        )
        .await;
    assert_error(&answer, 404, "not_found");
    assert_alive(&server).await;
}

async fn publish(
    server: &TestServer,
    authorization: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
) -> Answer {
    let mut headers = vec![("content-type", content_type)];
    if let Some(authorization) = authorization {
        headers.push(("authorization", authorization));
    }
    server
        .request(Method::POST, "/api/publish", &headers, body)
        .await
}

#[tokio::test]
async fn publish_checks_the_admin_token_and_body() {
    let mut config = test_config();
    config.admin_token = Some("s3cret".into());
    let server = TestServer::start_with(config).await;
    let mut ann = server.join("ann").await;
    ann.events_now().await;

    let json_body = |value: Value| serde_json::to_vec(&value).unwrap();
    let good = json!({"users": ["ann"], "data": 1});

    assert_error(
        &publish(&server, None, "application/json", json_body(good.clone())).await,
        401,
        "bad_admin_token",
    );
    for wrong in ["Bearer s3cre", "Bearer s3cret2", "Bearer S3CRET"] {
        assert_error(
            &publish(
                &server,
                Some(wrong),
                "application/json",
                json_body(good.clone()),
            )
            .await,
            401,
            "bad_admin_token",
        );
    }
    assert_error(
        &publish(
            &server,
            Some("Basic s3cret"),
            "application/json",
            json_body(good.clone()),
        )
        .await,
        401,
        "bad_admin_token",
    );
    // The admin token is a bearer only, never a body field.
    let in_body = json!({"users": ["ann"], "data": 1, "token": "s3cret"});
    assert_error(
        &publish(&server, None, "application/json", json_body(in_body)).await,
        401,
        "bad_admin_token",
    );
    // A client's own token is not the admin's.
    let as_client = format!("Bearer {}", ann.token);
    assert_error(
        &publish(
            &server,
            Some(&as_client),
            "application/json",
            json_body(good.clone()),
        )
        .await,
        401,
        "bad_admin_token",
    );

    let admin = Some("Bearer s3cret");
    assert_error(
        &publish(
            &server,
            admin,
            "application/x-www-form-urlencoded",
            b"users=ann&data=1".to_vec(),
        )
        .await,
        415,
        "unsupported_media_type",
    );
    assert_error(
        &publish(
            &server,
            admin,
            "application/json",
            json_body(json!({"users": "ann", "data": 1})),
        )
        .await,
        400,
        "invalid_param",
    );
    assert_error(
        &publish(
            &server,
            admin,
            "application/json",
            json_body(json!({"users": [1], "data": 1})),
        )
        .await,
        400,
        "invalid_param",
    );
    assert_error(
        &publish(
            &server,
            admin,
            "application/json",
            json_body(json!({"data": 1})),
        )
        .await,
        400,
        "missing_param",
    );
    assert_error(
        &publish(
            &server,
            admin,
            "application/json",
            json_body(json!({"users": ["ann"]})),
        )
        .await,
        400,
        "missing_param",
    );
    assert_error(
        &publish(&server, admin, "application/json", b"[1]".to_vec()).await,
        400,
        "invalid_json",
    );
    assert!(
        ann.events_now().await.is_empty(),
        "a refused publish delivered something"
    );

    let data = json!({
        "invoice": 7,
        "amount": "12.50 €",
        "html": "<b>paid</b>",
        "nested": {"list": [1, 2.5, null, true, "😀"], "empty": {}},
    });
    let answer = publish(
        &server,
        admin,
        "application/json",
        json_body(json!({"users": ["ann", "ghost", "nobody"], "data": data})),
    )
    .await;
    assert_ok(&answer);
    assert_eq!(answer.json["delivered"], json!(["ann"]));
    assert_eq!(answer.json["offline"], json!(["ghost", "nobody"]));

    let events = ann
        .poll_until(|event| event["type"] == "notification")
        .await;
    let notifications = of_type(&events, "notification");
    assert_eq!(notifications.len(), 1, "{events:#?}");
    assert_eq!(notifications[0]["data"], data);

    // An empty list is a no-op, not an error.
    let answer = publish(
        &server,
        admin,
        "application/json",
        json_body(json!({"users": [], "data": 1})),
    )
    .await;
    assert_ok(&answer);
    assert_eq!(answer.json, json!({"delivered": [], "offline": []}));
    assert_alive(&server).await;
}

// ---------------------------------------------------------------------------
// Static files
// ---------------------------------------------------------------------------

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

#[tokio::test]
async fn static_files_are_served_with_their_types() {
    let server = TestServer::start().await;
    let index = std::fs::read_to_string(fixture("public/index.html")).unwrap();

    for path in ["/", "/index.html"] {
        let answer = server.get(path, &[]).await;
        assert_ok(&answer);
        assert_eq!(answer.text, index);
        assert_eq!(header(&answer, "content-type"), "text/html; charset=utf-8");
        assert_eq!(header(&answer, "cache-control"), "no-cache");
        assert_eq!(header(&answer, "x-content-type-options"), "nosniff");
    }
    let css = server.get("/css/site.css", &[]).await;
    assert_ok(&css);
    assert!(
        header(&css, "content-type").starts_with("text/css"),
        "{:?}",
        css.headers
    );
    assert_eq!(
        css.text,
        std::fs::read_to_string(fixture("public/css/site.css")).unwrap()
    );

    assert_eq!(header(&css, "cache-control"), "no-cache");

    // Revalidation: the ETag of an unchanged file answers 304 with no body.
    let etag = header(&css, "etag").to_owned();
    assert!(etag.starts_with("W/\""), "{etag}");
    let again = server
        .request(
            Method::GET,
            "/css/site.css",
            &[("if-none-match", &etag)],
            Vec::new(),
        )
        .await;
    assert_eq!(again.status, 304);
    assert!(again.text.is_empty());
    let other = server
        .request(
            Method::GET,
            "/css/site.css",
            &[("if-none-match", "W/\"stale\"")],
            Vec::new(),
        )
        .await;
    assert_eq!(other.status, 200);

    let head = server.request(Method::HEAD, "/", &[], Vec::new()).await;
    assert_eq!(head.status, 200);
    assert!(head.text.is_empty());

    // Directories and missing files are plain 404s.
    for missing in ["/css", "/css/", "/missing.html", "/css/missing.css"] {
        assert_error(&server.get(missing, &[]).await, 404, "not_found");
    }
    assert_alive(&server).await;
}

/// Sends `GET {target}` verbatim (no client library to normalize it) and
/// returns the parsed answer.
async fn raw_get(server: &TestServer, target: &str) -> RawAnswer {
    let request = format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let text = server.raw(request.as_bytes(), PATIENCE).await;
    parse_response(text.as_bytes())
        .unwrap_or_else(|| panic!("GET {target}: no answer, got {text:?}"))
}

#[tokio::test]
async fn static_paths_cannot_escape_the_public_directory() {
    let server = TestServer::start().await;
    let secret = std::fs::read_to_string(fixture("outside.txt")).unwrap();
    let secret = secret.trim();
    assert_eq!(secret, "secret", "fixture changed");

    let must_be_404 = [
        "/../outside.txt",
        "/%2e%2e/outside.txt",
        "/%2E%2E/outside.txt",
        "/css/../../outside.txt",
        "/css/%2e%2e/%2e%2e/outside.txt",
        "/..%2foutside.txt",
        "/%2e%2e%2foutside.txt",
        "/css%2f..%2f..%2foutside.txt",
        "/./index.html",
        "/.hidden",
        "/css/.hidden",
        "//etc/passwd",
        "/etc/passwd",
        "/../../../../../../etc/passwd",
        "/index.html/",
        "/index.html%00.css",
        "http://t/../outside.txt",
    ];
    for target in must_be_404 {
        let answer = raw_get(&server, target).await;
        assert_eq!(answer.status, 404, "GET {target}: {}", answer.text());
        assert_eq!(answer.json()["error"], "not_found", "GET {target}");
        assert_eq!(
            answer.header("cache-control"),
            Some("no-store"),
            "GET {target}"
        );
        assert!(
            !answer.text().contains(secret),
            "GET {target} leaked the file"
        );
    }
    // Targets hyper may refuse outright (400) are fine too, as long as
    // nothing leaks and nothing breaks.
    for target in [
        "/..\\outside.txt",
        "/css\\..\\..\\outside.txt",
        "/%5c..%5coutside.txt",
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let text = server.raw(request.as_bytes(), PATIENCE).await;
        assert!(!text.contains(secret), "GET {target} leaked the file");
        if let Some(answer) = parse_response(text.as_bytes()) {
            assert!(
                matches!(answer.status, 400 | 404),
                "GET {target}: {answer:?}"
            );
        }
    }
    assert_alive(&server).await;
}

/// A scratch public directory with a hidden file and symlinks, removed on drop.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(unix)]
#[tokio::test]
async fn symlinks_and_hidden_files_stay_private() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let scratch = ScratchDir(
        std::env::temp_dir().join(format!("parlor-static-{}-{nanos}", std::process::id())),
    );
    let public = scratch.0.join("public");
    std::fs::create_dir_all(&public).unwrap();
    std::fs::write(scratch.0.join("outside.txt"), "secret").unwrap();
    std::fs::write(public.join("index.html"), "<p>scratch").unwrap();
    std::fs::write(public.join(".hidden"), "secret").unwrap();
    std::fs::write(public.join("inside.txt"), "inside").unwrap();
    std::os::unix::fs::symlink(scratch.0.join("outside.txt"), public.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(&scratch.0, public.join("up")).unwrap();
    std::os::unix::fs::symlink(public.join("inside.txt"), public.join("alias.txt")).unwrap();

    let mut config = test_config();
    config.public_dir = public.clone();
    let server = TestServer::start_with(config).await;

    for path in ["/leak.txt", "/up/outside.txt", "/.hidden"] {
        let answer = server.get(path, &[]).await;
        assert_error(&answer, 404, "not_found");
        assert!(!answer.text.contains("secret"), "{path} leaked");
    }
    // A link that stays inside the directory is an ordinary file.
    let alias = server.get("/alias.txt", &[]).await;
    assert_ok(&alias);
    assert_eq!(alias.text, "inside");
    assert_eq!(header(&alias, "content-type"), "text/plain; charset=utf-8");
    assert_alive(&server).await;
}

// ---------------------------------------------------------------------------
// Small endpoints
// ---------------------------------------------------------------------------

#[tokio::test]
async fn healthz_users_history_and_status_validate_their_input() {
    let server = TestServer::start().await;
    let ann = server.join("ann").await;
    let _bob = server.join("bob").await;

    let health = server.get("/healthz", &[]).await;
    assert_ok(&health);
    assert_eq!(health.json, json!({"status": "ok"}));
    assert_eq!(header(&health, "cache-control"), "no-store");
    assert!(header(&health, "content-type").starts_with("application/json"));

    let users = ann.get("/users", &[]).await;
    assert_ok(&users);
    assert_eq!(
        users.json,
        json!({
            "users": [{"name": "ann", "status": "online"}, {"name": "bob", "status": "online"}],
            "total": 2
        })
    );

    assert_ok(&ann.send("lobby", "one").await);
    for bad in ["0", "201", "-1", "many", "99999999999999999999"] {
        let answer = ann
            .get("/history", &[("conversation", "lobby"), ("limit", bad)])
            .await;
        assert_error(&answer, 400, "invalid_param");
    }
    for good in ["1", "200"] {
        assert_ok(
            &ann.get("/history", &[("conversation", "lobby"), ("limit", good)])
                .await,
        );
    }
    assert_error(
        &ann.get("/history", &[("conversation", "lobby"), ("before", "x")])
            .await,
        400,
        "invalid_param",
    );
    assert_error(&ann.get("/history", &[]).await, 400, "missing_param");

    for bad in ["offline", "Online", "", "sleeping", "busy "] {
        assert_error(
            &ann.post("/status", &[("status", bad)]).await,
            400,
            "invalid_status",
        );
    }
    assert_error(
        &server
            .post_json("/status", &json!({"token": ann.token, "status": 1}))
            .await,
        400,
        "invalid_param",
    );
    assert_error(&ann.post("/status", &[]).await, 400, "missing_param");
    let busy = ann.post("/status", &[("status", "busy")]).await;
    assert_ok(&busy);
    assert_eq!(busy.json, json!({"status": "busy"}));
    let users = ann.get("/users", &[]).await;
    assert_eq!(
        users.json["users"][0],
        json!({"name": "ann", "status": "busy"})
    );
    assert_alive(&server).await;
}

/// Every malformed request above, fired at one server in a burst: nothing is
/// answered 5xx, and the server still serves afterwards.
#[tokio::test]
async fn no_input_earns_a_5xx() {
    let server = TestServer::start().await;
    let ann: TestClient<'_> = server.join("ann").await;
    let token = ann.token.clone();
    let bodies: Vec<(&str, &str, Vec<u8>)> = vec![
        ("/join", "application/json", b"{".to_vec()),
        ("/join", "application/json", b"[1]".to_vec()),
        ("/join", "application/json", b"\xff\xfe".to_vec()),
        ("/join", "application/x-www-form-urlencoded", b"%".to_vec()),
        (
            "/join",
            "application/x-www-form-urlencoded",
            b"name=%ff".to_vec(),
        ),
        (
            "/join",
            "application/x-www-form-urlencoded",
            b"&&&==&=".to_vec(),
        ),
        ("/join", "text/plain", b"x".to_vec()),
        (
            "/send",
            "application/json",
            br#"{"token":null,"text":null}"#.to_vec(),
        ),
        ("/poll", "application/json", br#"{"cursor":1e400}"#.to_vec()),
        (
            "/poll",
            "application/json",
            format!(r#"{{"token":"{token}","cursor":0,"timeout":18446744073709551615}}"#)
                .into_bytes(),
        ),
        (
            "/poll",
            "application/json",
            format!(r#"{{"token":"{token}","cursor":18446744073709551615,"timeout":0}}"#)
                .into_bytes(),
        ),
        (
            "/dialog",
            "application/json",
            format!(r#"{{"token":"{token}","with":""}}"#).into_bytes(),
        ),
        (
            "/rooms/join",
            "application/json",
            format!(r#"{{"token":"{token}","name":""}}"#).into_bytes(),
        ),
        (
            "/rooms/leave",
            "application/json",
            format!(r#"{{"token":"{token}","conversation":"dialog:"}}"#).into_bytes(),
        ),
        ("/history", "application/json", b"{}".to_vec()),
        ("/api/publish", "application/json", b"{}".to_vec()),
        ("/leave", "application/json", br#"{"token":""}"#.to_vec()),
    ];
    let mut checks = Vec::new();
    for (path, content_type, body) in bodies {
        for method in [Method::POST, Method::GET] {
            let answer = server
                .request(
                    method.clone(),
                    path,
                    &[("content-type", content_type)],
                    body.clone(),
                )
                .await;
            checks.push((
                format!("{method} {path} {:?}", String::from_utf8_lossy(&body)),
                answer,
            ));
        }
    }
    for (what, answer) in &checks {
        assert!(
            answer.status < 500,
            "{what} → {} {}",
            answer.status,
            answer.text
        );
        if answer.status >= 400 {
            assert_eq!(header(answer, "cache-control"), "no-store", "{what}");
            assert!(
                answer.code().len() > 1,
                "{what}: not a JSON error: {}",
                answer.text
            );
        }
    }
    // The client that was poked at is still fine.
    assert_ok(&ann.get("/users", &[]).await);
    assert_alive(&server).await;
}
