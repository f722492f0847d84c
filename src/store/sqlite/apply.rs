//! Every write to the database's tables: a batch of queued writes applied
//! in one transaction, and the housekeeping deletes the writer thread runs
//! between commits. The writer decides when and on which thread; this file
//! knows only the SQL.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Transaction};

use crate::event::{Message, Status};
use crate::store::{Account, Change};

/// One queued write, as the batch sees it.
pub(super) enum Write<'a> {
    /// The changes of one hub operation, in the hub's order.
    Changes(&'a [Change]),
    /// Claims a name unless it is claimed already.
    CreateAccount { name: &'a str, account: &'a Account },
}

/// Highest ids seen in a batch, written once per commit.
#[derive(Default)]
struct Counters {
    last_delivery_id: Option<u64>,
    last_message_id: Option<u64>,
    last_client_id: Option<u64>,
    presence_version: Option<u64>,
}

/// What became of one write of a committed batch.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Written; for `CreateAccount`, whether the name was free.
    Written { created: bool },
    /// Not written: it failed for a reason of its own (see
    /// `is_fault_of_the_write`), and the rest of the batch went ahead.
    Rejected(String),
}

/// What a committed batch did.
#[derive(Debug, Default)]
pub(super) struct Written {
    /// One per write, in order.
    pub(super) outcomes: Vec<Outcome>,
    /// (id of a message not inserted, the message stored first under its
    /// `(sender, client_msg_id)`): retries the hub could not recognise.
    pub(super) duplicates: Vec<(u64, Message)>,
}

/// Whether a failed statement failed because of what it writes (a
/// constraint, a value SQLite cannot take): the same write would fail
/// again, and other writes need not. Anything else (a full disk, an I/O
/// error, a locked file) is the storage's, and the whole batch is retried.
pub(super) fn is_fault_of_the_write(error: &rusqlite::Error) -> bool {
    match error.sqlite_error_code() {
        Some(code) => matches!(
            code,
            ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch
        ),
        // Not SQLite's: a value that did not convert.
        None => true,
    }
}

/// Writes a batch in one transaction. With `isolate`, each write runs in a
/// savepoint of its own, and one that fails for its own reason is rolled
/// back and reported `Rejected` while the others commit (the committer's
/// second try, after a first failed that way: the common case pays for no
/// savepoints).
pub(super) fn write_batch<'a>(
    connection: &mut Connection,
    batch: impl ExactSizeIterator<Item = Write<'a>>,
    isolate: bool,
) -> rusqlite::Result<Written> {
    let transaction = connection.transaction()?;
    let mut written = Written {
        outcomes: Vec::with_capacity(batch.len()),
        duplicates: Vec::new(),
    };
    let mut counters = Counters::default();
    for write in batch {
        // A panic while applying a write is that write's fault, like a
        // constraint: caught here, it never takes the writer thread down
        // with a batch it had taken from the queue.
        let mut apply_caught = |write| {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                apply_write(&transaction, write, &mut counters, &mut written)
            }))
            .unwrap_or_else(|_| Err(panicked()))
        };
        if !isolate {
            let created = apply_caught(write)?;
            written.outcomes.push(Outcome::Written { created });
            continue;
        }
        transaction.execute_batch("SAVEPOINT write")?;
        match apply_caught(write) {
            Ok(created) => {
                transaction.execute_batch("RELEASE write")?;
                written.outcomes.push(Outcome::Written { created });
            }
            Err(e) if is_fault_of_the_write(&e) => {
                transaction.execute_batch("ROLLBACK TO write; RELEASE write")?;
                written.outcomes.push(Outcome::Rejected(e.to_string()));
            }
            Err(e) => return Err(e),
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
    Ok(written)
}

/// The error a write that panicked fails with (none of SQLite's codes, so
/// `is_fault_of_the_write`).
fn panicked() -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure("applying this write panicked".into())
}

