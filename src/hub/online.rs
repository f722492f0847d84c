//! The online users, kept sorted with their status, and the pages of them
//! that /join, /sync and /users answer.
//!
//! No answer lists everyone: /join and /sync list the first `ONLINE_PAGE`
//! users in name order, /users a page after a given name. A page is written
//! from the sorted map under the hub's lock, a few hundred entries at most,
//! so an answer costs the same whether ten or a hundred thousand users are
//! online, and holds nothing shared with the list: a change never copies
//! the list because an answer is still being written out (which whole-list
//! answers did, an O(N) per join on top of the O(N) bytes of each answer).
//! Coming, going and status changes are O(log N) map operations.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::config::ONLINE_PAGE;
use crate::conversation::Conversation;
use crate::event::Status;

/// Sorted by name, without duplicates.
#[derive(Debug, Default)]
pub struct OnlineNames {
    members: BTreeMap<String, Status>,
}

/// Part of the online list, as JSON ready to be spliced into an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlinePage {
    /// `[{"name":NAME,"status":STATUS},...]` in name order.
    pub users: String,
    /// `[NAME,...]`: the same names (the lobby's members), if asked for.
    pub names: Option<String>,
    /// How many users are online.
    pub total: usize,
    /// The last name listed, when more follow it.
    pub next: Option<String>,
}

