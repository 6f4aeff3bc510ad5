//! One virtio-blk request: the descriptor chain checked and split into the
//! header, the data and the status byte, then carried out on the disk.
//!
//! Everything here distrusts the guest: every range is checked against guest
//! memory and the disk before any byte moves, and a malformed chain gets
//! `VIRTIO_BLK_S_IOERR` (or nothing, when not even a status byte can be
//! written).

use std::mem::size_of;
use std::ops::Range;

use log::{debug, warn};
use virtio_bindings::virtio_blk;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryError, Le32, Le64,
    Permissions,
};

use super::disk::{Disk, SECTOR_SIZE};

/// Status codes (virtio 1.2 section 5.2.6), as the byte the device writes.
pub(super) const STATUS_OK: u8 = 0;
pub(super) const STATUS_IOERR: u8 = 1;
pub(super) const STATUS_UNSUPP: u8 = 2;
const _: () = assert!(STATUS_OK as u32 == virtio_blk::VIRTIO_BLK_S_OK);
const _: () = assert!(STATUS_IOERR as u32 == virtio_blk::VIRTIO_BLK_S_IOERR);
const _: () = assert!(STATUS_UNSUPP as u32 == virtio_blk::VIRTIO_BLK_S_UNSUPP);

/// Longest chain accepted. Drivers stay within `seg_max` + 2; anything much
/// longer is a broken or hostile driver, and refusing it bounds the work
/// (an indirect table may hold 65535 descriptors).
pub(super) const MAX_CHAIN_DESCS: usize = 1024;
/// Segments per discard or write-zeroes request (`max_discard_seg`).
pub(super) const MAX_DISCARD_SEG: u32 = 32;
/// Sectors per discard or write-zeroes segment (2 GiB): the guest splits
/// bigger ones, and a punch that size is still quick on tmpfs.
pub(super) const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// The serial returned by GET_ID is exactly this long, zero padded.
pub(super) const SERIAL_LEN: usize = virtio_blk::VIRTIO_BLK_ID_BYTES as usize;

/// `struct virtio_blk_outhdr`, little-endian as virtio 1.x requires.
#[repr(C, packed)]
#[derive(Copy, Clone, Default, Debug)]
pub(super) struct RawReqHeader {
    pub kind: Le32,
    pub ioprio: Le32,
    pub sector: Le64,
}
// SAFETY: packed, every field is an integer wrapper: no padding, any bytes are valid.
unsafe impl ByteValued for RawReqHeader {}
const _: () = assert!(size_of::<RawReqHeader>() == 16);

/// `struct virtio_blk_discard_write_zeroes`, one segment of a discard or
/// write-zeroes request.
#[repr(C, packed)]
#[derive(Copy, Clone, Default, Debug)]
pub(super) struct RawDiscardSegment {
    pub sector: Le64,
    pub num_sectors: Le32,
    pub flags: Le32,
}
// SAFETY: packed, every field is an integer wrapper: no padding, any bytes are valid.
unsafe impl ByteValued for RawDiscardSegment {}
const _: () = assert!(size_of::<RawDiscardSegment>() == 16);

/// What was wrong with a chain; each kind is warned about once per device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Malformed {
    /// No descriptor at all.
    EmptyChain,
    /// The last descriptor is device-readable or empty: nowhere to put the status.
    StatusNotWritable,
    /// The status byte is outside guest memory.
    StatusOutsideMemory,
    /// More than [`MAX_CHAIN_DESCS`] descriptors.
    TooManyDescriptors,
    /// A device-readable descriptor after a device-writable one.
    ReadableAfterWritable,
    /// A buffer not entirely inside guest memory.
    BufferOutsideMemory,
    /// Fewer than 16 device-readable bytes for the header.
    ShortHeader,
    /// Data in the wrong direction for the request type.
    DataDirection,
    /// Data length not a whole number of sectors.
    PartialSector,
    /// Sectors past the end of the disk (or no disk at all).
    OutOfRange,
    /// Discard/write-zeroes payload not 1 to `MAX_DISCARD_SEG` segments, or
    /// a segment too long.
    BadSegments,
    /// Guest memory could not be read or written after all checks passed.
    GuestMemory,
    /// The memory file failed a read, write or hole punch.
    DiskIo,
}

