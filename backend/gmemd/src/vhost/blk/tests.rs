//! End-to-end tests: chains put on a mock split queue (the driver's side),
//! served by the backend's queue loop, checked in guest memory, the used
//! ring and the memory file.

// The sizes and offsets here are small test constants; the truncation the
// lint guards against cannot happen, and `try_from` everywhere would bury the
// tests.
#![allow(clippy::cast_possible_truncation)]

use super::request::{RawDiscardSegment, RawReqHeader, MAX_CHAIN_DESCS};
use super::*;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::event::EventfdFlags;
use rustix::fs::MemfdFlags;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::bitmap::{AtomicBitmap, NewBitmap};
use vm_memory::Bytes;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, Le32, Le64};

const QSIZE: u16 = 64;
const SECTORS: u64 = 128;
const DISK_SIZE: u64 = SECTORS * 512;
/// Guest memory: two adjacent 1 MiB regions, so a buffer can straddle them.
const REGION: u64 = 0x10_0000;
const HDR: u64 = 0x1000;
const STATUS: u64 = 0x1800;
const INDIRECT: u64 = 0x8000;
const BUF_A: u64 = 0x2_0000;
const BUF_B: u64 = 0x3_0000;
const SERIAL: &str = "gmem-disk-7";

/// One buffer of a chain: guest address, length, device-writable.
type Buf = (u64, u32, bool);

fn r(addr: u64, len: u32) -> Buf {
    (addr, len, false)
}
fn w(addr: u64, len: u32) -> Buf {
    (addr, len, true)
}

fn memfd(size: u64) -> Arc<OwnedFd> {
    let fd = rustix::fs::memfd_create("blk-test", MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, size).unwrap();
    Arc::new(fd)
}

struct Harness<B: Bitmap + NewBitmap + 'static> {
    /// Leaked so the mock queue can borrow it for the whole test; the
    /// atomic handle shares the same mappings.
    mem: &'static GuestMemoryMmap<B>,
    mock: MockSplitQueue<'static, GuestMemoryMmap<B>>,
    atomic: GuestMemoryAtomic<GuestMemoryMmap<B>>,
    vring: VringRwLock<GuestMemoryAtomic<GuestMemoryMmap<B>>>,
    backend: BlkBackend,
    fd: Option<Arc<OwnedFd>>,
    call: OwnedFd,
    next_desc: u16,
    served: u16,
}

