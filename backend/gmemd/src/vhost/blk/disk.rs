//! The disk: a memory file read and written with pread/pwrite. The disk is
//! never mapped, so a file that shrinks or loses pages can only make a read
//! come up short (an I/O error for the guest), never a SIGBUS in gmemd.

use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{FallocateFlags, FileType};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};

use super::BlkError;

/// virtio-blk addresses the disk in 512-byte sectors whatever `blk_size` says.
pub const SECTOR_SIZE: u64 = 512;

/// `statfs.f_type` of hugetlbfs (linux/magic.h).
const HUGETLBFS_MAGIC: i128 = 0x9584_58f6;

/// The disk: a memory file, read and written with pread/pwrite (no mapping of
/// the disk, so nothing can SIGBUS).
#[derive(Debug, Clone)]
pub struct Disk {
    fd: Arc<OwnedFd>,
    size: u64,
}

impl Disk {
    /// Takes the disk's memory file; its size (from fstat) is the disk's size.
    ///
    /// Refuses a file that is not a regular file, whose size is not a whole
    /// number of sectors, or that lives on hugetlbfs (which has no write(2),
    /// so every guest write would fail).
    pub fn new(fd: Arc<OwnedFd>) -> Result<Disk, BlkError> {
        let stat = rustix::fs::fstat(&*fd).map_err(|e| BlkError::DiskStat(e.into()))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(BlkError::DiskNotRegularFile);
        }
        // A regular file's size is never negative; treat it as "not a multiple" if it were.
        let size =
            u64::try_from(stat.st_size).map_err(|_| BlkError::DiskSize { size: u64::MAX })?;
        if size % SECTOR_SIZE != 0 {
            return Err(BlkError::DiskSize { size });
        }
        let fs = rustix::fs::fstatfs(&*fd).map_err(|e| BlkError::DiskStat(e.into()))?;
        if i128::from(fs.f_type) == HUGETLBFS_MAGIC {
            return Err(BlkError::DiskOnHugetlbfs);
        }
        Ok(Disk { fd, size })
    }

    /// The disk's size in bytes, a multiple of 512.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The byte range of `bytes` bytes starting at `sector`, if it lies
    /// entirely inside the disk.
    pub(super) fn range(&self, sector: u64, bytes: u64) -> Option<Range<u64>> {
        let start = sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(bytes)?;
        (end <= self.size).then_some(start..end)
    }

    /// A cursor that reads or writes `range` sequentially and refuses to go
    /// past its end. `range` must come from [`Disk::range`].
    pub(super) fn cursor(&self, range: Range<u64>) -> DiskCursor<'_> {
        debug_assert!(range.end <= self.size);
        DiskCursor {
            fd: self.fd.as_fd(),
            pos: range.start,
            end: range.end.min(self.size),
        }
    }

    /// Makes `range` read back as zeros by punching a hole, which also gives
    /// the memory back to the host. On tmpfs (memfd) the kernel zeroes the
    /// partial pages at either end itself. `range` must come from [`Disk::range`].
    pub(super) fn zero(&self, range: Range<u64>) -> io::Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        rustix::fs::fallocate(
            &*self.fd,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            range.start,
            range.end - range.start,
        )
        .map_err(io::Error::from)
    }
}

/// Reads or writes a range of the disk sequentially, straight between the
/// file and guest memory (vm-memory's `ReadVolatile`/`WriteVolatile`), so no
/// bounce buffer is needed and dirty pages are logged by the slice's bitmap.
#[derive(Debug)]
pub(super) struct DiskCursor<'a> {
    fd: BorrowedFd<'a>,
    pos: u64,
    end: u64,
}

impl DiskCursor<'_> {
    /// How many of `want` bytes the cursor may still move.
    fn clamp(&self, want: usize) -> usize {
        usize::try_from(self.end - self.pos).map_or(want, |left| left.min(want))
    }

    fn offset(&self) -> Result<libc::off_t, VolatileMemoryError> {
        libc::off_t::try_from(self.pos)
            .map_err(|_| VolatileMemoryError::IOError(io::Error::from_raw_os_error(libc::EINVAL)))
    }
}

impl ReadVolatile for DiskCursor<'_> {
    /// Fills as much of `buf` as the range allows, looping over short preads;
    /// fewer bytes than asked means the range ended or the file did.
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let want = self.clamp(buf.len());
        let mut done = 0;
        while done < want {
            let part = buf.subslice(done, want - done)?;
            let offset = self.offset()?;
            let guard = part.ptr_guard_mut();
            // SAFETY: `self.fd` is a live borrowed fd. `guard` points at
            // `part.len()` bytes of mapped guest memory, which `VolatileSlice`
            // guarantees valid for writes while `part` and `guard` live, and
            // pread writes at most `part.len()` bytes there.
            let n = unsafe {
                libc::pread(
                    self.fd.as_raw_fd(),
                    guard.as_ptr().cast::<libc::c_void>(),
                    part.len(),
                    offset,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // Nobody knows what a failed pread left behind: log it all.
                part.bitmap().mark_dirty(0, part.len());
                return Err(VolatileMemoryError::IOError(err));
            };
            if n == 0 {
                break;
            }
            part.bitmap().mark_dirty(0, n);
            self.pos += n as u64;
            done += n;
        }
        Ok(done)
    }
}

