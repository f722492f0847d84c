//! `--metrics-listen`: the Prometheus scrape, on its own listener only, and
//! counters that move by what the requests did.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{encode_form, request_to, test_config, Answer};
use hyper::Method;
use parlor::{Config, Server};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server with a metrics listener, both on 127.0.0.1 port 0.
struct Running {
    addr: SocketAddr,
    metrics: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    async fn start(mut config: Config) -> Running {
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::open(config).unwrap();
        let metrics = server.metrics_addr().expect("a metrics listener");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            server.run(listener, stopped).await.unwrap();
        });
        Running {
            addr,
            metrics,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        let body = encode_form(form).into_bytes();
        let headers = [("content-type", "application/x-www-form-urlencoded")];
        request_to(self.addr, Method::POST, path, &headers, body).await
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Answer {
        let path = format!("{path}?{}", encode_form(query));
        request_to(self.addr, Method::GET, &path, &[], Vec::new()).await
    }

    /// Joins `name`; returns the token and cursor.
    async fn join(&self, name: &str) -> (String, u64) {
        let password = format!("pw-{name}");
        let answer = self
            .post("/join", &[("name", name), ("password", &password)])
            .await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        let token = answer.json["token"].as_str().unwrap().to_owned();
        (token, answer.json["cursor"].as_u64().unwrap())
    }

    async fn poll(&self, token: &str, cursor: u64, timeout_ms: u64) -> Answer {
        let cursor = cursor.to_string();
        let timeout = timeout_ms.to_string();
        let query = [("token", token), ("cursor", &cursor), ("timeout", &timeout)];
        self.get("/poll", &query).await
    }

    async fn scrape(&self) -> Scrape {
        let answer = request_to(self.metrics, Method::GET, "/metrics", &[], Vec::new()).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        let kind = answer.headers["content-type"].to_str().unwrap();
        assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
        Scrape::parse(&answer.text)
    }

    /// Scrapes until `ready` holds (at most ~20 s: generous, the wait is
    /// for a state, not a duration).
    async fn scrape_until(&self, ready: impl Fn(&Scrape) -> bool) -> Scrape {
        for _ in 0..200 {
            let scrape = self.scrape().await;
            if ready(&scrape) {
                return scrape;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the metrics never reached the awaited state");
    }
}

/// A scrape: each sample line `name{labels} value`, keyed by all but the
/// value.
struct Scrape(HashMap<String, f64>);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples = HashMap::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.rsplit_once(' ').expect("`name value`");
            let value: f64 = value.parse().expect("a number");
            assert!(
                samples.insert(key.to_owned(), value).is_none(),
                "{key} twice"
            );
        }
        Scrape(samples)
    }

    /// The sample `key` (absent counters of a label set read 0).
    fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }
}

fn events(answer: &Answer) -> &[Value] {
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.json["events"].as_array().unwrap()
}

