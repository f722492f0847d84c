//! Shared by the end-to-end benches: a kept-alive HTTP/1 client connection
//! to the server under test, driven by the task that uses it.
#![allow(dead_code)] // each bench uses a different part

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