impl<B: Bitmap + NewBitmap + 'static> Harness<B> {
    /// A device over a 128-sector disk filled with 0xaa (or no disk).
    fn new(with_disk: bool) -> Self {
        let mem = GuestMemoryMmap::<B>::from_ranges(&[
            (GuestAddress(0), REGION as usize),
            (GuestAddress(REGION), REGION as usize),
        ])
        .unwrap();
        let atomic = GuestMemoryAtomic::new(mem.clone());
        let mem: &'static GuestMemoryMmap<B> = Box::leak(Box::new(mem));
        let fd = with_disk.then(|| {
            let fd = memfd(DISK_SIZE);
            rustix::io::pwrite(&*fd, &vec![0xaa; DISK_SIZE as usize], 0).unwrap();
            fd
        });
        let disk = fd.clone().map(|fd| Disk::new(fd).unwrap());
        let backend = BlkBackend::new(disk, SERIAL, 1).unwrap();

        // Creating the mock zeroes the rings' indexes: once per test only.
        let mock = MockSplitQueue::new(mem, QSIZE);
        let vring = VringRwLock::new(atomic.clone(), QSIZE).unwrap();
        vring.set_queue_size(QSIZE);
        vring
            .set_queue_info(
                mock.desc_table_addr().0,
                mock.avail_addr().0,
                mock.used_addr().0,
            )
            .unwrap();
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        let call =
            rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC).unwrap();
        vring.set_call(Some(File::from(call.try_clone().unwrap())));
        Harness {
            mem,
            mock,
            atomic,
            vring,
            backend,
            fd,
            call,
            next_desc: 0,
            served: 0,
        }
    }

    fn mock(&self) -> &MockSplitQueue<'static, GuestMemoryMmap<B>> {
        &self.mock
    }

    /// Puts raw descriptors at the next free table slots and makes the
    /// first one available.
    fn push_raw(&mut self, descs: &[SplitDescriptor]) {
        let raw: Vec<RawDescriptor> = descs.iter().map(|d| RawDescriptor::from(*d)).collect();
        self.mock().add_desc_chains(&raw, self.next_desc).unwrap();
        self.next_desc += u16::try_from(descs.len()).unwrap();
    }

    /// Makes `bufs` one available chain.
    fn push(&mut self, bufs: &[Buf]) {
        let start = self.next_desc;
        let descs: Vec<SplitDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, write))| {
                let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
                let mut next = 0;
                if i + 1 < bufs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                    next = start + u16::try_from(i).unwrap() + 1;
                }
                SplitDescriptor::new(addr, len, flags, next)
            })
            .collect();
        self.push_raw(&descs);
    }

    /// Serves the queue the way the worker thread does.
    fn run(&mut self) {
        self.backend
            .process_vring(&self.atomic, &self.vring)
            .unwrap();
    }

    /// The used ring entry for the next served chain: (head, len).
    fn next_used(&mut self) -> (u32, u32) {
        let mock = self.mock();
        assert!(
            mock.used().idx().load() > self.served,
            "no used entry for chain {}",
            self.served
        );
        let elem = mock
            .used()
            .ring()
            .ref_at(usize::from(self.served))
            .unwrap()
            .load();
        self.served += 1;
        (elem.id(), elem.len())
    }

    fn header(&self, kind: u32, sector: u64) {
        let hdr = RawReqHeader {
            kind: Le32::from(kind),
            ioprio: Le32::from(0),
            sector: Le64::from(sector),
        };
        self.mem.write_obj(hdr, GuestAddress(HDR)).unwrap();
    }

    /// Submits a request made of the header at HDR, `data`, and a status
    /// byte at STATUS; serves it; returns (status byte, used length).
    fn request(&mut self, kind: u32, sector: u64, data: &[Buf]) -> (u8, u32) {
        self.header(kind, sector);
        let mut chain = vec![r(HDR, 16)];
        chain.extend_from_slice(data);
        chain.push(w(STATUS, 1));
        self.chain(&chain)
    }

    /// Serves an arbitrary chain; returns (byte at STATUS, used length).
    fn chain(&mut self, bufs: &[Buf]) -> (u8, u32) {
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        self.push(bufs);
        self.run();
        let (_, len) = self.next_used();
        (self.mem.read_obj(GuestAddress(STATUS)).unwrap(), len)
    }

    fn fill(&self, addr: u64, len: usize, byte: u8) {
        self.mem
            .write_slice(&vec![byte; len], GuestAddress(addr))
            .unwrap();
    }

    fn guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn file(&self) -> Vec<u8> {
        let mut buf = vec![0; DISK_SIZE as usize];
        rustix::io::pread(&**self.fd.as_ref().unwrap(), &mut buf, 0).unwrap();
        buf
    }

    /// True if the guest was notified since the last call.
    fn notified(&self) -> bool {
        let mut count = [0u8; 8];
        rustix::io::read(&self.call, &mut count).is_ok()
    }
}

type Plain = Harness<BlkBitmap>;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

use virtio_blk::{
    VIRTIO_BLK_T_DISCARD as T_DISCARD, VIRTIO_BLK_T_FLUSH as T_FLUSH,
    VIRTIO_BLK_T_GET_ID as T_GET_ID, VIRTIO_BLK_T_IN as T_IN, VIRTIO_BLK_T_OUT as T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES as T_WRITE_ZEROES,
};
const OK: u8 = 0;
const IOERR: u8 = 1;
const UNSUPP: u8 = 2;

