//! 2 MiB hugepages reserved for one test and given back afterwards.
//!
//! Hugepages are a host setting, so a test that needs them sets them up
//! itself (as root, which CI is) instead of skipping. A file lock serializes
//! the tests that do, so one's restore never undoes another's reservation.

use std::fs::File;

use gmemd::hugepages::{free_pages, pool_dir, total_pages};
use rustix::fs::{flock, FlockOperation};

const PAGE: u64 = 2 << 20;

/// Free 2 MiB hugepages now.
pub fn free() -> u64 {
    free_pages(PAGE)
}

/// A reservation of 2 MiB hugepages, released on drop.
#[derive(Debug)]
pub struct Reservation {
    before: u64,
    _lock: File,
}

impl Reservation {
    /// Makes `pages` more 2 MiB pages free. `None` when the host cannot
    /// (not root, no such pool, memory too fragmented); under
    /// `GMEM_E2E=require` that is a failure instead.
    pub fn take(pages: u64) -> Option<Self> {
        let lock = File::create(std::env::temp_dir().join("gmem-tests-hugepages.lock")).ok()?;
        flock(&lock, FlockOperation::LockExclusive).ok()?;
        let before = total_pages(PAGE);
        let wanted = before + pages;
        let done = std::fs::write(pool_dir(PAGE).join("nr_hugepages"), wanted.to_string()).is_ok()
            && free() >= pages;
        let reservation = Reservation {
            before,
            _lock: lock,
        };
        if done {
            return Some(reservation);
        }
        drop(reservation);
        assert!(
            !crate::e2e::required(),
            "cannot reserve {pages} 2 MiB hugepages (GMEM_E2E=require)"
        );
        eprintln!("SKIPPED: cannot reserve {pages} 2 MiB hugepages");
        None
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let _ = std::fs::write(pool_dir(PAGE).join("nr_hugepages"), self.before.to_string());
    }
}
