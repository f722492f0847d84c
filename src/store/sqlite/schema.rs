//! The database's schema: its versioned steps, and `migrate`, which brings
//! a database up to date at start.
//!
//! The version is `PRAGMA user_version`, the number of steps applied. Each
//! step runs in a transaction of its own, so a failed migration leaves the
//! database at the last complete version. A database from a newer parlor is
//! refused untouched: this build cannot know what its extra steps mean.

use rusqlite::functions::FunctionFlags;
use rusqlite::Connection;

use crate::auth::TokenHash;
use crate::store::{StoreError, StoreResult};

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
    // 4: presence copies are not stored as deliveries (after N joins they
    // would be N² rows); the mailbox records the head they reached instead.
    "ALTER TABLE mailboxes ADD COLUMN head INTEGER NOT NULL DEFAULT 0;",
    // 5: clients' tokens are kept as their SHA-256 (a 32-byte blob), so the
    // database holds no usable token; clients keep theirs, and the hub
    // hashes what they present.
    "UPDATE clients SET token = parlor_token_hash(token) WHERE typeof(token) = 'text';",
    // 6: history retention finds old messages through an index, a bounded
    // batch at a time, rather than scan every message holding the writer.
    "CREATE INDEX IF NOT EXISTS messages_by_at ON messages (at);",
    // 7: an account is of one kind for good: `password` (password_hash is
    // its argon2id PHC string) or `jwt` (it joins with a JWT signed by the
    // application's backend; password_hash is empty).
    "ALTER TABLE accounts ADD COLUMN kind TEXT NOT NULL DEFAULT 'password'
         CHECK (kind IN ('password', 'jwt'));",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the schema to `target` (≤ SCHEMA_VERSION), one transaction per step.
pub fn migrate(connection: &mut Connection, target: u32) -> StoreResult<()> {
    let current: u32 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| StoreError::new("cannot read the schema version", e))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError(format!(
            "the database has schema version {current}, newer than this parlor knows ({SCHEMA_VERSION}); \
             run a newer parlor or restore a backup (the database was left untouched)"
        )));
    }
    register_token_hash(connection)?;
    // The raw tokens a step replaces must not linger in freed space of the
    // file: secure_delete zeroes what the migration frees.
    let secure_delete: i64 = connection
        .query_row("PRAGMA secure_delete", [], |row| row.get(0))
        .map_err(|e| StoreError::new("cannot read the secure_delete setting", e))?;
    connection
        .execute_batch("PRAGMA secure_delete = ON")
        .map_err(|e| StoreError::new("cannot set secure_delete", e))?;
    for version in current..target {
        let step = MIGRATIONS[version as usize];
        let transaction = connection
            .transaction()
            .map_err(|e| StoreError::new("cannot start a migration", e))?;
        transaction
            .execute_batch(step)
            .and_then(|()| {
                transaction.execute_batch(&format!("PRAGMA user_version = {}", version + 1))
            })
            .and_then(|()| transaction.commit())
            .map_err(|e| {
                StoreError::new(
                    &format!("migration to schema version {} failed", version + 1),
                    e,
                )
            })?;
        tracing::info!(version = version + 1, "database schema migrated");
    }
    // The setting reads back as 0, 1 or 2, but only `FAST` sets the last.
    let secure_delete = if secure_delete == 2 {
        "FAST".to_owned()
    } else {
        secure_delete.to_string()
    };
    connection
        .execute_batch(&format!("PRAGMA secure_delete = {secure_delete}"))
        .map_err(|e| StoreError::new("cannot restore secure_delete", e))
}

/// `parlor_token_hash(token)`: the SHA-256 the hub keys a client by (see
/// `auth::TokenHash`), for the step that hashes stored tokens.
fn register_token_hash(connection: &Connection) -> StoreResult<()> {
    connection
        .create_scalar_function(
            "parlor_token_hash",
            1,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            |context| {
                let token: String = context.get(0)?;
                Ok(TokenHash::of(&token).as_bytes().to_vec())
            },
        )
        .map_err(|e| StoreError::new("cannot prepare the migrations", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_of_before_kinds_are_password_accounts_and_kinds_are_checked() {
        let mut connection = Connection::open_in_memory().unwrap();
        migrate(&mut connection, 6).unwrap();
        connection
            .execute_batch("INSERT INTO accounts VALUES ('ann', '$argon2id$...', 0)")
            .unwrap();
        migrate(&mut connection, SCHEMA_VERSION).unwrap();
        let kind: String = connection
            .query_row("SELECT kind FROM accounts WHERE name = 'ann'", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(kind, "password");
        let unknown = connection.execute_batch(
            "INSERT INTO accounts (name, kind, password_hash, created_at) VALUES ('x', 'magic', '', 0)",
        );
        assert!(unknown.is_err(), "only known kinds are stored");
    }
}