#[test]
fn write_then_read_round_trips_at_several_sectors() {
    let mut h = Plain::new(true);
    for (i, sector) in [0u64, 1, 7, 100, SECTORS - 1].into_iter().enumerate() {
        let data = pattern(i as u8 + 1, 512);
        h.mem.write_slice(&data, GuestAddress(BUF_A)).unwrap();
        assert_eq!(h.request(T_OUT, sector, &[r(BUF_A, 512)]), (OK, 1));
        let at = sector as usize * 512;
        assert_eq!(&h.file()[at..at + 512], &data[..]);

        h.fill(BUF_B, 512, 0);
        assert_eq!(h.request(T_IN, sector, &[w(BUF_B, 512)]), (OK, 513));
        assert_eq!(h.guest(BUF_B, 512), data);
    }
    // Nothing else in the file changed.
    let file = h.file();
    let written = [0usize, 1, 7, 100, 127];
    for s in (0..SECTORS as usize).filter(|s| !written.contains(s)) {
        assert!(file[s * 512..(s + 1) * 512].iter().all(|&b| b == 0xaa));
    }
}

#[test]
fn multi_descriptor_chains_straddling_regions() {
    let mut h = Plain::new(true);
    let data = pattern(9, 2048);
    // Three buffers, the middle one across the boundary of the two regions.
    let straddle = REGION - 512;
    h.mem
        .write_slice(&data[..512], GuestAddress(BUF_A))
        .unwrap();
    h.mem
        .write_slice(&data[512..1536], GuestAddress(straddle))
        .unwrap();
    h.mem
        .write_slice(&data[1536..], GuestAddress(BUF_B))
        .unwrap();
    let out = [r(BUF_A, 512), r(straddle, 1024), r(BUF_B, 512)];
    assert_eq!(h.request(T_OUT, 10, &out), (OK, 1));
    assert_eq!(&h.file()[10 * 512..14 * 512], &data[..]);

    // Read back split differently: 1536 + 512.
    h.fill(straddle, 1536, 0);
    h.fill(BUF_A, 512, 0);
    let inb = [w(straddle, 1536), w(BUF_A, 512)];
    assert_eq!(h.request(T_IN, 10, &inb), (OK, 2049));
    assert_eq!(h.guest(straddle, 1536), &data[..1536]);
    assert_eq!(h.guest(BUF_A, 512), &data[1536..]);
}

#[test]
fn any_layout_header_split_and_status_after_data_in_one_descriptor() {
    let mut h = Plain::new(true);
    h.header(T_IN, 3);
    h.fill(BUF_A, 513, 0xff);
    // Header in two pieces; data and status share the last descriptor.
    let (_, len) = {
        h.push(&[r(HDR, 8), r(HDR + 8, 8), w(BUF_A, 513)]);
        h.run();
        h.next_used()
    };
    assert_eq!(len, 513);
    assert_eq!(h.guest(BUF_A, 512), vec![0xaa; 512]);
    assert_eq!(h.guest(BUF_A + 512, 1), [OK]);
}

#[test]
fn indirect_descriptors() {
    let mut h = Plain::new(true);
    let data = pattern(3, 1024);
    rustix::io::pwrite(&**h.fd.as_ref().unwrap(), &data, 20 * 512).unwrap();
    h.header(T_IN, 20);
    h.fill(STATUS, 1, 0xff);
    let table = [
        SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1),
        SplitDescriptor::new(
            BUF_A,
            1024,
            (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
            2,
        ),
        SplitDescriptor::new(STATUS, 1, VRING_DESC_F_WRITE as u16, 0),
    ];
    for (i, d) in table.iter().enumerate() {
        h.mem
            .write_obj(
                RawDescriptor::from(*d),
                GuestAddress(INDIRECT + 16 * i as u64),
            )
            .unwrap();
    }
    h.push_raw(&[SplitDescriptor::new(
        INDIRECT,
        48,
        VRING_DESC_F_INDIRECT as u16,
        0,
    )]);
    h.run();
    assert_eq!(h.next_used().1, 1025);
    assert_eq!(h.guest(BUF_A, 1024), data);
    assert_eq!(h.guest(STATUS, 1), [OK]);
}

#[test]
fn flush_succeeds() {
    let mut h = Plain::new(true);
    assert_eq!(h.request(T_FLUSH, 0, &[]), (OK, 1));
}

