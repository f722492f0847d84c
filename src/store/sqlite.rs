//! `SqliteStore`: the durable default, one SQLite database in `--data-dir`.
//!
//! Writes: one write connection (`writer`). Submissions queue up while a
//! commit runs, and the next commit takes everything that queued as one
//! transaction (group commit), so a burst of sends pays for one commit, not
//! one each. A /send or /join commits inline; the writer thread commits the
//! rest. After each commit the highest ticket written is published.
//!
//! Durability: WAL mode. `--sync normal` (the default) commits without
//! fsync: a killed process loses nothing, a power cut may lose the last
//! commits. `--sync full` fsyncs the WAL at every commit and survives a power
//! cut too.
//!
//! Reads (history, logins, client_msg_id look-ups) use a second connection,
//! which WAL lets read while the writer writes.
//!
//! Schema: versioned by `PRAGMA user_version` and migrated at start, one
//! transaction per step. A database from a newer parlor is refused untouched.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use tokio::sync::{oneshot, watch};

mod writer;

use writer::{Job, Writer};

use super::{Change, Snapshot, Store, StoreError, StoreResult, StoredMailbox, StoredRoom};
use crate::config::MAILBOX_CAPACITY;
use crate::event::{EventBytes, Message, Status};

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "parlor.db";
/// Held locked (flock) while a parlor uses the directory, so two processes
/// never share one database (their writers would block each other forever).
pub const LOCK_FILE: &str = "parlor.lock";

/// Schema steps; `user_version` is how many have been applied.
const MIGRATIONS: &[&str] = &[
    // 1: accounts, rooms and message history.
    "CREATE TABLE accounts (
         name TEXT PRIMARY KEY,
         password_hash TEXT NOT NULL,
         created_at INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE rooms (
         name TEXT PRIMARY KEY,
         members TEXT NOT NULL -- JSON array of user names
     ) WITHOUT ROWID;
     CREATE TABLE messages (
         id INTEGER PRIMARY KEY,
         conversation TEXT NOT NULL,
         sender TEXT NOT NULL,
         text TEXT NOT NULL,
         at INTEGER NOT NULL,
         client_msg_id TEXT
     );
     CREATE INDEX messages_by_conversation ON messages (conversation, id);
     CREATE UNIQUE INDEX messages_by_client_msg_id ON messages (sender, client_msg_id)
         WHERE client_msg_id IS NOT NULL;",
    // 2: live state survives restarts: client processes, mailboxes,
    // presence and dialogs, plus counters.
    "CREATE TABLE clients (
         id INTEGER PRIMARY KEY,
         token TEXT NOT NULL UNIQUE,
         user TEXT NOT NULL
     );
     CREATE TABLE mailboxes (
         user TEXT PRIMARY KEY,
         start INTEGER NOT NULL,
         presence_seen INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE mailbox_events (
         user TEXT NOT NULL,
         seq INTEGER NOT NULL,
         body BLOB NOT NULL,
         PRIMARY KEY (user, seq)
     ) WITHOUT ROWID;
     CREATE TABLE presence (
         user TEXT PRIMARY KEY,
         status TEXT NOT NULL,
         version INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE dialogs (
         id TEXT PRIMARY KEY,
         first TEXT NOT NULL,
         second TEXT NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE counters (
         name TEXT PRIMARY KEY,
         value INTEGER NOT NULL
     ) WITHOUT ROWID;",
    // 3: an event is stored once with its recipients ([[user, seq], ...]),
    // not once per mailbox: a message to a room of 5 000 is one row. Each
    // mailbox records the oldest delivery it still holds, so older ones can
    // be deleted.
    "CREATE TABLE deliveries (
         id INTEGER PRIMARY KEY,
         body BLOB NOT NULL,
         recipients TEXT NOT NULL
     );
     INSERT INTO deliveries (body, recipients)
         SELECT CAST(body AS BLOB), json_array(json_array(user, seq)) FROM mailbox_events ORDER BY user, seq;
     ALTER TABLE mailboxes ADD COLUMN oldest_delivery INTEGER;
     ALTER TABLE mailboxes ADD COLUMN opened_after INTEGER NOT NULL DEFAULT 0;
     UPDATE mailboxes SET oldest_delivery =
         (SELECT min(id) FROM deliveries WHERE json_extract(recipients, '$[0][0]') = mailboxes.user);
     INSERT INTO counters (name, value)
         SELECT 'last_delivery_id', coalesce(max(id), 0) FROM deliveries WHERE true
         ON CONFLICT (name) DO UPDATE SET value = excluded.value;
     DROP TABLE mailbox_events;",
    // 4: presence copies are no longer stored as deliveries (N² rows after
    // N joins); the mailbox records the head they reached instead.
    "ALTER TABLE mailboxes ADD COLUMN head INTEGER NOT NULL DEFAULT 0;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// How hard each commit is pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// WAL without fsync per commit: survives a killed process.
    Normal,
    /// fsync per commit: survives a power cut.
    Full,
}

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub sync: SyncMode,
    /// Delete messages older than this (None: keep all).
    pub history_retention: Option<Duration>,
}

