//! `SqliteStore`: the durable default, one SQLite database in `--data-dir`.
//! This file owns the handle: opening the directory and its connections,
//! the reads requests make, and the `Store` impl that hands writes to the
//! writer.
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
//! Reads (history, logins, client_msg_id look-ups) run on the reader
//! threads (`readers`), each with a connection of its own, which WAL lets
//! read while the writer writes; a request awaits their `Reply`.
//!
//! The rest, none of which calls back into this file:
//! - `schema`: the tables, versioned steps and `migrate`, run at open.
//! - `load`: the `Snapshot` read once at start.
//! - `writer`: the queue, who commits, checkpoints and housekeeping.
//! - `apply`: the SQL of every write, run by `writer` only.
//! - `faults`: what the writer knows of failures: a failing disk, the
//!   writes it rejected or kept out as repeats, whether it still runs.
//! - `readers`: the threads that run the reads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{oneshot, watch};

mod apply;
mod faults;
mod load;
mod readers;
mod schema;
#[cfg(test)]
mod tests;
mod writer;

use apply::{message_from_row, FIND_SENT};
use readers::{open_reader, Readers};
pub use schema::{migrate, SCHEMA_VERSION};
use writer::{Job, Writer};

use super::{Account, Change, Reply, Snapshot, Store, StoreError, StoreResult};
use crate::config::{SyncMode, STORE_READER_THREADS};
use crate::event::Message;

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "parlor.db";
/// Held locked (flock) while a parlor uses the directory, so two processes
/// never share one database (their writers would block each other forever).
pub const LOCK_FILE: &str = "parlor.lock";

