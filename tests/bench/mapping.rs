//! A memory mapping the bench writes through: a memory file mapped
//! `MAP_SHARED` (as a VMM maps guest RAM) or fresh anonymous memory. The
//! only unsafe code of the bench, unmapped on drop.

use std::os::fd::BorrowedFd;
use std::ptr::null_mut;

use rustix::mm::{madvise, mmap, mmap_anonymous, munmap, Advice, MapFlags, ProtFlags};

/// The base page size the touch loops step by.
pub const PAGE: usize = 4096;

/// A mapping of `len` bytes at `ptr`, owned: no other code maps, unmaps or
/// references this range while it lives.
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// Maps the first `len` bytes of the file behind `fd`, shared and
    /// writable.
    ///
    /// # Errors
    /// `mmap`'s error.
    pub fn shared(fd: BorrowedFd<'_>, len: usize) -> Result<Mapping, String> {
        // SAFETY: a new mapping at an address the kernel chooses (no
        // MAP_FIXED): nothing mapped before is replaced, and the range is
        // ours alone until `Drop` unmaps it.
        let ptr = unsafe {
            mmap(
                null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }
        .map_err(|e| format!("mmap of {len} bytes, shared: {e}"))?;
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Maps `len` bytes of fresh anonymous memory, private and writable.
    ///
    /// # Errors
    /// `mmap`'s error.
    pub fn anonymous(len: usize) -> Result<Mapping, String> {
        // SAFETY: as in `shared`: a new range the kernel chooses, ours alone.
        let ptr = unsafe {
            mmap_anonymous(
                null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .map_err(|e| format!("mmap of {len} anonymous bytes: {e}"))?;
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Faults in every page writable with one `MADV_POPULATE_WRITE`.
    ///
    /// # Errors
    /// `madvise`'s error (`EINVAL` before Linux 5.14).
    pub fn populate_write(&self) -> Result<(), String> {
        // SAFETY: the advice covers exactly this mapping; populating pages
        // changes no content that any reference could observe.
        unsafe { madvise(self.ptr.cast(), self.len, Advice::LinuxPopulateWrite) }
            .map_err(|e| format!("MADV_POPULATE_WRITE: {e}"))
    }

    /// Writes `byte` to every byte of the mapping.
    pub fn fill(&mut self, byte: u8) {
        // SAFETY: `ptr..ptr+len` is this mapping, writable, and `&mut self`
        // means nothing else reads or writes it meanwhile.
        unsafe { self.ptr.write_bytes(byte, self.len) };
    }

    /// Writes one byte in every `PAGE` bytes, as a guest's first touch of
    /// its RAM does. Volatile, so the compiler keeps every write.
    pub fn touch_pages(&mut self) {
        for offset in (0..self.len).step_by(PAGE) {
            // SAFETY: `offset < len`, so the byte lies in this writable
            // mapping, which `&mut self` keeps to us alone.
            unsafe { self.ptr.add(offset).write_volatile(1) };
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by this value and nothing refers to
        // it once the value is gone.
        let unmapped = unsafe { munmap(self.ptr.cast(), self.len) };
        // Failing would leave memory mapped, not unsound: say so and go on.
        if let Err(e) = unmapped {
            eprintln!("munmap of {} bytes: {e}", self.len);
        }
    }
}