impl OnlineNames {
    /// Adds a user, online until `set_status` says otherwise.
    pub fn insert(&mut self, name: &str) {
        if !self.members.contains_key(name) {
            self.members.insert(name.to_owned(), Status::Online);
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.members.remove(name);
    }

    /// In name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The status the list shows for `name`, if it is online (the hub sets
    /// it whenever the presence board changes one).
    pub fn set_status(&mut self, name: &str, status: Status) {
        if let Some(shown) = self.members.get_mut(name) {
            *shown = status;
        }
    }

    /// `name`'s status, if it is online.
    pub fn status_of(&self, name: &str) -> Option<Status> {
        self.members.get(name).copied()
    }

    /// The lobby as /rooms/join answers it: its first `ONLINE_PAGE`
    /// members (everyone online) and how many there are, as /join lists it.
    pub fn lobby(&self) -> Conversation {
        let first = self.iter().take(ONLINE_PAGE).map(str::to_owned).collect();
        Conversation::lobby(first, self.len())
    }

    /// At most `limit` users in name order, after `after` (exclusive) or
    /// from the first; with the names again as a JSON array of their own
    /// when `with_names` (the lobby's members of a /join answer).
    pub fn page(&self, after: Option<&str>, limit: usize, with_names: bool) -> OnlinePage {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut rest = self.members.range::<str, _>((start, Bound::Unbounded));
        let mut users = String::with_capacity(2 + 64 * limit.min(self.members.len()));
        let mut names = String::new();
        users.push('[');
        names.push('[');
        let mut last = None;
        for (name, status) in rest.by_ref().take(limit) {
            if last.is_some() {
                users.push(',');
                names.push(',');
            }
            users.push_str(r#"{"name":"#);
            push_name(&mut users, name);
            users.push_str(r#","status":"#);
            users.push_str(status_json(*status));
            users.push('}');
            if with_names {
                push_name(&mut names, name);
            }
            last = Some(name);
        }
        users.push(']');
        names.push(']');
        let more = rest.next().is_some();
        OnlinePage {
            users,
            names: with_names.then_some(names),
            total: self.members.len(),
            next: last.filter(|_| more).cloned(),
        }
    }
}

/// `name` as a JSON string: copied between quotes when nothing in it needs
/// escaping (every name `valid_name` accepts), else as serde_json writes it.
fn push_name(out: &mut String, name: &str) {
    let plain = name.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    if plain {
        out.push('"');
        out.push_str(name);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(name).expect("a string serializes"));
    }
}

/// A status as serde_json writes it (the tests hold them to it).
fn status_json(status: Status) -> &'static str {
    match status {
        Status::Online => r#""online""#,
        Status::Busy => r#""busy""#,
        Status::Away => r#""away""#,
        Status::Offline => r#""offline""#,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn users_of(page: &OnlinePage) -> Value {
        serde_json::from_str(&page.users).unwrap()
    }

    #[test]
    fn names_stay_sorted_and_unique_as_users_come_and_go() {
        let mut online = OnlineNames::default();
        for name in ["mia", "ann", "zoe", "bob", "ann"] {
            online.insert(name);
        }
        online.remove("bob");
        online.remove("nobody");
        online.set_status("mia", Status::Away);
        online.set_status("nobody", Status::Busy);
        online.insert("mia"); // already there: keeps its status
        let page = online.page(None, 10, true);
        assert_eq!(page.names.as_deref(), Some(r#"["ann","mia","zoe"]"#));
        assert_eq!(
            page.users,
            r#"[{"name":"ann","status":"online"},{"name":"mia","status":"away"},{"name":"zoe","status":"online"}]"#
        );
        assert_eq!((page.total, page.next), (3, None));
        assert_eq!(online.status_of("mia"), Some(Status::Away));
        assert_eq!(online.status_of("bob"), None);
        assert!(online.iter().eq(["ann", "mia", "zoe"]));
    }

    #[test]
    fn pages_cut_the_list_and_say_where_to_go_on() {
        let mut online = OnlineNames::default();
        assert_eq!(
            online.page(None, 2, true),
            OnlinePage {
                users: "[]".to_owned(),
                names: Some("[]".to_owned()),
                total: 0,
                next: None,
            }
        );
        for name in ["d", "b", "a", "c", "e"] {
            online.insert(name);
        }
        online.set_status("b", Status::Busy);
        let first = online.page(None, 2, true);
        assert_eq!(
            users_of(&first),
            json!([{"name": "a", "status": "online"}, {"name": "b", "status": "busy"}])
        );
        assert_eq!(first.names.as_deref(), Some(r#"["a","b"]"#));
        assert_eq!((first.total, first.next.as_deref()), (5, Some("b")));
        let second = online.page(Some("b"), 2, false);
        assert_eq!(second.names, None);
        assert_eq!(second.next.as_deref(), Some("d"));
        let last = online.page(Some("d"), 2, false);
        assert_eq!(users_of(&last), json!([{"name": "e", "status": "online"}]));
        assert_eq!(last.next, None);
        // Exactly full: nothing follows, so no `next`.
        assert_eq!(online.page(Some("c"), 2, false).next, None);
        // After a name that is not (or no longer) online: the ones after it.
        assert_eq!(
            users_of(&online.page(Some("bb"), 1, false)),
            json!([{"name": "c", "status": "online"}])
        );
        assert_eq!(online.page(Some("z"), 2, false).users, "[]");
    }

    #[test]
    fn pages_are_the_json_serde_writes_after_every_change() {
        // Valid names and names a store or another name rule might hold
        // (escaped by serde), at the front, middle and end of the order.
        let pool = [
            "ann",
            "bob-2.x_y",
            "quote\"d",
            "back\\slash",
            "tab\there",
            "del\u{7f}",
            "zoë",
            "\u{1}",
            "0",
            "mia",
            "zz",
        ];
        let statuses = [Status::Online, Status::Busy, Status::Away, Status::Offline];
        let mut online = OnlineNames::default();
        let mut expected: BTreeMap<&str, Status> = BTreeMap::new();
        // A fixed pseudo-random walk (xorshift), so a failure replays.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for step in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let name = pool[(seed % pool.len() as u64) as usize];
            match (seed >> 8) % 3 {
                0 => {
                    online.insert(name);
                    expected.entry(name).or_insert(Status::Online);
                }
                1 => {
                    online.remove(name);
                    expected.remove(name);
                }
                _ => {
                    let status = statuses[((seed >> 16) % 4) as usize];
                    online.set_status(name, status);
                    if let Some(shown) = expected.get_mut(name) {
                        *shown = status;
                    }
                }
            }
            let limit = 1 + (seed >> 24) as usize % 4;
            let after = pool[((seed >> 32) % pool.len() as u64) as usize];
            let wanted: Vec<_> = expected
                .iter()
                .filter(|(name, _)| step % 2 == 0 || **name > after)
                .collect();
            let page = if step % 2 == 0 {
                online.page(None, limit, true)
            } else {
                online.page(Some(after), limit, true)
            };
            let listed = &wanted[..limit.min(wanted.len())];
            let users: Vec<_> = listed
                .iter()
                .map(|(name, status)| json!({ "name": name, "status": status }))
                .collect();
            let names: Vec<&str> = listed.iter().map(|(name, _)| **name).collect();
            assert_eq!(
                page.users,
                serde_json::to_string(&users).unwrap(),
                "step {step}"
            );
            assert_eq!(
                page.names.unwrap(),
                serde_json::to_string(&names).unwrap(),
                "step {step}"
            );
            assert_eq!(page.total, expected.len(), "step {step}");
            let next = (wanted.len() > limit).then(|| names[limit - 1].to_owned());
            assert_eq!(page.next, next, "step {step}");
            assert!(online.iter().eq(expected.keys().copied()));
        }
    }
}
