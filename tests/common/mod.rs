//! Test harness: a real parlor server on 127.0.0.1:0 in this process, and a
//! small HTTP client that speaks to it over real TCP connections.
//!
//! With `PARLOR_TEST_CLUSTER=N` in the environment, every `TestServer` is a
//! cluster instead: its own `redis-server` (see `redis`) and N nodes in this
//! process sharing it, each request going to a node picked at random. The
//! same tests then check the cluster's contract; those that look inside a
//! single node's hub skip themselves (`skip_in_cluster_mode`).
#![allow(dead_code)] // each test file uses a different subset

pub mod nginx;
#[cfg(unix)]
pub mod nodes;
#[cfg(unix)] // SIGTERM is sent with kill(1)
pub mod process;
pub mod redis;

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request};
use hyper_util::rt::TokioIo;
use parlor::hub::Hub;
use parlor::{Config, Server};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    /// The first node's address (the only one outside cluster mode). Tests
    /// that open their own connections use it; `request` and the helpers
    /// built on it spread over every node.
    pub addr: SocketAddr,
    /// Every node's address.
    pub addrs: Vec<SocketAddr>,
    /// The single node's hub; None in cluster mode.
    hub: Option<Hub>,
    nodes: Vec<Node>,
    /// Cluster mode's Redis, killed when the server is dropped.
    pub redis: Option<redis::RedisServer>,
}

/// One server process's worth of parlor running in this test process.
struct Node {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// The number of cluster nodes asked for with `PARLOR_TEST_CLUSTER` (0:
/// single-node mode, the default).
pub fn cluster_nodes() -> usize {
    match std::env::var("PARLOR_TEST_CLUSTER") {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("PARLOR_TEST_CLUSTER={text:?} is not a node count")),
        _ => 0,
    }
}

/// True (after printing why) when the suite runs in cluster mode: for
/// tests that inspect one node's hub, which a cluster does not have. Use
/// as `if common::skip_in_cluster_mode("why") { return; }`.
pub fn skip_in_cluster_mode(why: &str) -> bool {
    if cluster_nodes() == 0 {
        return false;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    eprintln!("note: {test} skipped in cluster mode: {why}");
    true
}

/// A node index picked at random per request.
fn random_index(count: usize) -> usize {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (hasher.finish() % count as u64) as usize
}

/// An answer: status, headers, and the body as JSON (Null if not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Answer {
    /// The error code of a JSON error answer.
    pub fn code(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }
}