#[test]
fn get_id_is_the_serial_zero_padded() {
    let mut h = Plain::new(true);
    h.fill(BUF_A, 32, 0xff);
    assert_eq!(h.request(T_GET_ID, 0, &[w(BUF_A, 20)]), (OK, 21));
    let mut want = SERIAL.as_bytes().to_vec();
    want.resize(20, 0);
    assert_eq!(h.guest(BUF_A, 20), want);
    // Not a byte past the 20.
    assert_eq!(h.guest(BUF_A + 20, 12), vec![0xff; 12]);
    // A shorter buffer gets what fits, and the used length says so.
    h.fill(BUF_B, 16, 0xff);
    assert_eq!(h.request(T_GET_ID, 0, &[w(BUF_B, 8)]), (OK, 9));
    assert_eq!(h.guest(BUF_B, 8), &SERIAL.as_bytes()[..8]);
    assert_eq!(h.guest(BUF_B + 8, 8), vec![0xff; 8]);
}

fn segment(h: &Plain, addr: u64, sector: u64, sectors: u32, flags: u32) {
    let seg = RawDiscardSegment {
        sector: Le64::from(sector),
        num_sectors: Le32::from(sectors),
        flags: Le32::from(flags),
    };
    h.mem.write_obj(seg, GuestAddress(addr)).unwrap();
}

#[test]
fn discard_and_write_zeroes_zero_exactly_the_range() {
    let mut h = Plain::new(true);
    segment(&h, BUF_A, 2, 3, 0);
    assert_eq!(h.request(T_DISCARD, 0, &[r(BUF_A, 16)]), (OK, 1));
    let file = h.file();
    assert!(file[..1024].iter().all(|&b| b == 0xaa));
    assert!(file[1024..2560].iter().all(|&b| b == 0));
    assert!(file[2560..].iter().all(|&b| b == 0xaa));

    // Two segments at once, with the unmap flag write-zeroes allows.
    let unmap = virtio_blk::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    segment(&h, BUF_A, 50, 1, unmap);
    segment(&h, BUF_A + 16, SECTORS - 2, 2, 0);
    assert_eq!(h.request(T_WRITE_ZEROES, 0, &[r(BUF_A, 32)]), (OK, 1));
    let file = h.file();
    assert!(file[50 * 512..51 * 512].iter().all(|&b| b == 0));
    assert!(file[49 * 512..50 * 512].iter().all(|&b| b == 0xaa));
    assert!(file[51 * 512..(SECTORS as usize - 2) * 512]
        .iter()
        .all(|&b| b == 0xaa));
    assert!(file[(SECTORS as usize - 2) * 512..].iter().all(|&b| b == 0));
    // Reads see the zeros too.
    h.fill(BUF_B, 512, 0xff);
    assert_eq!(h.request(T_IN, 50, &[w(BUF_B, 512)]), (OK, 513));
    assert_eq!(h.guest(BUF_B, 512), vec![0; 512]);
}

#[test]
fn bad_discards_change_nothing() {
    let mut h = Plain::new(true);
    let before = h.file();
    // Discard with the unmap flag: unsupported.
    segment(
        &h,
        BUF_A,
        0,
        1,
        virtio_blk::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
    );
    assert_eq!(h.request(T_DISCARD, 0, &[r(BUF_A, 16)]), (UNSUPP, 1));
    // A good segment then one past the end: nothing is punched.
    segment(&h, BUF_A, 0, 1, 0);
    segment(&h, BUF_A + 16, SECTORS - 1, 2, 0);
    assert_eq!(h.request(T_DISCARD, 0, &[r(BUF_A, 32)]), (IOERR, 1));
    // Not a whole segment, and no segment at all.
    assert_eq!(h.request(T_DISCARD, 0, &[r(BUF_A, 20)]), (IOERR, 1));
    assert_eq!(h.request(T_WRITE_ZEROES, 0, &[]), (IOERR, 1));
    // A segment longer than max_discard_sectors.
    segment(&h, BUF_A, 0, MAX_DISCARD_SECTORS + 1, 0);
    assert_eq!(h.request(T_DISCARD, 0, &[r(BUF_A, 16)]), (IOERR, 1));
    assert_eq!(h.file(), before);
}

