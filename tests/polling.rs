//! /poll semantics: answering at once, parking, waking, timing out, retries
//! with the same cursor, superseding, several tabs of one user, expiry.

mod common;

use std::time::{Duration, Instant};

use common::{of_type, test_config, TestServer};
use serde_json::Value;

fn texts(events: &[Value]) -> Vec<String> {
    of_type(events, "message")
        .iter()
        .map(|event| event["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_parked_poll_is_woken_by_a_send() {
    let server = TestServer::start().await;
    let mut ann = server.join("ann").await;
    let bob = server.join("bob").await;
    ann.events_now().await; // presence of both

    let cursor = ann.cursor;
    let started = Instant::now();
    let parked = ann.poll_raw(cursor, None); // waits up to the 5 s poll timeout
    let send = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        bob.send("lobby", "wake up").await
    };
    let (answer, sent) = tokio::join!(parked, send);
    assert_eq!(sent.status, 200);
    assert_eq!(answer.status, 200);
    let events = answer.json["events"].as_array().unwrap();
    assert_eq!(texts(events), ["wake up"]);
    assert_eq!(events[0]["seq"].as_u64(), Some(cursor + 1));
    assert_eq!(answer.json["cursor"].as_u64(), Some(cursor + 1));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered by the send, not the timeout"
    );
}

#[tokio::test]
async fn a_poll_with_nothing_times_out_empty_with_the_same_cursor() {
    let mut config = test_config();
    config.poll_timeout = Duration::from_millis(300);
    let server = TestServer::start_with(config).await;
    let mut ann = server.join("ann").await;
    ann.events_now().await;
    let cursor = ann.cursor;
    // A longer timeout than the server's is cut to the server's.
    let answer = ann.poll_raw(cursor, Some(60_000)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json,
        serde_json::json!({"cursor": cursor, "events": []})
    );
    // A shorter one is honoured; 0 answers at once.
    let answer = ann.poll_raw(cursor, Some(0)).await;
    assert_eq!(answer.json["events"], serde_json::json!([]));
}

#[tokio::test]
async fn retrying_a_cursor_redelivers_the_same_events() {
    let server = TestServer::start().await;
    let mut ann = server.join("ann").await;
    ann.events_now().await;
    let cursor = ann.cursor;
    for n in 0..5 {
        assert_eq!(ann.send("lobby", &format!("m{n}")).await.status, 200);
    }
    // The first answer is "lost"; the retry with the same cursor gets it all.
    let first = ann.poll_raw(cursor, Some(0)).await;
    let retry = ann.poll_raw(cursor, Some(0)).await;
    assert_eq!(first.json, retry.json);
    assert_eq!(
        texts(first.json["events"].as_array().unwrap()),
        ["m0", "m1", "m2", "m3", "m4"]
    );
    // A cursor in the middle gets exactly the rest: no gap, no double.
    let middle = ann.poll_raw(cursor + 2, Some(0)).await;
    assert_eq!(
        texts(middle.json["events"].as_array().unwrap()),
        ["m2", "m3", "m4"]
    );
    // Numbers run on without holes.
    let seqs: Vec<u64> = first.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (cursor + 1..=cursor + 5).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_second_poll_supersedes_the_parked_one() {
    let server = TestServer::start().await;
    let mut ann = server.join("ann").await;
    ann.events_now().await;
    let cursor = ann.cursor;
    let started = Instant::now();
    let first = async {
        let answer = ann.poll_raw(cursor, None).await; // would wait 5 s
        (answer, started.elapsed())
    };
    let second = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        ann.poll_raw(cursor, Some(300)).await
    };
    let ((first, first_took), second) = tokio::join!(first, second);
    assert_eq!(first.status, 200);
    assert_eq!(
        first.json,
        serde_json::json!({"cursor": cursor, "events": []})
    );
    assert!(
        first_took < Duration::from_secs(3),
        "the superseded poll is answered when the second arrives, not at its timeout ({first_took:?})"
    );
    assert_eq!(second.status, 200);
}

#[tokio::test]
async fn every_tab_of_a_user_gets_every_event_with_its_own_cursor() {
    let server = TestServer::start().await;
    let mut tab1 = server.join("ann").await;
    let mut tab2 = server.join("ann").await;
    let bob = server.join("bob").await;
    assert_ne!(tab1.token, tab2.token);
    assert_ne!(tab1.joined["client"], tab2.joined["client"]);

    bob.send("lobby", "to all of ann").await;
    // Tab 2 parks; a message from tab 1 reaches tab 1 itself and tab 2.
    let events1 = tab1.poll_until(|e| e["type"] == "message").await;
    let events2 = tab2.poll_until(|e| e["type"] == "message").await;
    assert_eq!(texts(&events1), ["to all of ann"]);
    assert_eq!(texts(&events2), ["to all of ann"]);

    let parked = tab2.poll_for(3000);
    let send = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tab1.send("lobby", "from tab 1").await
    };
    let (events, _) = tokio::join!(parked, send);
    assert_eq!(texts(&events), ["from tab 1"]);
}

