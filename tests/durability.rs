//! The durable store, end to end: the real `parlor` binary over a data
//! directory, killed with SIGKILL or stopped with SIGTERM mid-conversation,
//! then restarted on the same directory. Clients keep their tokens and
//! cursors across the restart and see no gap and no duplicate.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{encode_form, join_all, request_to, try_request_to, Answer};
use hyper::Method;
use serde_json::{json, Value};

/// A parlor process over a data directory.
struct Node {
    child: Child,
    addr: SocketAddr,
}

impl Node {
    fn start(dir: &Path, extra: &[&str]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_parlor"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args([
                "--poll-timeout",
                "2s",
                "--argon2-memory-kib",
                "8",
                "--argon2-iterations",
                "1",
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the parlor binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("parlor prints its address");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Node { child, addr }
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap(); // SIGKILL: no shutdown code runs
        self.child.wait().unwrap();
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "parlor did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        request_to(
            self.addr,
            Method::POST,
            path,
            &[("content-type", "application/x-www-form-urlencoded")],
            encode_form(form).into_bytes(),
        )
        .await
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Answer {
        request_to(
            self.addr,
            Method::GET,
            &format!("{path}?{}", encode_form(query)),
            &[],
            Vec::new(),
        )
        .await
    }

    async fn join(&self, name: &str, password: &str) -> (String, u64) {
        let answer = self
            .post("/join", &[("name", name), ("password", password)])
            .await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        (
            answer.json["token"].as_str().unwrap().to_owned(),
            answer.json["cursor"].as_u64().unwrap(),
        )
    }

    /// Polls without waiting; returns (new cursor, events) or the error answer.
    async fn poll(&self, token: &str, cursor: u64) -> Result<(u64, Vec<Value>), Answer> {
        self.poll_waiting(token, cursor, 0).await
    }

    async fn poll_waiting(
        &self,
        token: &str,
        cursor: u64,
        timeout_ms: u64,
    ) -> Result<(u64, Vec<Value>), Answer> {
        let cursor = cursor.to_string();
        let timeout = timeout_ms.to_string();
        let answer = self
            .get(
                "/poll",
                &[("token", token), ("cursor", &cursor), ("timeout", &timeout)],
            )
            .await;
        if answer.status != 200 {
            return Err(answer);
        }
        Ok((
            answer.json["cursor"].as_u64().unwrap(),
            answer.json["events"].as_array().unwrap().clone(),
        ))
    }

