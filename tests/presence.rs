//! Presence, statuses, the inactivity sweeper, dialog teardown, and that a
//! swept client leaves nothing behind.

mod common;

use std::time::Duration;

use common::{join_all, of_type, test_config, TestServer};
use serde_json::{json, Value};

fn presence(events: &[Value]) -> Vec<(String, String)> {
    of_type(events, "presence")
        .iter()
        .map(|e| {
            (
                e["user"].as_str().unwrap().to_owned(),
                e["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn short_timeouts() -> TestServer {
    let mut config = test_config();
    config.poll_timeout = Duration::from_millis(400);
    config.inactivity_timeout = Duration::from_millis(300);
    TestServer::start_with(config).await
}

#[tokio::test]
async fn joining_users_appear_and_statuses_propagate() {
    let server = TestServer::start().await;
    let mut ann = server.join("ann").await;
    assert_eq!(
        ann.joined["users"],
        json!([{"name": "ann", "status": "online"}])
    );
    let bob = server.join("bob").await;
    assert_eq!(
        bob.joined["users"],
        json!([{"name": "ann", "status": "online"}, {"name": "bob", "status": "online"}])
    );
    let lobby = &bob.joined["conversations"][0];
    assert_eq!(lobby["id"], "lobby");
    assert_eq!(lobby["members"], json!(["ann", "bob"]));

    let events = ann.events_now().await;
    assert!(presence(&events).contains(&("bob".into(), "online".into())));

    // A parked poll is woken by a status change.
    let parked = ann.poll_for(3000);
    let change = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        bob.post("/status", &[("status", "busy")]).await
    };
    let (events, changed) = tokio::join!(parked, change);
    assert_eq!(changed.status, 200);
    assert_eq!(presence(&events), [("bob".to_owned(), "busy".to_owned())]);

    let users = ann.get("/users", &[]).await;
    assert_eq!(
        users.json["users"],
        json!([{"name": "ann", "status": "online"}, {"name": "bob", "status": "busy"}])
    );
    assert_eq!(
        bob.post("/status", &[("status", "offline")]).await.code(),
        "invalid_status"
    );
}

#[tokio::test]
async fn a_storm_of_status_changes_collapses_to_the_latest() {
    let server = TestServer::start().await;
    let mut ann = server.join("ann").await;
    let bob = server.join("bob").await;
    ann.events_now().await;
    for status in ["busy", "away", "online", "busy", "away", "busy", "away"] {
        bob.post("/status", &[("status", status)]).await;
    }
    let events = ann.events_now().await;
    assert_eq!(presence(&events), [("bob".to_owned(), "away".to_owned())]);
}

#[tokio::test]
async fn a_join_storm_does_not_flood_or_expire_mailboxes() {
    let server = TestServer::start().await;
    let mut first = server.join("first").await;
    first.events_now().await;
    let cursor_before = first.cursor;
    // Each join would put a presence event in every mailbox if presence
    // were queued; as state, it costs the mailboxes nothing until read.
    let joiners = 1_000;
    // A cluster has no hub to count mailbox events in; the cursor checks
    // below hold in both modes.
    let single = !server.is_cluster();
    let mut message_deliveries = if single {
        server.hub().stats().mailbox_events
    } else {
        0
    };
    for n in 0..joiners {
        let answer = server
            .post("/join", &[("name", &format!("u{n}")), ("password", "pw")])
            .await;
        assert_eq!(answer.status, 200);
        if n % 250 == 0 {
            // interleave a message so there is something else to read too
            first.send("lobby", &format!("mark {n}")).await;
            message_deliveries += n + 2; // everyone online: first and u0..=un
        }
    }
    if single {
        let stats = server.hub().stats();
        assert_eq!(
            stats.mailbox_events, message_deliveries,
            "mailboxes hold what was there, the messages, and no queued presence: {stats:?}"
        );
    }
    let answer = first.poll_raw(cursor_before, Some(0)).await;
    assert_eq!(
        answer.status, 200,
        "the early joiner's cursor is still good"
    );
    // Reading on, the early joiner learns of every joiner exactly once.
    let mut online = std::collections::HashSet::new();
    let mut marks = 0;
    loop {
        let events = first.events_now().await;
        if events.is_empty() {
            break;
        }
        for (user, status) in presence(&events) {
            assert_eq!(status, "online");
            assert!(online.insert(user), "each joiner once");
        }
        marks += of_type(&events, "message").len();
    }
    assert_eq!(online.len(), joiners, "first had already read its own");
    assert_eq!(marks, 4);
    // A user joining now gets a snapshot, not a replay of the storm.
    let mut late = server.join("late").await;
    assert_eq!(late.joined["users_total"], joiners + 2);
    assert_eq!(
        late.joined["users"].as_array().unwrap().len(),
        parlor::config::ONLINE_PAGE,
        "the first page of them"
    );
    assert!(late.events_now().await.len() <= 1);
}

#[tokio::test]
async fn an_inactive_client_is_swept_and_its_user_goes_offline_with_its_dialogs() {
    let server = short_timeouts().await;
    let mut ann = server.join("ann").await;
    let bob = server.join("bob").await;
    let dialog = ann.post("/dialog", &[("with", "bob")]).await;
    assert_eq!(dialog.status, 200);
    ann.events_now().await;

    // Ann keeps polling; bob stops. Bob is swept after ~300 ms.
    let events = ann
        .poll_until(|e| e["type"] == "presence" && e["user"] == "bob" && e["status"] == "offline")
        .await;
    let removed = of_type(&events, "conversation_removed");
    assert_eq!(removed.len(), 1, "{events:#?}");
    assert_eq!(removed[0]["conversation"], "dialog:ann:bob");
    assert_eq!(removed[0]["reason"], "user_offline");

    let gone = bob.poll_raw(bob.cursor, Some(0)).await;
    assert_eq!((gone.status, gone.code()), (401, "unknown_client"));
    assert_eq!(
        ann.send("dialog:ann:bob", "hello?").await.code(),
        "unknown_conversation"
    );
    let users = ann.get("/users", &[]).await;
    assert_eq!(
        users.json["users"],
        json!([{"name": "ann", "status": "online"}])
    );
    // The dialog can be opened again when bob is back, history intact.
    let bob_again = server.join("bob").await;
    let reopened = bob_again.post("/dialog", &[("with", "ann")]).await;
    assert_eq!(reopened.json["conversation"]["id"], "dialog:ann:bob");
}

#[tokio::test]
async fn a_client_with_a_parked_poll_is_never_swept() {
    let mut config = test_config();
    config.poll_timeout = Duration::from_secs(2);
    config.inactivity_timeout = Duration::from_millis(300);
    let server = TestServer::start_with(config).await;
    let mut ann = server.join("ann").await;
    ann.events_now().await;
    // Parked for 2 s, far past the 300 ms inactivity timeout.
    let answer = ann.poll_raw(ann.cursor, None).await;
    assert_eq!(answer.status, 200);
    // Still alive right after: the countdown restarts when the poll ends.
    let answer = ann.poll_raw(ann.cursor, Some(0)).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn leave_ends_one_tab_and_the_last_tab_takes_the_user_offline() {
    let server = TestServer::start().await;
    let tab1 = server.join("ann").await;
    let mut tab2 = server.join("ann").await;
    let mut bob = server.join("bob").await;
    bob.events_now().await;
    tab2.events_now().await;

    assert_eq!(tab1.post("/leave", &[]).await.status, 200);
    assert_eq!(tab1.poll_raw(0, Some(0)).await.code(), "unknown_client");
    assert!(
        presence(&bob.events_now().await).is_empty(),
        "ann still has a tab"
    );

    // A parked poll of the leaving tab is answered (401) at once.
    let parked = tab2.poll_raw(tab2.cursor, None);
    let leave = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tab2.post("/leave", &[]).await
    };
    let (parked, left) = tokio::join!(parked, leave);
    assert_eq!(left.status, 200);
    assert_eq!(parked.code(), "unknown_client");
    assert_eq!(
        presence(&bob.events_now().await),
        [("ann".to_owned(), "offline".to_owned())]
    );
    // Snapshots of who is online taken while ann was there are not reused.
    let users = bob.get("/users", &[]).await;
    assert_eq!(
        users.json["users"],
        json!([{"name": "bob", "status": "online"}])
    );
    let sync = bob.get("/sync", &[]).await;
    assert_eq!(sync.json["users"], users.json["users"]);
    assert_eq!(sync.json["conversations"][0]["members"], json!(["bob"]));
}

#[tokio::test]
async fn swept_clients_leave_nothing_behind() {
    if common::skip_in_cluster_mode("counts what one hub holds (tests/cluster.rs checks Redis)") {
        return;
    }
    let mut config = test_config();
    config.poll_timeout = Duration::from_millis(400);
    config.inactivity_timeout = Duration::from_millis(1000);
    let server = TestServer::start_with(config).await;
    let mut watcher_events = 0;
    for round in 0..3 {
        let mut clients = Vec::new();
        for n in 0..40 {
            let client = server.join(&format!("user{n}")).await;
            clients.push(client);
        }
        for (n, client) in clients.iter().enumerate() {
            if n % 2 == 0 {
                let other = format!("user{}", n + 1);
                assert_eq!(
                    client.post("/dialog", &[("with", &other)]).await.status,
                    200
                );
            }
            client.send("lobby", &format!("round {round}")).await;
        }
        // Park some polls, then abandon everything: the parked polls end at
        // the poll timeout, then the sweeper removes every client.
        let parked = clients
            .iter()
            .take(10)
            .map(|client| client.poll_raw(client.cursor, None));
        for answer in join_all(parked).await {
            watcher_events += answer.json["events"].as_array().map_or(0, Vec::len);
        }
        drop(clients);
        let mut stats = server.hub().stats();
        for _ in 0..50 {
            if stats.clients == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            stats = server.hub().stats();
        }
        assert_eq!(stats.clients, 0, "round {round}: {stats:?}");
        assert_eq!(stats.tokens, 0);
        assert_eq!(stats.online_users, 0);
        assert_eq!(stats.parked_polls, 0);
        assert_eq!(stats.idle_clients, 0);
        assert_eq!(stats.dialogs, 0);
        assert_eq!(stats.mailbox_events, 0);
    }
    assert!(watcher_events > 0);
}
