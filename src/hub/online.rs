//! The online users, kept sorted with their status, and the JSON lists of
//! them that every /join, /sync and /users answers.
//!
//! Every such answer lists who is online (the lobby's members, and each
//! with a status). Built per answer, under the hub's locks, that list would
//! make a storm of N joins cost N² string copies and status look-ups while
//! every shard is held; rebuilt once per change it still would, since in a
//! join storm every join is a change. So the two JSON arrays are kept
//! current as users come, go and change status: each change splices one
//! user's bytes in or out at its place (found by summing the lengths of
//! the users before it), which costs a memmove of the arrays and no
//! serialization or look-up per user. Answers share the arrays (an `Arc`);
//! a change while an answer still holds them writes a spliced copy. In a
//! 2 000-user join storm the list took 65 % of the server's instructions
//! rebuilt per join, 12 % spliced (docs/performance.md); what is left is
//! O(N) byte copies per join, as each answer's own copy of the list is.

use std::ops::Range;
use std::sync::Arc;

use crate::event::Status;

/// Sorted by name, without duplicates, with the lists as JSON.
#[derive(Debug)]
pub struct OnlineNames {
    /// Each online user, in name order.
    members: Vec<Member>,
    /// The JSON arrays of `members`, always current; shared by answers.
    lists: Arc<OnlineSnapshot>,
}

#[derive(Debug)]
struct Member {
    name: String,
    status: Status,
    /// Bytes of the name as a JSON string, quotes included.
    json_len: usize,
}

/// Who is online, as JSON arrays ready to be spliced into an answer.
#[derive(Debug)]
pub struct OnlineSnapshot {
    /// `[{"name":NAME,"status":STATUS},...]` in name order.
    pub users: String,
    /// `[NAME,...]` in name order: the lobby's members.
    pub names: String,
}

impl Default for OnlineNames {
    fn default() -> OnlineNames {
        OnlineNames {
            members: Vec::new(),
            lists: Arc::new(OnlineSnapshot {
                users: "[]".to_owned(),
                names: "[]".to_owned(),
            }),
        }
    }
}

/// The bytes of `{"name":` and `,"status":` and `}` around a user.
const USER_FRAME: usize = r#"{"name":,"status":}"#.len();

impl Member {
    /// Bytes of the user's object in the `users` array.
    fn user_len(&self) -> usize {
        USER_FRAME + self.json_len + status_json(self.status).len()
    }