/// Applies one write; whether it created an account.
fn apply_write(
    transaction: &Transaction<'_>,
    write: Write<'_>,
    counters: &mut Counters,
    written: &mut Written,
) -> rusqlite::Result<bool> {
    match write {
        Write::Changes(changes) => {
            for change in changes {
                apply(transaction, change, counters, written)?;
            }
            Ok(false)
        }
        Write::CreateAccount { name, account } => {
            let (kind, password_hash) = match account {
                Account::Password(hash) => ("password", hash.as_str()),
                Account::Jwt => ("jwt", ""),
            };
            let inserted = transaction
                .prepare_cached(
                    "INSERT OR IGNORE INTO accounts (name, kind, password_hash, created_at) \
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![name, kind, password_hash, unix_millis()])?;
            Ok(inserted == 1)
        }
    }
}

/// Applies one change inside the batch's transaction.
fn apply(
    transaction: &Transaction<'_>,
    change: &Change,
    counters: &mut Counters,
    written: &mut Written,
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
        Change::RoomDeleted { name } => {
            execute("DELETE FROM rooms WHERE name = ?1", &[name])?;
            execute("DELETE FROM messages WHERE conversation = ?1", &[name])
        }
        Change::DialogOpened { id, members } => execute(
            "INSERT OR REPLACE INTO dialogs (id, first, second) VALUES (?1, ?2, ?3)",
            &[id, &members[0], &members[1]],
        ),
        Change::DialogClosed { id } => execute("DELETE FROM dialogs WHERE id = ?1", &[id]),
        Change::Message(message) => {
            // A second message with one `(sender, client_msg_id)` is a
            // retry the hub could not recognise: kept out, and answered
            // with the first (which the unique index would otherwise make
            // fail the whole batch, again at every retry).
            let inserted = transaction
                .prepare_cached(
                    "INSERT INTO messages (id, conversation, sender, text, at, client_msg_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (sender, client_msg_id) WHERE client_msg_id IS NOT NULL DO NOTHING",
                )?
                .execute(params![
                    message.id,
                    message.conversation,
                    message.from,
                    message.text,
                    message.at,
                    message.client_msg_id,
                ])?;
            if inserted == 0 {
                if let Some(first) = find_sent(transaction, message)? {
                    written.duplicates.push((message.id, first));
                }
            }
            counters.last_message_id = counters.last_message_id.max(Some(message.id));
            Ok(())
        }
        Change::ClientOpened { id, token, user } => {
            execute(
                "INSERT OR REPLACE INTO clients (id, token, user) VALUES (?1, ?2, ?3)",
                &[id, &&token.as_bytes()[..], user],
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

/// The stored message with `message`'s `(sender, client_msg_id)`.
fn find_sent(connection: &Connection, message: &Message) -> rusqlite::Result<Option<Message>> {
    let Some(client_msg_id) = &message.client_msg_id else {
        return Ok(None);
    };
    connection
        .prepare_cached(FIND_SENT)?
        .query_row(params![message.from, client_msg_id], message_from_row)
        .optional()
}

/// The message a sender stored with a `client_msg_id`.
pub(super) const FIND_SENT: &str =
    "SELECT id, conversation, sender, text, at, client_msg_id FROM messages
     WHERE sender = ?1 AND client_msg_id = ?2";

/// A `messages` row, its columns in the order `FIND_SENT` selects them.
pub(super) fn message_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        id: row.get(0)?,
        conversation: row.get(1)?,
        from: row.get(2)?,
        text: row.get(3)?,
        at: row.get(4)?,
        client_msg_id: row.get(5)?,
    })
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
pub(super) fn delivery_cutoff(connection: &Connection) -> rusqlite::Result<Option<u64>> {
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
pub(super) fn collect_deliveries(
    connection: &Connection,
    cutoff: u64,
    chunk: u64,
) -> rusqlite::Result<usize> {
    connection.execute(
        "DELETE FROM deliveries
         WHERE id < min(?1, (SELECT min(id) FROM deliveries) + ?2)",
        params![cutoff, chunk],
    )
}

/// Deletes up to `?2` of the oldest messages sent before `?1`, found
/// through the index on `at`.
pub(super) const PRUNE_HISTORY: &str = "DELETE FROM messages WHERE id IN
     (SELECT id FROM messages WHERE at < ?1 ORDER BY at LIMIT ?2)";

/// Deletes up to `chunk` of the messages sent before `cutoff` (Unix
/// milliseconds), oldest first; returns how many it deleted.
pub(super) fn prune_history(
    connection: &Connection,
    cutoff: u64,
    chunk: usize,
) -> rusqlite::Result<usize> {
    connection
        .prepare_cached(PRUNE_HISTORY)?
        .execute(params![cutoff, chunk as u64])
}

/// The cutoff of a history retention: messages sent before it are pruned.
pub(super) fn retention_cutoff(retention: Duration) -> u64 {
    unix_millis().saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX))
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Online => "online",
        Status::Busy => "busy",
        Status::Away => "away",
        Status::Offline => "offline",
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is set before it).
pub(super) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
