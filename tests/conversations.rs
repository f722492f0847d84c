//! Sending, ordering, dedupe, history, dialogs and rooms.

mod common;

use std::collections::HashSet;

use common::{of_type, TestServer};
use serde_json::{json, Value};

fn messages(events: &[Value]) -> Vec<(String, String)> {
    of_type(events, "message")
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().to_owned(),
                e["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_in_a_room_are_seen_by_all_in_one_order() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for name in ["ann", "bob", "cat", "dan"] {
        let client = server.join(name).await;
        assert_eq!(
            client.post("/rooms/join", &[("name", "ops")]).await.status,
            200
        );
        clients.push(client);
    }
    for client in &mut clients {
        client.events_now().await;
    }
    const PER_SENDER: usize = 25;
    let sends = clients.iter().map(|client| async move {
        for n in 0..PER_SENDER {
            let answer = client.send("ops", &format!("{}-{n}", client.name)).await;
            assert_eq!(answer.status, 200, "{}", answer.text);
        }
    });
    join_all(sends).await;

    let mut orders = Vec::new();
    for client in &mut clients {
        let mut seen = Vec::new();
        while seen.len() < 4 * PER_SENDER {
            let events = client.poll_for(1000).await;
            assert!(!events.is_empty(), "{} is missing messages", client.name);
            seen.extend(messages(&events));
        }
        assert_eq!(seen.len(), 4 * PER_SENDER, "no duplicates");
        let unique: HashSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), 4 * PER_SENDER, "every message once");
        // Each sender's own messages stay in the order sent.
        for sender in ["ann", "bob", "cat", "dan"] {
            let own: Vec<_> = seen
                .iter()
                .filter(|(from, _)| from == sender)
                .map(|(_, t)| t.clone())
                .collect();
            let expected: Vec<_> = (0..PER_SENDER).map(|n| format!("{sender}-{n}")).collect();
            assert_eq!(own, expected);
        }
        orders.push(seen);
    }
    for order in &orders[1..] {
        assert_eq!(order, &orders[0], "all members see one order");
    }
    // History has the same order.
    let history = clients[0]
        .get("/history", &[("conversation", "ops"), ("limit", "200")])
        .await;
    let stored: Vec<_> = history.json["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["from"].as_str().unwrap().to_owned(),
                m["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(stored, orders[0]);
}

/// Drives futures concurrently on this task until all are done.
async fn join_all<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut pending: Vec<_> = futures.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|future| future.as_mut().poll(cx).is_pending());
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

#[tokio::test]
async fn a_retried_send_with_the_same_client_msg_id_is_stored_once() {
    let server = TestServer::start().await;
    let mut ann = server.join("ann").await;
    let mut bob = server.join("bob").await;
    ann.events_now().await;
    bob.events_now().await;
    let fields = [
        ("conversation", "lobby"),
        ("text", "exactly once"),
        ("client_msg_id", "c-42"),
    ];
    let first = ann.post("/send", &fields).await;
    let again = ann.post("/send", &fields).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json, again.json, "the retry answers the first result");
    // The same id from another user is a different message.
    let other = bob.post("/send", &fields).await;
    assert_ne!(other.json["id"], first.json["id"]);
    let events = bob.events_now().await;
    assert_eq!(
        messages(&events),
        [
            ("ann".into(), "exactly once".into()),
            ("bob".into(), "exactly once".into())
        ]
    );
    let ann_events = ann.events_now().await;
    assert_eq!(of_type(&ann_events, "message").len(), 2);
    assert_eq!(of_type(&ann_events, "message")[0]["client_msg_id"], "c-42");
}

