//! The keeper's store: fds by name, as systemd keeps them for a service,
//! except that storing a name again replaces its fds.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Why a `put` was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PutError {
    /// The store would hold more than its limit.
    #[error("the store is full ({limit} fds)")]
    Full {
        /// The limit.
        limit: usize,
    },
}

/// Named fds, in name order.
#[derive(Debug)]
pub struct Store {
    by_name: BTreeMap<String, Vec<OwnedFd>>,
    count: usize,
    limit: usize,
}

impl Store {
    /// An empty store of at most `limit` fds.
    pub fn new(limit: usize) -> Self {
        Store {
            by_name: BTreeMap::new(),
            count: 0,
            limit,
        }
    }

    /// Stores `fds` under `name`, replacing what it held.
    ///
    /// # Errors
    /// [`PutError::Full`]: nothing changes and `fds` are closed.
    pub fn put(&mut self, name: &str, fds: Vec<OwnedFd>) -> Result<(), PutError> {
        let old = self.by_name.get(name).map_or(0, Vec::len);
        let count = self.count - old + fds.len();
        if count > self.limit {
            return Err(PutError::Full { limit: self.limit });
        }
        self.count = count;
        if fds.is_empty() {
            self.by_name.remove(name);
        } else {
            self.by_name.insert(name.to_owned(), fds);
        }
        Ok(())
    }

    /// Closes the fds stored under `name`; returns how many there were.
    pub fn remove(&mut self, name: &str) -> usize {
        let n = self.by_name.remove(name).map_or(0, |fds| fds.len());
        self.count -= n;
        n
    }

    /// How many fds are stored.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Every fd with its name, in the order they are passed on.
    pub fn fds(&self) -> impl Iterator<Item = (&str, BorrowedFd<'_>)> {
        self.by_name
            .iter()
            .flat_map(|(name, fds)| fds.iter().map(move |fd| (name.as_str(), fd.as_fd())))
    }

    /// `LISTEN_FDNAMES`: the names of [`Store::fds`], `:`-separated.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.fds().map(|(name, _)| name).collect();
        names.join(":")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fds(n: usize) -> Vec<OwnedFd> {
        (0..n)
            .map(|_| tempfile::tempfile().unwrap().into())
            .collect()
    }

    #[test]
    fn names_replace_and_remove() {
        let mut store = Store::new(4);
        store.put("f2", fds(1)).unwrap();
        store.put("c1", fds(2)).unwrap();
        assert_eq!((store.len(), store.names()), (3, "c1:c1:f2".to_owned()));
        store.put("c1", fds(1)).unwrap();
        assert_eq!((store.len(), store.names()), (2, "c1:f2".to_owned()));
        assert_eq!(store.remove("c1"), 1);
        assert_eq!(store.remove("c1"), 0);
        assert_eq!((store.len(), store.names()), (1, "f2".to_owned()));
        store.put("f2", Vec::new()).unwrap();
        assert!(store.is_empty());
        assert_eq!(store.names(), "");
    }

    #[test]
    fn the_limit_counts_fds_and_replacements_fit() {
        let mut store = Store::new(2);
        store.put("a", fds(2)).unwrap();
        assert_eq!(store.put("b", fds(1)), Err(PutError::Full { limit: 2 }));
        store.put("a", fds(2)).unwrap();
        assert_eq!(store.put("a", fds(3)), Err(PutError::Full { limit: 2 }));
        assert_eq!(store.len(), 2, "a refused put changes nothing");
        assert_eq!(store.fds().count(), 2);
    }
}
