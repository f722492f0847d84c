//! The online users, kept sorted, and the JSON snapshot of them that every
//! /join, /sync and /users answers.
//!
//! Every such answer lists who is online (the lobby's members, and each
//! with a status). Built per answer, under the hub's locks, that list would
//! make a storm of N joins cost N² string copies and status look-ups while
//! every shard is held. Instead the list is serialized once per change of
//! who is online or of a status, and shared (an `Arc`) by every answer
//! until the next change. Keeping the names sorted as users
//! come and go costs a binary search and a memmove per change.

use std::sync::Arc;

use crate::event::Status;

/// Sorted, without duplicates, with the snapshot of the current list.
#[derive(Debug, Default)]
pub struct OnlineNames {
    names: Vec<String>,
    /// None when something changed since it was last built.
    snapshot: Option<Arc<OnlineSnapshot>>,
}

/// Who is online, as JSON arrays ready to be spliced into an answer.
#[derive(Debug)]
pub struct OnlineSnapshot {
    /// `[{"name":NAME,"status":STATUS},...]` in name order.
    pub users: String,
    /// `[NAME,...]` in name order: the lobby's members.
    pub names: String,
}

impl OnlineNames {
    pub fn insert(&mut self, name: &str) {
        if let Err(at) = self.search(name) {
            self.names.insert(at, name.to_owned());
            self.snapshot = None;
        }
    }

    pub fn remove(&mut self, name: &str) {
        if let Ok(at) = self.search(name) {
            self.names.remove(at);
            self.snapshot = None;
        }
    }

    /// In name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Some user's status changed: the next snapshot is built anew.
    pub fn status_changed(&mut self) {
        self.snapshot = None;
    }

    /// The current list, built only if something changed since the last
    /// call. `status_of` gives each online user's status.
    pub fn snapshot(&mut self, status_of: impl Fn(&str) -> Status) -> Arc<OnlineSnapshot> {
        if let Some(snapshot) = &self.snapshot {
            return snapshot.clone();
        }
        // ~40 bytes per user with its status, ~15 for a name alone.
        let mut users = Vec::with_capacity(2 + self.names.len() * 40);
        let mut names = Vec::with_capacity(2 + self.names.len() * 16);
        users.push(b'[');
        names.push(b'[');
        for (at, name) in self.names.iter().enumerate() {
            if at > 0 {
                users.push(b',');
                names.push(b',');
            }
            users.extend_from_slice(b"{\"name\":");
            write_json(&mut users, name);
            users.extend_from_slice(b",\"status\":");
            write_json(&mut users, &status_of(name));
            users.push(b'}');
            write_json(&mut names, name);
        }
        users.push(b']');
        names.push(b']');
        let snapshot = Arc::new(OnlineSnapshot {
            users: into_string(users),
            names: into_string(names),
        });
        self.snapshot = Some(snapshot.clone());
        snapshot
    }

    fn search(&self, name: &str) -> Result<usize, usize> {
        self.names
            .binary_search_by(|probe| probe.as_str().cmp(name))
    }
}

fn write_json(out: &mut Vec<u8>, value: &impl serde::Serialize) {
    serde_json::to_writer(out, value).expect("names and statuses serialize");
}

fn into_string(json: Vec<u8>) -> String {
    String::from_utf8(json).expect("serde_json writes UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(name: &str) -> Status {
        if name == "mia" {
            Status::Away
        } else {
            Status::Online
        }
    }

    #[test]
    fn names_stay_sorted_and_unique_as_users_come_and_go() {
        let mut online = OnlineNames::default();
        for name in ["mia", "ann", "zoe", "bob", "ann"] {
            online.insert(name);
        }
        online.remove("bob");
        online.remove("nobody");
        let snapshot = online.snapshot(status_of);
        assert_eq!(snapshot.names, r#"["ann","mia","zoe"]"#);
        assert_eq!(
            snapshot.users,
            r#"[{"name":"ann","status":"online"},{"name":"mia","status":"away"},{"name":"zoe","status":"online"}]"#
        );
    }

    #[test]
    fn the_snapshot_is_shared_until_something_changes() {
        let mut online = OnlineNames::default();
        assert_eq!(online.snapshot(status_of).users, "[]");
        online.insert("ann");
        let first = online.snapshot(status_of);
        assert!(Arc::ptr_eq(&first, &online.snapshot(status_of)));
        online.status_changed();
        let after_status = online.snapshot(|_| Status::Busy);
        assert!(!Arc::ptr_eq(&first, &after_status));
        assert_eq!(after_status.users, r#"[{"name":"ann","status":"busy"}]"#);
        online.insert("ann"); // already there: nothing changed
        assert!(Arc::ptr_eq(&after_status, &online.snapshot(status_of)));
        online.remove("ann");
        assert_eq!(online.snapshot(status_of).names, "[]");
    }
}
