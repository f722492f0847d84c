//! Bounds on what one user, or a storm of changes, can cost everyone:
//! presence storms answer each parked poll a bounded number of times, a
//! room goes when its last member leaves, and a mailbox is bounded in bytes.
//!
//! The presence tests drive the hub directly under tokio's paused clock:
//! time moves only when every task is waiting, so each count below is the
//! same on an idle laptop and on a loaded CI box.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{test_config, TestClient, TestServer};
use parlor::config::{SyncMode, MAILBOX_MAX_BYTES, PRESENCE_COALESCE_WINDOW};
use parlor::event::Status;
use parlor::hub::{Hub, HubConfig};
use parlor::limits::Limits;
use parlor::store::memory::MemoryStore;
use parlor::store::sqlite::{SqliteOptions, SqliteStore};
use parlor::store::{Change, Store, StoredRoom};
use serde_json::{json, Value};
use tokio::time::Instant;

fn memory_hub() -> Hub {
    let config = HubConfig {
        // Far longer than any storm below: no poll ends by timing out.
        poll_timeout: Duration::from_secs(60),
        inactivity_timeout: Duration::from_secs(600),
        argon2_memory_kib: 8,
        argon2_iterations: 1,
    };
    // Hundreds of users join from one address here: no sign-up limit.
    let limits = Limits {
        signups_per_ip: None,
        ..Limits::default()
    };
    Hub::with_limits(Arc::new(MemoryStore::new()), config, limits).expect("an empty store loads")
}

/// A client process of `user` and its cursor.
async fn open(hub: &Hub, user: &str) -> (String, u64) {
    let session = hub.join(user, "pw").await.expect("joins");
    let token = session.token.expect("a new client has a token");
    (token, session.cursor)
}

/// What one polling client saw: how many answers, and each user's latest
/// status among the presence events.
#[derive(Default)]
struct Seen {
    answers: usize,
    statuses: HashMap<String, String>,
}

/// Polls (long polls, re-polling at once, like the browser client) until
/// `stop` is set, counting answers.
async fn poll_loop(hub: Hub, token: String, mut cursor: u64, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    while !stop.load(Ordering::Acquire) {
        let body = hub.poll(&token, cursor, None).await.expect("polls");
        let answer: Value = serde_json::from_slice(&body).expect("JSON");
        cursor = answer["cursor"].as_u64().expect("a cursor");
        let events = answer["events"].as_array().expect("events");
        if stop.load(Ordering::Acquire) {
            break; // the answer that ends the test (shutdown) is not counted
        }
        seen.answers += 1;
        for event in events.iter().filter(|event| event["type"] == "presence") {
            let user = event["user"].as_str().expect("a user").to_owned();
            let status = event["status"].as_str().expect("a status").to_owned();
            seen.statuses.insert(user, status);
        }
    }
    seen
}

