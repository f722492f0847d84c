//! Shared by the end-to-end benches: the server under test (in-process, on
//! its own runtime), a kept-alive HTTP/1 client connection to it driven by
//! the task that uses it, joining users, and the per-bench means printed as
//! ratios after criterion's report.
#![allow(dead_code)] // each bench uses a different part

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use parlor::hub::Hub;
use parlor::{Config, Server};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// The 64-byte message text of the reference measurements.
pub const TEXT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A connection idle for longer is replaced before its next request.
const IDLE_REOPEN: Duration = Duration::from_secs(2);

pub type Error = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------
// A kept-alive client connection, driven by the task that uses it.

pub struct Conn {
    send: SendRequest<Full<Bytes>>,
    conn: Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>,
    host: HeaderValue,
    addr: SocketAddr,
    last_used: Instant,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the bench server");
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        let (send, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1 handshake");
        Conn {
            send,
            conn: Box::pin(conn),
            host: HeaderValue::from_str(&addr.to_string()).expect("an address is a valid host"),
            addr,
            last_used: Instant::now(),
        }
    }

    /// Reconnects a connection that sat idle: parlor closes connections
    /// idle past its header timeout (10 s), and racing that close would
    /// fail a request now and then.
    pub async fn revive(&mut self) {
        if self.last_used.elapsed() > IDLE_REOPEN || self.send.is_closed() {
            *self = Conn::open(self.addr).await;
        }
        self.last_used = Instant::now();
    }

    pub async fn get(&mut self, uri: String) -> Result<(StatusCode, Bytes), Error> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(HOST, self.host.clone())
            .body(Full::new(Bytes::new()))?;
        self.call(request).await
    }

    pub async fn post(&mut self, path: &str, form: String) -> Result<(StatusCode, Bytes), Error> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))?;
        self.call(request).await
    }

    /// Sends a request and reads the whole answer, polling the connection
    /// future alongside (no connection task, no channel hop).
    pub async fn call(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), Error> {
        self.revive().await;
        let Conn { send, conn, .. } = self;
        let mut work = pin!(async move {
            send.ready().await?;
            let response = send.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        });
        poll_fn(|cx| {
            if let Poll::Ready(result) = work.as_mut().poll(cx) {
                return Poll::Ready(result.map_err(Error::from));
            }
            match conn.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(())) => Poll::Ready(Err("connection closed".into())),
                Poll::Ready(Err(error)) => Poll::Ready(Err(error.into())),
            }
        })
        .await
    }
}

// ---------------------------------------------------------------------------
// The server under test.

pub struct Bench {
    /// Runs the server's tasks; dropping it stops the server.
    _server: Runtime,
    pub client: Runtime,
    pub addr: SocketAddr,
    pub hub: Hub,
    _stop: oneshot::Sender<()>,
}

impl Bench {
    pub fn start() -> Bench {
        let server = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        let client = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        let mut config = Config::for_tests();
        // Parked polls stay parked for the whole bench; idle users stay online.
        config.poll_timeout = Duration::from_secs(3600);
        config.inactivity_timeout = Duration::from_secs(3600);
        // Cheap password hashes: the bench joins thousands of users.
        config.argon2_memory_kib = 8;
        config.argon2_iterations = 1;
        // Thousands of joins and sends from one address: no rate limits.
        config.signups_per_ip = 0;
        config.send_rate = parlor::config::SendRate(0);
        let parlor = Server::open(config).expect("open an ephemeral server");
        let hub = parlor.hub();
        let listener = server
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        server.spawn(async move {
            let _ = parlor
                .run(listener, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Bench {
            _server: server,
            client,
            addr,
            hub,
            _stop: stop,
        }
    }

    pub fn parked(&self) -> usize {
        self.hub.stats().parked_polls
    }

    /// Joins `names` with a few concurrent joiners.
    pub fn join_all(&self, names: Vec<String>) -> Vec<Joined> {
        let addr = self.addr;
        self.client.block_on(async move {
            let chunk = names.len().div_ceil(4).max(1);
            let tasks: Vec<_> = names
                .chunks(chunk)
                .map(<[String]>::to_vec)
                .map(|chunk| {
                    tokio::spawn(async move {
                        let mut conn = Conn::open(addr).await;
                        let mut joined = Vec::with_capacity(chunk.len());
                        for name in &chunk {
                            joined.push(join(&mut conn, name).await);
                        }
                        joined
                    })
                })
                .collect();
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.expect("join task"));
            }
            all
        })
    }

    /// Waits (driving the client runtime) until `count` polls are parked.
    pub fn wait_parked(&self, count: usize) {
        let started = Instant::now();
        self.client.block_on(async {
            while self.parked() != count {
                assert!(
                    started.elapsed() < Duration::from_secs(300),
                    "polls never parked: {} of {count}",
                    self.parked()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
}

#[derive(Deserialize)]
pub struct Joined {
    pub token: String,
    pub cursor: u64,
}

#[derive(Deserialize)]
pub struct Cursor {
    pub cursor: u64,
}

pub async fn join(conn: &mut Conn, name: &str) -> Joined {
    let (status, body) = conn
        .post("/join", format!("name={name}&password=pw-{name}"))
        .await
        .expect("/join answers");
    assert_eq!(status, StatusCode::OK, "/join {name}");
    serde_json::from_slice(&body).expect("/join answers JSON")
}

// ---------------------------------------------------------------------------
// Means per bench, for the ratio table printed after criterion's report.

thread_local! {
    /// Mean nanoseconds per iteration of every measured batch, by bench name.
    pub static MEANS: RefCell<BTreeMap<String, Vec<f64>>> = const { RefCell::new(BTreeMap::new()) };
}

pub fn record(name: &str, total: Duration, iters: u64) {
    MEANS.with(|means| {
        means
            .borrow_mut()
            .entry(name.to_owned())
            .or_default()
            .push(total.as_nanos() as f64 / iters.max(1) as f64)
    });
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}
