//! Cluster mode's core across nodes: several in-process parlor nodes on one
//! hermetic redis-server (its own port and directory, killed at the end).
//! Join on one node and poll on another, wake-ups and supersede across
//! nodes, presence, the exactly-once sweep, Redis going away and coming
//! back (on its AOF, or empty), a mailbox lost under a surviving token,
//! and a Redis that cannot be reached at start.

mod cluster_support;

use std::time::{Duration, Instant};

use cluster_support::{
    connection, drain, free_port, next_events, node_config, presence, spawn_poll, Node, Redis,
};
use parlor::Server;
use serde_json::Value;

#[tokio::test]
async fn a_client_joined_on_one_node_polls_on_another_and_is_woken_across_nodes() {
    let redis = Redis::start();
    let (a, b) = (Node::start(&redis).await, Node::start(&redis).await);
    let (ann, mut cursor) = a.join("ann").await;
    let (_, first) = b.poll(&ann, cursor, 0).await;
    // The same cursor again, on the other node, re-delivers (reading
    // never consumes; the next cursor acknowledges)...
    let (_, again) = a.poll(&ann, cursor, 0).await;
    assert_eq!(first, again);
    let events = drain(&b, &ann, &mut cursor).await;
    assert_eq!(presence(&events, "ann"), ["online"]);

    // ...and a poll parked on A answers a change made through B.
    let parked = spawn_poll(a.addr, &ann, cursor, 20_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (bob, _) = b.join("bob").await;
    let (status, json, waited) = parked.await.unwrap();
    assert_eq!(status, 200, "{json}");
    assert_eq!(
        presence(json["events"].as_array().unwrap(), "bob"),
        ["online"],
        "{json}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "woken only after {waited:?}"
    );
    let cursor = json["cursor"].as_u64().unwrap();

    // /status on B wakes a poll parked on A, too.
    let parked = spawn_poll(a.addr, &ann, cursor, 20_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = b
        .post("/status", &[("token", &bob), ("status", "away")])
        .await;
    assert_eq!(status, 200);
    let (status, json, waited) = parked.await.unwrap();
    assert_eq!(status, 200, "{json}");
    assert_eq!(
        presence(json["events"].as_array().unwrap(), "bob"),
        ["away"]
    );
    assert!(
        waited < Duration::from_secs(10),
        "woken only after {waited:?}"
    );

    // The online list is the same from every node.
    let (_, users) = a.get("/users", &[("token", &ann)]).await;
    let (_, same) = b.get("/users", &[("token", &bob)]).await;
    assert_eq!(users, same);
    assert_eq!(
        users["users"],
        serde_json::json!([{"name": "ann", "status": "online"}, {"name": "bob", "status": "away"}])
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_second_poll_on_another_node_supersedes_the_parked_one() {
    let redis = Redis::start();
    let (a, b) = (Node::start(&redis).await, Node::start(&redis).await);
    let (ann, mut cursor) = a.join("ann").await;
    drain(&a, &ann, &mut cursor).await;
    let first = spawn_poll(a.addr, &ann, cursor, 20_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, second) = b.poll(&ann, cursor, 0).await;
    assert_eq!(status, 200, "{second}");
    let (status, json, waited) = first.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(json, serde_json::json!({"cursor": cursor, "events": []}));
    assert!(
        waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn three_nodes_sweep_a_silent_client_exactly_once() {
    let redis = Redis::start();
    let short = node_config(&redis.url(), Duration::from_secs(2));
    let nodes = [
        Node::start_with(short.clone()).await,
        Node::start_with(short.clone()).await,
        Node::start_with(short).await,
    ];
    let (ann, mut cursor) = nodes[0].join("ann").await;
    let (_bob, _) = nodes[1].join("bob").await;
    // ann keeps polling (through every node); bob never polls again.
    let mut seen = Vec::new();
    let started = Instant::now();
    while !presence(&seen, "bob").contains(&"offline") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "bob never swept: {seen:?}"
        );
        let node = &nodes[seen.len() % 3];
        let (status, json) = node.poll(&ann, cursor, 1000).await;
        assert_eq!(status, 200, "{json}");
        cursor = json["cursor"].as_u64().unwrap();
        seen.extend(json["events"].as_array().unwrap().iter().cloned());
    }
    // A little longer (ann polling): no node sweeps bob a second time.
    for node in &nodes {
        let (status, json) = node.poll(&ann, cursor, 1000).await;
        assert_eq!(status, 200, "{json}");
        cursor = json["cursor"].as_u64().unwrap();
        seen.extend(json["events"].as_array().unwrap().iter().cloned());
    }
    seen.extend(drain(&nodes[2], &ann, &mut cursor).await);
    assert_eq!(presence(&seen, "bob"), ["online", "offline"], "{seen:?}");
    let swept: u64 = nodes.iter().map(Node::swept).sum();
    assert_eq!(swept, 1, "bob's one client process was swept {swept} times");
    let mut redis_connection = connection(&redis).await;
    let online: Vec<String> = redis::cmd("HKEYS")
        .arg("parlor:online")
        .query_async(&mut redis_connection)
        .await
        .unwrap();
    assert_eq!(online, ["ann"]);
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn redis_down_answers_503_then_everything_resumes_on_its_aof() {
    let mut redis = Redis::start();
    let a = Node::start(&redis).await;
    let (ann, mut cursor) = a.join("ann").await;
    drain(&a, &ann, &mut cursor).await;
    redis.kill();
    let started = Instant::now();
    let (status, json) = a.poll(&ann, cursor, 0).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (503, Some("store_unavailable"))
    );
    let (status, json) = a
        .post("/join", &[("name", "bob"), ("password", "pw")])
        .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (503, Some("store_unavailable"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(a.get("/healthz", &[]).await.0, 503);

    redis.restart();
    // Once Redis answers (its AOF loaded), the first request succeeds:
    // the node's connection is made again without a 503 first.
    let mut connection = connection(&redis).await;
    let started = Instant::now();
    while redis::cmd("PING")
        .query_async::<String>(&mut connection)
        .await
        .is_err()
    {
        assert!(started.elapsed() < Duration::from_secs(20), "no Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, json) = a.poll(&ann, cursor, 0).await;
    assert_eq!(status, 200, "{json}");
    // The same token and cursor are valid: nothing was lost.
    assert_eq!(json["cursor"], cursor);
    // Wake-ups are subscribed again.
    let started = Instant::now();
    while a.get("/healthz", &[]).await.0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not healthy again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_bob, _) = a.join("bob").await;
    let events = next_events(&a, &ann, &mut cursor).await;
    assert_eq!(presence(&events, "bob"), ["online"]);
    a.stop().await;
}

#[tokio::test]
async fn redis_restarted_empty_means_401_then_a_new_join() {
    let mut redis = Redis::start();
    let a = Node::start(&redis).await;
    let (ann, cursor) = a.join("ann").await;
    redis.restart_empty();
    let started = Instant::now();
    loop {
        let (status, json) = a.poll(&ann, cursor, 0).await;
        if status == 401 {
            assert_eq!(json["error"], "unknown_client");
            break;
        }
        assert_eq!(status, 503, "{json}");
        assert!(started.elapsed() < Duration::from_secs(20), "no recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ann, mut cursor) = a.join("ann").await;
    assert_eq!(cursor, 0);
    assert_eq!(
        presence(&drain(&a, &ann, &mut cursor).await, "ann"),
        ["online"]
    );
    a.stop().await;
}

#[tokio::test]
async fn a_mailbox_lost_under_a_surviving_token_answers_410_then_sync_resumes() {
    let redis = Redis::start();
    let a = Node::start(&redis).await;
    let (ann, mut cursor) = a.join("ann").await;
    drain(&a, &ann, &mut cursor).await;
    // As if a failover lost the writes that made the mailbox.
    let mut connection = connection(&redis).await;
    let _: () = redis::cmd("DEL")
        .arg("parlor:mmeta:{ann}")
        .arg("parlor:mbox:{ann}")
        .query_async(&mut connection)
        .await
        .unwrap();
    let (status, json) = a.poll(&ann, cursor, 0).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (410, Some("cursor_expired"))
    );
    let (status, session) = a.get("/sync", &[("token", &ann)]).await;
    assert_eq!(status, 200, "{session}");
    let mut cursor = session["cursor"].as_u64().unwrap();
    let (status, json) = a.poll(&ann, cursor, 0).await;
    assert_eq!(status, 200, "{json}");
    drain(&a, &ann, &mut cursor).await;
    // A cursor ahead of the head is treated as lost events, too.
    let (status, json) = a.poll(&ann, cursor + 5, 0).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (410, Some("cursor_expired"))
    );
    a.stop().await;
}

#[tokio::test]
async fn shutdown_answers_parked_polls_at_once() {
    let redis = Redis::start();
    let a = Node::start(&redis).await;
    let (ann, mut cursor) = a.join("ann").await;
    drain(&a, &ann, &mut cursor).await;
    let parked = spawn_poll(a.addr, &ann, cursor, 20_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    a.stop().await;
    let (status, json, _) = parked.await.unwrap();
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["events"], serde_json::json!([]));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn an_unreachable_redis_at_start_is_refused_with_its_url() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let config = node_config(&url, Duration::from_secs(30));
    let error = match Server::connect(config).await {
        Ok(_) => panic!("started without Redis"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("cannot reach Redis at"), "{error}");
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
}

/// Adds a lobby message the way the send script does (`lobby_append`):
/// a new id, the log, and — if `publish` — the broadcast wake-up.
async fn lobby_message(redis: &Redis, from: &str, text: &str, publish: bool) -> u64 {
    let mut connection = connection(redis).await;
    let id: u64 = redis::cmd("INCR")
        .arg("parlor:msgid")
        .query_async(&mut connection)
        .await
        .unwrap();
    let body = serde_json::json!({
        "type": "message", "id": id, "conversation": "lobby", "from": from, "text": text, "at": 1
    });
    let _: () = redis::cmd("ZADD")
        .arg("parlor:lobbylog")
        .arg(id)
        .arg(body.to_string())
        .query_async(&mut connection)
        .await
        .unwrap();
    if publish {
        let _: () = redis::cmd("PUBLISH")
            .arg("parlor:wake")
            .arg("b")
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    id
}

fn texts(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .filter(|event| event["type"] == "message")
        .map(|event| event["text"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn lobby_messages_are_copied_into_each_mailbox_at_poll_time() {
    let redis = Redis::start();
    let (a, b) = (Node::start(&redis).await, Node::start(&redis).await);
    let (ann, mut ann_cursor) = a.join("ann").await;
    drain(&a, &ann, &mut ann_cursor).await;
    // A message from before bob joined is not bob's.
    lobby_message(&redis, "ann", "before bob", true).await;
    let (bob, mut bob_cursor) = b.join("bob").await;
    assert_eq!(
        texts(&drain(&b, &bob, &mut bob_cursor).await),
        [] as [&str; 0]
    );
    assert_eq!(
        texts(&drain(&a, &ann, &mut ann_cursor).await),
        ["before bob"]
    );
    let parked = spawn_poll(a.addr, &ann, ann_cursor, 20_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = lobby_message(&redis, "bob", "hello", true).await;
    let (status, json, waited) = parked.await.unwrap();
    assert_eq!(status, 200, "{json}");
    assert!(waited < Duration::from_secs(10), "woken after {waited:?}");
    let events = json["events"].as_array().unwrap();
    assert!(texts(events).contains(&"hello"), "{json}");
    let message = events
        .iter()
        .find(|event| event["text"] == "hello")
        .unwrap();
    assert_eq!(message["id"], id);
    assert!(message["seq"].as_u64().unwrap() <= json["cursor"].as_u64().unwrap());
    let bobs = next_events(&a, &bob, &mut bob_cursor).await;
    assert_eq!(texts(&bobs), ["hello"], "{bobs:?}");

    // A lost wake-up delays the answer by a safety tick, no more.
    let ann_cursor = json["cursor"].as_u64().unwrap();
    let parked = spawn_poll(b.addr, &ann, ann_cursor, 20_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    lobby_message(&redis, "bob", "unannounced", false).await;
    let (status, json, waited) = parked.await.unwrap();
    assert_eq!(status, 200, "{json}");
    assert_eq!(texts(json["events"].as_array().unwrap()), ["unannounced"]);
    assert!(waited < Duration::from_secs(10), "found after {waited:?}");

    // Lobby messages the log dropped before a mailbox copied them expire
    // its cursors, as an overflowing mailbox does.
    let mut connection = connection(&redis).await;
    let _: () = redis::cmd("SET")
        .arg("parlor:lobbytrim")
        .arg(id + 1000)
        .query_async(&mut connection)
        .await
        .unwrap();
    let (status, json) = b.poll(&bob, bob_cursor, 0).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (410, Some("cursor_expired"))
    );
    let (_, session) = b.get("/sync", &[("token", &bob)]).await;
    let (status, json) = a.poll(&bob, session["cursor"].as_u64().unwrap(), 0).await;
    assert_eq!(status, 200, "{json}");
    a.stop().await;
    b.stop().await;
}
