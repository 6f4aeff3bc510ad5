//! The virtio-blk device backend served by `vhost_user_backend::VhostUserDaemon`,
//! one per frontend connection.
//!
//! By concept: `disk` (the memory file the disk's bytes live in), `request`
//! (one descriptor chain checked and carried out); this file holds the
//! device itself: features, config space and the queue loop.

mod disk;
mod request;
#[cfg(test)]
mod tests;

use std::io;
use std::mem::size_of;

use log::{debug, error, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_bindings::virtio_blk::{self, virtio_blk_config};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::bitmap::Bitmap;
use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

pub use disk::Disk;
use disk::SECTOR_SIZE;
use request::{Device, WarnOnce, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, SERIAL_LEN};

/// Most queues a device offers (`num_queues` in the config space).
pub const MAX_QUEUES: usize = 8;
/// Largest queue the frontend may set up.
pub const QUEUE_SIZE: usize = 1024;

/// `seg_max`: data segments per request. Linux may build chains of
/// `seg_max` + 2 descriptors, and a frontend may pick a queue as small as
/// 128 (QEMU's vhost-user-blk default), so stay within that even without
/// indirect descriptors.
const SEG_MAX: u32 = 128 - 2;
/// `blk_size`: the sector size; memory has no bigger natural unit to offer.
const BLK_SIZE: u32 = 512;
const _: () = assert!(BLK_SIZE as u64 == SECTOR_SIZE);
/// `discard_sector_alignment`: one 4 KiB page, the unit tmpfs frees.
const DISCARD_ALIGN_SECTORS: u32 = 4096 / BLK_SIZE;

/// Guest memory with a dirty-page bitmap that the frontend can point at its
/// migration log (`VHOST_USER_SET_LOG_BASE`). Every write this device makes
/// to guest memory goes through vm-memory (`VolatileSlice`, `Bytes`, the
/// used ring) and so is logged, which is what makes LOG_SHMFD honest.
pub type BlkBitmap = BitmapMmapRegion;
/// The guest memory handle `VhostUserDaemon::new` needs for this backend.
pub type BlkMemory = GuestMemoryAtomic<GuestMemoryMmap<BlkBitmap>>;

#[derive(Debug, thiserror::Error)]
pub enum BlkError {
    #[error("cannot stat the disk's memory file")]
    DiskStat(#[source] io::Error),
    #[error("the disk's memory file is not a regular file")]
    DiskNotRegularFile,
    #[error("the disk's size, {size} bytes, is not a multiple of 512")]
    DiskSize { size: u64 },
    #[error("the disk's memory file is on hugetlbfs, which cannot be written with pwrite")]
    DiskOnHugetlbfs,
    #[error("serial is {len} bytes long; at most {SERIAL_LEN} fit")]
    SerialTooLong { len: usize },
    #[error("{requested} queues asked for; a device has 1 to {MAX_QUEUES}")]
    QueueCount { requested: usize },
    #[error("event {0} names no queue of this worker")]
    UnknownEvent(u16),
    #[error("unexpected epoll events {0:?} on a queue kick")]
    UnexpectedEvents(EventSet),
    #[error("cannot notify the guest of used buffers")]
    Notify(#[source] io::Error),
}

/// `struct virtio_blk_config` as the bytes of the config space.
#[repr(transparent)]
#[derive(Copy, Clone, Default, Debug)]
struct BlkConfig(virtio_blk_config);
// SAFETY: virtio_blk_config is repr(C, packed) and made only of integers and
// repr(C) structs of integers without padding: no padding, any bytes are valid.
unsafe impl ByteValued for BlkConfig {}
const _: () = assert!(size_of::<BlkConfig>() == 96);

/// A virtio-blk device for one frontend connection. `disk: None` = capacity 0
/// (a device that only serves the memory table).
#[derive(Debug)]
pub struct BlkBackend {
    disk: Option<Disk>,
    serial: [u8; SERIAL_LEN],
    num_queues: usize,
    config: BlkConfig,
    event_idx: bool,
    mem: Option<BlkMemory>,
    warn: WarnOnce,
}

impl BlkBackend {
    pub fn new(
        disk: Option<Disk>,
        serial: &str,
        num_queues: usize,
    ) -> Result<BlkBackend, BlkError> {
        if serial.len() > SERIAL_LEN {
            return Err(BlkError::SerialTooLong { len: serial.len() });
        }
        let queues = u16::try_from(num_queues)
            .ok()
            .filter(|&n| n >= 1 && usize::from(n) <= MAX_QUEUES)
            .ok_or(BlkError::QueueCount {
                requested: num_queues,
            })?;
        let mut id = [0u8; SERIAL_LEN];
        id[..serial.len()].copy_from_slice(serial.as_bytes());

        // virtio 1.x config space is little-endian.
        let config = BlkConfig(virtio_blk_config {
            capacity: (disk.as_ref().map_or(0, Disk::size) / SECTOR_SIZE).to_le(),
            seg_max: SEG_MAX.to_le(),
            blk_size: BLK_SIZE.to_le(),
            num_queues: queues.to_le(),
            max_discard_sectors: MAX_DISCARD_SECTORS.to_le(),
            max_discard_seg: MAX_DISCARD_SEG.to_le(),
            discard_sector_alignment: DISCARD_ALIGN_SECTORS.to_le(),
            max_write_zeroes_sectors: MAX_DISCARD_SECTORS.to_le(),
            max_write_zeroes_seg: MAX_DISCARD_SEG.to_le(),
            // Write-zeroes always punches a hole.
            write_zeroes_may_unmap: 1,
            ..Default::default()
        });
        Ok(BlkBackend {
            disk,
            serial: id,
            num_queues,
            config,
            event_idx: false,
            mem: None,
            warn: WarnOnce::default(),
        })
    }

    /// Serves every available chain of `vring`, then notifies the guest if
    /// it asked to be. With EVENT_IDX, notifications from the guest stay off
    /// while the queue is drained and the queue is checked again after
    /// turning them back on, so a request that slipped in between is not
    /// left waiting for a kick that will never come.
    fn process_vring<B: Bitmap + 'static>(
        &mut self,
        mem: &GuestMemoryAtomic<GuestMemoryMmap<B>>,
        vring: &VringRwLock<GuestMemoryAtomic<GuestMemoryMmap<B>>>,
    ) -> io::Result<()> {
        loop {
            if self.event_idx {
                if let Err(e) = vring.disable_notification() {
                    return self.queue_broken(e);
                }
            }
            self.drain(mem, vring)?;
            if !self.event_idx {
                return Ok(());
            }
            match vring.enable_notification() {
                Ok(true) => continue,
                Ok(false) => return Ok(()),
                Err(e) => return self.queue_broken(e),
            }
        }
    }

    fn drain<B: Bitmap + 'static>(
        &mut self,
        mem: &GuestMemoryAtomic<GuestMemoryMmap<B>>,
        vring: &VringRwLock<GuestMemoryAtomic<GuestMemoryMmap<B>>>,
    ) -> io::Result<()> {
        let snapshot = mem.memory();
        let dev = Device {
            disk: self.disk.as_ref(),
            serial: &self.serial,
        };
        let mut used = false;
        loop {
            // Holding the vring lock only to pop: add_used takes it again.
            let chain = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(&*snapshot);
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let len = request::serve(dev, &*snapshot, chain, &mut self.warn);
            if let Err(e) = vring.add_used(head, len) {
                warn!("virtio-blk: cannot return chain {head} to the used ring: {e}");
                continue;
            }
            used = true;
        }
        if used {
            match vring.needs_notification() {
                Ok(true) => vring
                    .signal_used_queue()
                    .map_err(|e| io::Error::other(BlkError::Notify(e)))?,
                Ok(false) => {}
                Err(e) => return self.queue_broken(e),
            }
        }
        Ok(())
    }

    /// The guest's ring addresses point outside its memory. Returning an
    /// error would end the worker thread that serves every queue, so log and
    /// wait: a device reset gives the guest a chance to set the queue up again.
    fn queue_broken(&mut self, e: virtio_queue::Error) -> io::Result<()> {
        warn!("virtio-blk: queue unusable: {e}");
        Ok(())
    }
}

impl VhostUserBackendMut for BlkBackend {
    type Bitmap = BlkBitmap;
    type Vring = VringRwLock<BlkMemory>;

    fn num_queues(&self) -> usize {
        self.num_queues
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << virtio_blk::VIRTIO_BLK_F_SEG_MAX)
            | (1 << virtio_blk::VIRTIO_BLK_F_BLK_SIZE)
            | (1 << virtio_blk::VIRTIO_BLK_F_FLUSH)
            | (1 << virtio_blk::VIRTIO_BLK_F_MQ)
            | (1 << virtio_blk::VIRTIO_BLK_F_DISCARD)
            | (1 << virtio_blk::VIRTIO_BLK_F_WRITE_ZEROES)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            // QEMU refuses to migrate a vhost-user device without LOG_ALL.
            | VhostUserVirtioFeatures::LOG_ALL.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::LOG_SHMFD
    }

    fn reset_device(&mut self) {
        self.event_idx = false;
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    /// Exactly the `size` bytes at `offset`, or nothing if any lies outside
    /// the config space (the frontend then sees the request fail).
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let bytes = self.config.as_slice();
        let (Ok(start), Ok(size)) = (usize::try_from(offset), usize::try_from(size)) else {
            return Vec::new();
        };
        start
            .checked_add(size)
            .and_then(|end| bytes.get(start..end))
            .map_or_else(Vec::new, <[u8]>::to_vec)
    }

    /// The config space is read-only: without VIRTIO_BLK_F_CONFIG_WCE no
    /// field is writable.
    fn set_config(&mut self, offset: u32, buf: &[u8]) -> io::Result<()> {
        debug!(
            "virtio-blk: refused a write of {} config bytes at {offset}",
            buf.len()
        );
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "virtio-blk config space is read-only",
        ))
    }

    fn update_memory(&mut self, mem: BlkMemory) -> io::Result<()> {
        dont_dump(&mem);
        self.mem = Some(mem);
        Ok(())
    }

    /// One worker thread serves every queue.
    fn queues_per_thread(&self) -> Vec<u64> {
        vec![(1u64 << self.num_queues) - 1]
    }

    /// Without an exit event the worker thread cannot be stopped, and the
    /// daemon's handler would hang joining it when the connection ends.
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                error!("virtio-blk: cannot create the worker's exit event: {e}");
                None
            }
        }
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Self::Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(BlkError::UnexpectedEvents(evset)));
        }
        let vring = vrings
            .get(usize::from(device_event))
            .ok_or_else(|| io::Error::other(BlkError::UnknownEvent(device_event)))?;
        let Some(mem) = self.mem.clone() else {
            debug!("virtio-blk: queue {device_event} kicked before any memory table");
            return Ok(());
        };
        self.process_vring(&mem, vring)
    }
}

/// Marks every region of guest memory the crate mapped `MADV_DONTDUMP`: a
/// core dump of gmemd must never hold a tenant's RAM. (Advice on a region
/// marked before is harmless.)
fn dont_dump(mem: &BlkMemory) {
    use vm_memory::{GuestAddressSpace, GuestMemoryBackend, GuestMemoryRegion};
    for region in mem.memory().iter() {
        let (Some(addr), Ok(len)) = (
            region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .ok(),
            usize::try_from(region.len()),
        ) else {
            continue;
        };
        // SAFETY: advice on exactly one mapped region of guest memory,
        // which the crate keeps mapped at least as long as `mem` lives;
        // MADV_DONTDUMP changes no content.
        let advised =
            unsafe { rustix::mm::madvise(addr.cast(), len, rustix::mm::Advice::LinuxDontDump) };
        if let Err(e) = advised {
            log::warn!("madvise(MADV_DONTDUMP) on guest memory: {e}");
        }
    }
}
