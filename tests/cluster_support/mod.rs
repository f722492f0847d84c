//! Helpers of `tests/cluster_core.rs`: parlor nodes in this process on a
//! hermetic redis-server (tests/common/redis.rs), with a small HTTP client.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};

use std::time::{Duration, Instant};

use clap::Parser;
use parlor::client::{Conn, Target};
use parlor::engine::Engine;
use parlor::{Config, Server};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The hermetic redis-server of every cluster test (tests/common/redis.rs).
#[path = "../common/redis.rs"]
mod redis_server;
pub use redis_server::RedisServer as Redis;

/// A connection of the test's own to `redis`, to look at or change what
/// the nodes keep there.
pub async fn connection(redis: &Redis) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

pub fn node_config(url: &str, inactivity: Duration) -> Config {
    let mut config = Config::parse_from(["parlor", "--listen", "127.0.0.1:0", "--redis", url]);
    config.poll_timeout = Duration::from_secs(5);
    config.inactivity_timeout = inactivity;
    config.argon2_memory_kib = 8;
    config.argon2_iterations = 1;
    config.signups_per_ip = 0;
    config.send_rate = parlor::config::SendRate(0);
    config
}

/// One parlor node in this process.
pub struct Node {
    pub addr: SocketAddr,
    pub engine: Engine,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Node {
    pub async fn start(redis: &Redis) -> Node {
        Node::start_with(node_config(&redis.url(), Duration::from_secs(30))).await
    }

    pub async fn start_with(config: Config) -> Node {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::connect(config).await.unwrap();
        let engine = server.engine();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            server.run(listener, shutdown).await.unwrap();
        });
        let node = Node {
            addr,
            engine,
            stop: Some(stop),
            task: Some(task),
        };
        // Subscribed to wake-ups before a test relies on them.
        let started = Instant::now();
        while node.get("/healthz", &[]).await.0 != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "node not healthy"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        node
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> (u16, Value) {
        let uri = format!("{path}?{}", form(query));
        let mut conn = Conn::open(&Target::at(self.addr)).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), conn.get(uri))
            .await
            .expect("an answer within 30 s")
            .unwrap();
        let json = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        (answer.status.as_u16(), json)
    }

    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> (u16, Value) {
        let mut conn = Conn::open(&Target::at(self.addr)).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), conn.post(path, form(fields)))
            .await
            .expect("an answer within 30 s")
            .unwrap();
        let json = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        (answer.status.as_u16(), json)
    }

    pub async fn join(&self, name: &str) -> (String, u64) {
        let (status, json) = self
            .post("/join", &[("name", name), ("password", "pw")])
            .await;
        assert_eq!(status, 200, "{json}");
        (
            json["token"].as_str().unwrap().to_owned(),
            json["cursor"].as_u64().unwrap(),
        )
    }

    pub async fn poll(&self, token: &str, cursor: u64, timeout_ms: u64) -> (u16, Value) {
        let cursor = cursor.to_string();
        let timeout = timeout_ms.to_string();
        let query = [("token", token), ("cursor", &cursor), ("timeout", &timeout)];
        self.get("/poll", &query).await
    }

    pub fn swept(&self) -> u64 {
        let text = self.engine.metrics().render(Default::default(), &[]);
        text.lines()
            .find_map(|line| line.strip_prefix("parlor_swept_clients_total "))
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(key, value)| format!("{key}={}", encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Polls until the answer has events, returning them and moving `cursor`.
pub async fn next_events(node: &Node, token: &str, cursor: &mut u64) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let (status, json) = node.poll(token, *cursor, 5000).await;
        assert_eq!(status, 200, "{json}");
        *cursor = json["cursor"].as_u64().unwrap();
        let events = json["events"].as_array().unwrap().clone();
        if !events.is_empty() {
            return events;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no events came"
        );
    }
}

/// Reads everything queued now.
pub async fn drain(node: &Node, token: &str, cursor: &mut u64) -> Vec<Value> {
    let mut all = Vec::new();
    loop {
        let (status, json) = node.poll(token, *cursor, 0).await;
        assert_eq!(status, 200, "{json}");
        *cursor = json["cursor"].as_u64().unwrap();
        let events = json["events"].as_array().unwrap();
        if events.is_empty() {
            return all;
        }
        all.extend(events.iter().cloned());
    }
}

/// A poll on its own task: its status, JSON and how long it took.
pub fn spawn_poll(
    addr: SocketAddr,
    token: &str,
    cursor: u64,
    timeout_ms: u64,
) -> JoinHandle<(u16, Value, Duration)> {
    let uri = format!("/poll?token={token}&cursor={cursor}&timeout={timeout_ms}");
    tokio::spawn(async move {
        let started = Instant::now();
        let mut conn = Conn::open(&Target::at(addr)).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), conn.get(uri))
            .await
            .expect("an answer within 30 s")
            .unwrap();
        let json = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        (answer.status.as_u16(), json, started.elapsed())
    })
}

pub fn presence<'a>(events: &'a [Value], user: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|event| event["type"] == "presence" && event["user"] == user)
        .map(|event| event["status"].as_str().unwrap())
        .collect()
}