/// Short timeouts so the suite runs in seconds.
pub fn test_config() -> Config {
    let mut config = Config::for_tests();
    config.poll_timeout = Duration::from_secs(5);
    config.inactivity_timeout = Duration::from_secs(30);
    // Cheap password hashes: the suite joins thousands of users. Production
    // cost is covered by the unit tests in src/auth.rs.
    config.argon2_memory_kib = 8;
    config.argon2_iterations = 1;
    // The suite joins thousands of users and sends bursts from one address;
    // the rate limits have tests of their own that set them.
    config.signups_per_ip = 0;
    config.send_rate = parlor::config::SendRate(0);
    config.public_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/public").into();
    config
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(test_config()).await
    }

    /// A server with `config`; in cluster mode, a Redis and
    /// `PARLOR_TEST_CLUSTER` nodes with `config` pointed at it. A durable
    /// `config` (not `--ephemeral`) keeps that Redis's files in
    /// `DATA_DIR/redis`, so a test that starts a server again on the same
    /// directory finds its state again in both modes.
    pub async fn start_with(config: Config) -> TestServer {
        let count = cluster_nodes();
        if count == 0 {
            let server = Server::open(config).unwrap();
            let hub = Some(server.hub());
            let (addr, node) = serve(server).await;
            return TestServer {
                addr,
                addrs: vec![addr],
                hub,
                nodes: vec![node],
                redis: None,
            };
        }
        let redis = if config.ephemeral {
            redis::RedisServer::start()
        } else {
            redis::RedisServer::start_in(&config.data_dir.join("redis"))
        };
        let config = cluster_config(config, &redis.url());
        let mut addrs = Vec::new();
        let mut nodes = Vec::new();
        for _ in 0..count {
            let server = open_node(config.clone()).await;
            let (addr, node) = serve(server).await;
            addrs.push(addr);
            nodes.push(node);
        }
        for addr in &addrs {
            wait_until_healthy(*addr).await;
        }
        TestServer {
            addr: addrs[0],
            addrs,
            hub: None,
            nodes,
            redis: Some(redis),
        }
    }

    /// Whether this server is a cluster (`PARLOR_TEST_CLUSTER`).
    pub fn is_cluster(&self) -> bool {
        self.redis.is_some()
    }

    /// The single node's hub. Tests that call it skip cluster mode first
    /// (`skip_in_cluster_mode`).
    pub fn hub(&self) -> &Hub {
        self.hub
            .as_ref()
            .expect("a cluster has no hub: skip_in_cluster_mode at the test's start")
    }

    /// An address to send the next request to: a node picked at random.
    pub fn any_addr(&self) -> SocketAddr {
        self.addrs[random_index(self.addrs.len())]
    }

    /// Tells the server (every node) to stop, as SIGTERM does, without
    /// waiting for it (to watch its drain); `stop` then waits for the rest.
    pub fn signal_stop(&mut self) {
        for node in &mut self.nodes {
            if let Some(stop) = node.stop.take() {
                let _ = stop.send(());
            }
        }
    }

    /// Stops the server (every node) and waits for it to finish shutting
    /// down.
    pub async fn stop(mut self) {
        self.signal_stop();
        for node in &mut self.nodes {
            if let Some(task) = node.task.take() {
                task.await.unwrap();
            }
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Answer {
        request_to(self.any_addr(), method, path, headers, body).await
    }

    /// POST with a form body, as `curl -d` sends.
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        let body = encode_form(form);
        self.request(
            Method::POST,
            path,
            &[("content-type", "application/x-www-form-urlencoded")],
            body.into_bytes(),
        )
        .await
    }

    /// POST with a JSON body.
    pub async fn post_json(&self, path: &str, json: &Value) -> Answer {
        self.request(
            Method::POST,
            path,
            &[("content-type", "application/json")],
            serde_json::to_vec(json).unwrap(),
        )
        .await
    }

    /// GET with query parameters.
    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> Answer {
        let uri = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", encode_form(query))
        };
        self.request(Method::GET, &uri, &[], Vec::new()).await
    }

    /// Sends raw bytes on a new connection and reads until the server closes
    /// it or `read_for` passes.
    pub async fn raw(&self, bytes: &[u8], read_for: Duration) -> String {
        let mut stream = TcpStream::connect(self.any_addr()).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(read_for, stream.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Joins as `name` (password "pw-NAME") and returns the client.
    pub async fn join(&self, name: &str) -> TestClient<'_> {
        let password = format!("pw-{name}");
        let answer = self
            .post("/join", &[("name", name), ("password", &password)])
            .await;
        assert_eq!(answer.status, 200, "join {name}: {}", answer.text);
        TestClient {
            server: self,
            name: name.to_owned(),
            token: answer.json["token"].as_str().unwrap().to_owned(),
            cursor: answer.json["cursor"].as_u64().unwrap(),
            joined: answer.json,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(stop) = node.stop.take() {
                let _ = stop.send(());
            }
        }
    }
}

/// Serves `server` on a fresh port of 127.0.0.1 until its node is stopped.
async fn serve(server: Server) -> (SocketAddr, Node) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let node = Node {
        stop: Some(stop),
        task: Some(task),
    };
    (addr, node)
}