#[test]
fn out_of_range_sectors_are_ioerr_and_touch_nothing() {
    let mut h = Plain::new(true);
    let before = h.file();
    h.fill(BUF_A, 1024, 0x11);
    // Last sector plus one too many.
    assert_eq!(h.request(T_OUT, SECTORS - 1, &[r(BUF_A, 1024)]), (IOERR, 1));
    assert_eq!(h.request(T_OUT, SECTORS, &[r(BUF_A, 512)]), (IOERR, 1));
    // Sector numbers whose byte offset overflows.
    assert_eq!(
        h.request(T_OUT, u64::MAX / 512 + 1, &[r(BUF_A, 512)]),
        (IOERR, 1)
    );
    assert_eq!(h.request(T_OUT, u64::MAX, &[r(BUF_A, 512)]), (IOERR, 1));
    assert_eq!(h.file(), before);

    h.fill(BUF_B, 1024, 0x22);
    assert_eq!(h.request(T_IN, SECTORS - 1, &[w(BUF_B, 1024)]), (IOERR, 1));
    assert_eq!(h.guest(BUF_B, 1024), vec![0x22; 1024]);
}

#[test]
fn partial_sectors_are_ioerr() {
    let mut h = Plain::new(true);
    let before = h.file();
    h.fill(BUF_A, 1024, 0x11);
    assert_eq!(h.request(T_OUT, 0, &[r(BUF_A, 100)]), (IOERR, 1));
    assert_eq!(
        h.request(T_OUT, 0, &[r(BUF_A, 512), r(BUF_A + 512, 1)]),
        (IOERR, 1)
    );
    assert_eq!(h.file(), before);
    h.fill(BUF_B, 600, 0x22);
    assert_eq!(h.request(T_IN, 0, &[w(BUF_B, 600)]), (IOERR, 1));
    assert_eq!(h.guest(BUF_B, 600), vec![0x22; 600]);
}

#[test]
fn unknown_request_types_are_unsupported() {
    let mut h = Plain::new(true);
    assert_eq!(h.request(2, 0, &[]), (UNSUPP, 1)); // SCSI_CMD
    assert_eq!(
        h.request(
            virtio_blk::VIRTIO_BLK_T_OUT | virtio_blk::VIRTIO_BLK_T_BARRIER,
            0,
            &[]
        ),
        (UNSUPP, 1)
    );
}

#[test]
fn write_only_or_short_header_is_ioerr() {
    let mut h = Plain::new(true);
    let before = h.file();
    h.header(T_OUT, 0);
    h.fill(BUF_A, 512, 0x11);
    assert_eq!(
        h.chain(&[w(HDR, 16), r(BUF_A, 512), w(STATUS, 1)]),
        (IOERR, 1)
    );
    assert_eq!(h.chain(&[r(HDR, 8), w(STATUS, 1)]), (IOERR, 1));
    assert_eq!(h.chain(&[w(STATUS, 1)]), (IOERR, 1));
    assert_eq!(h.file(), before);
}

#[test]
fn chains_without_a_writable_status_are_returned_untouched() {
    let mut h = Plain::new(true);
    let before = h.file();
    h.header(T_OUT, 0);
    h.fill(BUF_A, 512, 0x11);
    // Last descriptor device-readable: no status, nothing written.
    assert_eq!(
        h.chain(&[r(HDR, 16), r(BUF_A, 512), r(STATUS, 1)]),
        (0xff, 0)
    );
    // Status descriptor of length 0.
    assert_eq!(
        h.chain(&[r(HDR, 16), r(BUF_A, 512), w(STATUS, 0)]),
        (0xff, 0)
    );
    // Status outside guest memory.
    assert_eq!(
        h.chain(&[r(HDR, 16), r(BUF_A, 512), w(0x4000_0000, 1)]),
        (0xff, 0)
    );
    // Status at the very top of the address space (address + length overflows).
    assert_eq!(h.chain(&[r(HDR, 16), w(u64::MAX - 1, 4)]), (0xff, 0));
    assert_eq!(h.file(), before);
}

