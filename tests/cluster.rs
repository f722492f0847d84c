//! Cluster mode's failure cases, end to end: real `parlor` processes (the
//! binary, so that a node can be killed with SIGKILL) sharing a real
//! `redis-server` that each test starts on its own port and directory.
//!
//! What a client relies on: a node's death costs it nothing (the same token
//! and cursor on another node: no 401, no gap, no duplicate); one
//! `client_msg_id` is one message whichever nodes it went through; Redis
//! down is a prompt 503 `store_unavailable`, and Redis back on its AOF is
//! everything as it was; Redis back empty is a 401 and a rejoin; a bad
//! `--redis` stops the start with a message that says why.
//!
//! Every wait is bounded and generous (the box is shared); nothing asserts
//! tight timing. The nodes and the client are in `common::nodes`.

#![cfg(unix)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::nginx::Nginx;
use common::nodes::{
    eventually, get, lobby_history, post, run_to_exit, texts, Client, Node, PATIENCE,
};
use common::redis::RedisServer;
use common::{encode_form, request_to, try_request_to};
use hyper::Method;

#[test]
fn the_test_redis_keeps_what_it_fsynced_across_a_kill() {
    let mut redis = RedisServer::start();
    assert_ne!(redis.port(), 6379, "never the system's Redis");
    assert_eq!(redis.command(&["SET", "kept", "yes"]), "+OK\r\n");
    redis.kill();
    redis.restart();
    assert_eq!(redis.command(&["GET", "kept"]), "$3\r\nyes\r\n");
    redis.restart_empty();
    assert_eq!(redis.command(&["GET", "kept"]), "$-1\r\n");
}

#[tokio::test]
async fn a_redis_url_that_does_not_parse_is_refused_naming_it() {
    let (status, stderr) = run_to_exit(&["--redis", "rdis:/nowhere"]).await;
    assert!(!status.success(), "a bad URL must stop the start");
    assert!(stderr.contains("rdis:/nowhere"), "names the URL: {stderr}");
}

