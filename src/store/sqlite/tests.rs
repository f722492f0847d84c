//! The SQLite store's unit tests: what is submitted survives a reopen, who
//! commits, housekeeping, and refusing databases it cannot use.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

use super::apply::unix_millis;
use super::writer::DELIVERIES_PER_DELETE;
use super::{SqliteOptions, SqliteStore, DATABASE_FILE};
use crate::auth::TokenHash;
use crate::config::SyncMode;
use crate::event::{EventBytes, Message, Status};
use crate::store::{Change, Store};

fn options() -> SqliteOptions {
    SqliteOptions {
        sync: SyncMode::Normal,
        history_retention: None,
    }
}

fn message(id: u64, text: &str) -> Change {
    Change::Message(Message {
        id,
        conversation: "lobby".into(),
        from: "ann".into(),
        text: text.into(),
        at: unix_millis(),
        client_msg_id: Some(format!("c{id}")),
    })
}

fn window(user: &str, start: u64, oldest_delivery: u64) -> Change {
    Change::MailboxWindow {
        user: user.into(),
        start,
        oldest_delivery,
    }
}

fn event(kind: &str) -> EventBytes {
    EventBytes::from_stored(format!(r#"{{"type":"{kind}"}}"#).into_bytes())
}

fn stored_delivery_ids(store: &SqliteStore) -> Vec<u64> {
    store
        .reader()
        .unwrap()
        .prepare("SELECT id FROM deliveries ORDER BY id")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn wait_durable(store: &SqliteStore, ticket: u64) {
    let mut durable = store.durable();
    let deadline = Instant::now() + Duration::from_secs(10);
    while *durable.borrow_and_update() < ticket {
        assert!(
            Instant::now() < deadline,
            "ticket {ticket} never became durable"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn what_is_submitted_is_there_after_reopening() {
    let dir = tempdir("reopen");
    {
        let store = SqliteStore::open(&dir, options()).unwrap();
        store.submit(1, vec![message(1, "one"), message(2, "two")]);
        store.submit(
            2,
            vec![
                Change::ClientOpened {
                    id: 7,
                    token: TokenHash::of("t7"),
                    user: "ann".into(),
                },
                Change::MailboxOpened {
                    user: "ann".into(),
                    start: 0,
                    presence_seen: 0,
                    after_delivery: 0,
                },
                Change::MailboxOpened {
                    user: "bob".into(),
                    start: 0,
                    presence_seen: 0,
                    after_delivery: 0,
                },
                Change::Delivered {
                    id: 1,
                    body: event("x"),
                    recipients: vec![("ann".into(), 1), ("bob".into(), 1)],
                },
                window("ann", 0, 1),
                window("bob", 0, 1),
                Change::Delivered {
                    id: 2,
                    body: event("y"),
                    recipients: vec![("ann".into(), 2)],
                },
                // Bob leaves and comes back: his new mailbox numbers from
                // 1 again, and delivery 1 belongs to the old one.
                Change::MailboxClosed { user: "bob".into() },
                Change::MailboxOpened {
                    user: "bob".into(),
                    start: 0,
                    presence_seen: 0,
                    after_delivery: 2,
                },
                Change::Delivered {
                    id: 3,
                    body: event("z"),
                    recipients: vec![("bob".into(), 1)],
                },
                window("bob", 0, 3),
                Change::Presence {
                    user: "ann".into(),
                    status: Status::Busy,
                    version: 3,
                },
            ],
        );
        wait_durable(&store, 2);
    }
    let store = SqliteStore::open(&dir, options()).unwrap();
    let snapshot = store.load().unwrap();
    assert_eq!(
        snapshot.clients,
        vec![(7, TokenHash::of("t7"), "ann".to_owned())]
    );
    let mut mailboxes = snapshot.mailboxes.clone();
    mailboxes.sort_by(|a, b| a.user.cmp(&b.user));
    type Events = Vec<(u64, u64, String)>;
    let summary: Vec<(String, Events)> = mailboxes
        .iter()
        .map(|m| {
            let events = m.events.iter().map(|(seq, id, body)| {
                (
                    *seq,
                    *id,
                    String::from_utf8(body.as_bytes().to_vec()).unwrap(),
                )
            });
            (m.user.clone(), events.collect())
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "ann".to_owned(),
                vec![
                    (1, 1, r#"{"type":"x"}"#.to_owned()),
                    (2, 2, r#"{"type":"y"}"#.to_owned())
                ]
            ),
            ("bob".to_owned(), vec![(1, 3, r#"{"type":"z"}"#.to_owned())]),
        ]
    );
    assert_eq!(snapshot.last_delivery_id, 3);

    // Ann's window moves past delivery 1, which nobody holds any more
    // (bob's new mailbox starts at 3): it is collected, nothing else is.
    store.submit(3, vec![window("ann", 1, 2)]);
    wait_durable(&store, 3);
    drop(store);
    let store = SqliteStore::open(&dir, options()).unwrap();
    let kept = stored_delivery_ids(&store);
    assert_eq!(kept, [2, 3]);
    let snapshot = store.load().unwrap();
    let ann = snapshot.mailboxes.iter().find(|m| m.user == "ann").unwrap();
    assert_eq!((ann.start, ann.events.len(), ann.events[0].1), (1, 1, 2));
    assert_eq!(snapshot.presence, vec![("ann".to_owned(), Status::Busy, 3)]);
    assert_eq!(
        (
            snapshot.presence_version,
            snapshot.last_client_id,
            snapshot.last_message_id
        ),
        (3, 7, 2)
    );
    assert_eq!(
        store.find_sent("ann", "c2").wait().unwrap().unwrap().text,
        "two"
    );
    let history = store.history("lobby", None, 10).wait().unwrap();
    assert_eq!(history.iter().map(|m| m.id).collect::<Vec<_>>(), [1, 2]);
}

#[test]
fn deliveries_nobody_holds_are_deleted_chunk_by_chunk() {
    let dir = tempdir("gc-chunks");
    let deliveries = 2 * DELIVERIES_PER_DELETE + 100;
    {
        let store = SqliteStore::open(&dir, options()).unwrap();
        let mut changes = vec![Change::MailboxOpened {
            user: "ann".into(),
            start: 0,
            presence_seen: 0,
            after_delivery: 0,
        }];
        changes.extend((1..=deliveries).map(|id| Change::Delivered {
            id,
            body: event("x"),
            recipients: vec![("ann".into(), id)],
        }));
        // Ann has read all but the last.
        changes.push(window("ann", deliveries - 1, deliveries));
        store.submit(1, changes);
        wait_durable(&store, 1);
    }
    let store = SqliteStore::open(&dir, options()).unwrap();
    let kept = stored_delivery_ids(&store);
    assert_eq!(kept, [deliveries]);
}

#[test]
fn the_wal_stays_small_under_a_steady_stream_of_commits() {
    let dir = tempdir("wal-bound");
    let store = SqliteStore::open(&dir, options()).unwrap();
    let wal = dir.join(format!("{DATABASE_FILE}-wal"));
    let mut largest = 0;
    for ticket in 1..=5_000 {
        store.submit_for_waiter(ticket, vec![message(ticket, "steady")]);
        store.commit_through(ticket);
        if ticket % 100 == 0 {
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
    }
    wait_durable(&store, 5_000);
    // 5 000 commits of a few 4 KiB pages each: ~60 MB of WAL if no
    // checkpoint ever completes. Checkpoints every 256 commits keep it
    // to a few MB.
    assert!(largest < 16 << 20, "the WAL grew to {largest} bytes");
}

#[test]
fn a_waiter_commits_its_own_send_before_commit_through_returns() {
    let dir = tempdir("inline");
    {
        let store = SqliteStore::open(&dir, options()).unwrap();
        store.submit_for_waiter(1, vec![message(1, "one")]);
        store.submit_for_waiter(2, vec![message(2, "two")]);
        store.commit_through(1);
        // Written on this thread, in one transaction with what queued
        // behind it: no hop to the writer thread and back.
        assert_eq!(*store.durable().borrow(), 2);
    }
    let store = SqliteStore::open(&dir, options()).unwrap();
    let texts: Vec<String> = store
        .history("lobby", None, 10)
        .wait()
        .unwrap()
        .into_iter()
        .map(|message| message.text)
        .collect();
    assert_eq!(texts, ["one", "two"]);
}

#[test]
fn changes_whose_waiter_never_commits_are_still_written() {
    for sync in [SyncMode::Normal, SyncMode::Full] {
        let dir = tempdir("unclaimed");
        let store = SqliteStore::open(&dir, SqliteOptions { sync, ..options() }).unwrap();
        store.submit_for_waiter(1, vec![message(1, "one")]);
        wait_durable(&store, 1);
        // With fsync per commit the waiter hands its commit to the
        // writer thread rather than stall its own.
        store.submit_for_waiter(2, vec![message(2, "two")]);
        store.commit_through(2);
        wait_durable(&store, 2);
        assert_eq!(store.history("lobby", None, 10).wait().unwrap().len(), 2);
    }
}

#[test]
fn a_sent_message_is_found_by_client_msg_id_once_durable_whoever_holds_the_writer() {
    let dir = tempdir("find-sent");
    let store = SqliteStore::open(&dir, options()).unwrap();
    assert_eq!(store.find_sent("ann", "c1").wait().unwrap(), None);
    store.submit_for_waiter(1, vec![message(1, "one")]);
    store.commit_through(1);
    let found = store.find_sent("ann", "c1").wait().unwrap().map(|m| m.text);
    assert_eq!(
        found.as_deref(),
        Some("one"),
        "read on the free write connection"
    );
    // While a commit or checkpoint holds the write connection, the
    // reader answers, and sees the same.
    let found_meanwhile = store
        .writer
        .try_read(|_| store.find_sent("ann", "c1").wait())
        .expect("nobody else holds the write connection")
        .unwrap()
        .map(|m| m.text);
    assert_eq!(
        found_meanwhile.as_deref(),
        Some("one"),
        "read on the reader"
    );
    assert_eq!(
        store.find_sent("bob", "c1").wait().unwrap(),
        None,
        "ids are per sender"
    );
}

#[test]
fn a_newer_schema_is_refused_and_left_untouched() {
    let dir = tempdir("newer");
    {
        let connection = Connection::open(dir.join(DATABASE_FILE)).unwrap();
        connection
            .execute_batch("PRAGMA user_version = 99; CREATE TABLE keep (x);")
            .unwrap();
    }
    let Err(refused) = SqliteStore::open(&dir, options()) else {
        panic!("a newer schema must be refused")
    };
    assert!(refused.0.contains("newer"), "{refused}");
    let connection = Connection::open(dir.join(DATABASE_FILE)).unwrap();
    let version: u32 = connection
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 99);
}

#[test]
fn a_file_that_is_not_a_database_is_a_clear_error() {
    let dir = tempdir("garbage");
    std::fs::write(dir.join(DATABASE_FILE), vec![0x42u8; 8192]).unwrap();
    let Err(refused) = SqliteStore::open(&dir, options()) else {
        panic!("garbage must be refused")
    };
    assert!(
        refused.0.contains("not a usable parlor database"),
        "{refused}"
    );
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("parlor-unit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sent(id: u64, text: &str, client_msg_id: &str) -> Message {
    Message {
        id,
        conversation: "lobby".into(),
        from: "ann".into(),
        text: text.into(),
        at: unix_millis(),
        client_msg_id: Some(client_msg_id.into()),
    }
}

fn message_with_id(id: u64, text: &str, client_msg_id: &str) -> Change {
    Change::Message(sent(id, text, client_msg_id))
}

fn history_texts(store: &SqliteStore) -> Vec<String> {
    store
        .history("lobby", None, 100)
        .wait()
        .unwrap()
        .into_iter()
        .map(|message| message.text)
        .collect()
}

#[test]
fn a_duplicate_client_msg_id_resolves_to_the_first_message_and_blocks_nothing() {
    let dir = tempdir("duplicate");
    let store = SqliteStore::open(&dir, options()).unwrap();
    // A retry the hub could not recognise (its first send had left the
    // recent window and was not durable yet) arrives as a second message.
    store.submit(1, vec![message_with_id(1, "first", "same")]);
    store.submit(2, vec![message_with_id(2, "retry", "same")]);
    store.submit(3, vec![message_with_id(3, "later", "other")]);
    wait_durable(&store, 3);
    assert_eq!(history_texts(&store), ["first", "later"]);
    assert!(!store.rejected(2), "a duplicate is not a failure");
    let first = store
        .stored_first(&sent(2, "retry", "same"))
        .expect("the retry resolves to the first");
    assert_eq!((first.id, first.text.as_str()), (1, "first"));
    assert_eq!(
        store.find_sent("ann", "same").wait().unwrap().map(|m| m.id),
        Some(1)
    );
}

#[test]
fn a_change_that_cannot_be_written_is_rejected_alone() {
    let dir = tempdir("rejected");
    let store = SqliteStore::open(&dir, options()).unwrap();
    store.submit(1, vec![message_with_id(1, "first", "a")]);
    // The same id again: a primary key violation no retry can cure.
    store.submit(2, vec![message_with_id(1, "clash", "b")]);
    store.submit(3, vec![message_with_id(3, "later", "c")]);
    wait_durable(&store, 3);
    assert!(store.rejected(2));
    assert!(!store.rejected(1) && !store.rejected(3));
    assert_eq!(history_texts(&store), ["first", "later"]);
    assert_eq!(store.health(), Ok(()));
}

#[test]
fn beyond_its_bound_the_queue_turns_waiters_away_until_it_drains() {
    let dir = tempdir("bounded");
    let store = SqliteStore::open(&dir, options()).unwrap();
    let bound = crate::config::STORE_QUEUE_MAX as u64;
    // Holding the write connection stalls every commit, as a slow disk
    // would.
    store.writer.try_read(|_| {
        for ticket in 1..bound {
            store.submit_for_waiter(ticket, Vec::new());
        }
        assert!(store.has_room());
        store.submit_for_waiter(bound, Vec::new());
        assert!(!store.has_room(), "full at the bound");
    });
    wait_durable(&store, bound);
    assert!(store.has_room(), "room again once drained");
}

/// A message of `ann` in the lobby sent `age` ago.
fn aged(id: u64, age: Duration) -> Change {
    Change::Message(Message {
        at: unix_millis() - age.as_millis() as u64,
        ..sent(id, &format!("m{id}"), &format!("c{id}"))
    })
}

#[test]
fn retention_prunes_old_messages_through_an_index_on_at() {
    let dir = tempdir("retention-plan");
    let store = SqliteStore::open(&dir, options()).unwrap();
    let plan: Vec<String> = store
        .reader()
        .unwrap()
        .prepare(&format!(
            "EXPLAIN QUERY PLAN {}",
            super::apply::PRUNE_HISTORY
        ))
        .unwrap()
        .query_map(params![0, 10], |row| row.get(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        plan.iter().any(|step| step.contains("messages_by_at")),
        "{plan:?}"
    );
}

#[test]
fn pruning_deletes_old_messages_in_batches_and_keeps_newer_ones() {
    let dir = tempdir("retention-batches");
    let day = Duration::from_secs(86_400);
    {
        let store = SqliteStore::open(&dir, options()).unwrap();
        let mut changes: Vec<Change> = (1..=7).map(|id| aged(id, 3 * day)).collect();
        changes.extend((8..=10).map(|id| aged(id, Duration::ZERO)));
        store.submit(1, changes);
        wait_durable(&store, 1);
        let cutoff = unix_millis() - day.as_millis() as u64;
        let mut batches = Vec::new();
        loop {
            let deleted = store
                .writer
                .try_read(|connection| super::apply::prune_history(connection, cutoff, 3))
                .expect("the writer is idle")
                .unwrap();
            if deleted == 0 {
                break;
            }
            batches.push(deleted);
        }
        assert_eq!(batches, [3, 3, 1], "at most 3 per statement");
        assert_eq!(history_texts(&store), ["m8", "m9", "m10"]);
        store.submit(2, (11..=14).map(|id| aged(id, 3 * day)).collect());
        wait_durable(&store, 2);
    }
    // The writer thread prunes at start when a retention is set.
    let store = SqliteStore::open(
        &dir,
        SqliteOptions {
            history_retention: Some(day),
            ..options()
        },
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while history_texts(&store).len() > 3 {
        assert!(Instant::now() < deadline, "never pruned");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(history_texts(&store), ["m8", "m9", "m10"]);
}

#[test]
fn a_database_of_the_schema_before_the_index_on_at_gains_it() {
    let dir = tempdir("migrate-at");
    {
        let mut connection = Connection::open(dir.join(DATABASE_FILE)).unwrap();
        super::migrate(&mut connection, 5).unwrap();
    }
    let store = SqliteStore::open(&dir, options()).unwrap();
    let indexes: Vec<String> = store
        .reader()
        .unwrap()
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages'")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        indexes.iter().any(|name| name == "messages_by_at"),
        "{indexes:?}"
    );
}

/// The reads requests make wait for the database off the async workers:
/// with every reader busy (as under /history loops on a cold cache), a
/// runtime of one thread still parks a poll and wakes it with a send while
/// a /history, a login and a `client_msg_id` look-up wait their turn. Were
/// a read run on the runtime's thread, nothing would be answered at all.
#[test]
fn reads_waiting_for_the_database_do_not_stop_the_runtime() {
    use crate::hub::{Hub, HubConfig};
    use std::sync::Arc;

    let dir = tempdir("reads-off-runtime");
    let store = Arc::new(SqliteStore::open(&dir, options()).unwrap());
    let config = HubConfig {
        poll_timeout: Duration::from_secs(30),
        inactivity_timeout: Duration::from_secs(60),
        argon2_memory_kib: 8,
        argon2_iterations: 1,
    };
    let hub = Hub::new(store.clone(), config).unwrap();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let (ann, bob) = runtime().block_on(async {
        let ann = hub.join("ann", "pw").await.unwrap();
        let bob = hub.join("bob", "pw").await.unwrap();
        (ann.token.unwrap(), (bob.token.unwrap(), bob.cursor))
    });

    let held = store.hold_readers();
    let (polled, poll_answer) = std::sync::mpsc::channel();
    let (finished, stalled_answers) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let answers = runtime().block_on(async move {
            let stalled = {
                let (hub, ann) = (hub.clone(), ann.clone());
                tokio::spawn(async move {
                    let history = hub.history(&ann, "lobby", None, None).await;
                    let login = hub.join("ann", "pw").await;
                    let retry = hub.send(&ann, "lobby", "once", Some("id-1")).await;
                    (history.is_ok(), login.is_ok(), retry.is_ok())
                })
            };
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (bob_token, mut cursor) = bob;
            let poll = {
                let hub = hub.clone();
                tokio::spawn(async move {
                    // Presence changes may come first; read on to the message.
                    loop {
                        let body = hub.poll(&bob_token, cursor, None).await.unwrap();
                        let body = String::from_utf8_lossy(&body).into_owned();
                        if body.contains("still answered") {
                            return body;
                        }
                        let read: serde_json::Value = serde_json::from_str(&body).unwrap();
                        cursor = read["cursor"].as_u64().unwrap();
                    }
                })
            };
            tokio::time::sleep(Duration::from_millis(50)).await;
            hub.send(&ann, "lobby", "still answered", None)
                .await
                .unwrap();
            let body = poll.await.unwrap();
            let _ = polled.send(body);
            stalled.await.unwrap()
        });
        let _ = finished.send(answers);
    });
    let answered = poll_answer.recv_timeout(Duration::from_secs(20));
    drop(held);
    assert!(answered
        .expect("the poll was answered while the readers were busy")
        .contains("still answered"));
    assert_eq!(
        stalled_answers.recv_timeout(Duration::from_secs(20)),
        Ok((true, true, true)),
        "the waiting reads are answered once the readers are free"
    );
}