#[test]
fn data_in_the_wrong_direction_is_ioerr() {
    let mut h = Plain::new(true);
    let before = h.file();
    h.fill(BUF_A, 512, 0x11);
    // A write whose data is device-writable.
    assert_eq!(h.request(T_OUT, 0, &[w(BUF_A, 512)]), (IOERR, 1));
    assert_eq!(h.guest(BUF_A, 512), vec![0x11; 512]);
    // A read whose data is device-readable.
    assert_eq!(h.request(T_IN, 0, &[r(BUF_A, 512)]), (IOERR, 1));
    assert_eq!(h.guest(BUF_A, 512), vec![0x11; 512]);
    // Readable data after writable data.
    h.header(T_OUT, 0);
    let chain = [r(HDR, 16), w(BUF_B, 512), r(BUF_A, 512), w(STATUS, 1)];
    assert_eq!(h.chain(&chain), (IOERR, 1));
    assert_eq!(h.file(), before);
}

#[test]
fn buffers_outside_guest_memory_are_ioerr() {
    let mut h = Plain::new(true);
    let before = h.file();
    let end = 2 * REGION;
    assert_eq!(h.request(T_OUT, 0, &[r(0x4000_0000, 512)]), (IOERR, 1));
    assert_eq!(h.request(T_OUT, 0, &[r(end - 256, 512)]), (IOERR, 1));
    assert_eq!(h.request(T_IN, 0, &[w(end - 256, 512)]), (IOERR, 1));
    // Absurd lengths.
    assert_eq!(h.request(T_OUT, 0, &[r(BUF_A, 0xffff_fe00)]), (IOERR, 1));
    assert_eq!(h.request(T_IN, 0, &[w(BUF_A, 0xffff_fe00)]), (IOERR, 1));
    assert_eq!(h.request(T_IN, 0, &[w(u64::MAX - 511, 512)]), (IOERR, 1));
    assert_eq!(h.file(), before);
}

#[test]
fn descriptor_loops_and_long_chains_do_not_hang() {
    let mut h = Plain::new(true);
    let before = h.file();
    h.header(T_OUT, 0);
    // 0 -> 1 -> 0 -> ...: the chain ends after QSIZE descriptors.
    let start = h.next_desc;
    h.push_raw(&[
        SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, start + 1),
        SplitDescriptor::new(
            STATUS,
            1,
            (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
            start,
        ),
    ]);
    h.run();
    let (head, _) = h.next_used();
    assert_eq!(head, u32::from(start));

    // An indirect table longer than MAX_CHAIN_DESCS: IOERR, though a
    // flush with that much data would otherwise succeed.
    h.header(T_FLUSH, 0);
    let n = MAX_CHAIN_DESCS + 1;
    for i in 0..n {
        let last = i + 1 == n;
        let (addr, len, flags) = match i {
            0 => (HDR, 16, VRING_DESC_F_NEXT),
            _ if last => (STATUS, 1, VRING_DESC_F_WRITE),
            _ => (BUF_A, 512, VRING_DESC_F_NEXT),
        };
        let d = SplitDescriptor::new(addr, len, flags as u16, u16::try_from(i + 1).unwrap());
        h.mem
            .write_obj(
                RawDescriptor::from(d),
                GuestAddress(INDIRECT + 16 * i as u64),
            )
            .unwrap();
    }
    h.fill(STATUS, 1, 0xff);
    h.push_raw(&[SplitDescriptor::new(
        INDIRECT,
        16 * u32::try_from(n).unwrap(),
        VRING_DESC_F_INDIRECT as u16,
        0,
    )]);
    h.run();
    assert_eq!(h.next_used().1, 1);
    assert_eq!(h.guest(STATUS, 1), [IOERR]);
    assert_eq!(h.file(), before);
}

#[test]
fn capacity_zero_device_refuses_io() {
    let mut h = Plain::new(false);
    assert_eq!(&h.backend.get_config(0, 8), &[0; 8]);
    h.fill(BUF_A, 512, 0x11);
    assert_eq!(h.request(T_IN, 0, &[w(BUF_A, 512)]), (IOERR, 1));
    assert_eq!(h.guest(BUF_A, 512), vec![0x11; 512]);
    assert_eq!(h.request(T_OUT, 0, &[r(BUF_A, 512)]), (IOERR, 1));
    segment(&h, BUF_A, 0, 1, 0);
    assert_eq!(h.request(T_DISCARD, 0, &[r(BUF_A, 16)]), (IOERR, 1));
    assert_eq!(h.request(T_FLUSH, 0, &[]), (OK, 1));
    assert_eq!(h.request(T_GET_ID, 0, &[w(BUF_A, 20)]), (OK, 21));
}

