//! The HTTP/1 client that parlor-bench and the benches use to speak to a
//! parlor over loopback: one kept-alive connection, driven by the task that
//! uses it.
//!
//! hyper's `Connection` future does the connection's I/O. Instead of
//! spawning it, [`Conn`] polls it alongside each request, so a request costs
//! no task switch and no channel hop: these tools measure latency, and the
//! client's share of a round trip should be as small as it can be.

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
use tokio::net::TcpStream;

use crate::Error;

/// A connection idle for longer is replaced before its next request:
/// servers close idle kept-alive connections (parlor after its
/// `--header-timeout`), and racing that close would fail a request now and
/// then.
const IDLE_REOPEN: Duration = Duration::from_secs(2);

/// The body type of every form this client posts.
const FORM: HeaderValue = HeaderValue::from_static("application/x-www-form-urlencoded");

/// Where a client connects, and the `Host` header it sends there.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: HeaderValue,
}

impl Target {
    /// A server at a socket address, which is also its `Host`.
    pub fn at(addr: SocketAddr) -> Target {
        Target {
            addr,
            host: HeaderValue::from_str(&addr.to_string())
                .expect("a socket address is a valid Host header"),
        }
    }
}

/// A whole answer: its status and its body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

type Io = TokioIo<TcpStream>;
/// The halves of a fresh connection: the request sender and the I/O future.
type Parts = (
    SendRequest<Full<Bytes>>,
    Pin<Box<Connection<Io, Full<Bytes>>>>,
);

/// A kept-alive HTTP/1 connection to one [`Target`], reopened before a
/// request when it closed or sat idle.
pub struct Conn {
    send: SendRequest<Full<Bytes>>,
    /// The connection's I/O; polled by `call`, never spawned.
    conn: Pin<Box<Connection<Io, Full<Bytes>>>>,
    target: Target,
    /// The connection future completed: the socket is gone.
    closed: bool,
    /// When the connection last started or finished a request.
    last_used: Instant,
}

impl Conn {
    pub async fn open(target: &Target) -> Result<Conn, Error> {
        let (send, conn) = connect(target.addr).await?;
        Ok(Conn {
            send,
            conn,
            target: target.clone(),
            closed: false,
            last_used: Instant::now(),
        })
    }

    /// The server closed this connection (the next request reopens it).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub async fn get(&mut self, uri: String) -> Result<Answer, Error> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(HOST, self.target.host.clone())
            .body(Full::new(Bytes::new()))?;
        self.call(request).await
    }

    /// Posts a urlencoded form.
    pub async fn post(&mut self, path: &str, form: String) -> Result<Answer, Error> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, self.target.host.clone())
            .header(CONTENT_TYPE, FORM)
            .body(Full::new(Bytes::from(form)))?;
        self.call(request).await
    }

    /// Sends a request and reads the whole answer, polling the connection
    /// future alongside.
    async fn call(&mut self, request: Request<Full<Bytes>>) -> Result<Answer, Error> {
        self.revive().await?;
        let Conn {
            send, conn, closed, ..
        } = self;
        let mut work = pin!(async move {
            send.ready().await?;
            let response = send.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Answer { status, body })
        });
        let result = poll_fn(|cx| {
            if let Poll::Ready(result) = work.as_mut().poll(cx) {
                return Poll::Ready(result.map_err(Error::from));
            }
            match conn.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(result) => {
                    *closed = true;
                    Poll::Ready(Err(match result {
                        Ok(()) => "the server closed the connection".into(),
                        Err(error) => error.into(),
                    }))
                }
            }
        })
        .await;
        // Idle time counts from the answer: a long poll is not idleness.
        self.last_used = Instant::now();
        result
    }

    /// Reconnects a connection that closed or sat idle past `IDLE_REOPEN`.
    async fn revive(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        if self.closed
            || self.send.is_closed()
            || now.saturating_duration_since(self.last_used) > IDLE_REOPEN
        {
            (self.send, self.conn) = connect(self.target.addr).await?;
            self.closed = false;
        }
        self.last_used = now;
        Ok(())
    }
}

/// A fresh connection (TCP_NODELAY: requests are small and latency-bound).
async fn connect(addr: SocketAddr) -> Result<Parts, Error> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (send, conn) = http1::handshake(TokioIo::new(stream)).await?;
    Ok((send, Box::pin(conn)))
}