impl WriteVolatile for DiskCursor<'_> {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let want = self.clamp(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let offset = self.offset()?;
        let guard = buf.ptr_guard();
        loop {
            // SAFETY: `self.fd` is a live borrowed fd. `guard` points at
            // `buf.len()` >= `want` bytes of mapped guest memory, valid for
            // reads while `buf` and `guard` live; pwrite reads `want` of them.
            let n = unsafe {
                libc::pwrite(
                    self.fd.as_raw_fd(),
                    guard.as_ptr().cast::<libc::c_void>(),
                    want,
                    offset,
                )
            };
            match usize::try_from(n) {
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(_) => {
                    let err = io::Error::last_os_error();
                    if err.kind() != io::ErrorKind::Interrupted {
                        return Err(VolatileMemoryError::IOError(err));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::MemfdFlags;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn memfd(size: u64) -> Arc<OwnedFd> {
        let fd = rustix::fs::memfd_create("blk-disk-test", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, size).unwrap();
        Arc::new(fd)
    }

    #[test]
    fn new_takes_the_size_and_refuses_partial_sectors() {
        assert_eq!(Disk::new(memfd(8192)).unwrap().size(), 8192);
        assert!(matches!(
            Disk::new(memfd(1000)),
            Err(BlkError::DiskSize { size: 1000 })
        ));
    }

    #[test]
    fn new_refuses_a_non_regular_file() {
        let (r, _w) = rustix::pipe::pipe().unwrap();
        assert!(matches!(
            Disk::new(Arc::new(r)),
            Err(BlkError::DiskNotRegularFile)
        ));
    }

    #[test]
    fn range_stays_inside_the_disk() {
        let disk = Disk::new(memfd(4096)).unwrap();
        assert_eq!(disk.range(0, 4096), Some(0..4096));
        assert_eq!(disk.range(7, 512), Some(3584..4096));
        assert_eq!(disk.range(8, 0), Some(4096..4096));
        assert_eq!(disk.range(7, 1024), None);
        assert_eq!(disk.range(9, 0), None);
        assert_eq!(disk.range(u64::MAX / 512 + 1, 0), None);
        assert_eq!(disk.range(u64::MAX / 512, 512), None);
    }

    #[test]
    fn cursor_never_passes_its_range() {
        let fd = memfd(4096);
        rustix::io::pwrite(&*fd, &[0xaa; 4096], 0).unwrap();
        let disk = Disk::new(fd.clone()).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();

        // Reading 1024 bytes from a 512-byte range stops short.
        let mut cursor = disk.cursor(disk.range(1, 512).unwrap());
        assert_eq!(
            mem.read_volatile_from(GuestAddress(0), &mut cursor, 1024)
                .unwrap(),
            512
        );
        // Writing: same bound, the byte after the range stays.
        mem.write_slice(&[0x55; 1024], GuestAddress(0x1000))
            .unwrap();
        let mut cursor = disk.cursor(disk.range(2, 512).unwrap());
        assert!(mem
            .write_all_volatile_to(GuestAddress(0x1000), &mut cursor, 1024)
            .is_err());
        let mut back = [0u8; 4096];
        rustix::io::pread(&*fd, &mut back, 0).unwrap();
        assert!(back[1024..1536].iter().all(|&b| b == 0x55));
        assert!(back[1536..].iter().all(|&b| b == 0xaa));
        assert!(back[..1024].iter().all(|&b| b == 0xaa));
    }

    #[test]
    fn zero_punches_exactly_the_range() {
        let fd = memfd(3 * 4096);
        rustix::io::pwrite(&*fd, &[0xaa; 3 * 4096], 0).unwrap();
        let disk = Disk::new(fd.clone()).unwrap();
        // Unaligned on both ends: partial pages are zeroed, neighbours kept.
        disk.zero(disk.range(3, 4096 + 1024).unwrap()).unwrap();
        let mut back = [0u8; 3 * 4096];
        rustix::io::pread(&*fd, &mut back, 0).unwrap();
        assert!(back[..1536].iter().all(|&b| b == 0xaa));
        assert!(back[1536..1536 + 5120].iter().all(|&b| b == 0));
        assert!(back[1536 + 5120..].iter().all(|&b| b == 0xaa));
        assert_eq!(rustix::fs::fstat(&*fd).unwrap().st_size, 3 * 4096);
    }
}