#[tokio::test]
async fn text_round_trips_byte_exact() {
    let server = TestServer::start().await;
    let mut ann = server.join("ann").await;
    ann.events_now().await;
    let tricky = [
        "<img src=x onerror=alert(1)>",
        "<script>alert('x')</script> & \"quotes\" \\ back",
        "emoji 😀👍🏽 and 中文 and ñ",
        "line\nbreak\ttab",
        "  spaces kept  ",
    ];
    for text in tricky {
        let answer = ann.send("lobby", text).await;
        assert_eq!(answer.status, 200);
    }
    // JSON bodies too.
    let answer = server
        .post_json(
            "/send",
            &json!({"token": ann.token, "conversation": "lobby", "text": "json ✓ <b>"}),
        )
        .await;
    assert_eq!(answer.status, 200);
    let events = ann.events_now().await;
    let got: Vec<_> = messages(&events).into_iter().map(|(_, t)| t).collect();
    let mut expected: Vec<String> = tricky.iter().map(|t| t.to_string()).collect();
    expected.push("json ✓ <b>".into());
    assert_eq!(got, expected);
}

#[tokio::test]
async fn dialogs_are_create_or_focus() {
    let server = TestServer::start().await;
    let mut ann = server.join("ann").await;
    let mut bob = server.join("bob").await;
    ann.events_now().await;
    bob.events_now().await;

    let first = ann.post("/dialog", &[("with", "bob")]).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let conversation = &first.json["conversation"];
    assert_eq!(conversation["id"], "dialog:ann:bob");
    assert_eq!(conversation["kind"], "dialog");
    assert_eq!(conversation["members"], json!(["ann", "bob"]));
    // Asking again, from either side, focuses the same dialog and adds nothing.
    let again = ann.post("/dialog", &[("with", "bob")]).await;
    let from_bob = bob.post("/dialog", &[("with", "ann")]).await;
    assert_eq!(again.json, first.json);
    assert_eq!(from_bob.json, first.json);
    for client in [&mut ann, &mut bob] {
        let events = client.events_now().await;
        let added = of_type(&events, "conversation_added");
        assert_eq!(
            added.len(),
            1,
            "{}: exactly one conversation_added",
            client.name
        );
        assert_eq!(added[0]["conversation"], *conversation);
    }
    // Messages in the dialog reach both, and only them.
    let mut cat = server.join("cat").await;
    cat.events_now().await;
    assert_eq!(bob.send("dialog:ann:bob", "psst").await.status, 200);
    assert_eq!(
        messages(&ann.events_now().await),
        [("bob".into(), "psst".into())]
    );
    assert!(messages(&cat.events_now().await).is_empty());
    // Outsiders can neither post nor read.
    assert_eq!(cat.send("dialog:ann:bob", "hi").await.code(), "not_member");
    let read = cat
        .get("/history", &[("conversation", "dialog:ann:bob")])
        .await;
    assert_eq!((read.status, read.code()), (403, "not_member"));

    let ghost = ann.post("/dialog", &[("with", "nobody")]).await;
    assert_eq!((ghost.status, ghost.code()), (404, "unknown_user"));
    let me = ann.post("/dialog", &[("with", "ann")]).await;
    assert_eq!((me.status, me.code()), (400, "invalid_user"));
}

