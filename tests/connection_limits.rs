//! Connection bounds under a client that tries to hold them all: near
//! `--max-connections` the connection idle the longest is closed to make
//! room (a parked poll never is), and `--max-connections-per-ip` caps what
//! one address holds.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{send_on, test_config, Answer, TestServer};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::client::conn::http1::{handshake, SendRequest};
use hyper::header::CONNECTION;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

/// Generous bounds: the behaviour under test takes milliseconds, and the
/// old behaviour (waiting for a keep-alive slot to time out) takes 60 s.
const PATIENCE: Duration = Duration::from_secs(10);
/// How often a pinger sends /healthz on its keep-alive connection; far
/// shorter than the header timeout, so its connection never times out.
const PING_EVERY: Duration = Duration::from_millis(200);

/// A keep-alive HTTP/1 connection to `addr`, from `from` when given (any
/// loopback address reaches a server on 127.0.0.1).
async fn connect(
    addr: SocketAddr,
    from: Option<IpAddr>,
) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = match from {
        None => TcpStream::connect(addr).await,
        Some(ip) => {
            let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| e.to_string())?;
            socket.connect(addr).await
        }
    }
    .map_err(|e| e.to_string())?;
    let (sender, connection) = handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}

/// GET `path` on an open connection.
async fn get(sender: &mut SendRequest<Full<Bytes>>, path: &str) -> Result<Answer, String> {
    let request = Request::get(path)
        .header("host", "parlor.test")
        .body(Full::default())
        .map_err(|e| e.to_string())?;
    send_on(sender, request).await
}

/// Whether the server will close the connection after this answer.
fn closing(answer: &Answer) -> bool {
    answer
        .headers
        .get(CONNECTION)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"))
}

/// Pings /healthz every `PING_EVERY` on one keep-alive connection,
/// reconnecting whenever the server closes it, until `stop`; reports its
/// first answer on `ready`.
async fn keep_pinging(addr: SocketAddr, ready: mpsc::Sender<()>, mut stop: watch::Receiver<bool>) {
    let mut ready = Some(ready);
    while !*stop.borrow() {
        let Ok(mut sender) = connect(addr, None).await else {
            tokio::time::sleep(PING_EVERY).await;
            continue;
        };
        // Closed to make room (or refused mid-request): reconnect.
        while let Ok(Answer { status: 200, .. }) = get(&mut sender, "/healthz").await {
            if let Some(ready) = ready.take() {
                let _ = ready.send(()).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(PING_EVERY) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

#[tokio::test]
async fn busy_keep_alive_clients_cannot_lock_out_a_new_one() {
    let mut config = test_config();
    config.max_connections = 8;
    config.header_timeout = Duration::from_secs(60);
    let server = TestServer::start_with(config).await;

    let (stop, stopped) = watch::channel(false);
    let (ready, mut readied) = mpsc::channel(8);
    let pingers: Vec<_> = (0..8)
        .map(|_| tokio::spawn(keep_pinging(server.addr, ready.clone(), stopped.clone())))
        .collect();
    for _ in 0..8 {
        tokio::time::timeout(PATIENCE, readied.recv())
            .await
            .expect("each pinger is served once");
    }

    // Every slot is held by a client that is idle between pings.
    let answer = tokio::time::timeout(
        PATIENCE,
        server.post("/join", &[("name", "ninth"), ("password", "pw-ninth")]),
    )
    .await
    .expect("a ninth client waited for a slot that idle keep-alive connections held");
    assert_eq!(answer.status, 200, "{}", answer.text);

    let _ = stop.send(true);
    for pinger in pingers {
        pinger.await.unwrap();
    }
    server.stop().await;
}

#[tokio::test]
async fn parked_polls_are_never_closed_to_make_room() {
    if common::skip_in_cluster_mode("counts one hub's parked polls") {
        return;
    }
    let mut config = test_config();
    config.max_connections = 8;
    config.poll_timeout = Duration::from_secs(60);
    config.header_timeout = Duration::from_secs(60);
    let server = TestServer::start_with(config).await;

    let names: Vec<String> = (0..8).map(|i| format!("poller{i}")).collect();
    let mut clients = Vec::new();
    for name in &names {
        clients.push(server.join(name).await);
    }
    for client in &mut clients {
        client.events_until_empty().await;
    }

    // Eight polls park, one per connection: every slot is busy.
    let mut polls = Vec::new();
    for client in &clients {
        let mut sender = connect(server.addr, None).await.unwrap();
        let path = format!(
            "/poll?token={}&cursor={}&timeout=60000",
            client.token, client.cursor
        );
        polls.push(tokio::spawn(async move {
            let answer = get(&mut sender, &path).await;
            (answer, sender)
        }));
    }
    let deadline = Instant::now() + PATIENCE;
    while server.hub().stats().parked_polls < 8 {
        assert!(Instant::now() < deadline, "{:?}", server.hub().stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A ninth client waits: nothing is idle, so nothing is closed for it.
    let ninth = tokio::time::timeout(Duration::from_secs(2), server.get("/healthz", &[])).await;
    assert!(ninth.is_err(), "a ninth connection was served: {ninth:?}");
    assert_eq!(server.hub().stats().parked_polls, 8);

    // Woken, each poll answers normally, and its connection stays open.
    let report = server.hub().publish(&names, &json!({"wake": true}));
    assert_eq!(report.delivered.len(), 8, "{report:?}");
    for poll in polls {
        let (answer, _sender) = tokio::time::timeout(PATIENCE, poll)
            .await
            .expect("a woken poll answers")
            .unwrap();
        let answer = answer.expect("the parked poll's connection survived");
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(answer.json["events"][0]["data"], json!({"wake": true}));
        assert!(
            !closing(&answer),
            "a parked poll's connection was told to close"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn one_address_holds_at_most_its_cap() {
    let mut config = test_config();
    config.max_connections_per_ip = 4;
    let server = TestServer::start_with(config).await;
    let local: IpAddr = "127.0.0.1".parse().unwrap();

    let mut held = Vec::new();
    for _ in 0..4 {
        let mut sender = connect(server.addr, Some(local)).await.unwrap();
        assert_eq!(get(&mut sender, "/healthz").await.unwrap().status, 200);
        held.push(sender);
    }

    // A fifth from the same address is closed without an answer.
    let mut fifth = connect(server.addr, Some(local)).await.unwrap();
    let refused = get(&mut fifth, "/healthz").await;
    assert!(
        refused.is_err(),
        "a fifth connection was served: {refused:?}"
    );

    // Another address is not affected.
    let mut other = connect(server.addr, Some("127.0.0.2".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(get(&mut other, "/healthz").await.unwrap().status, 200);

    // The cap counts open connections: closing one makes room again (once
    // the server has seen it close).
    drop(held.pop());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut again = connect(server.addr, Some(local)).await.unwrap();
        if let Ok(Answer { status: 200, .. }) = get(&mut again, "/healthz").await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a closed connection still counts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both the held ones and the other address were kept meanwhile.
    for sender in &mut held {
        assert_eq!(get(sender, "/healthz").await.unwrap().status, 200);
    }
    assert_eq!(get(&mut other, "/healthz").await.unwrap().status, 200);
    server.stop().await;
}