fn config(backend: &BlkBackend) -> virtio_blk_config {
    let bytes = backend.get_config(0, size_of::<BlkConfig>() as u32);
    let mut config = BlkConfig::default();
    config.as_mut_slice().copy_from_slice(&bytes);
    config.0
}

#[test]
fn config_space_describes_the_disk() {
    let disk = Disk::new(memfd(DISK_SIZE)).unwrap();
    let backend = BlkBackend::new(Some(disk), SERIAL, 4).unwrap();
    let c = config(&backend);
    assert_eq!({ c.capacity }, u64::to_le(SECTORS));
    assert_eq!({ c.seg_max }, u32::to_le(SEG_MAX));
    assert_eq!({ c.blk_size }, u32::to_le(512));
    assert_eq!({ c.num_queues }, u16::to_le(4));
    assert_eq!({ c.max_discard_sectors }, u32::to_le(MAX_DISCARD_SECTORS));
    assert_eq!({ c.max_discard_seg }, u32::to_le(MAX_DISCARD_SEG));
    assert_eq!({ c.discard_sector_alignment }, u32::to_le(8));
    assert_eq!(
        { c.max_write_zeroes_sectors },
        u32::to_le(MAX_DISCARD_SECTORS)
    );
    assert_eq!({ c.max_write_zeroes_seg }, u32::to_le(MAX_DISCARD_SEG));
    assert_eq!(c.write_zeroes_may_unmap, 1);
    // The raw bytes: capacity at 0, num_queues at 34, little-endian.
    let all = backend.get_config(0, 96);
    assert_eq!(&all[0..8], &SECTORS.to_le_bytes());
    assert_eq!(&all[34..36], &4u16.to_le_bytes());
}

#[test]
fn get_config_returns_exactly_the_slice_asked_for() {
    let backend = BlkBackend::new(Some(Disk::new(memfd(DISK_SIZE)).unwrap()), SERIAL, 1).unwrap();
    let all = backend.get_config(0, 96);
    assert_eq!(all.len(), 96);
    assert_eq!(backend.get_config(0, 57), &all[..57]);
    assert_eq!(backend.get_config(0, 60), &all[..60]);
    assert_eq!(backend.get_config(12, 4), &SEG_MAX.to_le_bytes());
    assert_eq!(backend.get_config(95, 1), &all[95..]);
    assert!(backend.get_config(95, 2).is_empty());
    assert!(backend.get_config(96, 1).is_empty());
    assert!(backend.get_config(0, 97).is_empty());
    assert!(backend.get_config(u32::MAX, u32::MAX).is_empty());
}

#[test]
fn set_config_is_refused() {
    let mut backend = BlkBackend::new(None, SERIAL, 1).unwrap();
    assert!(backend.set_config(0, &[1, 2, 3, 4]).is_err());
    assert_eq!(backend.get_config(0, 8), vec![0; 8]);
}

#[test]
fn new_checks_serial_and_queue_count() {
    assert!(matches!(
        BlkBackend::new(None, "this-serial-is-too-long", 1),
        Err(BlkError::SerialTooLong { len: 23 })
    ));
    assert!(BlkBackend::new(None, "exactly-twenty-bytes", 1).is_ok());
    for n in [0, MAX_QUEUES + 1] {
        assert!(matches!(
            BlkBackend::new(None, SERIAL, n),
            Err(BlkError::QueueCount { .. })
        ));
    }
    let b = BlkBackend::new(None, SERIAL, MAX_QUEUES).unwrap();
    assert_eq!(b.num_queues(), MAX_QUEUES);
    assert_eq!(b.queues_per_thread(), vec![0xff]);
    assert_eq!(b.max_queue_size(), QUEUE_SIZE);
}

