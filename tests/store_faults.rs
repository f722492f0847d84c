//! The SQLite store's failure modes, end to end: a retried /send the hub
//! could not recognise (its first attempt still on its way to disk and out
//! of the recent-send window), and a full disk (a real one: a small tmpfs
//! as the data directory). Every request answers, 503 while nothing can be
//! stored, /healthz says so, and once space is back each message is stored
//! exactly once.

mod common;

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{join_all, of_type, test_config, Answer, TestClient, TestServer};
use hyper::Method;

use parlor::event::Message;
use parlor::hub::{Hub, HubConfig, Refusal};
use parlor::limits::Limits;
use parlor::store::sqlite::{SqliteOptions, SqliteStore};
use parlor::store::{Account, Change, Reply, Snapshot, Store, StoreResult};
use tokio::sync::{oneshot, watch};

/// Fails the test rather than hang: the broken behaviour is a hang.
const NO_HANG: Duration = Duration::from_secs(30);

/// Submissions held back: (ticket, changes).
type Held = Vec<(u64, Vec<Change>)>;

/// A SQLite store whose writes can be held back, as a disk stall would.
struct Stalling {
    inner: SqliteStore,
    /// While Some, submissions queue here instead.
    held: Mutex<Option<Held>>,
}

impl Stalling {
    fn stall(&self) {
        *self.held.lock().unwrap() = Some(Vec::new());
    }

    fn held(&self) -> usize {
        self.held.lock().unwrap().as_ref().map_or(0, Vec::len)
    }

    /// Lets the held submissions through, in order.
    fn release(&self) {
        let held = self.held.lock().unwrap().take().unwrap_or_default();
        for (ticket, changes) in held {
            self.inner.submit(ticket, changes);
        }
    }

    /// Queues a submission if held; gives it back otherwise.
    fn hold(&self, ticket: u64, changes: Vec<Change>) -> Option<Vec<Change>> {
        match self.held.lock().unwrap().as_mut() {
            Some(held) => {
                held.push((ticket, changes));
                None
            }
            None => Some(changes),
        }
    }
}

