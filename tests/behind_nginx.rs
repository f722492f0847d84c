//! parlor behind a real nginx with the shipped proxy settings
//! (`contrib/nginx/parlor-proxy.conf`): long polls park through the proxy,
//! are woken by sends through it, and retries keep their cursor semantics.

mod common;

use std::net::SocketAddr;

use common::nginx::Nginx;
use common::{encode_form, of_type, post_from, request_to, test_config, Answer, TestServer};
use hyper::Method;
use serde_json::Value;

async fn post(addr: SocketAddr, path: &str, form: &[(&str, &str)]) -> Answer {
    request_to(
        addr,
        Method::POST,
        path,
        &[("content-type", "application/x-www-form-urlencoded")],
        encode_form(form).into_bytes(),
    )
    .await
}

async fn join(addr: SocketAddr, name: &str) -> (String, u64) {
    let password = format!("pw-{name}");
    let answer = post(addr, "/join", &[("name", name), ("password", &password)]).await;
    assert_eq!(answer.status, 200, "join {name} through nginx: {answer:?}");
    (
        answer.json["token"].as_str().unwrap().to_owned(),
        answer.json["cursor"].as_u64().unwrap(),
    )
}

fn texts(answer: &Answer) -> Vec<String> {
    let events: &[Value] = answer.json["events"].as_array().unwrap();
    of_type(events, "message")
        .iter()
        .map(|event| event["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_poll_parked_through_nginx_is_woken_by_a_send_through_nginx() {
    if common::skip_in_cluster_mode("counts one hub's parked polls") {
        return;
    }
    let server = TestServer::start().await;
    let nginx = Nginx::start(server.addr);
    let proxy = nginx.addr;

    let (ann, _) = join(proxy, "ann").await;
    let (bob, _) = join(proxy, "bob").await;
    // Read up to now (presence of both), so the next poll parks.
    let mut cursor = 0;
    loop {
        let cursor_text = cursor.to_string();
        let answer = post(
            proxy,
            "/poll",
            &[("token", &ann), ("cursor", &cursor_text), ("timeout", "0")],
        )
        .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let next = answer.json["cursor"].as_u64().unwrap();
        if next == cursor {
            break;
        }
        cursor = next;
    }

    let cursor_text = cursor.to_string();
    let ann_token = ann.clone();
    let parked = tokio::spawn(async move {
        post(
            proxy,
            "/poll",
            &[
                ("token", &ann_token),
                ("cursor", &cursor_text),
                ("timeout", "20000"),
            ],
        )
        .await
    });
    // The poll is parked at parlor, behind nginx, before the send.
    let waiting_since = std::time::Instant::now();
    while server.hub().stats().parked_polls == 0 {
        assert!(
            waiting_since.elapsed() < std::time::Duration::from_secs(20),
            "the poll never reached parlor through nginx"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let sent = post(
        proxy,
        "/send",
        &[
            ("token", &bob),
            ("conversation", "lobby"),
            ("text", "through the proxy"),
        ],
    )
    .await;
    assert_eq!(sent.status, 200, "{sent:?}");

    let woken = parked.await.unwrap();
    assert_eq!(woken.status, 200, "{woken:?}");
    assert_eq!(texts(&woken), ["through the proxy"]);

    // A retry of the same cursor through the proxy gets the same events.
    let cursor_text = cursor.to_string();
    let retried = post(
        proxy,
        "/poll",
        &[("token", &ann), ("cursor", &cursor_text), ("timeout", "0")],
    )
    .await;
    assert_eq!(texts(&retried), ["through the proxy"]);
    assert_eq!(retried.json["cursor"], woken.json["cursor"]);
    drop(nginx);
    server.stop().await;
}

/// Sign-ups from a client address through nginx: `(status, error code)`.
async fn sign_up(proxy: SocketAddr, from: [u8; 4], name: &str, forged: &str) -> (u16, String) {
    let answer = post_from(
        proxy,
        from,
        "/join",
        &[("x-forwarded-for", forged)],
        &[("name", name), ("password", "pw")],
    )
    .await;
    (answer.status, answer.code().to_owned())
}

#[tokio::test]
async fn with_nginx_trusted_each_client_address_has_its_own_limit_and_forging_changes_nothing() {
    let mut config = test_config();
    config.signups_per_ip = 2;
    config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let server = TestServer::start_with(config).await;
    let nginx = Nginx::start(server.addr);
    let proxy = nginx.addr;

    // 127.0.0.2 signs up twice, then is limited, whatever address it
    // claims: nginx appends the real one, and that is the one parlor uses.
    assert_eq!(
        sign_up(proxy, [127, 0, 0, 2], "a1", "203.0.113.1").await.0,
        200
    );
    assert_eq!(
        sign_up(proxy, [127, 0, 0, 2], "a2", "203.0.113.2").await.0,
        200
    );
    let (status, code) = sign_up(proxy, [127, 0, 0, 2], "a3", "203.0.113.3").await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    // Another client behind the same proxy has an allowance of its own.
    assert_eq!(
        sign_up(proxy, [127, 0, 0, 3], "b1", "127.0.0.2").await.0,
        200
    );
    assert_eq!(
        sign_up(proxy, [127, 0, 0, 3], "b2", "127.0.0.2").await.0,
        200
    );
    drop(nginx);
    server.stop().await;
}