pub struct SqliteStore {
    path: PathBuf,
    /// The locked lock file; released when the store is dropped.
    _lock: std::fs::File,
    reader: Mutex<Connection>,
    writer: Arc<Writer>,
    /// The writer thread, until shutdown joins it.
    writer_thread: Mutex<Option<JoinHandle<()>>>,
}

fn error(context: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{context}: {error}"))
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `dir`, migrating it to the
    /// current schema. Fails with a message naming the problem when the
    /// directory cannot be written, the file is not a parlor database, or it
    /// comes from a newer parlor.
    pub fn open(dir: &Path, options: SqliteOptions) -> StoreResult<SqliteStore> {
        std::fs::create_dir_all(dir).map_err(|e| {
            error(
                &format!("cannot create the data directory {}", dir.display()),
                e,
            )
        })?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(|e| {
                error(
                    &format!("cannot write in the data directory {}", dir.display()),
                    e,
                )
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError(format!(
                    "another parlor is using the data directory {}; stop it first or choose another --data-dir",
                    dir.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(error(&format!("cannot lock the data directory {}", dir.display()), e))
            }
        }
        let path = dir.join(DATABASE_FILE);
        let mut writer = open_writer(&path, options.sync)?;
        migrate(&mut writer, SCHEMA_VERSION)?;
        let reader = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| error(&format!("cannot open {} for reading", path.display()), e))?;
        reader
            .busy_timeout(Duration::from_secs(5))
            .map_err(|e| error("cannot configure the reader", e))?;

        let checkpointer = Connection::open(&path)
            .and_then(|connection| {
                connection.busy_timeout(Duration::from_secs(5))?;
                Ok(connection)
            })
            .map_err(|e| {
                error(
                    &format!("cannot open {} for checkpoints", path.display()),
                    e,
                )
            })?;
        let writer = Writer::new(writer, checkpointer, options.sync)
            .map_err(|e| error("cannot configure the writer", e))?;
        let writer = Arc::new(writer);
        let thread_writer = writer.clone();
        let writer_thread = std::thread::Builder::new()
            .name("parlor-store-writer".into())
            .spawn(move || thread_writer.run(options))
            .map_err(|e| error("cannot start the store writer thread", e))?;
        Ok(SqliteStore {
            path,
            _lock: lock,
            reader: Mutex::new(reader),
            writer,
            writer_thread: Mutex::new(Some(writer_thread)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes everything queued, then stops the writer thread.
    pub fn stop_writer(&self) {
        self.writer.close();
        let thread = self
            .writer_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.stop_writer();
    }
}

fn open_writer(path: &Path, sync: SyncMode) -> StoreResult<Connection> {
    let connection = Connection::open(path)
        .map_err(|e| error(&format!("cannot open the database {}", path.display()), e))?;
    let not_a_database = |e: rusqlite::Error| {
        error(
            &format!(
                "{} is not a usable parlor database (corrupt, or not SQLite)",
                path.display()
            ),
            e,
        )
    };
    connection
        .busy_timeout(Duration::from_secs(5))
        .map_err(not_a_database)?;
    let mode: String = connection
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(not_a_database)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError(format!(
            "{} cannot use write-ahead logging (journal mode stays {mode}); is the directory writable?",
            path.display()
        )));
    }
    let synchronous = match sync {
        SyncMode::Normal => "NORMAL",
        SyncMode::Full => "FULL",
    };
    connection
        .execute_batch(&format!(
            // A burst (a mass join's presence catch-up) can grow the WAL to
            // gigabytes; once a checkpoint resets it, give the space back.
            "PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = OFF;
             PRAGMA journal_size_limit = 67108864;"
        ))
        .map_err(not_a_database)?;
    Ok(connection)
}

/// Brings the schema to `target` (≤ SCHEMA_VERSION), one transaction per step.
pub fn migrate(connection: &mut Connection, target: u32) -> StoreResult<()> {
    let current: u32 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| error("cannot read the schema version", e))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError(format!(
            "the database has schema version {current}, newer than this parlor knows ({SCHEMA_VERSION}); \
             run a newer parlor or restore a backup (the database was left untouched)"
        )));
    }
    for version in current..target {
        let step = MIGRATIONS[version as usize];
        let transaction = connection
            .transaction()
            .map_err(|e| error("cannot start a migration", e))?;
        transaction
            .execute_batch(step)
            .and_then(|()| {
                transaction.execute_batch(&format!("PRAGMA user_version = {}", version + 1))
            })
            .and_then(|()| transaction.commit())
            .map_err(|e| {
                error(
                    &format!("migration to schema version {} failed", version + 1),
                    e,
                )
            })?;
        tracing::info!(version = version + 1, "database schema migrated");
    }
    Ok(())
}