#[tokio::test]
async fn a_cursor_that_fell_out_of_the_mailbox_expires_and_sync_recovers() {
    let server = TestServer::start().await;
    let ann = server.join("ann").await;
    let mut bob = server.join("bob").await;
    bob.events_now().await;
    let stale = bob.cursor;
    let capacity = parlor::config::MAILBOX_CAPACITY;
    for n in 0..capacity + 5 {
        let answer = ann.send("lobby", &format!("flood {n}")).await;
        assert_eq!(answer.status, 200);
    }
    let expired = bob.poll_raw(stale, Some(0)).await;
    assert_eq!(expired.status, 410, "{}", expired.text);
    assert_eq!(expired.code(), "cursor_expired");

    let sync = bob.get("/sync", &[]).await;
    assert_eq!(sync.status, 200);
    assert_eq!(sync.json["user"], "bob");
    assert!(
        sync.json.get("token").is_none(),
        "sync does not hand out tokens"
    );
    let head = sync.json["cursor"].as_u64().unwrap();
    let answer = bob.poll_raw(head, Some(0)).await;
    assert_eq!(answer.status, 200);
    // History carries what the mailbox dropped.
    let history = bob
        .get("/history", &[("conversation", "lobby"), ("limit", "3")])
        .await;
    assert_eq!(
        texts_of_history(&history.json),
        [
            format!("flood {}", capacity + 2),
            format!("flood {}", capacity + 3),
            format!("flood {}", capacity + 4)
        ]
    );
    // A cursor from the future is a client bug, told as such. A cluster
    // cannot tell it from Redis having lost events, and has the client
    // resync.
    let ahead = bob.poll_raw(head + 100, Some(0)).await;
    if server.is_cluster() {
        assert_eq!((ahead.status, ahead.code()), (410, "cursor_expired"));
    } else {
        assert_eq!((ahead.status, ahead.code()), (400, "invalid_cursor"));
    }
}

fn texts_of_history(json: &Value) -> Vec<String> {
    json["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_poll_answers_a_bounded_batch_and_the_rest_follows() {
    let server = TestServer::start().await;
    let mut ann = server.join("ann").await;
    ann.events_now().await;
    let batch = parlor::config::MAX_EVENTS_PER_POLL;
    for n in 0..batch + 10 {
        ann.send("lobby", &n.to_string()).await;
    }
    let first = ann.events_now().await;
    assert_eq!(first.len(), batch);
    let rest = ann.events_now().await;
    assert_eq!(rest.len(), 10);
    assert_eq!(rest.last().unwrap()["text"], (batch + 9).to_string());
}

#[tokio::test]
async fn post_poll_with_json_and_bearer_works_like_get() {
    let server = TestServer::start().await;
    let ann = server.join("ann").await;
    let bearer = format!("Bearer {}", ann.token);
    let answer = server
        .request(
            hyper::Method::POST,
            "/poll",
            &[
                ("content-type", "application/json"),
                ("authorization", &bearer),
            ],
            serde_json::to_vec(&serde_json::json!({"cursor": 0, "timeout": 0})).unwrap(),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.headers["cache-control"], "no-store");
    assert_eq!(
        of_type(answer.json["events"].as_array().unwrap(), "presence").len(),
        1
    );
}

#[tokio::test]
async fn a_mailbox_keeps_only_what_some_tab_has_not_acknowledged() {
    if common::skip_in_cluster_mode("counts the events in one hub's mailboxes") {
        return;
    }
    let server = TestServer::start().await;
    let mut tab1 = server.join("ann").await;
    let mut tab2 = server.join("ann").await;
    // Each tab reads ann's own presence, then polls from the head, which
    // acknowledges it: the mailbox starts empty.
    for _ in 0..2 {
        tab1.events_now().await;
        tab2.events_now().await;
    }
    assert_eq!(server.hub().stats().mailbox_events, 0);
    // The joiners never poll: their mailboxes hold the one message, and
    // presence only reaches a mailbox when it is polled.
    for n in 0..300 {
        server.join(&format!("u{n}")).await;
    }
    tab1.send("lobby", "hello").await;

    // tab1 reads everything; tab2 has acknowledged none of it yet.
    let before_last_read = tab1.cursor;
    let read = tab1.events_until_empty().await.len();
    assert_eq!(read, 301, "300 joiners' presence and one message");
    let joiners_unread = 300;
    assert_eq!(server.hub().stats().mailbox_events, 301 + joiners_unread);

    // A retry of an answered poll is still served, and so is the slow tab.
    let retry = tab1.poll_raw(before_last_read, Some(0)).await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    let slow = tab2.events_until_empty().await.len();
    assert_eq!(slow, 301, "the slow tab misses nothing");

    // Both tabs have now polled from the head: nothing is kept for them,
    // and both carry on from there.
    assert_eq!(server.hub().stats().mailbox_events, joiners_unread);
    tab2.send("lobby", "again").await;
    assert_eq!(texts(&tab1.events_now().await), ["again"]);
    assert_eq!(texts(&tab2.events_now().await), ["again"]);
}
