//! Loading the saved state at start: the `Snapshot` the hub resumes from.
//!
//! Run once, on the reader connection, before the hub takes any request.

use std::collections::{HashMap, VecDeque};

use rusqlite::{Connection, OptionalExtension};

use crate::auth::TokenHash;
use crate::config::MAILBOX_CAPACITY;
use crate::event::{EventBytes, Status};
use crate::store::{Snapshot, StoreError, StoreResult, StoredMailbox, StoredRoom};

fn read(e: rusqlite::Error) -> StoreError {
    StoreError::new("cannot read the saved state", e)
}

/// Reads the whole saved state.
pub(super) fn load(reader: &Connection) -> StoreResult<Snapshot> {
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
            .map_err(|e| StoreError::new(&format!("room {name} has unreadable members"), e))?;
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
        .query_map([], |row| {
            Ok((row.get(0)?, row.get::<_, Vec<u8>>(1)?, row.get(2)?))
        })
        .map_err(read)?
    {
        let (id, token, user) = row.map_err(read)?;
        let token = TokenHash::from_stored(&token)
            .ok_or_else(|| StoreError(format!("client {id} has no readable token hash")))?;
        snapshot.clients.push((id, token, user));
    }

    snapshot.mailboxes = mailboxes(reader)?;

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

/// Reads the open mailboxes, then the deliveries that fill them: each delivery
/// lists its recipients, and belongs to a mailbox if it came after that
/// mailbox opened and after its start.
fn mailboxes(reader: &Connection) -> StoreResult<Vec<StoredMailbox>> {
    let mut open: HashMap<String, (u64, u64, u64)> = HashMap::new();
    let mut heads: HashMap<String, u64> = HashMap::new();
    let mut saved = reader
        .prepare("SELECT user, start, presence_seen, opened_after, head FROM mailboxes")
        .map_err(read)?;
    for row in saved
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
            .map_err(|e| StoreError::new(&format!("delivery {id} has unreadable recipients"), e))?;
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
    let mut mailboxes = Vec::with_capacity(open.len());
    for (user, (start, presence_seen, _)) in open {
        let kept: Vec<_> = events.remove(&user).unwrap_or_default().into();
        if kept.windows(2).any(|pair| pair[1].0 <= pair[0].0) {
            return Err(StoreError(format!(
                "the saved mailbox of {user} repeats a seq"
            )));
        }
        let head = heads.get(&user).copied().unwrap_or(0);
        mailboxes.push(StoredMailbox {
            user,
            start,
            head,
            presence_seen,
            events: kept,
        });
    }
    Ok(mailboxes)
}

fn status_from(name: &str) -> Status {
    Status::settable(name).unwrap_or(Status::Offline)
}