/// Waits until the node at `addr` answers /healthz 200, as a load balancer
/// would before sending it traffic (a node has subscribed to wake-ups
/// only a moment after it starts).
async fn wait_until_healthy(addr: SocketAddr) {
    let started = std::time::Instant::now();
    loop {
        let answer = request_to(addr, Method::GET, "/healthz", &[], Vec::new()).await;
        if answer.status == 200 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "node {addr} is not healthy: {}",
            answer.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `config` as a cluster node on the Redis at `url`: no store of its own.
pub fn cluster_config(mut config: Config, url: &str) -> Config {
    let parsed = Config::try_parse_from(["parlor", "--redis", url])
        .unwrap_or_else(|error| panic!("{url} is refused as --redis: {error}"));
    config.redis = parsed.redis;
    config.ephemeral = false;
    config.data_dir = parsed.data_dir;
    config
}

/// Opens a cluster node (connecting to its Redis).
async fn open_node(config: Config) -> Server {
    Server::connect(config)
        .await
        .unwrap_or_else(|error| panic!("a cluster node does not start: {error}"))
}

/// One client process (a tab) with its own cursor.
pub struct TestClient<'a> {
    pub server: &'a TestServer,
    pub name: String,
    pub token: String,
    pub cursor: u64,
    /// The /join answer.
    pub joined: Value,
}

impl TestClient<'_> {
    /// Polls from the current cursor without waiting; advances the cursor.
    pub async fn events_now(&mut self) -> Vec<Value> {
        self.poll_for(0).await
    }

    /// Polls without waiting until an answer is empty; every event read.
    pub async fn events_until_empty(&mut self) -> Vec<Value> {
        let mut all = Vec::new();
        loop {
            let events = self.events_now().await;
            if events.is_empty() {
                return all;
            }
            all.extend(events);
        }
    }

    /// Polls with a wait of up to `timeout_ms`; advances the cursor.
    pub async fn poll_for(&mut self, timeout_ms: u64) -> Vec<Value> {
        let answer = self.poll_raw(self.cursor, Some(timeout_ms)).await;
        assert_eq!(answer.status, 200, "poll: {}", answer.text);
        self.cursor = answer.json["cursor"].as_u64().unwrap();
        answer.json["events"].as_array().unwrap().clone()
    }

    pub async fn poll_raw(&self, cursor: u64, timeout_ms: Option<u64>) -> Answer {
        let cursor = cursor.to_string();
        let timeout = timeout_ms.map(|t| t.to_string());
        let mut query = vec![("token", self.token.as_str()), ("cursor", cursor.as_str())];
        if let Some(timeout) = &timeout {
            query.push(("timeout", timeout));
        }
        self.server.get("/poll", &query).await
    }

    /// Polls until an event matching `wanted` arrives (at most ~10 s);
    /// returns every event read on the way.
    pub async fn poll_until(&mut self, wanted: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        for _ in 0..20 {
            let events = self.poll_for(500).await;
            let found = events.iter().any(&wanted);
            seen.extend(events);
            if found {
                return seen;
            }
        }
        panic!("{}: the awaited event never came; saw {seen:#?}", self.name);
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        let mut fields = vec![("token", self.token.as_str())];
        fields.extend_from_slice(form);
        self.server.post(path, &fields).await
    }

    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> Answer {
        let mut fields = vec![("token", self.token.as_str())];
        fields.extend_from_slice(query);
        self.server.get(path, &fields).await
    }

    pub async fn send(&self, conversation: &str, text: &str) -> Answer {
        self.post("/send", &[("conversation", conversation), ("text", text)])
            .await
    }
}

/// One request on a new connection to `addr`.
pub async fn request_to(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    try_request_to(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// Longest any test request may take: a server that hangs (a deadlock) fails
/// the test instead of stalling the suite. Polls wait at most 25 s.
const REQUEST_LIMIT: Duration = Duration::from_secs(30);

/// One request on a new connection; Err when the connection fails (e.g. the
/// server was killed mid-request).
pub async fn try_request_to(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Answer, String> {
    tokio::time::timeout(REQUEST_LIMIT, exchange(addr, method, path, headers, body))
        .await
        .unwrap_or_else(|_| {
            panic!("{path}: no answer within {REQUEST_LIMIT:?}: is the server hung?")
        })
}

async fn exchange(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Answer, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    send_on(&mut sender, request).await
}

pub fn encode_form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(key, value)| format!("{}={}", percent_encode(key), percent_encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// The events of one type.
pub fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| event["type"] == kind)
        .collect()
}

/// Drives futures together on the current task (each request is only sent
/// when first polled, so awaiting them in turn would not have them all in
/// flight at once); their outputs in the given order.
pub async fn join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.into_iter().map(Box::pin).enumerate().collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|(index, future)| match future.as_mut().poll(cx) {
            std::task::Poll::Ready(output) => {
                outputs[*index] = Some(output);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|output| output.expect("every future finished"))
        .collect()
}

/// Sends `request` on an open connection and reads the whole answer; Err
/// when the connection fails. For tests that keep a connection alive.
pub async fn send_on(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<Answer, String> {
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Answer {
        status,
        headers,
        json,
        text,
    })
}

/// A form POST on a new connection from the local address `from` (any of
/// 127.0.0.0/8), so a test can be several client addresses at once.
pub async fn post_from(
    addr: SocketAddr,
    from: [u8; 4],
    path: &str,
    headers: &[(&str, &str)],
    form: &[(&str, &str)],
) -> Answer {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = Request::post(path)
        .header("host", addr.to_string())
        .header("content-type", "application/x-www-form-urlencoded");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(encode_form(form))))
        .unwrap();
    send_on(&mut sender, request).await.unwrap()
}