    /// Reads every event after `cursor` until none is left (each poll waits
    /// a little, so events still being committed arrive too).
    async fn drain(&self, token: &str, mut cursor: u64) -> (u64, Vec<Value>) {
        let mut all = Vec::new();
        loop {
            let (next, events) = self
                .poll_waiting(token, cursor, 300)
                .await
                .unwrap_or_else(|a| panic!("poll: {}", a.text));
            if events.is_empty() {
                return (cursor, all);
            }
            cursor = next;
            all.extend(events);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("parlor-durability-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn message_texts(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect()
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_and_clients_resume() {
    let dir = data_dir("kill9");
    let node = Node::start(&dir, &[]);
    let (ann, _) = node.join("ann", "ann-pw").await;
    let (bob, bob_start) = node.join("bob", "bob-pw").await;

    // A burst of sends from four writers; record what was answered 200.
    let addr = node.addr;
    let mut writers = Vec::new();
    for writer in 0..4 {
        let ann = ann.clone();
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0..400 {
                let text = format!("w{writer}-{n}");
                let body = encode_form(&[
                    ("token", &ann),
                    ("conversation", "lobby"),
                    ("text", &text),
                    ("client_msg_id", &text),
                ]);
                match try_request_to(
                    addr,
                    Method::POST,
                    "/send",
                    &[("content-type", "application/x-www-form-urlencoded")],
                    body.into_bytes(),
                )
                .await
                {
                    Ok(answer) if answer.status == 200 => acknowledged.push(text),
                    _ => break, // the server is gone
                }
            }
            acknowledged
        }));
    }
    // Bob reads part of the burst before the crash: what he saw must stay.
    let mut bob_cursor = bob_start;
    let mut bob_seen = Vec::new();
    while message_texts(&bob_seen).len() < 200 {
        let (next, events) = node.poll(&bob, bob_cursor).await.unwrap();
        bob_cursor = next;
        bob_seen.extend(events);
    }
    node.kill_9();
    let mut acknowledged = HashSet::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    assert!(
        acknowledged.len() >= 200,
        "the burst was under way: {}",
        acknowledged.len()
    );

    let node = Node::start(&dir, &[]);
    // Same token, same cursor: no 401, no rejoin, the rest of the stream.
    let (_, after) = node.drain(&bob, bob_cursor).await;
    let mut stream = bob_seen.clone();
    stream.extend(after);
    let stream_seqs = seqs(&stream);
    let expected: Vec<u64> = (bob_start + 1..=bob_start + stream.len() as u64).collect();
    assert_eq!(
        stream_seqs, expected,
        "one run of sequence numbers: no gap, no duplicate"
    );
    let texts = message_texts(&stream);
    let unique: HashSet<_> = texts.iter().cloned().collect();
    assert_eq!(unique.len(), texts.len(), "no message twice");
    for text in &acknowledged {
        assert!(
            unique.contains(text),
            "acknowledged {text} is missing after kill -9"
        );
    }
    // Each writer's messages in the order it sent them.
    for writer in 0..4 {
        let prefix = format!("w{writer}-");
        let own: Vec<u64> = texts
            .iter()
            .filter_map(|t| t.strip_prefix(&prefix).map(|n| n.parse().unwrap()))
            .collect();
        assert!(
            own.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "writer {writer} in order"
        );
    }
    // History agrees with the stream.
    let mut history = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut query = vec![
            ("token", bob.as_str()),
            ("conversation", "lobby"),
            ("limit", "200"),
        ];
        let before_text = before.map(|b| b.to_string());
        if let Some(before) = &before_text {
            query.push(("before", before));
        }
        let page = node.get("/history", &query).await;
        let messages = page.json["messages"].as_array().unwrap().clone();
        if messages.is_empty() {
            break;
        }
        before = messages[0]["id"].as_u64();
        let mut page_texts: Vec<String> = messages
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect();
        page_texts.extend(history);
        history = page_texts;
    }
    assert_eq!(
        history, texts,
        "history holds what was delivered, in the same order"
    );

    // A retried send of an acknowledged message is still recognised.
    let some = acknowledged.iter().next().unwrap().clone();
    let retry = node
        .post(
            "/send",
            &[
                ("token", &ann),
                ("conversation", "lobby"),
                ("text", &some),
                ("client_msg_id", &some),
            ],
        )
        .await;
    assert_eq!(retry.status, 200);
    let (_, after_retry) = node.drain(&bob, bob_start + stream.len() as u64).await;
    assert!(
        message_texts(&after_retry).is_empty(),
        "the retry sent nothing new"
    );

    // Passwords are still checked.
    let wrong = node
        .post("/join", &[("name", "ann"), ("password", "nope")])
        .await;
    assert_eq!(wrong.status, 401);
    node.join("ann", "ann-pw").await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_keeps_conversations_dialogs_and_cursors() {
    let dir = data_dir("graceful");
    let node = Node::start(&dir, &[]);
    let (ann, ann_start) = node.join("ann", "pw").await;
    let (bob, _) = node.join("bob", "pw").await;
    assert_eq!(
        node.post("/dialog", &[("token", &ann), ("with", "bob")])
            .await
            .status,
        200
    );
    assert_eq!(
        node.post("/rooms/join", &[("token", &ann), ("name", "ops")])
            .await
            .status,
        200
    );
    assert_eq!(
        node.post("/status", &[("token", &bob), ("status", "busy")])
            .await
            .status,
        200
    );
    for n in 0..5 {
        let text = format!("before {n}");
        assert_eq!(
            node.post(
                "/send",
                &[
                    ("token", &bob),
                    ("conversation", "dialog:ann:bob"),
                    ("text", &text)
                ]
            )
            .await
            .status,
            200
        );
    }
    let (ann_cursor, before) = node.drain(&ann, ann_start).await;
    assert_eq!(node.terminate().code(), Some(0));

    let node = Node::start(&dir, &[]);
    let sync = node.get("/sync", &[("token", &ann)]).await;
    assert_eq!(sync.status, 200, "the token survives: {}", sync.text);
    assert_eq!(sync.json["cursor"].as_u64(), Some(ann_cursor));
    let ids: Vec<_> = sync.json["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    assert_eq!(ids, [json!("lobby"), json!("ops"), json!("dialog:ann:bob")]);
    assert!(sync.json["users"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "bob", "status": "busy"})));