#[tokio::test]
async fn redis_with_a_store_of_its_own_is_refused() {
    let url = "redis://127.0.0.1:1/0";
    for store in [
        &["--ephemeral"][..],
        &["--data-dir", "/tmp/parlor-nowhere"][..],
    ] {
        let mut args = vec!["--redis", url];
        args.extend_from_slice(store);
        let (status, stderr) = run_to_exit(&args).await;
        assert!(!status.success(), "{args:?} must stop the start");
        assert!(
            stderr.contains("--redis") && stderr.contains(store[0]),
            "{args:?}: says which flags clash: {stderr}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_redis_at_start_is_refused_with_exit_code_1() {
    // A port nothing listens on: taken and released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let (status, stderr) = run_to_exit(&["--listen", "127.0.0.1:0", "--redis", &url]).await;
    assert_eq!(status.code(), Some(1), "exit code 1: {stderr}");
    assert!(
        stderr.contains("cannot reach Redis") && stderr.contains(&format!("{port}")),
        "a clear message naming the Redis: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_a_parked_poll_costs_its_client_nothing() {
    let redis = RedisServer::start();
    let mut doomed = Node::start(&redis.url()).await;
    let survivor = Node::start(&redis.url()).await;
    let (a, b) = (doomed.addr, survivor.addr);

    let bob = Client::join(b, "bob").await;
    let mut ann = Client::join(a, "ann").await;
    ann.read_all(a).await;

    // A poll parked on A is woken by a send through B.
    let cursor = ann.cursor;
    let parked = {
        let (token, addr) = (ann.token.clone(), a);
        tokio::spawn(async move {
            let query = [
                ("token", token.as_str()),
                ("cursor", &cursor.to_string()),
                ("timeout", "20000"),
            ];
            get(addr, "/poll", &query).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bob.send(b, "lobby", "one").await.status, 200);
    let woken = tokio::time::timeout(PATIENCE, parked)
        .await
        .expect("the parked poll answers")
        .expect("the poll task");
    assert_eq!(woken.status, 200, "{}", woken.text);
    let mut seen = texts(woken.json["events"].as_array().expect("events"));
    ann.cursor = woken.json["cursor"].as_u64().expect("a cursor");
    // The woken poll may have answered before "one" was copied in; read
    // the rest on A.
    seen.extend(texts(&ann.read_all(a).await));
    assert_eq!(seen, ["one"]);

    // Park again on A, then kill A with the poll parked.
    let cursor = ann.cursor;
    let orphan = {
        let (token, addr) = (ann.token.clone(), a);
        tokio::spawn(async move {
            let query = format!("/poll?token={token}&cursor={cursor}&timeout=20000");
            try_request_to(addr, Method::GET, &query, &[], Vec::new()).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    doomed.kill().await;
    let orphan = orphan.await.expect("the poll task");
    assert!(orphan.is_err(), "a killed node answers nothing: {orphan:?}");

    for text in ["two", "three"] {
        assert_eq!(bob.send(b, "lobby", text).await.status, 200);
    }
    // The same token and cursor on B: known, and exactly what followed.
    let answer = ann.poll_raw(b, cursor, 0).await;
    assert_eq!(
        answer.status, 200,
        "the token survives its node: {}",
        answer.text
    );
    let first_read = answer.json["events"].as_array().expect("events").clone();
    // A retry of that cursor (the answer was lost) re-delivers the same.
    let retry = ann.poll_raw(b, cursor, 0).await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert_eq!(retry.json, answer.json, "a retry answers the same");
    ann.cursor = answer.json["cursor"].as_u64().expect("a cursor");
    let mut after_kill = texts(&first_read);
    after_kill.extend(texts(&ann.read_all(b).await));
    assert_eq!(after_kill, ["two", "three"], "no gap and no duplicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_msg_id_through_two_nodes_at_once_is_one_message() {
    let redis = RedisServer::start();
    let first = Node::start(&redis.url()).await;
    let second = Node::start(&redis.url()).await;
    let ann = Client::join(first.addr, "ann").await;
    for round in 0..20 {
        let id = format!("m-{round}");
        let text = format!("text {round}");
        let send = |addr| {
            let form = [
                ("token", ann.token.as_str()),
                ("conversation", "lobby"),
                ("text", text.as_str()),
                ("client_msg_id", id.as_str()),
            ];
            let body = encode_form(&form).into_bytes();
            async move {
                request_to(
                    addr,
                    Method::POST,
                    "/send",
                    &[("content-type", "application/x-www-form-urlencoded")],
                    body,
                )
                .await
            }
        };
        let answers = common::join_all([send(first.addr), send(second.addr)]).await;
        for answer in &answers {
            assert_eq!(answer.status, 200, "{}", answer.text);
        }
        assert_eq!(
            answers[0].json, answers[1].json,
            "both answers carry the one message"
        );
    }
    let history = lobby_history(second.addr, &ann.token).await;
    assert_eq!(history.len(), 20, "{history:#?}");
    let ids: HashSet<_> = history.iter().map(|m| m["client_msg_id"].clone()).collect();
    assert_eq!(ids.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_answers_503_promptly_and_its_aof_brings_everything_back() {
    let mut redis = RedisServer::start();
    let first = Node::start(&redis.url()).await;
    let second = Node::start(&redis.url()).await;
    let nodes = [first.addr, second.addr];
    let mut ann = Client::join(nodes[0], "ann").await;
    let bob = Client::join(nodes[1], "bob").await;
    ann.read_all(nodes[1]).await;

    // Sends keep coming through both nodes while Redis dies: whatever was
    // answered 200 must be there after the restart.
    let sender = {
        let token = bob.token.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut refused = 0;
            for n in 0..400 {
                let text = format!("m{n}");
                let form = [
                    ("token", token.as_str()),
                    ("conversation", "lobby"),
                    ("text", text.as_str()),
                    ("client_msg_id", text.as_str()),
                ];
                let answer = post(nodes[n % 2], "/send", &form).await;
                match answer.status {
                    200 => acknowledged.push(text),
                    503 => {
                        assert_eq!(answer.code(), "store_unavailable", "{}", answer.text);
                        refused += 1;
                        if refused >= 4 {
                            break;
                        }
                    }
                    _ => panic!("a send while Redis dies: {}", answer.text),
                }
            }
            acknowledged
        })
    };
    // A poll parked while Redis dies is answered (empty or 503), never hung.
    let parked = {
        let (token, cursor) = (ann.token.clone(), ann.cursor);
        tokio::spawn(async move {
            // Parked on a node ahead of the sends' wake-ups is fine either way.
            let query = [
                ("token", token.as_str()),
                ("cursor", &cursor.to_string()),
                ("timeout", "5000"),
            ];
            get(nodes[0], "/poll", &query).await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.kill();
    let acknowledged = tokio::time::timeout(PATIENCE, sender)
        .await
        .expect("the sends end: every one answered within the patience")
        .expect("the sender task");
    let parked = tokio::time::timeout(PATIENCE, parked)
        .await
        .expect("the parked poll answers")
        .expect("the poll task");
    assert!(
        parked.status == 200 || parked.code() == "store_unavailable",
        "a poll parked across the kill: {}",
        parked.text
    );

    // Down: every endpoint answers 503 store_unavailable, on every node,
    // within the patience (each request is bounded by the harness).
    let cursor = ann.cursor.to_string();
    for addr in nodes {
        let started = Instant::now();
        let answers = [
            post(addr, "/join", &[("name", "cyd"), ("password", "pw-cyd")]).await,
            get(addr, "/poll", &[("token", &ann.token), ("cursor", &cursor)]).await,
            bob.send(addr, "lobby", "lost").await,
            get(addr, "/users", &[("token", &ann.token)]).await,
            get(
                addr,
                "/history",
                &[("token", &ann.token), ("conversation", "lobby")],
            )
            .await,
        ];
        for answer in answers {
            assert_eq!(answer.status, 503, "{}", answer.text);
            assert_eq!(answer.code(), "store_unavailable", "{}", answer.text);
        }
        assert!(started.elapsed() < PATIENCE);
    }

    // Back on its AOF: the nodes reconnect by themselves, tokens and
    // cursors are as they were, and every acknowledged send is there.
    redis.restart();
    let events = eventually("the cluster serves again", || {
        let ann = &ann;
        async move {
            let answer = ann.poll_raw(nodes[1], ann.cursor, 0).await;
            match answer.status {
                503 => None,
                200 => Some(answer),
                _ => panic!("after the restart: {}", answer.text),
            }
        }
    })
    .await;
    ann.cursor = events.json["cursor"].as_u64().expect("a cursor");
    let mut delivered = texts(events.json["events"].as_array().expect("events"));
    delivered.extend(texts(&ann.read_all(nodes[0]).await));
    let history: Vec<String> = lobby_history(nodes[0], &ann.token)
        .await
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    let in_history: HashSet<&String> = history.iter().collect();
    let in_mailbox: HashSet<&String> = delivered.iter().collect();
    for text in &acknowledged {
        assert!(
            in_history.contains(text),
            "{text} was acknowledged and lost"
        );
        assert!(in_mailbox.contains(text), "{text} never reached ann");
    }
    assert!(!in_history.contains(&"lost".to_owned()));
    assert_eq!(bob.send(nodes[0], "lobby", "after").await.status, 200);
    assert_eq!(texts(&ann.read_all(nodes[1]).await), ["after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_back_empty_answers_401_and_a_rejoin_works() {
    let mut redis = RedisServer::start();
    let first = Node::start(&redis.url()).await;
    let second = Node::start(&redis.url()).await;
    let ann = Client::join(first.addr, "ann").await;
    assert_eq!(ann.send(second.addr, "lobby", "before").await.status, 200);

    redis.restart_empty();
    let refused = eventually("the nodes reach the empty Redis", || {
        let ann = &ann;
        async move {
            let answer = ann.poll_raw(second.addr, ann.cursor, 0).await;
            (answer.status != 503).then_some(answer)
        }
    })
    .await;
    assert_eq!(refused.status, 401, "{}", refused.text);
    assert_eq!(refused.code(), "unknown_client");

    // The other node may answer 503 until it has reconnected too.
    let rejoined = eventually("ann joins again", || async {
        let answer = post(
            first.addr,
            "/join",
            &[("name", "ann"), ("password", "pw-ann")],
        )
        .await;
        (answer.status != 503).then_some(answer)
    })
    .await;
    assert_eq!(rejoined.status, 200, "{}", rejoined.text);
    let mut again = Client {
        name: "ann".into(),
        token: rejoined.json["token"].as_str().expect("a token").to_owned(),
        cursor: rejoined.json["cursor"].as_u64().expect("a cursor"),
    };
    assert_eq!(again.send(second.addr, "lobby", "after").await.status, 200);
    assert_eq!(texts(&again.read_all(first.addr).await), ["after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_a_node_can_die_and_its_clients_do_not_notice() {
    let redis = RedisServer::start();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::start(&redis.url()).await);
    }
    let nginx = Nginx::start_cluster([nodes[0].addr, nodes[1].addr, nodes[2].addr]);
    let entry = nginx.addr;
    let mut ann = Client::join(entry, "ann").await;
    let bob = Client::join(entry, "bob").await;
    ann.read_all(entry).await;

    // Round robin puts ann's poll and bob's send on different nodes.
    let parked = {
        let (token, cursor) = (ann.token.clone(), ann.cursor);
        tokio::spawn(async move {
            let cursor = cursor.to_string();
            let query = [
                ("token", token.as_str()),
                ("cursor", &cursor),
                ("timeout", "20000"),
            ];
            get(entry, "/poll", &query).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bob.send(entry, "lobby", "one").await.status, 200);
    let woken = tokio::time::timeout(PATIENCE, parked)
        .await
        .expect("the parked poll answers")
        .expect("the poll task");
    assert_eq!(woken.status, 200, "{}", woken.text);
    let mut seen = texts(woken.json["events"].as_array().expect("events"));
    ann.cursor = woken.json["cursor"].as_u64().expect("a cursor");
    seen.extend(texts(&ann.read_all(entry).await));
    assert_eq!(seen, ["one"]);

    // One node dies. nginx sends what it would have had to the others; a
    // send that reached it as it died is answered 502 and retried with its
    // client_msg_id, as a client does.
    nodes[0].kill().await;
    let mut sent = Vec::new();
    for n in 0..12 {
        let text = format!("m{n}");
        let form = [
            ("token", bob.token.as_str()),
            ("conversation", "lobby"),
            ("text", text.as_str()),
            ("client_msg_id", text.as_str()),
        ];
        let answer = eventually("a send through nginx", || async {
            let answer = post(entry, "/send", &form).await;
            (answer.status != 502).then_some(answer)
        })
        .await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        sent.push(text);
    }
    let mut after = Vec::new();
    while after.len() < sent.len() {
        let events = ann.poll(entry, 5000).await;
        assert!(!events.is_empty(), "ann waits for {sent:?}, has {after:?}");
        after.extend(texts(&events));
    }
    assert_eq!(after, sent, "each message once, in order");
}
