//! vm-memory adapter: turns memory fds received from gmemd into a
//! `GuestMemoryMmap` for a rust-vmm VMM.
//!
//! Consumer side only. Every region keeps its [`FileOffset`] (file + offset),
//! so a VMM can pass the same fd on (to vhost-user devices, to a new QEMU)
//! and snapshot code can tell which file backs which guest range.
//!
//! A received fd is not trusted: before mapping, its size is checked with
//! `fstat` (vm-memory itself never compares offset + length with the file
//! size on Unix) and a memfd must be sealed against shrinking, so the
//! mapping cannot turn into SIGBUS under the guest.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::SealFlags;
use rustix::io::Errno;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// Errors of building guest memory from fds.
#[derive(Debug, thiserror::Error)]
pub enum GuestMemoryError {
    /// `fstat` or `dup` on the fd failed.
    #[error("cannot inspect the memory fd")]
    Inspect(#[source] std::io::Error),
    /// The range lies (partly) past the end of the file.
    #[error("region {offset:#x}+{size:#x} ends past the {file_size:#x}-byte file")]
    PastEnd {
        /// Offset in the file.
        offset: u64,
        /// Region size.
        size: u64,
        /// File size.
        file_size: u64,
    },
    /// A memfd that can still shrink: a SIGBUS weapon.
    #[error("the memfd is not sealed against shrinking (F_SEAL_SHRINK)")]
    NotSealed,
    /// A region of zero bytes or one that does not fit the address space.
    #[error("region size {0:#x} is not usable")]
    BadSize(u64),
    /// mmap failed.
    #[error("cannot map the region")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
    /// The regions overlap or are otherwise not a valid layout.
    #[error("invalid guest memory layout")]
    Layout(#[source] vm_memory::GuestRegionCollectionError),
}

/// One guest range backed by a file range.
#[derive(Debug, Clone, Copy)]
pub struct RegionSpec<'fd> {
    /// The memory fd (as received from gmemd).
    pub fd: BorrowedFd<'fd>,
    /// Offset into the file.
    pub file_offset: u64,
    /// Guest-physical address.
    pub gpa: GuestAddress,
    /// Bytes.
    pub size: u64,
}

/// Checks the fd and maps one region (shared, read-write).
///
/// # Errors
/// [`GuestMemoryError`].
pub fn map_region(spec: RegionSpec<'_>) -> Result<GuestRegionMmap, GuestMemoryError> {
    check_fd(spec.fd, spec.file_offset, spec.size)?;
    let len = usize::try_from(spec.size).map_err(|_| GuestMemoryError::BadSize(spec.size))?;
    let file = File::from(
        spec.fd
            .try_clone_to_owned()
            .map_err(GuestMemoryError::Inspect)?,
    );
    let region = MmapRegion::from_file(FileOffset::new(file, spec.file_offset), len)
        .map_err(GuestMemoryError::Map)?;
    GuestRegionMmap::new(region, spec.gpa).ok_or(GuestMemoryError::BadSize(spec.size))
}

/// Builds guest memory from several regions (any order, no overlaps).
///
/// # Errors
/// [`GuestMemoryError`].
pub fn guest_memory(specs: &[RegionSpec<'_>]) -> Result<GuestMemoryMmap, GuestMemoryError> {
    let regions = specs
        .iter()
        .map(|s| map_region(*s))
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_regions(regions).map_err(GuestMemoryError::Layout)
}

fn check_fd(fd: BorrowedFd<'_>, offset: u64, size: u64) -> Result<(), GuestMemoryError> {
    if size == 0 {
        return Err(GuestMemoryError::BadSize(size));
    }
    let stat = rustix::fs::fstat(fd).map_err(|e| GuestMemoryError::Inspect(e.into()))?;
    let file_size = u64::try_from(stat.st_size).unwrap_or(0);
    if offset.checked_add(size).is_none_or(|end| end > file_size) {
        return Err(GuestMemoryError::PastEnd {
            offset,
            size,
            file_size,
        });
    }
    match rustix::fs::fcntl_get_seals(fd.as_fd()) {
        Ok(seals) if !seals.contains(SealFlags::SHRINK) => Err(GuestMemoryError::NotSealed),
        // EINVAL: not a sealable file (guest_memfd, secretmem, tmpfs file):
        // those cannot be shrunk by a client of gmemd either way.
        Ok(_) | Err(Errno::INVAL) => Ok(()),
        Err(e) => Err(GuestMemoryError::Inspect(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, OwnedFd};

    use rustix::fs::MemfdFlags;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    use super::*;

    fn sealed_memfd(size: u64) -> OwnedFd {
        let fd =
            rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, size).unwrap();
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
        fd
    }

    #[test]
    fn regions_at_different_offsets_share_the_file() {
        let fd = sealed_memfd(4 << 20);
        let mem = guest_memory(&[
            RegionSpec {
                fd: fd.as_fd(),
                file_offset: 0,
                gpa: GuestAddress(0),
                size: 1 << 20,
            },
            RegionSpec {
                fd: fd.as_fd(),
                file_offset: 2 << 20,
                gpa: GuestAddress(0x1_0000_0000),
                size: 2 << 20,
            },
        ])
        .unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1_0000_0010))
            .unwrap();
        let mut buf = [0u8; 4];
        rustix::io::pread(&fd, &mut buf, (2 << 20) + 0x10).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        rustix::io::pwrite(&fd, b"hi", 0x20).unwrap();
        assert_eq!(mem.read_obj::<[u8; 2]>(GuestAddress(0x20)).unwrap(), *b"hi");
        let region = mem.find_region(GuestAddress(0x1_0000_0000)).unwrap();
        assert_eq!(region.file_offset().unwrap().start(), 2 << 20);
    }

    #[test]
    fn untrusted_fds_are_checked() {
        let fd = sealed_memfd(1 << 20);
        let past = RegionSpec {
            fd: fd.as_fd(),
            file_offset: 4096,
            gpa: GuestAddress(0),
            size: 1 << 20,
        };
        assert!(matches!(
            map_region(past),
            Err(GuestMemoryError::PastEnd { .. })
        ));
        let overflow = RegionSpec {
            file_offset: u64::MAX,
            size: 4096,
            ..past
        };
        assert!(matches!(
            map_region(overflow),
            Err(GuestMemoryError::PastEnd { .. })
        ));
        let unsealed =
            rustix::fs::memfd_create("u", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&unsealed, 4096).unwrap();
        let spec = RegionSpec {
            fd: unsealed.as_fd(),
            file_offset: 0,
            gpa: GuestAddress(0),
            size: 4096,
        };
        assert!(matches!(map_region(spec), Err(GuestMemoryError::NotSealed)));
        let overlapping = [
            RegionSpec {
                fd: fd.as_fd(),
                file_offset: 0,
                gpa: GuestAddress(0),
                size: 8192,
            },
            RegionSpec {
                fd: fd.as_fd(),
                file_offset: 0,
                gpa: GuestAddress(4096),
                size: 8192,
            },
        ];
        assert!(matches!(
            guest_memory(&overlapping),
            Err(GuestMemoryError::Layout(_))
        ));
    }
}