#[tokio::test]
async fn counters_move_by_what_the_requests_did() {
    let server = Running::start(test_config()).await;
    let before = server.scrape().await;

    let (ann, mut cursor) = server.join("ann").await;
    let (bob, _) = server.join("bob").await;
    // Read ann up to date, counting how her polls were answered.
    let (mut with_events, mut empty) = (0.0, 0.0);
    loop {
        let answer = server.poll(&ann, cursor, 0).await;
        cursor = answer.json["cursor"].as_u64().unwrap();
        if events(&answer).is_empty() {
            empty += 1.0;
            break;
        }
        with_events += 1.0;
    }

    // A parked poll shows in the gauge, then a message answers it.
    let parked = {
        let ann = ann.clone();
        let addr = server.addr;
        tokio::spawn(async move {
            let path = format!("/poll?token={ann}&cursor={cursor}&timeout=20000");
            request_to(addr, Method::GET, &path, &[], Vec::new()).await
        })
    };
    let during = server
        .scrape_until(|scrape| scrape.get("parlor_parked_polls") == 1.0)
        .await;
    assert_eq!(during.get("parlor_client_processes"), 2.0);
    assert_eq!(during.get("parlor_online_users"), 2.0);
    assert!(during.get("parlor_open_connections") >= 1.0);
    let sent = server
        .post(
            "/send",
            &[("token", &bob), ("conversation", "lobby"), ("text", "hi")],
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.text);
    let answer = parked.await.unwrap();
    assert!(!events(&answer).is_empty());
    with_events += 1.0;
    cursor = answer.json["cursor"].as_u64().unwrap();
    // Acknowledged: the mailbox dropped what came before, so cursor 0 has
    // expired.
    assert!(events(&server.poll(&ann, cursor, 0).await).is_empty());
    empty += 1.0;
    let expired = server.poll(&ann, 0, 0).await;
    assert_eq!(expired.status, 410, "{}", expired.text);

    // The main listener does not serve the metrics.
    let public = request_to(server.addr, Method::GET, "/metrics", &[], Vec::new()).await;
    assert_eq!(public.status, 404);
    // The metrics listener serves nothing else.
    let other = request_to(server.metrics, Method::GET, "/healthz", &[], Vec::new()).await;
    assert_eq!(other.status, 404);

    let after = server.scrape().await;
    let moved = |key: &str| after.get(key) - before.get(key);
    assert_eq!(
        moved("parlor_http_requests_total{endpoint=\"/join\",status=\"2xx\"}"),
        2.0
    );
    assert_eq!(
        moved("parlor_http_requests_total{endpoint=\"/send\",status=\"2xx\"}"),
        1.0
    );
    let polls_ok = with_events + empty;
    assert_eq!(
        moved("parlor_http_requests_total{endpoint=\"/poll\",status=\"2xx\"}"),
        polls_ok
    );
    assert_eq!(
        moved("parlor_http_requests_total{endpoint=\"/poll\",status=\"4xx\"}"),
        1.0
    );
    assert_eq!(
        moved("parlor_http_requests_total{endpoint=\"other\",status=\"4xx\"}"),
        1.0
    );
    assert_eq!(
        moved("parlor_poll_answers_total{reason=\"events\"}"),
        with_events
    );
    assert_eq!(
        moved("parlor_poll_answers_total{reason=\"timeout\"}"),
        empty
    );
    assert_eq!(
        moved("parlor_poll_answers_total{reason=\"superseded\"}"),
        0.0
    );
    assert_eq!(moved("parlor_messages_total"), 1.0);
    assert_eq!(moved("parlor_cursor_expired_total"), 1.0);
    assert_eq!(after.get("parlor_parked_polls"), 0.0);
    assert!(moved("parlor_wake_seconds_count") >= 1.0);
    // Measured from when the events became durable: far below a minute.
    let wakes = after.get("parlor_wake_seconds_count");
    assert!(after.get("parlor_wake_seconds_sum") < 60.0 * wakes);
    for histogram in [
        "parlor_store_commit_seconds",
        "parlor_store_batch_size",
        "parlor_wake_seconds",
    ] {
        let count = after.get(&format!("{histogram}_count"));
        let infinite = format!("{histogram}_bucket{{le=\"+Inf\"}}");
        assert_eq!(after.get(&infinite), count, "{histogram}");
        assert!(after.has(&format!("{histogram}_sum")), "{histogram}");
    }
    for limit in [
        "signup",
        "password",
        "bad_token",
        "status",
        "send",
        "room_create",
        "hash_queue",
    ] {
        let key = format!("parlor_rate_limited_total{{limit=\"{limit}\"}}");
        assert!(after.has(&key), "{key}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_swept_client_and_a_refused_join_are_counted() {
    let mut config = test_config();
    config.inactivity_timeout = Duration::from_millis(300);
    let server = Running::start(config).await;
    let before = server.scrape().await;
    server.join("ann").await;
    let after = server
        .scrape_until(|scrape| scrape.get("parlor_client_processes") == 0.0)
        .await;
    let swept = "parlor_swept_clients_total";
    assert_eq!(after.get(swept) - before.get(swept), 1.0);

    // New accounts per address are limited; one more is refused and counted.
    let mut config = test_config();
    config.signups_per_ip = 1;
    let limited = Running::start(config).await;
    limited.join("bob").await;
    let refused = limited
        .post("/join", &[("name", "carol"), ("password", "pw-carol")])
        .await;
    assert_eq!(refused.status, 429, "{}", refused.text);
    let scrape = limited.scrape().await;
    assert_eq!(
        scrape.get("parlor_rate_limited_total{limit=\"signup\"}"),
        1.0
    );
    limited.stop().await;
    server.stop().await;
}