#[test]
fn features_offer_what_the_device_does() {
    let b = BlkBackend::new(None, SERIAL, 2).unwrap();
    let f = b.features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
        virtio_blk::VIRTIO_BLK_F_SEG_MAX,
        virtio_blk::VIRTIO_BLK_F_BLK_SIZE,
        virtio_blk::VIRTIO_BLK_F_FLUSH,
        virtio_blk::VIRTIO_BLK_F_MQ,
        virtio_blk::VIRTIO_BLK_F_DISCARD,
        virtio_blk::VIRTIO_BLK_F_WRITE_ZEROES,
        26, // VHOST_F_LOG_ALL
        30, // VHOST_USER_F_PROTOCOL_FEATURES
    ] {
        assert_ne!(f & (1 << bit), 0, "feature bit {bit}");
    }
    // Nothing the device does not implement (e.g. RO, CONFIG_WCE, SIZE_MAX).
    for bit in [
        virtio_blk::VIRTIO_BLK_F_RO,
        virtio_blk::VIRTIO_BLK_F_CONFIG_WCE,
        virtio_blk::VIRTIO_BLK_F_SIZE_MAX,
    ] {
        assert_eq!(f & (1 << bit), 0, "feature bit {bit}");
    }
    let p = b.protocol_features();
    assert!(p.contains(
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::LOG_SHMFD
    ));
}

#[test]
fn handle_event_serves_the_kicked_queue() {
    let mut h = Plain::new(true);
    h.backend.update_memory(h.atomic.clone()).unwrap();
    h.header(T_FLUSH, 0);
    h.push(&[r(HDR, 16), w(STATUS, 1)]);
    let vrings = [h.vring.clone()];
    h.backend.handle_event(0, EventSet::IN, &vrings, 0).unwrap();
    assert_eq!(h.next_used().1, 1);
    assert!(h.backend.handle_event(1, EventSet::IN, &vrings, 0).is_err());
    assert!(h
        .backend
        .handle_event(0, EventSet::OUT, &vrings, 0)
        .is_err());
}

#[test]
fn without_event_idx_every_batch_notifies() {
    let mut h = Plain::new(true);
    for _ in 0..3 {
        h.request(T_FLUSH, 0, &[]);
        assert!(h.notified());
    }
    // No work, no notification.
    h.run();
    assert!(!h.notified());
}

#[test]
fn event_idx_notifies_only_when_the_guest_asks() {
    let mut h = Plain::new(true);
    h.backend.set_event_idx(true);
    h.vring.set_queue_event_idx(true);
    let used_event = GuestAddress(h.mock().avail_addr().0 + 4 + 2 * u64::from(QSIZE));
    // used_event = 0: notify when used idx moves past 0, i.e. now.
    h.mem.write_obj(0u16, used_event).unwrap();
    assert_eq!(h.request(T_FLUSH, 0, &[]), (OK, 1));
    assert!(h.notified());
    // Still 0: the guest has not asked again, so no notification.
    assert_eq!(h.request(T_FLUSH, 0, &[]), (OK, 1));
    assert!(!h.notified());
    // used_event = 2: the third completion is the one it waits for.
    h.mem.write_obj(2u16, used_event).unwrap();
    assert_eq!(h.request(T_FLUSH, 0, &[]), (OK, 1));
    assert!(h.notified());
    // Kicks were turned back on, asking for one at the next new chain.
    let avail_event = GuestAddress(h.mock().used_addr().0 + 4 + 8 * u64::from(QSIZE));
    assert_eq!(h.mem.read_obj::<u16>(avail_event).unwrap(), 3);
}

#[test]
fn writes_to_guest_memory_are_logged_as_dirty() {
    let mut h = Harness::<AtomicBitmap>::new(true);
    let page = |h: &Harness<AtomicBitmap>, addr: u64| {
        let region = h.mem.find_region(GuestAddress(addr)).unwrap();
        let offset = addr - region.start_addr().0;
        region.bitmap().dirty_at(offset as usize)
    };
    let buf = 0x5_0000;
    assert!(!page(&h, buf) && !page(&h, buf + 0x1000));
    h.header(T_IN, 0);
    h.push(&[r(HDR, 16), w(buf, 8192), w(STATUS, 1)]);
    h.run();
    assert_eq!(h.next_used().1, 8193);
    assert!(page(&h, buf) && page(&h, buf + 0x1000));
    assert!(!page(&h, buf + 0x2000));
    // The used ring too, or the destination would see a stale ring.
    assert!(page(&h, h.mock().used_addr().0));
}