/// Highest ids seen in a batch, written once per commit.
#[derive(Default)]
struct Counters {
    last_delivery_id: Option<u64>,
    last_message_id: Option<u64>,
    last_client_id: Option<u64>,
    presence_version: Option<u64>,
}

/// Writes a batch in one transaction; per job, whether an account was created.
fn write_batch(connection: &mut Connection, batch: &[Job]) -> rusqlite::Result<Vec<bool>> {
    let transaction = connection.transaction()?;
    let mut created = Vec::with_capacity(batch.len());
    let mut counters = Counters::default();
    for job in batch {
        match job {
            Job::Submit { changes, .. } => {
                for change in changes {
                    apply(&transaction, change, &mut counters)?;
                }
                created.push(false);
            }
            Job::CreateAccount {
                name,
                password_hash,
                ..
            } => {
                let inserted = transaction
                    .prepare_cached(
                        "INSERT OR IGNORE INTO accounts (name, password_hash, created_at) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![name, password_hash, unix_millis()])?;
                created.push(inserted == 1);
            }
        }
    }
    for (name, value) in [
        ("last_delivery_id", counters.last_delivery_id),
        ("last_message_id", counters.last_message_id),
        ("last_client_id", counters.last_client_id),
        ("presence_version", counters.presence_version),
    ] {
        if let Some(value) = value {
            bump_counter(&transaction, name, value)?;
        }
    }
    transaction.commit()?;
    Ok(created)
}

fn apply(
    transaction: &Transaction<'_>,
    change: &Change,
    counters: &mut Counters,
) -> rusqlite::Result<()> {
    let execute = |sql: &str, values: &[&dyn rusqlite::ToSql]| -> rusqlite::Result<()> {
        transaction.prepare_cached(sql)?.execute(values)?;
        Ok(())
    };
    match change {
        Change::Room(room) => {
            let members = serde_json::to_string(&room.members).expect("names serialize");
            execute(
                "INSERT OR REPLACE INTO rooms (name, members) VALUES (?1, ?2)",
                &[&room.name, &members],
            )
        }
        Change::DialogOpened { id, members } => execute(
            "INSERT OR REPLACE INTO dialogs (id, first, second) VALUES (?1, ?2, ?3)",
            &[id, &members[0], &members[1]],
        ),
        Change::DialogClosed { id } => execute("DELETE FROM dialogs WHERE id = ?1", &[id]),
        Change::Message(message) => {
            execute(
                "INSERT INTO messages (id, conversation, sender, text, at, client_msg_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                &[
                    &message.id,
                    &message.conversation,
                    &message.from,
                    &message.text,
                    &message.at,
                    &message.client_msg_id,
                ],
            )?;
            counters.last_message_id = counters.last_message_id.max(Some(message.id));
            Ok(())
        }
        Change::ClientOpened { id, token, user } => {
            execute(
                "INSERT OR REPLACE INTO clients (id, token, user) VALUES (?1, ?2, ?3)",
                &[id, token, user],
            )?;
            bump_counter(transaction, "last_client_id", *id)
        }
        Change::ClientClosed { id } => execute("DELETE FROM clients WHERE id = ?1", &[id]),
        Change::MailboxOpened {
            user,
            start,
            presence_seen,
            after_delivery,
        } => execute(
            "INSERT OR REPLACE INTO mailboxes (user, start, presence_seen, opened_after)
             VALUES (?1, ?2, ?3, ?4)",
            &[user, start, presence_seen, after_delivery],
        ),
        Change::Delivered {
            id,
            body,
            recipients,
        } => {
            let recipients = serde_json::to_string(recipients).expect("recipients serialize");
            execute(
                "INSERT OR REPLACE INTO deliveries (id, body, recipients) VALUES (?1, ?2, ?3)",
                &[id, &body.as_bytes(), &recipients],
            )?;
            counters.last_delivery_id = counters.last_delivery_id.max(Some(*id));
            Ok(())
        }
        Change::MailboxWindow {
            user,
            start,
            oldest_delivery,
        } => execute(
            "UPDATE mailboxes SET start = ?2, oldest_delivery = ?3 WHERE user = ?1",
            &[user, start, oldest_delivery],
        ),
        Change::PresenceSeen {
            user,
            version,
            head,
        } => execute(
            "UPDATE mailboxes SET presence_seen = ?2, head = max(head, ?3) WHERE user = ?1",
            &[user, version, head],
        ),
        Change::MailboxClosed { user } => execute("DELETE FROM mailboxes WHERE user = ?1", &[user]),
        Change::Presence {
            user,
            status,
            version,
        } => {
            execute(
                "INSERT OR REPLACE INTO presence (user, status, version) VALUES (?1, ?2, ?3)",
                &[user, &status_name(*status), version],
            )?;
            counters.presence_version = counters.presence_version.max(Some(*version));
            Ok(())
        }
        Change::PresenceForgotten { user } => {
            execute("DELETE FROM presence WHERE user = ?1", &[user])
        }
    }
}