/// Warns once per [`Malformed`] kind, then only logs at debug, so a guest
/// cannot flood the log.
#[derive(Debug, Default)]
pub(super) struct WarnOnce(u32);

impl WarnOnce {
    fn note(&mut self, kind: Malformed, detail: &dyn std::fmt::Display) {
        let bit = 1u32 << (kind as u32);
        if self.0 & bit == 0 {
            self.0 |= bit;
            warn!("virtio-blk: bad request ({kind:?}): {detail} (further ones logged at debug)");
        } else {
            debug!("virtio-blk: bad request ({kind:?}): {detail}");
        }
    }
}

/// The device state one request needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Device<'a> {
    pub disk: Option<&'a Disk>,
    pub serial: &'a [u8; SERIAL_LEN],
}

/// A run of guest memory ranges read or written front to back as one buffer.
#[derive(Debug, Default)]
struct Segments {
    parts: Vec<(GuestAddress, usize)>,
    len: u64,
}

impl Segments {
    fn push(&mut self, addr: GuestAddress, len: usize) {
        if len > 0 {
            self.parts.push((addr, len));
            self.len += len as u64;
        }
    }

    /// Takes the first `n` bytes off the front; `None` if there are fewer.
    fn split_front(&mut self, n: u64) -> Option<Segments> {
        if n > self.len {
            return None;
        }
        let mut front = Segments::default();
        let mut rest = Vec::with_capacity(self.parts.len());
        let mut left = n;
        for &(addr, len) in &self.parts {
            if left == 0 {
                rest.push((addr, len));
                continue;
            }
            // `take` <= `len`, so it fits a usize.
            let take = usize::try_from(left).map_or(len, |l| l.min(len));
            front.push(addr, take);
            left -= take as u64;
            if take < len {
                // Inside a range already checked against guest memory: no overflow.
                rest.push((addr.unchecked_add(take as u64), len - take));
            }
        }
        self.parts = rest;
        self.len -= n;
        Some(front)
    }

    /// Fills `buf` from the front of the segments (`buf` no longer than them).
    fn read<M: GuestMemory>(&self, mem: &M, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        let mut done = 0;
        for &(addr, len) in &self.parts {
            if done == buf.len() {
                break;
            }
            let take = len.min(buf.len() - done);
            mem.read_slice(&mut buf[done..done + take], addr)?;
            done += take;
        }
        Ok(())
    }

    /// Writes `buf` at the front of the segments (`buf` no longer than them).
    fn write<M: GuestMemory>(&self, mem: &M, buf: &[u8]) -> Result<(), GuestMemoryError> {
        let mut done = 0;
        for &(addr, len) in &self.parts {
            if done == buf.len() {
                break;
            }
            let take = len.min(buf.len() - done);
            mem.write_slice(&buf[done..done + take], addr)?;
            done += take;
        }
        Ok(())
    }
}

/// A chain split the way the device sees it (virtio 1.x has no fixed
/// framing: the header may span descriptors, and the status byte is the
/// last byte of the last descriptor whatever else that descriptor holds).
#[derive(Debug)]
struct Layout {
    readable: Segments,
    /// Device-writable bytes before the status byte.
    writable: Segments,
    status: GuestAddress,
}

/// Why a request was not carried out.
#[derive(Debug)]
enum Refusal {
    /// The request is malformed: IOERR, and a warning.
    Malformed(Malformed),
    /// A well-formed request the device does not implement: UNSUPP.
    Unsupported,
}