#[tokio::test]
async fn rooms_join_leave_and_membership() {
    let server = TestServer::start().await;
    let mut ann = server.join("ann").await;
    let mut bob = server.join("bob").await;
    let mut cat = server.join("cat").await;
    for client in [&mut ann, &mut bob, &mut cat] {
        client.events_now().await;
    }
    let created = ann.post("/rooms/join", &[("name", "games")]).await;
    assert_eq!(created.status, 200);
    assert_eq!(
        created.json["conversation"],
        json!({"id": "games", "kind": "room", "name": "games", "members": ["ann"]})
    );
    let joined = bob.post("/rooms/join", &[("name", "games")]).await;
    assert_eq!(
        joined.json["conversation"]["members"],
        json!(["ann", "bob"])
    );
    // Joining again changes nothing.
    assert_eq!(
        bob.post("/rooms/join", &[("name", "games")]).await.json,
        joined.json
    );

    let ann_events = ann.events_now().await;
    assert_eq!(of_type(&ann_events, "conversation_added").len(), 1);
    let member_joined = of_type(&ann_events, "member_joined");
    assert_eq!(member_joined.len(), 1);
    assert_eq!(
        (
            member_joined[0]["conversation"].clone(),
            member_joined[0]["user"].clone()
        ),
        (json!("games"), json!("bob"))
    );
    let bob_events = bob.events_now().await;
    assert_eq!(
        of_type(&bob_events, "conversation_added")[0]["conversation"]["id"],
        "games"
    );

    assert_eq!(bob.send("games", "gg").await.status, 200);
    assert_eq!(cat.send("games", "let me in").await.code(), "not_member");
    assert!(messages(&cat.events_now().await).is_empty());
    assert_eq!(
        messages(&ann.events_now().await),
        [("bob".into(), "gg".into())]
    );

    let left = bob.post("/rooms/leave", &[("conversation", "games")]).await;
    assert_eq!(left.status, 200);
    let ann_events = ann.events_now().await;
    assert_eq!(of_type(&ann_events, "member_left")[0]["user"], "bob");
    let bob_events = bob.events_now().await;
    assert_eq!(
        of_type(&bob_events, "conversation_removed")[0]["reason"],
        "left"
    );
    assert_eq!(bob.send("games", "still here?").await.code(), "not_member");

    // A later /join of a room member lists the room.
    let ann2 = server.join("ann").await;
    let ids: Vec<_> = ann2.joined["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    assert_eq!(ids, [json!("lobby"), json!("games")]);

    assert_eq!(
        ann.post("/rooms/leave", &[("conversation", "lobby")])
            .await
            .code(),
        "cannot_leave_lobby"
    );
    assert_eq!(
        ann.post("/rooms/leave", &[("conversation", "nowhere")])
            .await
            .code(),
        "unknown_conversation"
    );
    assert_eq!(
        cat.post("/rooms/leave", &[("conversation", "games")])
            .await
            .code(),
        "not_member"
    );
    assert_eq!(
        ann.post("/rooms/join", &[("name", "bad name")])
            .await
            .code(),
        "invalid_name"
    );
    let lobby = ann.post("/rooms/join", &[("name", "lobby")]).await;
    assert_eq!(lobby.json["conversation"]["id"], "lobby");
}

#[tokio::test]
async fn history_pages_backwards_for_members() {
    let server = TestServer::start().await;
    let ann = server.join("ann").await;
    for n in 0..120 {
        ann.send("lobby", &format!("h{n}")).await;
    }
    let newest = ann.get("/history", &[("conversation", "lobby")]).await;
    let page = newest.json["messages"].as_array().unwrap();
    assert_eq!(page.len(), 50, "default limit");
    assert_eq!(page[0]["text"], "h70");
    assert_eq!(page[49]["text"], "h119");
    let before = page[0]["id"].as_u64().unwrap().to_string();
    let older = ann
        .get(
            "/history",
            &[
                ("conversation", "lobby"),
                ("before", &before),
                ("limit", "100"),
            ],
        )
        .await;
    let older = older.json["messages"].as_array().unwrap();
    assert_eq!(older.len(), 70);
    assert_eq!(older[0]["text"], "h0");
    assert_eq!(older[69]["text"], "h69");
    for message in older {
        assert!(message["id"].as_u64().unwrap() < before.parse::<u64>().unwrap());
        assert_eq!(message["from"], "ann");
        assert!(message["at"].as_u64().unwrap() > 1_600_000_000_000);
    }
    let missing = ann.get("/history", &[("conversation", "nowhere")]).await;
    assert_eq!(
        (missing.status, missing.code()),
        (404, "unknown_conversation")
    );
}

/// Senders and long-polling readers in many dialogs and the lobby at once,
/// on a server with four worker threads, while other users join, open a
/// room and leave: the hub's shards let requests of different users run in
/// parallel, and every reader must still get every message of its
/// conversations exactly once, each conversation in id order (with the
/// durable store too, where events wait for their commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_traffic_in_many_dialogs_and_the_lobby_arrives_once_and_in_order() {
    parallel_traffic(common::test_config()).await;
    let dir = std::env::temp_dir().join(format!("parlor-parallel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut durable = common::test_config();
    durable.ephemeral = false;
    durable.data_dir = dir.clone();
    parallel_traffic(durable).await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn parallel_traffic(config: parlor::Config) {
    const PAIRS: usize = 12;
    const PER_SENDER: usize = 20;
    const LOBBY_EVERY: usize = 5;
    let server = TestServer::start_with(config).await;
    let mut clients = Vec::new();
    for n in 0..2 * PAIRS {
        clients.push(server.join(&format!("u{n}")).await);
    }
    let mut dialogs = Vec::new();
    for pair in 0..PAIRS {
        let answer = clients[2 * pair]
            .post("/dialog", &[("with", &format!("u{}", 2 * pair + 1))])
            .await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        dialogs.push(
            answer.json["conversation"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // A second tab of each user reads, from the head on.
    let mut readers = Vec::new();
    for n in 0..2 * PAIRS {
        let mut reader = server.join(&format!("u{n}")).await;
        reader.events_until_empty().await;
        readers.push(reader);
    }

    // Each user sends PER_SENDER messages into its dialog, every
    // LOBBY_EVERY-th one into the lobby instead, while its reader tab
    // long-polls until it has all it should get.
    let lobby_per_sender = PER_SENDER / LOBBY_EVERY;
    let expected = 2 * (PER_SENDER - lobby_per_sender) + 2 * PAIRS * lobby_per_sender;
    let sends = clients.iter().enumerate().map(|(n, client)| {
        let dialog = dialogs[n / 2].clone();
        async move {
            for k in 0..PER_SENDER {
                let conversation = if k % LOBBY_EVERY == 0 {
                    "lobby"
                } else {
                    dialog.as_str()
                };
                let answer = client
                    .send(conversation, &format!("{}:{k}", client.name))
                    .await;
                assert_eq!(answer.status, 200, "{}", answer.text);
            }
        }
    });
    let reads = readers.iter_mut().map(|client| async move {
        let mut seen: Vec<Value> = Vec::new();
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while of_type(&seen, "message").len() < expected && std::time::Instant::now() < give_up {
            seen.extend(client.poll_for(2000).await);
        }
        (client.name.clone(), seen)
    });
    // Meanwhile other users come and go and open rooms: operations that take
    // every shard, racing the sends and polls that take a few.
    let server_ref = &server;
    let churn = async move {
        for k in 0..30 {
            let visitor = server_ref.join(&format!("visitor{k}")).await;
            let answer = visitor.post("/rooms/join", &[("name", "visitors")]).await;
            assert_eq!(answer.status, 200, "{}", answer.text);
            assert_eq!(visitor.post("/leave", &[]).await.status, 200);
        }
    };
    let (_, read, _) = tokio::join!(join_all(sends), common::join_all(reads), churn);

    for (name, events) in read {
        let got = of_type(&events, "message");
        assert_eq!(
            got.len(),
            expected,
            "{name} got {} of {expected}",
            got.len()
        );
        let ids: HashSet<u64> = got.iter().map(|m| m["id"].as_u64().unwrap()).collect();
        assert_eq!(ids.len(), expected, "{name} got a message twice");
        for conversation in ["lobby".to_owned()].iter().chain(&dialogs) {
            let in_order: Vec<u64> = got
                .iter()
                .filter(|m| m["conversation"] == conversation.as_str())
                .map(|m| m["id"].as_u64().unwrap())
                .collect();
            assert!(
                in_order.windows(2).all(|pair| pair[0] < pair[1]),
                "{name} got {conversation} out of order: {in_order:?}"
            );
        }
        // Each sender's messages in the order sent.
        for sender in 0..2 * PAIRS {
            let prefix = format!("u{sender}:");
            let sent: Vec<usize> = got
                .iter()
                .filter_map(|m| m["text"].as_str()?.strip_prefix(&prefix)?.parse().ok())
                .collect();
            assert!(
                sent.windows(2).all(|pair| pair[0] < pair[1]),
                "{name} got u{sender}'s messages out of order: {sent:?}"
            );
        }
    }
    server.stop().await;
}