fn bump_counter(transaction: &Transaction<'_>, name: &str, value: u64) -> rusqlite::Result<()> {
    transaction
        .prepare_cached(
            "INSERT INTO counters (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
        )?
        .execute(params![name, value])?;
    Ok(())
}

/// Where deliveries stop being needed: the oldest one any mailbox still
/// holds (everything when no mailbox holds any). It only moves forward:
/// trims move mailboxes' oldest forward, and new deliveries are above it.
fn delivery_cutoff(connection: &Connection) -> rusqlite::Result<Option<u64>> {
    connection.query_row(
        "SELECT coalesce(
             (SELECT min(oldest_delivery) FROM mailboxes WHERE oldest_delivery IS NOT NULL),
             (SELECT max(id) + 1 FROM deliveries))",
        [],
        |row| row.get(0),
    )
}

/// Deletes up to `chunk` of the oldest deliveries below `cutoff`; returns
/// how many it deleted.
fn collect_deliveries(connection: &Connection, cutoff: u64, chunk: u64) -> rusqlite::Result<usize> {
    connection.execute(
        "DELETE FROM deliveries
         WHERE id < min(?1, (SELECT min(id) FROM deliveries) + ?2)",
        params![cutoff, chunk],
    )
}

fn prune_history(connection: &Connection, retention: Duration) {
    let cutoff = unix_millis().saturating_sub(retention.as_millis() as u64);
    match connection.execute("DELETE FROM messages WHERE at < ?1", params![cutoff]) {
        Ok(0) => {}
        Ok(deleted) => tracing::info!(deleted, "pruned messages past the history retention"),
        Err(e) => tracing::error!(error = %e, "pruning history failed"),
    }
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Online => "online",
        Status::Busy => "busy",
        Status::Away => "away",
        Status::Offline => "offline",
    }
}

fn status_from(name: &str) -> Status {
    Status::settable(name).unwrap_or(Status::Offline)
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn message_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        id: row.get(0)?,
        conversation: row.get(1)?,
        from: row.get(2)?,
        text: row.get(3)?,
        at: row.get(4)?,
        client_msg_id: row.get(5)?,
    })
}

