//! Real `parlor` processes (the binary) as cluster nodes for tests that
//! kill them, and a client that talks to whichever node it is given.
//! Requests go through `super::request_to`, so every wait is bounded.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout};

use super::process::parlor;
use super::{encode_form, request_to, Answer};

/// Longest one step may take: a start, a reconnect, an answer.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// One `parlor` node process.
pub struct Node {
    pub child: Child,
    pub addr: SocketAddr,
    /// Held so the child never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Node {
    /// Starts a node on `redis_url` with test-friendly settings and waits
    /// for its `listening on` line.
    pub async fn start(redis_url: &str) -> Node {
        let mut child = parlor()
            .args(["--listen", "127.0.0.1:0", "--redis", redis_url])
            .args(["--poll-timeout", "10s", "--inactivity-timeout", "60s"])
            .args(["--argon2-memory-kib", "8", "--argon2-iterations", "1"])
            .args(["--signups-per-ip", "0", "--send-rate", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the parlor binary starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut line = String::new();
        tokio::time::timeout(PATIENCE, stdout.read_line(&mut line))
            .await
            .expect("the node did not announce its address in time")
            .expect("stdout is readable");
        let addr = line
            .trim_end()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line of stdout: {line:?}"))
            .parse()
            .unwrap_or_else(|error| panic!("no address in {line:?}: {error}"));
        let node = Node {
            child,
            addr,
            _stdout: stdout,
        };
        // As a load balancer would: traffic once it has subscribed to
        // wake-ups.
        eventually("the node is healthy", || async {
            let answer = request_to(addr, Method::GET, "/healthz", &[], Vec::new()).await;
            (answer.status == 200).then_some(())
        })
        .await;
        node
    }

    /// SIGKILL: the node gets no chance to tidy anything up.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("the node runs");
        let _ = tokio::time::timeout(PATIENCE, self.child.wait()).await;
    }
}

/// Runs `parlor` with `args` to completion (for starts that must fail).
pub async fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let output = tokio::time::timeout(
        PATIENCE,
        parlor()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output(),
    )
    .await
    .expect("parlor should give up within the patience")
    .expect("the parlor binary runs");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub async fn post(addr: SocketAddr, path: &str, form: &[(&str, &str)]) -> Answer {
    request_to(
        addr,
        Method::POST,
        path,
        &[("content-type", "application/x-www-form-urlencoded")],
        encode_form(form).into_bytes(),
    )
    .await
}

pub async fn get(addr: SocketAddr, path: &str, query: &[(&str, &str)]) -> Answer {
    let uri = format!("{path}?{}", encode_form(query));
    request_to(addr, Method::GET, &uri, &[], Vec::new()).await
}

/// A client process seen from the test: its token and cursor, usable on
/// any node.
pub struct Client {
    pub name: String,
    pub token: String,
    pub cursor: u64,
}

impl Client {
    pub async fn join(addr: SocketAddr, name: &str) -> Client {
        let password = format!("pw-{name}");
        let answer = post(addr, "/join", &[("name", name), ("password", &password)]).await;
        assert_eq!(answer.status, 200, "join {name}: {}", answer.text);
        Client {
            name: name.to_owned(),
            token: answer.json["token"].as_str().expect("a token").to_owned(),
            cursor: answer.json["cursor"].as_u64().expect("a cursor"),
        }
    }

    pub async fn poll_raw(&self, addr: SocketAddr, cursor: u64, timeout_ms: u64) -> Answer {
        let (cursor, timeout) = (cursor.to_string(), timeout_ms.to_string());
        let query = [
            ("token", self.token.as_str()),
            ("cursor", cursor.as_str()),
            ("timeout", timeout.as_str()),
        ];
        get(addr, "/poll", &query).await
    }

    /// Polls on `addr` from the cursor; advances it; the events.
    pub async fn poll(&mut self, addr: SocketAddr, timeout_ms: u64) -> Vec<Value> {
        let answer = self.poll_raw(addr, self.cursor, timeout_ms).await;
        assert_eq!(answer.status, 200, "{} polls: {}", self.name, answer.text);
        self.cursor = answer.json["cursor"].as_u64().expect("a cursor");
        answer.json["events"].as_array().expect("events").clone()
    }

    /// Reads on `addr` without waiting until an answer is empty.
    pub async fn read_all(&mut self, addr: SocketAddr) -> Vec<Value> {
        let mut all = Vec::new();
        loop {
            let events = self.poll(addr, 0).await;
            if events.is_empty() {
                return all;
            }
            all.extend(events);
        }
    }

    pub async fn send(&self, addr: SocketAddr, conversation: &str, text: &str) -> Answer {
        let form = [
            ("token", self.token.as_str()),
            ("conversation", conversation),
            ("text", text),
        ];
        post(addr, "/send", &form).await
    }
}

/// The texts of the message events among `events`, in order.
pub fn texts(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|event| event["type"] == "message")
        .map(|event| event["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Repeats `attempt` until it gives Some, for at most `PATIENCE`.
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(done) = attempt().await {
            return done;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every message of the lobby's history, oldest first (through `addr`).
pub async fn lobby_history(addr: SocketAddr, token: &str) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut query = vec![
            ("token", token.to_owned()),
            ("conversation", "lobby".to_owned()),
            ("limit", "200".to_owned()),
        ];
        if let Some(before) = before {
            query.push(("before", before.to_string()));
        }
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = get(addr, "/history", &query).await;
        assert_eq!(answer.status, 200, "history: {}", answer.text);
        let page = answer.json["messages"]
            .as_array()
            .expect("messages")
            .clone();
        if page.is_empty() {
            return all;
        }
        before = page[0]["id"].as_u64();
        let mut older = page;
        older.append(&mut all);
        all = older;
    }
}