    assert_eq!(
        node.post(
            "/send",
            &[
                ("token", &bob),
                ("conversation", "dialog:ann:bob"),
                ("text", "after")
            ]
        )
        .await
        .status,
        200
    );
    let (_, after) = node.drain(&ann, ann_cursor).await;
    assert_eq!(message_texts(&after), ["after"]);
    assert_eq!(
        after[0]["seq"].as_u64(),
        Some(ann_cursor + 1),
        "numbering continues"
    );
    assert_eq!(message_texts(&before).len(), 5);
    let history = node
        .get(
            "/history",
            &[("token", &ann), ("conversation", "dialog:ann:bob")],
        )
        .await;
    assert_eq!(history.json["messages"].as_array().unwrap().len(), 6);
    node.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_idle_through_downtime_get_one_timeout_after_start() {
    let dir = data_dir("downtime");
    let node = Node::start(&dir, &["--inactivity-timeout", "1500ms"]);
    let (ann, cursor) = node.join("ann", "pw").await;
    node.kill_9();
    // Down for longer than the inactivity timeout.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let node = Node::start(&dir, &["--inactivity-timeout", "1500ms"]);
    assert!(
        node.poll(&ann, cursor).await.is_ok(),
        "not swept for time the server was down"
    );
    // Idle again past the timeout after the restart: swept as usual.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let users = node.get("/healthz", &[]).await;
        assert_eq!(users.status, 200);
        if Instant::now() > deadline {
            panic!("ann was never swept");
        }
        // Check without polling (a poll would keep ann alive): join another
        // user and look at who is online.
        let (other, _) = node.join("watcher", "pw").await;
        let online = node.get("/users", &[("token", &other)]).await;
        let names: Vec<_> = online.json["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["name"].clone())
            .collect();
        node.post("/leave", &[("token", &other)]).await;
        if !names.contains(&json!("ann")) {
            break;
        }
    }
    assert_eq!(node.poll(&ann, cursor).await.unwrap_err().status, 401);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn history_pages_through_thousands_of_stored_messages() {
    let dir = data_dir("history");
    let mut config = common::test_config();
    config.ephemeral = false;
    config.data_dir = dir.clone();
    let server = common::TestServer::start_with(config).await;
    let ann = server.join("ann").await;
    const COUNT: usize = 3_000;
    for n in 0..COUNT {
        let answer = ann.send("lobby", &format!("m{n}")).await;
        assert_eq!(answer.status, 200);
    }
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut query = vec![("conversation", "lobby"), ("limit", "200")];
        if let Some(before) = &before {
            query.push(("before", before));
        }
        let page = ann.get("/history", &query).await;
        let messages = page.json["messages"].as_array().unwrap().clone();
        if messages.is_empty() {
            break;
        }
        assert!(messages.len() <= 200);
        before = Some(messages[0]["id"].as_u64().unwrap().to_string());
        let mut texts: Vec<String> = messages
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect();
        texts.extend(seen);
        seen = texts;
    }
    let expected: Vec<String> = (0..COUNT).map(|n| format!("m{n}")).collect();
    assert_eq!(seen, expected);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_previous_schema_is_migrated_with_its_data() {
    let dir = data_dir("migrate");
    std::fs::create_dir_all(&dir).unwrap();
    {
        // What schema version 1 held: accounts, rooms, history.
        let mut db = rusqlite::Connection::open(dir.join("parlor.db")).unwrap();
        parlor::store::sqlite::migrate(&mut db, 1).unwrap();
        let hash = {
            use argon2::password_hash::{PasswordHasher, SaltString};
            let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
            argon2::Argon2::default()
                .hash_password(b"old-pw", &salt)
                .unwrap()
                .to_string()
        };
        db.execute("INSERT INTO accounts VALUES ('ann', ?1, 0)", [hash])
            .unwrap();
        db.execute("INSERT INTO rooms VALUES ('ops', '[\"ann\"]')", [])
            .unwrap();
        db.execute(
            "INSERT INTO messages VALUES (41, 'ops', 'ann', 'from v1', 1, NULL)",
            [],
        )
        .unwrap();
    }
    let node = Node::start(&dir, &[]);
    let wrong = node
        .post("/join", &[("name", "ann"), ("password", "pw")])
        .await;
    assert_eq!(
        wrong.status, 401,
        "the v1 account and its password were kept"
    );
    let (ann, _) = node.join("ann", "old-pw").await;
    let history = node
        .get("/history", &[("token", &ann), ("conversation", "ops")])
        .await;
    assert_eq!(history.json["messages"][0]["text"], "from v1");
    let sent = node
        .post(
            "/send",
            &[("token", &ann), ("conversation", "ops"), ("text", "in v2")],
        )
        .await;
    assert_eq!(
        sent.json["id"], 42,
        "message ids continue after the migrated ones"
    );
    node.terminate();
    let db = rusqlite::Connection::open(dir.join("parlor.db")).unwrap();
    let version: u32 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, parlor::store::sqlite::SCHEMA_VERSION);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the binary expecting it to refuse to start; returns its stderr.
fn refused_start(dir: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success(), "parlor must refuse to start");
    assert!(output.stdout.is_empty(), "no `listening on` line");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_data_directories_are_clear_errors_at_start() {
    // From an empty directory: created and migrated.
    let fresh = data_dir("fresh");
    let mut node = Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&fresh)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(node.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on"), "{line}");
    let _ = node.kill();
    let _ = node.wait();
    assert!(fresh.join("parlor.db").exists());

    let corrupt = data_dir("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(
        corrupt.join("parlor.db"),
        b"this is not a database, it is a text file".repeat(200),
    )
    .unwrap();
    let stderr = refused_start(&corrupt);
    assert!(stderr.contains("not a usable parlor database"), "{stderr}");

    let newer = data_dir("newer");
    std::fs::create_dir_all(&newer).unwrap();
    rusqlite::Connection::open(newer.join("parlor.db"))
        .unwrap()
        .execute_batch("PRAGMA user_version = 999")
        .unwrap();
    let stderr = refused_start(&newer);
    assert!(stderr.contains("newer than this parlor"), "{stderr}");

    // A directory another parlor is using is refused: two writers on one
    // database would block each other.
    let busy = data_dir("busy");
    let first = Node::start(&busy, &[]);
    let stderr = refused_start(&busy);
    assert!(
        stderr.contains("another parlor is using the data directory"),
        "{stderr}"
    );
    drop(first);
    let _ = std::fs::remove_dir_all(&busy);

    // A data directory that cannot be created (a file is in the way).
    let blocked = data_dir("blocked");
    std::fs::write(&blocked, b"a file").unwrap();
    let stderr = refused_start(&blocked.join("data"));
    assert!(
        stderr.contains("cannot create the data directory"),
        "{stderr}"
    );

    for dir in [fresh, corrupt, newer] {
        let _ = std::fs::remove_dir_all(dir);
    }
    let _ = std::fs::remove_file(blocked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_send_is_readable_by_the_very_next_poll() {
    let dir = data_dir("read-your-writes");
    let mut config = common::test_config();
    config.ephemeral = false;
    config.data_dir = dir.clone();
    let server = common::TestServer::start_with(config).await;
    let ann = server.join("ann").await;
    let mut bob = server.join("bob").await;
    bob.events_now().await;
    for n in 0..100 {
        let text = format!("now {n}");
        assert_eq!(ann.send("lobby", &text).await.status, 200);
        // No waiting: the answer above promised the message is stored.
        let events = bob.events_now().await;
        assert_eq!(message_texts(&events), [text]);
    }
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_2_database_with_live_clients_is_migrated_and_they_resume() {
    let dir = data_dir("migrate-v2");
    let token = "0123456789abcdef0123456789abcdef01234567";
    // Schema 2 kept one row per mailbox event.
    old_database(
        &dir,
        2,
        &format!(
            r#"INSERT INTO clients VALUES (5, '{token}', 'ann');
               INSERT INTO mailboxes VALUES ('ann', 0, 1); -- has seen presence version 1
               INSERT INTO mailbox_events VALUES
                   ('ann', 1, '{{"type":"notification","data":"one"}}'),
                   ('ann', 2, '{{"type":"notification","data":"two"}}'),
                   ('ann', 3, '{{"type":"notification","data":"three"}}');
               INSERT INTO presence VALUES ('ann', 'online', 1);
               INSERT INTO counters VALUES ('presence_version', 1), ('last_client_id', 5);"#
        ),
    );
    let node = Node::start(&dir, &[]);
    // The client polls on from cursor 1 as if nothing happened.
    let (cursor, events) = node.poll(token, 1).await.unwrap();
    assert_eq!(cursor, 3);
    let data: Vec<_> = events.iter().map(|e| e["data"].clone()).collect();
    assert_eq!(data, [json!("two"), json!("three")]);
    assert_eq!(seqs(&events), [2, 3]);
    // And the stream goes on with the next number.
    let (bob, _) = node.join("bob", "pw").await;
    node.post(
        "/send",
        &[("token", &bob), ("conversation", "lobby"), ("text", "hi")],
    )
    .await;
    let (_, more) = node.drain(token, cursor).await;
    assert_eq!(seqs(&more)[0], 4);
    assert!(message_texts(&more).contains(&"hi".to_owned()));
    node.terminate();
    let db = rusqlite::Connection::open(dir.join("parlor.db")).unwrap();
    let version: u32 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, parlor::store::sqlite::SCHEMA_VERSION);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn concurrent_sends_and_polls_on_the_durable_store_never_stall() {
    // Sends waiting for their commit, polls reading, the writer publishing
    // durability: all three at once is where a lock-order mistake deadlocks.
    // A deadlock would also stall the runtime's timers, so the work runs on
    // its own runtime and this thread is the watchdog.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(sends_and_polls_at_once());
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("sends and polls on the durable store stalled for 60 s: a deadlock?")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("the stress run failed (its panic is printed above)")
        }
    }
}

async fn sends_and_polls_at_once() {
    let dir = data_dir("stress");
    let mut config = common::test_config();
    config.ephemeral = false;
    config.data_dir = dir.clone();
    let server = common::TestServer::start_with(config).await;
    let mut readers = Vec::new();
    for n in 0..4 {
        let mut reader = server.join(&format!("reader{n}")).await;
        reader.events_now().await;
        readers.push(reader);
    }
    let senders: Vec<_> = futures_of(4, |n| {
        let server = &server;
        async move {
            let sender = server.join(&format!("sender{n}")).await;
            for m in 0..150 {
                assert_eq!(sender.send("lobby", &format!("s{n}-{m}")).await.status, 200);
            }
        }
    });
    let reading = readers.iter_mut().map(|reader| async move {
        let mut seen = 0;
        while seen < 600 {
            let events = reader.poll_for(200).await;
            seen += message_texts(&events).len();
        }
        seen
    });
    let (_, counts) = tokio::join!(join_all(senders), join_all(reading));
    assert!(counts.iter().all(|&seen| seen == 600), "{counts:?}");
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn futures_of<F: std::future::Future>(count: usize, make: impl Fn(usize) -> F) -> Vec<F> {
    (0..count).map(make).collect()
}

/// Drives futures concurrently on this task; their outputs in order.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_storm_stores_no_presence_copies_and_readers_resume_after_restart() {
    let dir = data_dir("join-storm");
    let node = Node::start(&dir, &[]);
    let (ann, start) = node.join("ann", "pw").await;
    let joiners = 300;
    for n in 0..joiners {
        node.join(&format!("u{n}"), "pw").await;
    }
    // ann reads one batch of the joiners' presence and has not yet polled
    // past it: those copies are unacknowledged when the server stops.
    let (cursor, first_batch) = node.poll_waiting(&ann, start, 1500).await.unwrap();
    assert!(
        !first_batch.is_empty() && first_batch.len() < joiners,
        "one batch: {}",
        first_batch.len()
    );
    // Each mailbox gets a copy of each later joiner's presence: N² for a
    // storm of N. None of it is written to disk.
    let stored = |dir: &Path| -> i64 {
        let db = rusqlite::Connection::open_with_flags(
            dir.join("parlor.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        db.query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(stored(&dir), 0, "no presence copy is stored");
    assert!(node.terminate().success());

    // After a restart the same cursor reads on: the slots the copies held
    // are still numbered, and the presence they carried comes again.
    let node = Node::start(&dir, &[]);
    // A retry of the answered poll finds its slots filled with ann's own
    // presence: harmless to read again, and the numbering holds.
    let (again, filled) = node.poll(&ann, start).await.unwrap();
    assert_eq!(again, cursor);
    assert_eq!(seqs(&filled), seqs(&first_batch));
    assert!(filled
        .iter()
        .all(|e| e["type"] == "presence" && e["user"] == "ann"));
    let (cursor, rest) = node.drain(&ann, cursor).await;
    let mut seen = std::collections::BTreeSet::new();
    for event in first_batch.iter().chain(&rest) {
        if event["type"] == "presence" && event["user"] != "ann" {
            assert_eq!(event["status"], "online", "{event}");
            seen.insert(event["user"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(seen.len(), joiners, "ann learns of every joiner");
    let numbers = seqs(&rest);
    assert!(
        numbers.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "one contiguous run of seqs"
    );
    // Messages still go through the store, once each.
    let (u0, _) = node.join("u0", "pw").await;
    let sent = node
        .post(
            "/send",
            &[("token", &u0), ("conversation", "lobby"), ("text", "after")],
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.text);
    let (_, more) = node.drain(&ann, cursor).await;
    assert_eq!(message_texts(&more), ["after"]);
    assert_eq!(stored(&dir), 1, "the message is one stored delivery");
    node.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A database in `dir` at schema `version`, holding what `rows` inserts.
fn old_database(dir: &Path, version: u32, rows: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let mut db = rusqlite::Connection::open(dir.join("parlor.db")).unwrap();
    parlor::store::sqlite::migrate(&mut db, version).unwrap();
    db.execute_batch(rows).unwrap();
}

/// Names of the files in `dir` whose bytes contain `needle` anywhere.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let needle = needle.as_bytes();
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let bytes = std::fs::read(path).unwrap();
            bytes.windows(needle.len()).any(|window| window == needle)
        })
        .map(|path| path.display().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_stored_only_hashed_and_keep_working_after_a_restart() {
    let dir = data_dir("token-at-rest");
    let node = Node::start(&dir, &[]);
    let (ann, cursor) = node.join("ann", "ann-pw").await;
    let (bob, _) = node.join("bob", "bob-pw").await;
    let sent = node
        .post(
            "/send",
            &[("token", &bob), ("conversation", "lobby"), ("text", "hi")],
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.text);
    // The database and its write-ahead log, as a backup would copy them.
    for token in [&ann, &bob] {
        assert_eq!(files_containing(&dir, token), Vec::<String>::new());
    }
    node.kill_9();
    assert_eq!(files_containing(&dir, &ann), Vec::<String>::new());

    let node = Node::start(&dir, &[]);
    let (_, events) = node.drain(&ann, cursor).await;
    assert!(message_texts(&events).contains(&"hi".to_owned()));
    let users = node.get("/users", &[("token", &bob)]).await;
    assert_eq!(users.status, 200, "{}", users.text);
    let wrong = node.poll(&ann.replace(|c| c != '0', "0"), 0).await;
    assert_eq!(wrong.unwrap_err().status, 401);
    node.terminate();
    assert_eq!(files_containing(&dir, &bob), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_4_database_with_raw_tokens_is_migrated_and_its_clients_resume() {
    let dir = data_dir("migrate-v4");
    let token = "89abcdef0123456789abcdef0123456789abcdef";
    // Schema 4 kept each client's token as it was handed out.
    old_database(
        &dir,
        4,
        &format!(
            r#"INSERT INTO clients VALUES (5, '{token}', 'ann');
               INSERT INTO mailboxes VALUES ('ann', 0, 1, 1, 0, 1);
               INSERT INTO deliveries VALUES
                   (1, '{{"type":"notification","data":"kept"}}', '[["ann",1]]');
               INSERT INTO presence VALUES ('ann', 'online', 1);
               INSERT OR REPLACE INTO counters VALUES ('presence_version', 1),
                   ('last_client_id', 5), ('last_delivery_id', 1);"#
        ),
    );
    assert_eq!(
        files_containing(&dir, token).len(),
        1,
        "the fixture holds it"
    );
    let node = Node::start(&dir, &[]);
    let (cursor, events) = node.poll(token, 0).await.unwrap();
    assert_eq!(cursor, 1);
    assert_eq!(events[0]["data"], "kept");
    node.terminate();
    assert_eq!(files_containing(&dir, token), Vec::<String>::new());
    let db = rusqlite::Connection::open(dir.join("parlor.db")).unwrap();
    let stored: Vec<u8> = db
        .query_row("SELECT token FROM clients WHERE id = 5", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored.len(), 32, "a SHA-256");
    drop(db);
    // Started again, the client is still known by its hash.
    let node = Node::start(&dir, &[]);
    assert!(node.poll(token, cursor).await.is_ok());
    node.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}