impl Store for SqliteStore {
    fn load(&self) -> StoreResult<Snapshot> {
        let reader = self.reader();
        let read = |e| error("cannot read the saved state", e);
        let mut snapshot = Snapshot::default();

        let mut rooms = reader
            .prepare("SELECT name, members FROM rooms")
            .map_err(read)?;
        for row in rooms
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(read)?
        {
            let (name, members) = row.map_err(read)?;
            let members = serde_json::from_str(&members)
                .map_err(|e| error(&format!("room {name} has unreadable members"), e))?;
            snapshot.rooms.push(StoredRoom { name, members });
        }

        let mut dialogs = reader
            .prepare("SELECT id, first, second FROM dialogs")
            .map_err(read)?;
        for row in dialogs
            .query_map([], |row| Ok((row.get(0)?, [row.get(1)?, row.get(2)?])))
            .map_err(read)?
        {
            snapshot.dialogs.push(row.map_err(read)?);
        }

        let mut clients = reader
            .prepare("SELECT id, token, user FROM clients ORDER BY id")
            .map_err(read)?;
        for row in clients
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .map_err(read)?
        {
            snapshot.clients.push(row.map_err(read)?);
        }

        // Mailboxes, then the deliveries that fill them: each delivery lists
        // its recipients, and belongs to a mailbox if it came after that
        // mailbox opened and after its start.
        let mut open: HashMap<String, (u64, u64, u64)> = HashMap::new();
        let mut heads: HashMap<String, u64> = HashMap::new();
        let mut mailboxes = reader
            .prepare("SELECT user, start, presence_seen, opened_after, head FROM mailboxes")
            .map_err(read)?;
        for row in mailboxes
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    (row.get(1)?, row.get(2)?, row.get(3)?),
                    row.get::<_, u64>(4)?,
                ))
            })
            .map_err(read)?
        {
            let (user, window, head) = row.map_err(read)?;
            heads.insert(user.clone(), head);
            open.insert(user, window);
        }
        let mut events: HashMap<String, VecDeque<(u64, u64, EventBytes)>> = HashMap::new();
        let first = open
            .values()
            .map(|&(_, _, after)| after)
            .min()
            .unwrap_or(u64::MAX);
        let mut deliveries = reader
            .prepare("SELECT id, body, recipients FROM deliveries WHERE id > ?1 ORDER BY id")
            .map_err(read)?;
        let mut rows = deliveries
            .query([first.min(i64::MAX as u64)])
            .map_err(read)?;
        while let Some(row) = rows.next().map_err(read)? {
            let id: u64 = row.get(0).map_err(read)?;
            let body = match row.get_ref(1).map_err(read)? {
                rusqlite::types::ValueRef::Blob(bytes) | rusqlite::types::ValueRef::Text(bytes) => {
                    EventBytes::from_stored(bytes.to_vec())
                }
                _ => return Err(StoreError(format!("delivery {id} has no body"))),
            };
            let recipients: String = row.get(2).map_err(read)?;
            let recipients: Vec<(String, u64)> = serde_json::from_str(&recipients)
                .map_err(|e| error(&format!("delivery {id} has unreadable recipients"), e))?;
            for (user, seq) in recipients {
                let Some(&(start, _, after)) = open.get(&user) else {
                    continue;
                };
                if id <= after || seq <= start {
                    continue;
                }
                let kept = events.entry(user).or_default();
                kept.push_back((seq, id, body.clone()));
                // Window moves are written in steps: keep what the mailbox holds.
                if kept.len() > MAILBOX_CAPACITY {
                    kept.pop_front();
                }
            }
        }
        for (user, (start, presence_seen, _)) in open {
            let kept: Vec<_> = events.remove(&user).unwrap_or_default().into();
            if kept.windows(2).any(|pair| pair[1].0 <= pair[0].0) {
                return Err(StoreError(format!(
                    "the saved mailbox of {user} repeats a seq"
                )));
            }
            let head = heads.get(&user).copied().unwrap_or(0);
            snapshot.mailboxes.push(StoredMailbox {
                user,
                start,
                head,
                presence_seen,
                events: kept,
            });
        }

        let mut presence = reader
            .prepare("SELECT user, status, version FROM presence")
            .map_err(read)?;
        for row in presence
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, u64>(2)?,
                ))
            })
            .map_err(read)?
        {
            let (user, status, version) = row.map_err(read)?;
            snapshot
                .presence
                .push((user, status_from(&status), version));
        }

        let counter = |name: &str| -> StoreResult<u64> {
            reader
                .query_row(
                    "SELECT value FROM counters WHERE name = ?1",
                    [name],
                    |row| row.get(0),
                )
                .optional()
                .map(Option::unwrap_or_default)
                .map_err(read)
        };
        snapshot.presence_version = counter("presence_version")?;
        snapshot.last_client_id = counter("last_client_id")?;
        snapshot.last_delivery_id = counter("last_delivery_id")?.max(
            reader
                .query_row("SELECT coalesce(max(id), 0) FROM deliveries", [], |row| {
                    row.get(0)
                })
                .map_err(read)?,
        );
        snapshot.last_message_id = counter("last_message_id")?.max(
            reader
                .query_row("SELECT coalesce(max(id), 0) FROM messages", [], |row| {
                    row.get(0)
                })
                .map_err(read)?,
        );
        Ok(snapshot)
    }

    fn password_hash(&self, name: &str) -> StoreResult<Option<String>> {
        self.reader()
            .prepare_cached("SELECT password_hash FROM accounts WHERE name = ?1")
            .and_then(|mut statement| statement.query_row([name], |row| row.get(0)).optional())
            .map_err(|e| error("cannot read an account", e))
    }

    fn create_account(
        &self,
        name: &str,
        password_hash: &str,
    ) -> oneshot::Receiver<StoreResult<bool>> {
        let (reply, answer) = oneshot::channel();
        self.writer.push(
            Job::CreateAccount {
                name: name.to_owned(),
                password_hash: password_hash.to_owned(),
                reply,
            },
            false,
        );
        answer
    }

    fn find_sent(&self, from: &str, client_msg_id: &str) -> StoreResult<Option<Message>> {
        // Every new /send with a client_msg_id asks this, and nearly always
        // finds nothing. A connection drops its whole page cache whenever
        // another one has committed, so on the reader each look-up re-read
        // its index pages (~5 preads per send under load); the write
        // connection's cache is always current. Use it when it is free, the
        // reader while a commit or checkpoint holds it.
        let find = |connection: &Connection| {
            connection
                .prepare_cached(
                    "SELECT id, conversation, sender, text, at, client_msg_id FROM messages
                     WHERE sender = ?1 AND client_msg_id = ?2",
                )
                .and_then(|mut statement| {
                    statement
                        .query_row([from, client_msg_id], message_from_row)
                        .optional()
                })
                .map_err(|e| error("cannot look up a sent message", e))
        };
        match self.writer.try_read(find) {
            Some(found) => found,
            None => find(&self.reader()),
        }
    }

    fn history(
        &self,
        conversation: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        let before = before.unwrap_or(i64::MAX as u64).min(i64::MAX as u64);
        let mut messages = self
            .reader()
            .prepare_cached(
                "SELECT id, conversation, sender, text, at, client_msg_id FROM messages
                 WHERE conversation = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
            )
            .and_then(|mut statement| {
                statement
                    .query_map(
                        params![conversation, before, limit as u64],
                        message_from_row,
                    )?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| error("cannot read history", e))?;
        messages.reverse();
        Ok(messages)
    }

    fn submit(&self, ticket: u64, changes: Vec<Change>) {
        self.writer.push(Job::Submit { ticket, changes }, false);
    }

    fn submit_for_waiter(&self, ticket: u64, changes: Vec<Change>) {
        self.writer.push(Job::Submit { ticket, changes }, true);
    }

    fn commit_through(&self, ticket: u64) {
        self.writer.commit_through(ticket);
    }

    fn durable(&self) -> watch::Receiver<u64> {
        self.writer.durable()
    }

    fn keeps_live_state(&self) -> bool {
        true
    }

    fn close(&self) {
        self.stop_writer();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventBytes;
    use std::time::Instant;

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
                        token: "t7".into(),
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
            vec![(7, "t7".to_owned(), "ann".to_owned())]
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
        assert_eq!(store.find_sent("ann", "c2").unwrap().unwrap().text, "two");
        let history = store.history("lobby", None, 10).unwrap();
        assert_eq!(history.iter().map(|m| m.id).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn deliveries_nobody_holds_are_deleted_chunk_by_chunk() {
        let dir = tempdir("gc-chunks");
        let deliveries = 2 * writer::DELIVERIES_PER_DELETE + 100;
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
            assert_eq!(store.history("lobby", None, 10).unwrap().len(), 2);
        }
    }

    #[test]
    fn a_sent_message_is_found_by_client_msg_id_once_durable_whoever_holds_the_writer() {
        let dir = tempdir("find-sent");
        let store = SqliteStore::open(&dir, options()).unwrap();
        assert_eq!(store.find_sent("ann", "c1").unwrap(), None);
        store.submit_for_waiter(1, vec![message(1, "one")]);
        store.commit_through(1);
        let found = store.find_sent("ann", "c1").unwrap().map(|m| m.text);
        assert_eq!(
            found.as_deref(),
            Some("one"),
            "read on the free write connection"
        );
        // While a commit or checkpoint holds the write connection, the
        // reader answers, and sees the same.
        let found_meanwhile = store
            .writer
            .try_read(|_| store.find_sent("ann", "c1"))
            .expect("nobody else holds the write connection")
            .unwrap()
            .map(|m| m.text);
        assert_eq!(
            found_meanwhile.as_deref(),
            Some("one"),
            "read on the reader"
        );
        assert_eq!(
            store.find_sent("bob", "c1").unwrap(),
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

    pub(crate) fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("parlor-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