/// How `SqliteStore::open` sets the store up.
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
    /// The threads that run the reads requests make.
    readers: Readers,
    writer: Arc<Writer>,
    /// The writer thread, until shutdown joins it.
    writer_thread: Mutex<Option<JoinHandle<()>>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `dir`, migrating it to the
    /// current schema. Fails with a message naming the problem when the
    /// directory cannot be written, the file is not a parlor database, or it
    /// comes from a newer parlor.
    pub fn open(dir: &Path, options: SqliteOptions) -> StoreResult<SqliteStore> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::new(
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
                StoreError::new(
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
                return Err(StoreError::new(&format!("cannot lock the data directory {}", dir.display()), e))
            }
        }
        let path = dir.join(DATABASE_FILE);
        let mut writer = open_writer(&path, options.sync)?;
        migrate(&mut writer, SCHEMA_VERSION)?;
        let readers = Readers::start(&path, STORE_READER_THREADS)?;

        let checkpointer = Connection::open(&path)
            .and_then(|connection| {
                connection.busy_timeout(Duration::from_secs(5))?;
                Ok(connection)
            })
            .map_err(|e| {
                StoreError::new(
                    &format!("cannot open {} for checkpoints", path.display()),
                    e,
                )
            })?;
        let writer = Writer::new(writer, checkpointer, options.sync)
            .map_err(|e| StoreError::new("cannot configure the writer", e))?;
        let writer = Arc::new(writer);
        let thread_writer = writer.clone();
        let writer_thread = std::thread::Builder::new()
            .name("parlor-store-writer".into())
            .spawn(move || thread_writer.run_supervised(options.history_retention))
            .map_err(|e| StoreError::new("cannot start the store writer thread", e))?;
        Ok(SqliteStore {
            path,
            _lock: lock,
            readers,
            writer,
            writer_thread: Mutex::new(Some(writer_thread)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A read connection of its own, for reads outside requests (`load`,
    /// tests).
    fn reader(&self) -> StoreResult<Connection> {
        open_reader(&self.path)
    }

    /// Keeps every reader busy until the returned sender drops (tests only).
    #[cfg(test)]
    pub(crate) fn hold_readers(&self) -> std::sync::mpsc::Sender<()> {
        self.readers.hold()
    }

    /// Writes everything queued, then stops the writer thread (and the
    /// readers, once they have answered what queued).
    pub fn stop_writer(&self) {
        self.readers.stop();
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
        .map_err(|e| StoreError::new(&format!("cannot open the database {}", path.display()), e))?;
    let not_a_database = |e: rusqlite::Error| {
        StoreError::new(
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

impl Store for SqliteStore {
    fn load(&self) -> StoreResult<Snapshot> {
        load::load(&self.reader()?)
    }

    fn account(&self, name: &str) -> Reply<Option<Account>> {
        let name = name.to_owned();
        self.readers.run(move |reader| {
            reader
                .prepare_cached("SELECT kind, password_hash FROM accounts WHERE name = ?1")
                .and_then(|mut statement| {
                    statement
                        .query_row([&name], |row| {
                            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                        })
                        .optional()
                })
                .map_err(|e| StoreError::new("cannot read an account", e))?
                .map(|(kind, password_hash)| match kind.as_str() {
                    "password" => Ok(Account::Password(password_hash)),
                    "jwt" => Ok(Account::Jwt),
                    other => Err(StoreError(format!(
                        "account `{name}` is of an unknown kind `{other}`"
                    ))),
                })
                .transpose()
        })
    }

    fn create_account(
        &self,
        name: &str,
        account: &Account,
    ) -> oneshot::Receiver<StoreResult<bool>> {
        let (reply, answer) = oneshot::channel();
        self.writer.push(
            Job::CreateAccount {
                name: name.to_owned(),
                account: account.clone(),
                reply,
            },
            false,
        );
        answer
    }

    fn find_sent(&self, from: &str, client_msg_id: &str) -> Reply<Option<Message>> {
        // Every new /send with a client_msg_id asks this, and nearly always
        // finds nothing. A connection drops its whole page cache whenever
        // another one has committed, so on the reader each look-up re-reads
        // its index pages (about 5 reads per send under load); the write
        // connection's cache is always current. Use it when it is free, the
        // reader while a commit or checkpoint holds it.
        let (from, client_msg_id) = (from.to_owned(), client_msg_id.to_owned());
        let find = move |connection: &Connection| {
            connection
                .prepare_cached(FIND_SENT)
                .and_then(|mut statement| {
                    statement
                        .query_row([&from, &client_msg_id], message_from_row)
                        .optional()
                })
                .map_err(|e| StoreError::new("cannot look up a sent message", e))
        };
        // Inline when the write connection is free: its cache is current,
        // so the probe is two index look-ups in memory, and a hop to a
        // reader thread and back would cost more than the read. A busy
        // writer (a commit, a checkpoint) sends it to the readers instead.
        if let Some(found) = self.writer.try_read(&find) {
            return Reply::ready(found);
        }
        self.readers.run(move |reader| find(reader))
    }

    fn history(
        &self,
        conversation: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Reply<Vec<Message>> {
        let conversation = conversation.to_owned();
        let before = before.unwrap_or(i64::MAX as u64).min(i64::MAX as u64);
        self.readers.run(move |reader| {
            let mut messages = reader
                .prepare_cached(
                    "SELECT id, conversation, sender, text, at, client_msg_id FROM messages
                 WHERE conversation = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
                )
                .and_then(|mut statement| {
                    statement
                        .query_map(
                            params![&conversation, before, limit as u64],
                            message_from_row,
                        )?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(|e| StoreError::new("cannot read history", e))?;
            messages.reverse();
            Ok(messages)
        })
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

    fn rejected(&self, ticket: u64) -> bool {
        self.writer.faults.rejected(ticket)
    }

    fn stored_first(&self, message: &Message) -> Option<Message> {
        self.writer.faults.stored_first(message.id)
    }

    fn has_room(&self) -> bool {
        self.writer.has_room()
    }

    fn health(&self) -> Result<(), String> {
        self.writer.health()
    }
}
