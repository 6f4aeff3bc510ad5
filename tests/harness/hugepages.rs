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
    /// Makes `pages` more 2 MiB pages free, and holds the lock that keeps
    /// other tests from changing the pool meanwhile (`pages` 0: the lock
    /// alone). `None` only where the host cannot (no 2 MiB pool, not root,
    /// memory too fragmented) and `GMEM_E2E` is not `require` (it says why);
    /// under `GMEM_E2E=require` that is a failure. The lock cannot fail for
    /// want of hugepages, so its failure always panics.
    pub fn take(pages: u64) -> Option<Self> {
        let path = std::env::temp_dir().join("gmem-tests-hugepages.lock");
        let lock = File::create(&path)
            .unwrap_or_else(|e| panic!("the hugepage lock {}: {e}", path.display()));
        flock(&lock, FlockOperation::LockExclusive)
            .unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
        let before = total_pages(PAGE);
        let knob = pool_dir(PAGE).join("nr_hugepages");
        let reservation = Reservation {
            before,
            _lock: lock,
        };
        if pages == 0 {
            return Some(reservation);
        }
        let why = match std::fs::write(&knob, (before + pages).to_string()) {
            Err(e) => format!("writing {}: {e}", knob.display()),
            Ok(()) if free() < pages => format!(
                "the kernel found {} of {pages} more (memory too fragmented?)",
                free()
            ),
            Ok(()) => return Some(reservation),
        };
        drop(reservation);
        crate::e2e::available(&format!("{pages} free 2 MiB hugepages ({why})"), false);
        None
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let _ = std::fs::write(pool_dir(PAGE).join("nr_hugepages"), self.before.to_string());
    }
}
