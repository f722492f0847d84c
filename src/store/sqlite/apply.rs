//! Every write to the database's tables: a batch of queued writes applied
//! in one transaction, and the housekeeping deletes the writer thread runs
//! between commits. The writer decides when and on which thread; this file
//! knows only the SQL.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, Transaction};

use crate::event::Status;
use crate::store::Change;

/// One queued write, as the batch sees it.
pub(super) enum Write<'a> {
    /// The changes of one hub operation, in the hub's order.
    Changes(&'a [Change]),
    /// Claims a name unless it is claimed already.
    CreateAccount {
        name: &'a str,
        password_hash: &'a str,
    },
}

/// Highest ids seen in a batch, written once per commit.
#[derive(Default)]
struct Counters {
    last_delivery_id: Option<u64>,
    last_message_id: Option<u64>,
    last_client_id: Option<u64>,
    presence_version: Option<u64>,
}

/// Writes a batch in one transaction; per write, whether an account was
/// created.
pub(super) fn write_batch<'a>(
    connection: &mut Connection,
    batch: impl ExactSizeIterator<Item = Write<'a>>,
) -> rusqlite::Result<Vec<bool>> {
    let transaction = connection.transaction()?;
    let mut created = Vec::with_capacity(batch.len());
    let mut counters = Counters::default();
    for write in batch {
        match write {
            Write::Changes(changes) => {
                for change in changes {
                    apply(&transaction, change, &mut counters)?;
                }
                created.push(false);
            }
            Write::CreateAccount {
                name,
                password_hash,
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

/// Applies one change inside the batch's transaction.
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

/// Deletes the messages older than `retention`.
pub(super) fn prune_history(connection: &Connection, retention: Duration) {
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

/// Milliseconds since the Unix epoch (0 if the clock is set before it).
pub(super) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
