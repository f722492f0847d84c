//! The metrics listener (`--metrics-listen`): serves `GET /metrics` in the
//! Prometheus text format and 404 for anything else. Apart from the main
//! listener so that metrics are never public by accident: the operator
//! puts it on loopback or a network only the scraper reaches.
//!
//! Scrapes are rare (seconds apart) and cheap: counters are read with
//! relaxed loads, gauges with one shard lock at a time (`Hub::gauges`; a cluster node
//! gives its own parked polls) and
//! the connection registry's lock once.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::connections::Connections;
use crate::config::MAX_HEADER_BYTES;
use crate::engine::Engine;
use crate::http::endpoint_labels;

/// The Prometheus text format's media type.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves scrapes on `listener` until `stop` turns true. Each connection
/// is its own task; they end with the process (a scrape is short).
pub(super) async fn serve(
    listener: TcpListener,
    engine: Engine,
    connections: Connections,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .max_buf_size(MAX_HEADER_BYTES);
    let labels = endpoint_labels();
    // The guard `wait_for` returns is not `Send`: drop it at once.
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopped);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stopped => return,
        };
        let engine = engine.clone();
        let connections = connections.clone();
        let labels = labels.clone();
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
            let answer = answer(&request, &engine, &connections, &labels);
            async move { Ok::<_, Infallible>(answer) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(cause = %error, "metrics connection ended with an error");
            }
        });
    }
}

fn answer<B>(
    request: &Request<B>,
    engine: &Engine,
    connections: &Connections,
    labels: &[&str],
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let get = request.method() == Method::GET || request.method() == Method::HEAD;
    if !get || path != "/metrics" {
        let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    let mut gauges = engine.gauges();
    gauges.open_connections = connections.open();
    let text = engine.metrics().render(gauges, labels);
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    response
}
