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
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE, HOST};
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

    /// A GET with extra request headers, answering the response's headers
    /// too: Nchan's long-poll subscriber carries its place in the channel in
    /// `Last-Modified`/`Etag` and wants them back as `If-Modified-Since`/
    /// `If-None-Match`.
    pub async fn get_with(
        &mut self,
        uri: String,
        headers: HeaderMap,
    ) -> Result<(Answer, HeaderMap), Error> {
        let mut request = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(HOST, self.target.host.clone())
            .body(Full::new(Bytes::new()))?;
        request.headers_mut().extend(headers);
        self.exchange(request).await
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
        Ok(self.exchange(request).await?.0)
    }

    /// `call`, keeping the response's headers.
    async fn exchange(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<(Answer, HeaderMap), Error> {
        self.revive().await?;
        let Conn {
            send, conn, closed, ..
        } = self;
        let mut work = pin!(async move {
            send.ready().await?;
            let (parts, body) = send.send_request(request).await?.into_parts();
            let body = body.collect().await?.to_bytes();
            let answer = Answer {
                status: parts.status,
                body,
            };
            Ok::<_, hyper::Error>((answer, parts.headers))
        });
        let result = poll_fn(|cx| {
            if let Poll::Ready(result) = work.as_mut().poll(cx) {
                return Poll::Ready(result.map_err(Error::from));
            }
            match conn.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(error)) => {
                    *closed = true;
                    Poll::Ready(Err(error.into()))
                }
                Poll::Ready(Ok(())) => {
                    *closed = true;
                    // An answer with `Connection: close` ends the connection
                    // in the same poll that hands it over: take it if whole.
                    match work.as_mut().poll(cx) {
                        Poll::Ready(result) => Poll::Ready(result.map_err(Error::from)),
                        Poll::Pending => {
                            Poll::Ready(Err("the server closed the connection".into()))
                        }
                    }
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A server that answers each connection's first request with `ok`
    /// plus `headers`, then closes it after `linger`.
    async fn one_answer_per_connection(headers: &'static str, linger: Duration) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = Target::at(listener.local_addr().expect("bound address"));
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{headers}\r\nok");
                    let _ = socket.write_all(answer.as_bytes()).await;
                    tokio::time::sleep(linger).await;
                });
            }
        });
        target
    }

    async fn get_ok(conn: &mut Conn) {
        let answer = conn.get("/healthz".to_owned()).await.expect("an answer");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(&answer.body[..], b"ok");
    }

    #[tokio::test]
    async fn a_connection_close_answer_is_read_and_the_next_request_reconnects() {
        let target = one_answer_per_connection("connection: close\r\n", Duration::ZERO).await;
        let mut conn = Conn::open(&target).await.expect("connect");
        for _ in 0..3 {
            get_ok(&mut conn).await;
        }
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_limit_is_replaced_before_the_next_request() {
        // No `Connection: close`, and the close comes after the answer was
        // read: the client cannot know the socket is gone.
        let target = one_answer_per_connection("", Duration::from_millis(300)).await;
        let mut conn = Conn::open(&target).await.expect("connect");
        get_ok(&mut conn).await;
        tokio::time::sleep(IDLE_REOPEN + Duration::from_millis(100)).await;
        get_ok(&mut conn).await;
    }
}
