//! The pool's filler: one thread at idle priority (`SCHED_IDLE`) that makes
//! and populates pool files on order, so refilling never takes a core from
//! requests. It only makes memory; what the pool keeps, and whether there
//! is room for it, is decided on the event loop (see [`super::Pool`]).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use gmem_protocol::wire::{MemoryKind, Name};
use log::{debug, warn};

use crate::memory::populate::{bind_to_node, populate, CHUNK};

/// Make one file of `size` and `kind` for pool `pool`.
#[derive(Debug)]
pub(super) struct Order {
    pub(super) pool: usize,
    pub(super) size: u64,
    pub(super) kind: MemoryKind,
    pub(super) numa_node: Option<u32>,
    /// Bytes populated so far, for STATUS.
    pub(super) progress: Arc<AtomicU64>,
}

/// A file made for pool `pool`, or why none was.
#[derive(Debug)]
pub(super) struct Filled {
    pub(super) pool: usize,
    pub(super) file: Result<OwnedFd, String>,
}

/// Starts the filler; it ends when `orders` is dropped.
pub(super) fn spawn(orders: Receiver<Order>, filled: Sender<Filled>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("gmemd-pool".into())
        .spawn(move || {
            lower_priority();
            for order in orders {
                let pool = order.pool;
                let file = fill(&order);
                if filled.send(Filled { pool, file }).is_err() {
                    return;
                }
            }
        })
        .map(drop)
}

/// `SCHED_IDLE` for this thread: it runs only when nothing else wants a
/// core.
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param`, alive for the call; pid 0
    // is the calling thread.
    let ret = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &raw const param) };
    if ret != 0 {
        warn!(
            "the pool filler keeps normal priority (SCHED_IDLE refused: {})",
            std::io::Error::last_os_error()
        );
    }
}

fn fill(order: &Order) -> Result<OwnedFd, String> {
    let name = Name::new("pool").expect("a valid name");
    let fd = crate::memory::create(&name, order.size, order.kind).map_err(|e| e.to_string())?;
    if let Some(node) = order.numa_node.filter(|_| order.kind == MemoryKind::Memfd) {
        bind_to_node(fd.as_fd(), order.size, node)
            .map_err(|e| format!("binding to NUMA node {node}: {e}"))?;
    }
    let mut offset = 0;
    while offset < order.size {
        let len = CHUNK.min(order.size - offset);
        populate(fd.as_fd(), offset, len).map_err(|e| format!("populating: {e}"))?;
        offset += len;
        order.progress.store(offset, Ordering::Release);
    }
    debug!("pool file of {} bytes ({}) ready", order.size, order.kind);
    Ok(fd)
}
