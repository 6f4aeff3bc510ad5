//! gmemd's vhost-user device: one virtio-blk device per VM disk, served on
//! the rust-vmm backend crates behind a filter that checks every memory
//! region QEMU sends before anything maps it.
//!
//! Device threads never touch the service: they ask it through a
//! [`DeviceCall`] sent to the event loop ([`CallSender`]) and wait for its
//! answer, bounded.
//!
//! By concept: `blk` (the virtio-blk backend: requests, config space),
//! `filter` (the frontend's messages, checked and passed to the backend),
//! `server` (a device's socket and its connections).

pub mod blk;
pub mod filter;
pub mod server;

use std::os::fd::OwnedFd;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use gmem_protocol::wire::{Name, Uuid};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::ledger::Peer;
use crate::principal::Principal;

pub use filter::MappedRegion;

/// A VM's device, as the service keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Its id: its socket is `d<id>.sock` in the device directory.
    pub id: u32,
    /// Its VM.
    pub vm: Uuid,
    /// Its disk file in the VM's namespace; `None`: capacity 0.
    pub disk: Option<Name>,
    /// Virtqueues.
    pub queues: u32,
}

/// What a device connection may use, once the service admitted it.
#[derive(Debug)]
pub struct DeviceGrant {
    /// The disk's memory file.
    pub disk: Option<OwnedFd>,
    /// Virtqueues.
    pub queues: u32,
    /// The serial the guest reads (GET_ID).
    pub serial: String,
}

/// What a device thread asks the service.
#[derive(Debug)]
pub enum DeviceCall {
    /// A frontend connected: may it use the device?
    Connect {
        /// The device.
        device: u32,
        /// The connection's number.
        conn: u64,
        /// The process on the other end.
        peer: Peer,
        /// Who it is.
        principal: Principal,
        /// The answer.
        reply: SyncSender<Result<DeviceGrant, String>>,
    },
    /// May the device map this region?
    Judge {
        /// The device.
        device: u32,
        /// The region.
        region: MappedRegion,
        /// The answer.
        reply: SyncSender<Result<(), String>>,
    },
    /// The connection's memory table changed.
    Table {
        /// The device.
        device: u32,
        /// The connection.
        conn: u64,
        /// The table the backend has now.
        table: Vec<MappedRegion>,
    },
    /// The connection ended.
    Gone {
        /// The device.
        device: u32,
        /// The connection.
        conn: u64,
    },
}

/// How long a device thread waits for the service's answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Calls queued for the event loop before senders wait.
const CALL_QUEUE: usize = 256;

/// Sends calls to the event loop and wakes it.
#[derive(Debug, Clone)]
pub struct CallSender {
    calls: SyncSender<DeviceCall>,
    wake: Arc<EventFd>,
}

/// The event loop's end: the eventfd to poll and the calls to answer.
#[derive(Debug)]
pub struct CallReceiver {
    calls: Receiver<DeviceCall>,
    wake: Arc<EventFd>,
}

/// A channel of device calls.
///
/// # Errors
/// When no eventfd can be made.
pub fn call_channel() -> std::io::Result<(CallSender, CallReceiver)> {
    let wake = Arc::new(EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)?);
    let (calls, rx) = mpsc::sync_channel(CALL_QUEUE);
    Ok((
        CallSender {
            calls,
            wake: Arc::clone(&wake),
        },
        CallReceiver { calls: rx, wake },
    ))
}

impl CallSender {
    /// Queues `call` and wakes the event loop; false if it is gone.
    pub fn send(&self, call: DeviceCall) -> bool {
        if self.calls.send(call).is_err() {
            return false;
        }
        let _ = self.wake.write(1);
        true
    }

    /// Sends the call `make` builds around a reply channel and waits for
    /// the answer, at most [`CALL_TIMEOUT`].
    pub fn ask<T>(
        &self,
        make: impl FnOnce(SyncSender<Result<T, String>>) -> DeviceCall,
    ) -> Result<T, String> {
        let (tx, rx) = mpsc::sync_channel(1);
        if !self.send(make(tx)) {
            return Err("gmemd is stopping".to_owned());
        }
        rx.recv_timeout(CALL_TIMEOUT)
            .map_err(|_| "gmemd did not answer in time".to_owned())?
    }
}

impl CallReceiver {
    /// The eventfd the event loop polls.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// The calls queued now (clears the wakeup).
    pub fn drain(&self) -> Vec<DeviceCall> {
        let _ = self.wake.read();
        self.calls.try_iter().collect()
    }
}