    fn user_json(&self) -> String {
        let mut json = String::with_capacity(self.user_len());
        json.push_str(r#"{"name":"#);
        push_name(&mut json, &self.name);
        json.push_str(r#","status":"#);
        json.push_str(status_json(self.status));
        json.push('}');
        json
    }

    fn name_json(&self) -> String {
        let mut json = String::with_capacity(self.json_len);
        push_name(&mut json, &self.name);
        json
    }
}

impl OnlineNames {
    /// Adds a user, online until `set_status` says otherwise.
    pub fn insert(&mut self, name: &str) {
        let Err(at) = self.search(name) else {
            return;
        };
        let mut json = String::new();
        push_name(&mut json, name);
        let member = Member {
            name: name.to_owned(),
            status: Status::Online,
            json_len: json.len(),
        };
        let (user_at, name_at) = self.offsets(at);
        let (user, lobby) = (member.user_json(), member.name_json());
        // A comma after the new entry when one follows it, else before it
        // (at the end), else none (the only entry).
        if self.members.is_empty() {
            self.splice(user_at..user_at, &user, name_at..name_at, &lobby);
        } else if at == self.members.len() {
            let (user_at, name_at) = (user_at - 1, name_at - 1);
            let (user, lobby) = (format!(",{user}"), format!(",{lobby}"));
            self.splice(user_at..user_at, &user, name_at..name_at, &lobby);
        } else {
            let (user, lobby) = (format!("{user},"), format!("{lobby},"));
            self.splice(user_at..user_at, &user, name_at..name_at, &lobby);
        }
        self.members.insert(at, member);
    }

    pub fn remove(&mut self, name: &str) {
        let Ok(at) = self.search(name) else {
            return;
        };
        let (user_at, name_at) = self.offsets(at);
        let (user_len, json_len) = (self.members[at].user_len(), self.members[at].json_len);
        // With the comma after it when another entry follows, else with
        // the one before it (if any).
        let (users, names) = if at + 1 < self.members.len() {
            (
                user_at..user_at + user_len + 1,
                name_at..name_at + json_len + 1,
            )
        } else if at > 0 {
            (
                user_at - 1..user_at + user_len,
                name_at - 1..name_at + json_len,
            )
        } else {
            (user_at..user_at + user_len, name_at..name_at + json_len)
        };
        self.splice(users, "", names, "");
        self.members.remove(at);
    }

    /// In name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> {
        self.members.iter().map(|member| member.name.as_str())
    }

    /// The status the list shows for `name`, if it is online (the hub sets
    /// it whenever the presence board changes one).
    pub fn set_status(&mut self, name: &str, status: Status) {
        let Ok(at) = self.search(name) else {
            return;
        };
        if self.members[at].status == status {
            return;
        }
        let (user_at, _) = self.offsets(at);
        let old_len = self.members[at].user_len();
        self.members[at].status = status;
        let user = self.members[at].user_json();
        self.splice(user_at..user_at + old_len, &user, 0..0, "");
    }

    /// The current lists, shared until the next change.
    pub fn snapshot(&self) -> Arc<OnlineSnapshot> {
        self.lists.clone()
    }

    /// Replaces the bytes at `users` and `names` in the lists: in place if
    /// no answer holds them, else into fresh copies (one pass each, rather
    /// than a copy and then a memmove).
    fn splice(&mut self, users: Range<usize>, user: &str, names: Range<usize>, name: &str) {
        match Arc::get_mut(&mut self.lists) {
            Some(lists) => {
                lists.users.replace_range(users, user);
                lists.names.replace_range(names, name);
            }
            None => {
                self.lists = Arc::new(OnlineSnapshot {
                    users: spliced(&self.lists.users, users, user),
                    names: spliced(&self.lists.names, names, name),
                })
            }
        }
    }

    /// Where the entry of the member at `at` starts (or a new one inserted
    /// there would) in `users` and in `names`: after `[` and every earlier
    /// entry with its comma.
    fn offsets(&self, at: usize) -> (usize, usize) {
        let before = &self.members[..at];
        let users: usize = before.iter().map(|member| member.user_len() + 1).sum();
        let names: usize = before.iter().map(|member| member.json_len + 1).sum();
        (1 + users, 1 + names)
    }

    fn search(&self, name: &str) -> Result<usize, usize> {
        self.members
            .binary_search_by(|member| member.name.as_str().cmp(name))
    }
}

/// `text` with `range` replaced by `with`.
fn spliced(text: &str, range: Range<usize>, with: &str) -> String {
    let mut out = String::with_capacity(text.len() - range.len() + with.len());
    out.push_str(&text[..range.start]);
    out.push_str(with);
    out.push_str(&text[range.end..]);
    out
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
    use std::collections::BTreeMap;

    use super::*;
    use serde_json::json;

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
        let snapshot = online.snapshot();
        assert_eq!(snapshot.names, r#"["ann","mia","zoe"]"#);
        assert_eq!(
            snapshot.users,
            r#"[{"name":"ann","status":"online"},{"name":"mia","status":"away"},{"name":"zoe","status":"online"}]"#
        );
    }

    #[test]
    fn the_snapshot_is_shared_until_something_changes() {
        let mut online = OnlineNames::default();
        assert_eq!(online.snapshot().users, "[]");
        online.insert("ann");
        let first = online.snapshot();
        assert!(Arc::ptr_eq(&first, &online.snapshot()));
        online.set_status("ann", Status::Online); // unchanged
        assert!(Arc::ptr_eq(&first, &online.snapshot()));
        online.set_status("ann", Status::Busy);
        let after_status = online.snapshot();
        assert!(!Arc::ptr_eq(&first, &after_status));
        assert_eq!(after_status.users, r#"[{"name":"ann","status":"busy"}]"#);
        online.insert("ann"); // already there: nothing changed
        assert!(Arc::ptr_eq(&after_status, &online.snapshot()));
        online.remove("ann");
        assert_eq!(online.snapshot().names, "[]");
    }

    /// The lists as serde_json writes them, built from scratch.
    fn brute_force(online: &BTreeMap<&str, Status>) -> (String, String) {
        let users: Vec<_> = online
            .iter()
            .map(|(name, status)| json!({ "name": name, "status": status }))
            .collect();
        let names: Vec<&str> = online.keys().copied().collect();
        (
            serde_json::to_string(&users).unwrap(),
            serde_json::to_string(&names).unwrap(),
        )
    }

    #[test]
    fn the_spliced_lists_are_the_json_serde_writes_after_every_change() {
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
        let mut held = Vec::new();
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
            // Answers in flight hold some snapshots: changes copy those.
            let snapshot = online.snapshot();
            let (users, names) = brute_force(&expected);
            assert_eq!(
                (&snapshot.users, &snapshot.names),
                (&users, &names),
                "step {step}"
            );
            assert!(online.iter().eq(expected.keys().copied()));
            if step % 7 == 0 {
                held.push((snapshot, users, names));
            }
        }
        // A held snapshot still reads as the lists did when it was taken.
        for (snapshot, users, names) in held {
            assert_eq!(
                (snapshot.users.as_str(), snapshot.names.as_str()),
                (&*users, &*names)
            );
        }
    }
}
