//! Presence as state, not as a queue.
//!
//! Everyone is in the lobby, so every user sees every other user's presence.
//! Pushing each change into every mailbox would make a storm of N joins cost
//! N² mailbox entries and expire early joiners' cursors. Instead the board
//! keeps each user's current status with the board version at which it last
//! changed. A mailbox remembers the version it has seen and, when one of its
//! clients polls, copies in the changes since then — each user at most once,
//! at its latest status — a bounded number per poll. A client far behind thus
//! receives a compact snapshot of what changed, never the whole history.

use std::collections::{BTreeMap, HashMap};

use crate::event::{Event, EventBytes, Status};

#[derive(Debug, Default)]
pub struct PresenceBoard {
    /// Incremented by every change.
    version: u64,
    /// Each user's latest status, the version it was set at, and its event,
    /// serialized once for all mailboxes.
    current: HashMap<String, Entry>,
    /// version → user, one key per user (its latest change), so the changes
    /// since a version are a range scan.
    changes: BTreeMap<u64, String>,
}

#[derive(Debug)]
struct Entry {
    status: Status,
    version: u64,
    event: EventBytes,
}

impl PresenceBoard {
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The user's status (`Offline` for users never seen).
    pub fn status(&self, user: &str) -> Status {
        self.current
            .get(user)
            .map_or(Status::Offline, |entry| entry.status)
    }

    /// Records a status. Returns false (and changes nothing) when it is the
    /// status the user already has.
    pub fn set(&mut self, user: &str, status: Status) -> bool {
        if self.status(user) == status {
            return false;
        }
        self.version += 1;
        let event = Event::Presence { user, status }.to_bytes();
        let entry = Entry {
            status,
            version: self.version,
            event,
        };
        if let Some(previous) = self.current.insert(user.to_owned(), entry) {
            self.changes.remove(&previous.version);
        }
        self.changes.insert(self.version, user.to_owned());
        true
    }

    /// Up to `limit` changes made after `version`, oldest first, each as
    /// (its version, its event).
    pub fn changes_since(
        &self,
        version: u64,
        limit: usize,
    ) -> impl Iterator<Item = (u64, &EventBytes)> + '_ {
        self.changes
            .range(version + 1..)
            .take(limit)
            .map(|(&changed_at, user)| (changed_at, &self.current[user].event))
    }

    /// The board as the store kept it.
    pub fn restore(
        entries: impl IntoIterator<Item = (String, Status, u64)>,
        version: u64,
    ) -> PresenceBoard {
        let mut board = PresenceBoard::default();
        for (user, status, changed_at) in entries {
            let event = Event::Presence {
                user: &user,
                status,
            }
            .to_bytes();
            board.version = board.version.max(changed_at);
            board.changes.insert(changed_at, user.clone());
            board.current.insert(
                user,
                Entry {
                    status,
                    version: changed_at,
                    event,
                },
            );
        }
        board.version = board.version.max(version);
        board
    }

    /// Forgets users that are offline and whose change is older than
    /// `version` (no mailbox can still need it), so the board does not grow
    /// with every name ever seen. Returns the forgotten users.
    pub fn forget_offline_before(&mut self, version: u64) -> Vec<String> {
        let stale: Vec<u64> = self
            .changes
            .range(..version)
            .filter(|(_, user)| self.current[*user].status == Status::Offline)
            .map(|(&changed_at, _)| changed_at)
            .collect();
        let mut forgotten = Vec::with_capacity(stale.len());
        for changed_at in stale {
            if let Some(user) = self.changes.remove(&changed_at) {
                self.current.remove(&user);
                forgotten.push(user);
            }
        }
        forgotten
    }

    /// Users whose status is anything but offline.
    pub fn available(&self) -> impl Iterator<Item = &str> + '_ {
        self.current
            .iter()
            .filter(|(_, entry)| entry.status != Status::Offline)
            .map(|(user, _)| user.as_str())
    }

    pub fn len(&self) -> usize {
        self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users_since(board: &PresenceBoard, version: u64) -> Vec<String> {
        board
            .changes_since(version, 100)
            .map(|(_, event)| {
                let json: serde_json::Value = serde_json::from_slice(event.as_bytes()).unwrap();
                format!(
                    "{}={}",
                    json["user"].as_str().unwrap(),
                    json["status"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn a_storm_collapses_to_one_change_per_user() {
        let mut board = PresenceBoard::default();
        board.set("ann", Status::Online);
        let seen = board.version();
        board.set("bob", Status::Online);
        board.set("ann", Status::Busy);
        board.set("bob", Status::Away);
        board.set("bob", Status::Away); // no change, no version
        assert_eq!(board.version(), 4);
        assert_eq!(users_since(&board, seen), vec!["ann=busy", "bob=away"]);
        assert_eq!(users_since(&board, 0), vec!["ann=busy", "bob=away"]);
        assert_eq!(users_since(&board, 4), Vec::<String>::new());
    }

    #[test]
    fn forgetting_keeps_recent_offline_changes() {
        let mut board = PresenceBoard::default();
        board.set("ann", Status::Online);
        board.set("ann", Status::Offline);
        board.set("bob", Status::Online);
        board.set("bob", Status::Offline);
        assert_eq!(board.forget_offline_before(3), ["ann"]);
        assert_eq!(board.len(), 1);
        assert_eq!(users_since(&board, 0), vec!["bob=offline"]);
    }
}