/// 500 parked polls (100 users with 5 client processes each) and 200 status
/// changes spread over 2 s: each poller is answered about once per
/// coalescing window, not once per change, and still ends up knowing every
/// user's latest status.
#[tokio::test(start_paused = true)]
async fn a_presence_storm_costs_each_poller_one_answer_per_window() {
    const USERS: usize = 100;
    const CLIENTS_PER_USER: usize = 5;
    const CHANGES: usize = 200;
    const STORM: Duration = Duration::from_secs(2);
    let hub = memory_hub();
    let mut clients = Vec::new();
    for user in 0..USERS {
        for _ in 0..CLIENTS_PER_USER {
            clients.push((user, open(&hub, &format!("u{user}")).await));
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let pollers: Vec<_> = clients
        .iter()
        .map(|(_, (token, cursor))| {
            tokio::spawn(poll_loop(hub.clone(), token.clone(), *cursor, stop.clone()))
        })
        .collect();
    // Every poll parks before the storm starts.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Each user changes twice (busy, then away), each change made by a
    // different client process of it, one change every 10 ms.
    let started = Instant::now();
    for change in 0..CHANGES {
        let (user, round) = (change % USERS, change / USERS);
        let (token, _) = &clients[user * CLIENTS_PER_USER + round].1;
        let status = if round == 0 {
            Status::Busy
        } else {
            Status::Away
        };
        hub.set_status(token, status).expect("sets a status");
        tokio::time::sleep(STORM / CHANGES as u32).await;
    }
    let storm = started.elapsed();
    // Let the last window close, then end every poll.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Release);
    hub.shut_down();

    // One answer per window during the storm, plus the window still open
    // when it ended, plus one for the joins before it, with a margin.
    let bound = (storm.as_millis() / PRESENCE_COALESCE_WINDOW.as_millis()) as usize + 4;
    let mut most = 0;
    for poller in pollers {
        let seen = poller.await.expect("the poller ran");
        most = most.max(seen.answers);
        for user in 0..USERS {
            assert_eq!(
                seen.statuses.get(&format!("u{user}")).map(String::as_str),
                Some("away"),
                "every poller learns each user's latest status"
            );
        }
    }
    assert!(
        most <= bound,
        "a poller was answered {most} times for {CHANGES} status changes in {storm:?} \
         (at most {bound} expected: one per {PRESENCE_COALESCE_WINDOW:?} window)"
    );
}

/// A message reaches a poll at once even while the poll holds presence
/// changes and waits for more of them.
#[tokio::test(start_paused = true)]
async fn a_message_is_not_held_back_by_a_presence_window() {
    let hub = memory_hub();
    let (ann, cursor) = open(&hub, "ann").await;
    let (bob, _) = open(&hub, "bob").await;
    // Read bob's arrival, so that only what follows is new.
    let body = hub.poll(&ann, cursor, Some(Duration::ZERO)).await.unwrap();
    let cursor = serde_json::from_slice::<Value>(&body).unwrap()["cursor"]
        .as_u64()
        .unwrap();

    let poll = tokio::spawn({
        let (hub, ann) = (hub.clone(), ann.clone());
        async move {
            let body = hub.poll(&ann, cursor, None).await.expect("polls");
            (
                Instant::now(),
                serde_json::from_slice::<Value>(&body).unwrap(),
            )
        }
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    hub.set_status(&bob, Status::Busy).expect("sets a status");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let sent_at = Instant::now();
    hub.send(&bob, "lobby", "hello", None).await.expect("sends");
    let (answered_at, answer) = poll.await.expect("the poll ran");

    let kinds: Vec<&str> = answer["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["type"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"message"), "{answer}");
    assert_eq!(
        answered_at, sent_at,
        "the message was answered without waiting (paused clock: no time passed)"
    );
}

fn data_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("parlor-bounds-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn durable_server(dir: &std::path::Path) -> TestServer {
    let mut config = test_config();
    config.ephemeral = false;
    config.data_dir = dir.to_owned();
    TestServer::start_with(config).await
}

/// Joins (`join`) or leaves (`leave`) a room, which must succeed.
async fn rooms(client: &TestClient<'_>, action: &str, room: &str) {
    let field = if action == "join" {
        "name"
    } else {
        "conversation"
    };
    let path = format!("/rooms/{action}");
    let answer = client.post(&path, &[(field, room)]).await;
    assert_eq!(answer.status, 200, "{action} {room}: {}", answer.text);
}

/// Users joining and leaving rooms leave no empty rooms behind, so none
/// pile up against the cap on rooms and creation keeps working for others.
#[tokio::test]
async fn a_room_goes_when_its_last_member_leaves() {
    if common::skip_in_cluster_mode("counts one hub's rooms") {
        return;
    }
    let server = TestServer::start().await;
    // A few rooms each, from several users: well under any per-user cap on
    // creating rooms.
    for user in 0..10 {
        let client = server.join(&format!("u{user}")).await;
        for room in 0..5 {
            let name = format!("r{user}-{room}");
            rooms(&client, "join", &name).await;
            rooms(&client, "leave", &name).await;
        }
    }
    assert_eq!(
        server.hub().stats().rooms,
        0,
        "every emptied room was deleted"
    );
    let carol = server.join("carol").await;
    let created = carol.post("/rooms/join", &[("name", "r0-0")]).await;
    assert_eq!(created.status, 200, "{}", created.text);
    assert_eq!(created.json["conversation"]["members"], json!(["carol"]));
    assert_eq!(server.hub().stats().rooms, 1);
}

/// On the durable store: a deleted room and its history are gone after a
/// restart; a room with members, online or not, is kept.
#[tokio::test]
async fn a_deleted_room_stays_deleted_across_a_restart_and_one_with_members_stays() {
    if common::skip_in_cluster_mode("restarts a node on its SQLite store") {
        return;
    }
    let dir = data_dir("rooms");
    let server = durable_server(&dir).await;
    let ann = server.join("ann").await;
    let bob = server.join("bob").await;
    rooms(&ann, "join", "gone").await;
    assert_eq!(ann.send("gone", "only ann saw this").await.status, 200);
    rooms(&ann, "leave", "gone").await;
    rooms(&ann, "join", "kept").await;
    rooms(&bob, "join", "kept").await;
    assert_eq!(bob.send("kept", "still here").await.status, 200);
    rooms(&ann, "leave", "kept").await;
    // bob goes offline: members stay members while offline.
    assert_eq!(bob.post("/leave", &[]).await.status, 200);
    assert_eq!(server.hub().stats().rooms, 1);
    server.stop().await;

    let server = durable_server(&dir).await;
    assert_eq!(server.hub().stats().rooms, 1, "only `kept` came back");
    let carol = server.join("carol").await;
    let recreated = carol.post("/rooms/join", &[("name", "gone")]).await;
    assert_eq!(recreated.json["conversation"]["members"], json!(["carol"]));
    let history = carol.get("/history", &[("conversation", "gone")]).await;
    assert_eq!(
        history.json["messages"],
        json!([]),
        "a new room starts empty"
    );
    let kept = carol.post("/rooms/join", &[("name", "kept")]).await;
    assert_eq!(
        kept.json["conversation"]["members"],
        json!(["bob", "carol"])
    );
    let history = carol.get("/history", &[("conversation", "kept")]).await;
    assert_eq!(history.json["messages"][0]["text"], "still here");
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A room a store kept with nobody in it is deleted at start.
#[tokio::test]
async fn an_empty_room_in_the_store_is_deleted_at_start() {
    let dir = data_dir("empty-room");
    {
        let options = SqliteOptions {
            sync: SyncMode::Normal,
            history_retention: None,
        };
        let store = SqliteStore::open(&dir, options).expect("opens");
        let empty = StoredRoom {
            name: "empty".into(),
            members: Vec::new(),
        };
        store.submit(1, vec![Change::Room(empty)]);
        store.close();
    }
    let server = durable_server(&dir).await;
    assert_eq!(server.hub().stats().rooms, 0);
    server.stop().await;
    let server = durable_server(&dir).await;
    assert_eq!(server.hub().stats().rooms, 0, "and stays deleted");
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that never acknowledges cannot make its mailbox hold more than
/// `MAILBOX_MAX_BYTES`: large events push the oldest out, and a cursor
/// behind them expires (410) as when the mailbox is full of events.
#[tokio::test]
async fn a_mailbox_over_its_byte_bound_expires_an_old_cursor() {
    if common::skip_in_cluster_mode("reads one hub's stats") {
        return;
    }
    let mut config = test_config();
    config.admin_token = Some("s3cret".into());
    let server = TestServer::start_with(config).await;
    let mut ann = server.join("ann").await;
    ann.events_now().await;
    let stale = ann.cursor;
    // Few events (far under `MAILBOX_CAPACITY`), but large ones.
    let data = "x".repeat(60_000);
    let body = serde_json::to_vec(&json!({"users": ["ann"], "data": data})).unwrap();
    let events = MAILBOX_MAX_BYTES / data.len() + 2;
    for _ in 0..events {
        let published = server
            .request(
                hyper::Method::POST,
                "/api/publish",
                &[
                    ("authorization", "Bearer s3cret"),
                    ("content-type", "application/json"),
                ],
                body.clone(),
            )
            .await;
        assert_eq!(published.status, 200, "{}", published.text);
    }
    let expired = ann.poll_raw(stale, Some(0)).await;
    assert_eq!(expired.status, 410, "{}", expired.text.len());
    assert_eq!(expired.code(), "cursor_expired");
    let stats = server.hub().stats();
    assert!(
        stats.mailbox_events < events,
        "{} of {events} events kept",
        stats.mailbox_events
    );
}
