//! The names of the online users, kept sorted.
//!
//! Every /join and /sync answers a snapshot of who is online (the lobby's
//! members, each with a status), built under the hub lock. Sorting the
//! users map for each snapshot made a storm of N joins cost N² log N name
//! comparisons under the lock; keeping the names sorted as users come and
//! go costs a binary search and a memmove of the list per change instead.

/// Sorted, without duplicates.
#[derive(Debug, Default)]
pub struct OnlineNames {
    names: Vec<String>,
}

impl OnlineNames {
    pub fn insert(&mut self, name: &str) {
        if let Err(at) = self.search(name) {
            self.names.insert(at, name.to_owned());
        }
    }

    pub fn remove(&mut self, name: &str) {
        if let Ok(at) = self.search(name) {
            self.names.remove(at);
        }
    }

    /// In name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    fn search(&self, name: &str) -> Result<usize, usize> {
        self.names
            .binary_search_by(|probe| probe.as_str().cmp(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_sorted_and_unique_as_users_come_and_go() {
        let mut online = OnlineNames::default();
        for name in ["mia", "ann", "zoe", "bob", "ann"] {
            online.insert(name);
        }
        online.remove("bob");
        online.remove("nobody");
        assert_eq!(online.iter().collect::<Vec<_>>(), ["ann", "mia", "zoe"]);
    }
}