impl Layout {
    fn parse<M: GuestMemory>(
        mem: &M,
        chain: impl Iterator<Item = Descriptor>,
    ) -> Result<Layout, (Option<GuestAddress>, Malformed)> {
        let mut descs = Vec::new();
        let mut last = None;
        let mut too_long = false;
        // The chain iterator ends loops (ttl) and absurd totals (over 4 GiB);
        // past MAX_CHAIN_DESCS only the last descriptor is kept, for the status.
        for desc in chain {
            if descs.len() < MAX_CHAIN_DESCS {
                descs.push(desc);
            } else {
                too_long = true;
            }
            last = Some(desc);
        }
        let last = last.ok_or((None, Malformed::EmptyChain))?;
        if !last.is_write_only() || last.len() == 0 {
            return Err((None, Malformed::StatusNotWritable));
        }
        let status = last
            .addr()
            .checked_add(u64::from(last.len()) - 1)
            .filter(|&a| mem.check_range(a, 1, Permissions::Write))
            .ok_or((None, Malformed::StatusOutsideMemory))?;
        if too_long {
            return Err((Some(status), Malformed::TooManyDescriptors));
        }

        let mut layout = Layout {
            readable: Segments::default(),
            writable: Segments::default(),
            status,
        };
        let mut seen_writable = false;
        let count = descs.len();
        for (i, desc) in descs.into_iter().enumerate() {
            let mut len = desc.len() as usize;
            if i + 1 == count {
                len -= 1; // the status byte
            }
            let write = desc.is_write_only();
            let access = if write {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if len > 0 && !mem.check_range(desc.addr(), len, access) {
                return Err((Some(status), Malformed::BufferOutsideMemory));
            }
            if write {
                seen_writable = true;
                layout.writable.push(desc.addr(), len);
            } else if seen_writable {
                return Err((Some(status), Malformed::ReadableAfterWritable));
            } else {
                layout.readable.push(desc.addr(), len);
            }
        }
        Ok(layout)
    }
}

/// Serves one chain and writes its status. Returns the used length: bytes
/// written to the guest including the status byte, or 0 if the chain was
/// dropped.
pub(super) fn serve<M: GuestMemory>(
    dev: Device<'_>,
    mem: &M,
    chain: impl Iterator<Item = Descriptor>,
    warn: &mut WarnOnce,
) -> u32 {
    let mut layout = match Layout::parse(mem, chain) {
        Ok(layout) => layout,
        Err((None, kind)) => {
            warn.note(kind, &"chain returned without a status");
            return 0;
        }
        Err((Some(status), kind)) => {
            warn.note(kind, &"chain refused with IOERR");
            return finish(mem, status, STATUS_IOERR, 0);
        }
    };
    let (status, written) = match execute(dev, mem, &mut layout) {
        Ok(written) => (STATUS_OK, written),
        Err(Refusal::Malformed(kind)) => {
            warn.note(kind, &"request refused with IOERR");
            (STATUS_IOERR, 0)
        }
        Err(Refusal::Unsupported) => (STATUS_UNSUPP, 0),
    };
    finish(mem, layout.status, status, written)
}

/// Writes the status byte; returns the used length.
fn finish<M: GuestMemory>(mem: &M, status_addr: GuestAddress, status: u8, written: u64) -> u32 {
    // The status address was checked against this memory snapshot in parse.
    if mem.write_obj(status, status_addr).is_err() {
        return 0;
    }
    u32::try_from(written.saturating_add(1)).unwrap_or(u32::MAX)
}

fn ioerr(kind: Malformed) -> Refusal {
    Refusal::Malformed(kind)
}

/// Carries out the request; returns the data bytes written to the guest.
fn execute<M: GuestMemory>(dev: Device<'_>, mem: &M, layout: &mut Layout) -> Result<u64, Refusal> {
    let header = layout
        .readable
        .split_front(size_of::<RawReqHeader>() as u64)
        .ok_or(ioerr(Malformed::ShortHeader))?;
    let mut hdr = RawReqHeader::default();
    header
        .read(mem, hdr.as_mut_slice())
        .map_err(|_| ioerr(Malformed::GuestMemory))?;
    let kind = hdr.kind.to_native();
    let sector = hdr.sector.to_native();
    let (readable, writable) = (&layout.readable, &layout.writable);

    match kind {
        virtio_blk::VIRTIO_BLK_T_IN => {
            if readable.len != 0 {
                return Err(ioerr(Malformed::DataDirection));
            }
            let (disk, range) = data_range(dev, sector, writable.len)?;
            let mut cursor = disk.cursor(range);
            for &(addr, len) in &writable.parts {
                mem.read_exact_volatile_from(addr, &mut cursor, len)
                    .map_err(|e| {
                        debug!("virtio-blk: read at sector {sector} failed: {e}");
                        ioerr(Malformed::DiskIo)
                    })?;
            }
            Ok(writable.len)
        }
        virtio_blk::VIRTIO_BLK_T_OUT => {
            if writable.len != 0 {
                return Err(ioerr(Malformed::DataDirection));
            }
            let (disk, range) = data_range(dev, sector, readable.len)?;
            let mut cursor = disk.cursor(range);
            for &(addr, len) in &readable.parts {
                mem.write_all_volatile_to(addr, &mut cursor, len)
                    .map_err(|e| {
                        debug!("virtio-blk: write at sector {sector} failed: {e}");
                        ioerr(Malformed::DiskIo)
                    })?;
            }
            Ok(0)
        }
        // The disk is memory: once pwrite returned, the data is as durable as it gets.
        virtio_blk::VIRTIO_BLK_T_FLUSH => Ok(0),
        virtio_blk::VIRTIO_BLK_T_GET_ID => {
            if readable.len != 0 {
                return Err(ioerr(Malformed::DataDirection));
            }
            let n = usize::try_from(writable.len).map_or(SERIAL_LEN, |l| l.min(SERIAL_LEN));
            writable
                .write(mem, &dev.serial[..n])
                .map_err(|_| ioerr(Malformed::GuestMemory))?;
            Ok(n as u64)
        }
        virtio_blk::VIRTIO_BLK_T_DISCARD | virtio_blk::VIRTIO_BLK_T_WRITE_ZEROES => {
            if writable.len != 0 {
                return Err(ioerr(Malformed::DataDirection));
            }
            zero_segments(dev, mem, kind, readable)?;
            Ok(0)
        }
        other => {
            debug!("virtio-blk: unsupported request type {other:#x}");
            Err(Refusal::Unsupported)
        }
    }
}

/// The disk and byte range for `bytes` of data at `sector`.
fn data_range(dev: Device<'_>, sector: u64, bytes: u64) -> Result<(&Disk, Range<u64>), Refusal> {
    if bytes % SECTOR_SIZE != 0 {
        return Err(ioerr(Malformed::PartialSector));
    }
    let disk = dev.disk.ok_or(ioerr(Malformed::OutOfRange))?;
    let range = disk
        .range(sector, bytes)
        .ok_or(ioerr(Malformed::OutOfRange))?;
    Ok((disk, range))
}

/// DISCARD and WRITE_ZEROES: both punch holes, since a hole reads back as
/// zeros and gives the memory back. Every segment is checked before any is
/// punched, so a bad request changes nothing.
fn zero_segments<M: GuestMemory>(
    dev: Device<'_>,
    mem: &M,
    kind: u32,
    payload: &Segments,
) -> Result<(), Refusal> {
    let seg_size = size_of::<RawDiscardSegment>() as u64;
    let count = payload.len / seg_size;
    if payload.len % seg_size != 0 || count == 0 || count > u64::from(MAX_DISCARD_SEG) {
        return Err(ioerr(Malformed::BadSegments));
    }
    // `payload.len` <= 16 * MAX_DISCARD_SEG, so this allocation is small.
    let mut bytes = vec![0u8; usize::try_from(payload.len).unwrap_or(0)];
    let mut segs = vec![RawDiscardSegment::default(); bytes.len() / size_of::<RawDiscardSegment>()];
    payload
        .read(mem, &mut bytes)
        .map_err(|_| ioerr(Malformed::GuestMemory))?;
    for (seg, raw) in segs
        .iter_mut()
        .zip(bytes.chunks_exact(size_of::<RawDiscardSegment>()))
    {
        seg.as_mut_slice().copy_from_slice(raw);
    }

    // Discard takes no flags; write-zeroes may say "unmap", which a hole does anyway.
    let allowed_flags = if kind == virtio_blk::VIRTIO_BLK_T_WRITE_ZEROES {
        virtio_blk::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
    } else {
        0
    };
    let mut ranges = Vec::with_capacity(segs.len());
    for seg in &segs {
        let flags = seg.flags.to_native();
        if flags & !allowed_flags != 0 {
            debug!("virtio-blk: discard/write-zeroes flags {flags:#x} not supported");
            return Err(Refusal::Unsupported);
        }
        let sectors = seg.num_sectors.to_native();
        if sectors > MAX_DISCARD_SECTORS {
            return Err(ioerr(Malformed::BadSegments));
        }
        let (disk, range) = data_range(
            dev,
            seg.sector.to_native(),
            u64::from(sectors) * SECTOR_SIZE,
        )?;
        ranges.push((disk, range));
    }
    for (disk, range) in ranges {
        disk.zero(range.clone()).map_err(|e| {
            debug!("virtio-blk: punching {range:?} failed: {e}");
            ioerr(Malformed::DiskIo)
        })?;
    }
    Ok(())
}
