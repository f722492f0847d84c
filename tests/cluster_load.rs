//! Cluster mode under many polls and many joins: a lobby burst reaching
//! many parked polls of many users at once (their reads run in batches)
//! loses, duplicates and reorders nothing; a run of joins across nodes
//! each lists exactly who is online then (each node's copy of the online
//! list follows the changes).

mod cluster_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster_support::{drain, Node, Redis};
use serde_json::Value;

/// Message texts of the lobby messages among `events`.
fn texts(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|event| event["type"] == "message")
        .map(|event| event["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_lobby_burst_reaches_many_parked_polls_once_each_and_in_order() {
    let redis = Redis::start();
    let nodes = [Node::start(&redis).await, Node::start(&redis).await];
    // 30 users, the first 10 with a second client process on the other
    // node: 40 polls, most of them parked on one node, woken together.
    let mut clients = Vec::new();
    for n in 0..30 {
        let node = usize::from(n % 3 == 0);
        let (token, cursor) = nodes[node].join(&format!("user{n}")).await;
        clients.push((node, token, cursor));
        if n < 10 {
            let (token, cursor) = nodes[1 - node].join(&format!("user{n}")).await;
            clients.push((1 - node, token, cursor));
        }
    }
    for (node, token, cursor) in &mut clients {
        drain(&nodes[*node], token, cursor).await;
    }
    const MESSAGES: usize = 12;
    let expected: Vec<String> = (0..MESSAGES).map(|n| format!("burst {n}")).collect();
    let mut polls = Vec::new();
    for (node, token, mut cursor) in clients.clone() {
        let addr = nodes[node].addr;
        polls.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let started = Instant::now();
            while got.len() < MESSAGES && started.elapsed() < Duration::from_secs(60) {
                let (status, json, _) = cluster_support::spawn_poll(addr, &token, cursor, 20_000)
                    .await
                    .unwrap();
                assert_eq!(status, 200, "{json}");
                let next = json["cursor"].as_u64().unwrap();
                assert!(next >= cursor, "the cursor went back: {json}");
                cursor = next;
                got.extend(texts(json["events"].as_array().unwrap()));
            }
            (token, got)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sender = &clients[1].1;
    for text in &expected {
        let (status, json) = nodes[0]
            .post(
                "/send",
                &[("token", sender), ("conversation", "lobby"), ("text", text)],
            )
            .await;
        assert_eq!(status, 200, "{json}");
    }
    for poll in polls {
        let (token, got) = poll.await.unwrap();
        assert_eq!(got, expected, "client {token}");
    }
    for node in nodes {
        node.stop().await;
    }
}

/// The names and statuses of an answer's `users` list.
fn listed(json: &Value) -> BTreeMap<String, String> {
    json["users"]
        .as_array()
        .unwrap_or_else(|| panic!("no users list in {json}"))
        .iter()
        .map(|user| {
            let name = user["name"].as_str().unwrap().to_owned();
            (name, user["status"].as_str().unwrap().to_owned())
        })
        .collect()
}

#[tokio::test]
async fn every_join_across_nodes_lists_who_is_online_then() {
    let redis = Redis::start();
    let nodes = [Node::start(&redis).await, Node::start(&redis).await];
    let mut online: BTreeMap<String, String> = BTreeMap::new();
    let mut tokens = BTreeMap::new();
    for n in 0..16 {
        let name = format!("user{n:02}");
        let (status, json) = nodes[n % 2]
            .post("/join", &[("name", &name), ("password", "pw")])
            .await;
        assert_eq!(status, 200, "{json}");
        online.insert(name.clone(), "online".to_owned());
        assert_eq!(listed(&json), online, "join {n}");
        let names: Vec<&str> = json["conversations"][0]["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|name| name.as_str().unwrap())
            .collect();
        let expected: Vec<&str> = online.keys().map(String::as_str).collect();
        assert_eq!(names, expected, "the lobby's members at join {n}");
        tokens.insert(name, json["token"].as_str().unwrap().to_owned());
        // Changes on either node show in the next joins' lists: a status,
        // a user leaving, a user coming back.
        if n == 4 {
            let token = &tokens["user01"];
            let (status, _) = nodes[0]
                .post("/status", &[("token", token), ("status", "away")])
                .await;
            assert_eq!(status, 200);
            online.insert("user01".to_owned(), "away".to_owned());
        }
        if n == 7 {
            let (status, _) = nodes[1]
                .post("/leave", &[("token", &tokens["user02"])])
                .await;
            assert_eq!(status, 200);
            online.remove("user02");
        }
        if n == 10 {
            let (status, json) = nodes[0]
                .post("/join", &[("name", "user02"), ("password", "pw")])
                .await;
            assert_eq!(status, 200, "{json}");
            online.insert("user02".to_owned(), "online".to_owned());
            assert_eq!(listed(&json), online, "user02 back");
        }
    }
    for node in &nodes {
        let token = &tokens["user05"];
        let (status, json) = node.get("/users", &[("token", token)]).await;
        assert_eq!(status, 200, "{json}");
        assert_eq!(listed(&json), online);
    }
    for node in nodes {
        node.stop().await;
    }
}
