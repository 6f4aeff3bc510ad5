//! Copying a file's content into a fresh inode (TRANSFER): memory that
//! moves to another VM never keeps the inode an earlier holder can reach
//! (DESIGN invariant 6).
//!
//! Both files are mapped and copied in blocks. A memfd's holes are skipped
//! (`SEEK_DATA`), and blocks that read as zeros are not written, so the
//! copy takes only the memory the content needs. The mappings are
//! `MADV_DONTDUMP`: no core dump of gmemd holds a tenant's memory. Hand-written: vm-memory
//! maps guest RAM, not two files of one host process, and the copy is a
//! loop over a mapping.

use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use gmem_protocol::wire::MemoryKind;
use rustix::fs::SeekFrom;
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

use super::{syscall, MemoryError, MemoryResult};
use crate::ledger::FileSpec;

/// Bytes read and compared at a time.
const BLOCK: usize = 64 << 10;

/// A shared mapping of a whole file, unmapped on drop.
struct Mapping {
    addr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: &OwnedFd, len: usize, prot: ProtFlags, kind: MemoryKind) -> MemoryResult<Self> {
        // SAFETY: a new mapping at an address the kernel picks, of a file
        // gmemd owns; nothing else in this process refers to that range.
        let addr =
            unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0) }
                .map_err(syscall("mmap", kind))?;
        let addr = NonNull::new(addr.cast()).ok_or(MemoryError::Syscall {
            op: "mmap",
            kind,
            source: Errno::FAULT.into(),
        })?;
        let mapping = Mapping { addr, len };
        // A core dump of gmemd (after a watchdog abort, say) must never
        // hold a tenant's RAM.
        // SAFETY: advice on exactly the range mapped above.
        unsafe {
            rustix::mm::madvise(addr.as_ptr().cast(), len, rustix::mm::Advice::LinuxDontDump)
        }
        .map_err(syscall("madvise(MADV_DONTDUMP)", kind))?;
        Ok(mapping)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the range `new` mapped; no reference into it
        // outlives the copy.
        let _ = unsafe { rustix::mm::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}

/// Copies the content of `from` into `to`, both of `spec`'s size and kind,
/// `to` freshly made (all zeros). Returns the bytes written.
///
/// # Errors
/// [`MemoryError::Syscall`] for a mapping or seek failure.
pub fn copy_content(from: &OwnedFd, to: &OwnedFd, spec: &FileSpec) -> MemoryResult<u64> {
    let len = usize::try_from(spec.size).map_err(|_| MemoryError::Syscall {
        op: "mmap",
        kind: spec.kind,
        source: Errno::OVERFLOW.into(),
    })?;
    if len == 0 {
        return Ok(0);
    }
    let src = Mapping::new(from, len, ProtFlags::READ, spec.kind)?;
    let dst = Mapping::new(to, len, ProtFlags::READ | ProtFlags::WRITE, spec.kind)?;
    let mut block = vec![0u8; BLOCK];
    let mut written = 0u64;
    for (start, end) in data_extents(from, spec)? {
        let mut at = start;
        while at < end {
            let n = BLOCK.min(end - at);
            // SAFETY: `at + n <= len`, inside both mappings, and `block`
            // holds `n` bytes. Holders outside gmemd may write the source
            // meanwhile; that changes the bytes read, nothing else.
            unsafe {
                std::ptr::copy_nonoverlapping(src.addr.as_ptr().add(at), block.as_mut_ptr(), n);
            }
            if block[..n].iter().any(|b| *b != 0) {
                // SAFETY: as above; the destination is gmemd's own new
                // file, which no other process holds yet.
                unsafe {
                    std::ptr::copy_nonoverlapping(block.as_ptr(), dst.addr.as_ptr().add(at), n);
                }
                written += n as u64;
            }
            at += n;
        }
    }
    Ok(written)
}

/// The ranges of `fd` that may hold data: a memfd's data extents, the
/// whole file for kinds without holes (hugetlb is allocated at creation,
/// memfd_secret cannot say).
fn data_extents(fd: &OwnedFd, spec: &FileSpec) -> MemoryResult<Vec<(usize, usize)>> {
    let len = usize::try_from(spec.size).unwrap_or(usize::MAX);
    if spec.kind != MemoryKind::Memfd {
        return Ok(vec![(0, len)]);
    }
    let mut extents = Vec::new();
    let mut pos = 0u64;
    while pos < spec.size {
        let start = match rustix::fs::seek(fd, SeekFrom::Data(pos)) {
            Ok(start) => start,
            Err(Errno::NXIO) => break,
            Err(e) => return Err(syscall("lseek SEEK_DATA", spec.kind)(e)),
        };
        let end = rustix::fs::seek(fd, SeekFrom::Hole(start))
            .map_err(syscall("lseek SEEK_HOLE", spec.kind))?
            .min(spec.size);
        extents.push((
            usize::try_from(start).unwrap_or(len),
            usize::try_from(end).unwrap_or(len),
        ));
        pos = end;
    }
    Ok(extents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create;
    use gmem_protocol::wire::Name;

    fn spec(size: u64, kind: MemoryKind) -> FileSpec {
        FileSpec {
            size,
            kind,
            page_size: 4096,
        }
    }

    #[test]
    fn content_arrives_and_holes_stay_holes() {
        let size = 8 << 20;
        let name = Name::new("copy").unwrap();
        let from = create(&name, size, MemoryKind::Memfd).unwrap();
        rustix::io::pwrite(&from, b"first", 4096).unwrap();
        rustix::io::pwrite(&from, b"last", size - 4).unwrap();
        let to = create(&name, size, MemoryKind::Memfd).unwrap();
        let written = copy_content(&from, &to, &spec(size, MemoryKind::Memfd)).unwrap();
        // Two pages hold data; only they are read and written.
        assert_eq!(written, 2 * 4096);
        let mut buf = [0u8; 5];
        rustix::io::pread(&to, &mut buf, 4096).unwrap();
        assert_eq!(&buf, b"first");
        rustix::io::pread(&to, &mut buf[..4], size - 4).unwrap();
        assert_eq!(&buf[..4], b"last");
        // The middle was never written: still a hole in the copy.
        let data = rustix::fs::seek(&to, SeekFrom::Data(1 << 20)).unwrap();
        assert_eq!(data, size - 4096);
    }

    #[test]
    fn gmemds_mappings_of_guest_memory_are_left_out_of_core_dumps() {
        let fd = create(&Name::new("dd").unwrap(), 1 << 20, MemoryKind::Memfd).unwrap();
        let m = Mapping::new(&fd, 1 << 20, ProtFlags::READ, MemoryKind::Memfd).unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{:x}-", m.addr.as_ptr() as usize);
        let block: String = smaps
            .lines()
            .skip_while(|l| !l.starts_with(&start))
            .take_while(|l| l.starts_with(&start) || !l.contains('-') || l.contains(':'))
            .take(40)
            .collect::<Vec<_>>()
            .join("\n");
        let flags = block
            .lines()
            .find(|l| l.starts_with("VmFlags:"))
            .unwrap_or_else(|| panic!("no VmFlags for the mapping: {block}"));
        assert!(flags.split_whitespace().any(|f| f == "dd"), "{flags}");
    }

    #[test]
    fn an_empty_file_copies_nothing() {
        let size = 1 << 20;
        let name = Name::new("blank").unwrap();
        let from = create(&name, size, MemoryKind::Memfd).unwrap();
        let to = create(&name, size, MemoryKind::Memfd).unwrap();
        assert_eq!(
            copy_content(&from, &to, &spec(size, MemoryKind::Memfd)).unwrap(),
            0
        );
    }
}
