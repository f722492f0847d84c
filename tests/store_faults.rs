//! The SQLite store's failure modes, end to end: a retried /send the hub
//! could not recognise (its first attempt still on its way to disk and out
//! of the recent-send window), and a full disk (a real one: a small tmpfs
//! as the data directory). Every request answers, 503 while nothing can be
//! stored, /healthz says so, and once space is back each message is stored
//! exactly once.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use parlor::event::Message;
use parlor::hub::{Hub, HubConfig};
use parlor::store::sqlite::{SqliteOptions, SqliteStore};
use parlor::store::{Change, Snapshot, Store, StoreResult};
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
    fn password_hash(&self, name: &str) -> StoreResult<Option<String>> {
        self.inner.password_hash(name)
    }
    fn create_account(&self, name: &str, hash: &str) -> oneshot::Receiver<StoreResult<bool>> {
        self.inner.create_account(name, hash)
    }
    fn find_sent(&self, from: &str, client_msg_id: &str) -> StoreResult<Option<Message>> {
        self.inner.find_sent(from, client_msg_id)
    }
    fn history(&self, id: &str, before: Option<u64>, limit: usize) -> StoreResult<Vec<Message>> {
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

fn temp_dir(name: &str) -> std::path::PathBuf {
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
    let hub = Hub::new(
        store.clone(),
        HubConfig {
            poll_timeout: Duration::from_secs(5),
            inactivity_timeout: Duration::from_secs(60),
            argon2_memory_kib: 8,
            argon2_iterations: 1,
        },
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
    let mut sends = Vec::new();
    for i in 0..SENDS {
        sends.push(send(format!("message {i}"), format!("m{i}")));
    }
    let all_held = |count| {
        let store = store.clone();
        async move {
            while store.held() < count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    tokio::time::timeout(NO_HANG, all_held(SENDS))
        .await
        .expect("every send reached the store");
    let retry = send("message 0, again".into(), "m0".into());
    tokio::time::timeout(NO_HANG, all_held(SENDS + 1))
        .await
        .expect("the retry was not recognised in memory, so it reached the store");
    store.release();

    let first = tokio::time::timeout(NO_HANG, sends.swap_remove(0))
        .await
        .expect("the first send answers")
        .unwrap()
        .expect("the first send is stored");
    let retried = tokio::time::timeout(NO_HANG, retry)
        .await
        .expect("the retry answers")
        .unwrap()
        .expect("the retry succeeds");
    assert_eq!(retried.id, first.id, "the retry answers the first message");
    assert_eq!(retried.text, "message 0");
    for send in sends {
        let answer = tokio::time::timeout(NO_HANG, send).await.expect("no hang");
        answer.unwrap().expect("every other send is stored");
    }
    let later = tokio::time::timeout(NO_HANG, hub.send(&token, "lobby", "later", Some("z")))
        .await
        .expect("the store still commits")
        .expect("a later send is stored");

    let mut stored = Vec::new();
    let mut before = None;
    loop {
        let page = hub.history(&token, "lobby", before, Some(200)).unwrap();
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