impl Store for Stalling {
    fn load(&self) -> StoreResult<Snapshot> {
        self.inner.load()
    }
    fn account(&self, name: &str) -> Reply<Option<Account>> {
        self.inner.account(name)
    }
    fn create_account(
        &self,
        name: &str,
        account: &Account,
    ) -> oneshot::Receiver<StoreResult<bool>> {
        self.inner.create_account(name, account)
    }
    fn find_sent(&self, from: &str, client_msg_id: &str) -> Reply<Option<Message>> {
        self.inner.find_sent(from, client_msg_id)
    }
    fn history(&self, id: &str, before: Option<u64>, limit: usize) -> Reply<Vec<Message>> {
        self.inner.history(id, before, limit)
    }
    fn submit(&self, ticket: u64, changes: Vec<Change>) {
        if let Some(changes) = self.hold(ticket, changes) {
            self.inner.submit(ticket, changes);
        }
    }
    fn durable(&self) -> watch::Receiver<u64> {
        self.inner.durable()
    }
    fn keeps_live_state(&self) -> bool {
        true
    }
    fn close(&self) {
        self.inner.close()
    }
    fn rejected(&self, ticket: u64) -> bool {
        self.inner.rejected(ticket)
    }
    fn stored_first(&self, message: &Message) -> Option<Message> {
        self.inner.stored_first(message)
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("parlor-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// More sends than the hub remembers arrive while the disk stalls, then
/// the first is retried: the hub cannot tell it is a retry, the store
/// can. The retry answers the first message, it is stored once, and the
/// store goes on committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_a_send_still_on_its_way_to_disk_is_stored_once() {
    let dir = temp_dir("stalled-retry");
    let inner = SqliteStore::open(
        &dir,
        SqliteOptions {
            sync: parlor::config::SyncMode::Normal,
            history_retention: None,
        },
    )
    .unwrap();
    let store = Arc::new(Stalling {
        inner,
        held: Mutex::new(None),
    });
    // One user sends far beyond the per-user send rate: no send limit.
    let limits = Limits {
        sends: None,
        ..Limits::default()
    };
    let hub = Hub::with_limits(
        store.clone(),
        HubConfig {
            poll_timeout: Duration::from_secs(5),
            inactivity_timeout: Duration::from_secs(60),
            argon2_memory_kib: 8,
            argon2_iterations: 1,
        },
        limits,
    )
    .unwrap();
    let token = hub.join("ann", "pw").await.unwrap().token.unwrap();

    store.stall();
    // Beyond the recent-send window of 1 000 (per shard; one user is one
    // shard).
    const SENDS: usize = 1_100;
    let send = |text: String, id: String| {
        let (hub, token) = (hub.clone(), token.clone());
        tokio::spawn(async move { hub.send(&token, "lobby", &text, Some(&id)).await })
    };
    let all_held = |count| {
        let store = store.clone();
        async move {
            while store.held() < count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    // m0 first and alone, so that it is the oldest the hub remembers and
    // the 1 099 sent after it push it out of the window, however the
    // runtime orders the tasks spawned at once.
    let mut sends = vec![send("message 0".into(), "m0".into())];
    tokio::time::timeout(NO_HANG, all_held(1))
        .await
        .expect("the first send reached the store");
    for i in 1..SENDS {
        sends.push(send(format!("message {i}"), format!("m{i}")));
    }
    tokio::time::timeout(NO_HANG, all_held(SENDS))
        .await
        .expect("every send reached the store");
    let retry = send("message 0, again".into(), "m0".into());
    tokio::time::timeout(NO_HANG, all_held(SENDS + 1))
        .await
        .expect("the retry was not recognised in memory, so it reached the store");
    store.release();

    let retried = tokio::time::timeout(NO_HANG, retry)
        .await
        .expect("the retry answers")
        .unwrap()
        .expect("the retry succeeds");
    for send in sends {
        let answer = tokio::time::timeout(NO_HANG, send).await.expect("no hang");
        // On a machine slow enough, the first sends may have waited out
        // their 10 s before the stall ended: they are stored all the same.
        match answer.unwrap() {
            Ok(_) | Err(Refusal::NotStored) => {}
            Err(refusal) => panic!("a send failed: {refusal:?}"),
        }
    }
    let first = store.find_sent("ann", "m0").await.unwrap();
    let first = first.expect("m0 is stored");
    assert_eq!(retried.id, first.id, "the retry answers the first message");
    assert_eq!(retried.text, "message 0");
    let later = tokio::time::timeout(NO_HANG, hub.send(&token, "lobby", "later", Some("z")))
        .await
        .expect("the store still commits")
        .expect("a later send is stored");

    let mut stored = Vec::new();
    let mut before = None;
    loop {
        let page = hub.history(&token, "lobby", before, Some(200)).await;
        let page = page.unwrap();
        let Some(oldest) = page.first() else { break };
        before = Some(oldest.id);
        stored.splice(0..0, page);
    }
    let with_m0: Vec<&Message> = stored
        .iter()
        .filter(|message| message.client_msg_id.as_deref() == Some("m0"))
        .collect();
    assert_eq!(with_m0.len(), 1, "stored once");
    assert_eq!(with_m0[0].id, first.id);
    assert_eq!(
        stored.len(),
        SENDS + 1,
        "every other message, and the later one"
    );
    assert_eq!(stored.last().map(|m| m.id), Some(later.id));
    assert_eq!(hub.store_health(), Ok(()));
    store.close();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tmpfs of a few MiB mounted on a fresh directory: a disk that really
/// fills. Unmounted (lazily: the server may still hold files) when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// None (the test is skipped, saying so) when not running as root.
    fn mount(name: &str, size: &str) -> Option<Tmpfs> {
        let uid = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = temp_dir(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("mount runs");
        assert!(mounted.success(), "mount -t tmpfs on {}", dir.display());
        Some(Tmpfs { dir })
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        for chunk in [64 * 1024, 1024, 1] {
            let bytes = vec![0u8; chunk];
            loop {
                match file.write_all(&bytes) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                    Err(e) => panic!("filling the disk: {e}"),
                }
            }
        }
        let _ = file.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// How many messages of `conversation` carry `client_msg_id`, read through
/// /history (every page).
async fn stored_copies(client: &TestClient<'_>, conversation: &str, client_msg_id: &str) -> usize {
    let mut copies = 0;
    let mut before: Option<u64> = None;
    loop {
        let mut query = vec![
            ("conversation", conversation.to_owned()),
            ("limit", "200".into()),
        ];
        if let Some(before) = before {
            query.push(("before", before.to_string()));
        }
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = client.get("/history", &query).await;
        assert_eq!(answer.status, 200, "history: {}", answer.text);
        let messages = answer.json["messages"].as_array().unwrap().clone();
        let Some(oldest) = messages.first() else {
            return copies;
        };
        before = oldest["id"].as_u64();
        copies += messages
            .iter()
            .filter(|message| message["client_msg_id"] == client_msg_id)
            .count();
    }
}

/// A send with a `client_msg_id`, answered within `NO_HANG` or failing the
/// test.
async fn send_with_id(client: &TestClient<'_>, text: &str, client_msg_id: &str) -> Answer {
    let form = [
        ("conversation", "lobby"),
        ("text", text),
        ("client_msg_id", client_msg_id),
    ];
    tokio::time::timeout(NO_HANG, client.post("/send", &form))
        .await
        .expect("a /send answers rather than hang")
}

/// The disk fills up under a running server: every request that changes
/// state answers 503 within a bound (none hangs, none answers 200 for what
/// is not stored), /healthz reports the stall, and once space is back the
/// retried sends are each stored exactly once, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_never_hangs_and_stores_each_message_once() {
    let Some(disk) = Tmpfs::mount("full-disk", "8m") else {
        return;
    };
    let mut config = test_config();
    config.ephemeral = false;
    config.data_dir = disk.dir.clone();
    config.admin_token = Some("admin-secret".into());
    let server = TestServer::start_with(config.clone()).await;
    let ann = server.join("ann").await;
    let mut bob = server.join("bob").await;
    let bob_again = server.join("bob").await;
    assert_eq!(
        ann.post("/rooms/join", &[("name", "den")]).await.status,
        200
    );
    assert_eq!(send_with_id(&ann, "before", "before").await.status, 200);

    let filler = disk.fill();
    // The WAL may still have room in pages it holds already: the disk
    // shows once a commit needs more.
    let mut first_failed = None;
    for i in 0..1_000 {
        let id = format!("s{i}");
        let answer = send_with_id(&ann, &format!("{i} {}", "x".repeat(4000)), &id).await;
        if answer.status == 503 {
            assert_eq!(answer.code(), "not_stored", "{}", answer.text);
            first_failed = Some(id);
            break;
        }
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    let first_failed = first_failed.expect("a full disk fails a send");

    let publish = server.request(
        Method::POST,
        "/api/publish",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer admin-secret"),
        ],
        br#"{"users":["ann"],"data":{"invoice":1}}"#.to_vec(),
    );
    let requests: Vec<Pin<Box<dyn Future<Output = Answer> + '_>>> = vec![
        Box::pin(send_with_id(&ann, "while full", "during")),
        Box::pin(server.post("/join", &[("name", "carol"), ("password", "pw")])),
        Box::pin(bob.post("/rooms/join", &[("name", "den")])),
        Box::pin(ann.post("/rooms/leave", &[("conversation", "den")])),
        Box::pin(ann.post("/dialog", &[("with", "bob")])),
        Box::pin(bob.post("/status", &[("status", "busy")])),
        Box::pin(bob_again.post("/leave", &[])),
        Box::pin(publish),
    ];
    let answers = tokio::time::timeout(NO_HANG, join_all(requests))
        .await
        .expect("every request answers while the disk is full");
    for answer in &answers {
        assert_eq!(answer.status, 503, "{}", answer.text);
        assert!(
            ["not_stored", "store_unavailable"].contains(&answer.code()),
            "{}",
            answer.text
        );
    }
    let health = server.get("/healthz", &[]).await;
    assert_eq!(health.status, 503, "{}", health.text);
    assert_eq!(health.code(), "store_stalled");

    std::fs::remove_file(filler).unwrap();
    for (text, id) in [("again", first_failed.as_str()), ("while full", "during")] {
        let mut answer = send_with_id(&ann, text, id).await;
        // The writer retries with a backoff of up to 2 s: a retry may still
        // find it waiting.
        for _ in 0..5 {
            if answer.status == 200 {
                break;
            }
            answer = send_with_id(&ann, text, id).await;
        }
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    assert_eq!(server.get("/healthz", &[]).await.status, 200);
    let ids = [first_failed.as_str(), "during", "before"];
    for id in ids {
        assert_eq!(
            stored_copies(&ann, "lobby", id).await,
            1,
            "{id} once in history"
        );
    }
    let events = bob.events_until_empty().await;
    for id in ids {
        let copies = of_type(&events, "message")
            .iter()
            .filter(|event| event["client_msg_id"] == id)
            .count();
        assert_eq!(copies, 1, "{id} once in bob's mailbox");
    }

    let (token, cursor, joined) = (ann.token, ann.cursor, ann.joined);
    server.stop().await;
    let server = TestServer::start_with(config).await;
    let ann = TestClient {
        server: &server,
        name: "ann".into(),
        token,
        cursor,
        joined,
    };
    for id in ids {
        assert_eq!(
            stored_copies(&ann, "lobby", id).await,
            1,
            "{id} once after a restart"
        );
    }
    server.stop().await;
}
