//! Memory files: creating each kind, checking deposited fds, scrubbing.
//!
//! Sizes never change after creation (DESIGN invariant 8): memfds are sealed
//! `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL` (the last so no client can add
//! `F_SEAL_WRITE` and freeze everyone's RAM), and `memfd_secret` files accept
//! exactly one size change, the one made here.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use gmem_protocol::wire::{MemoryKind, Name};
use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};
use rustix::io::Errno;

use crate::hugepages;
use crate::ledger::FileSpec;

mod copy;
pub mod populate;
pub use copy::copy_content;

/// Errors of creating and checking memory files.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Size is zero or not a multiple of the page size.
    #[error(
        "size {size:#x} is not a non-zero multiple of the {} page size of {kind}",
        crate::size::format_size(*page_size)
    )]
    BadSize {
        /// Requested size.
        size: u64,
        /// Required alignment.
        page_size: u64,
        /// Kind.
        kind: MemoryKind,
    },
    /// Not enough free hugepages of that size.
    #[error(
        "not enough free {page_kib} KiB hugepages: {free} free, {needed} needed \
         (raise /sys/kernel/mm/hugepages/hugepages-{page_kib}kB/nr_hugepages)"
    )]
    NoHugepages {
        /// Page size in KiB.
        page_kib: u64,
        /// Free pages.
        free: u64,
        /// Pages needed.
        needed: u64,
    },
    /// `memfd_secret` is not available on this kernel.
    #[error("memfd_secret is not available on this host (boot with secretmem.enable=1?)")]
    SecretUnavailable(#[source] io::Error),
    /// A syscall making the file failed.
    #[error("{op} failed for a {kind} file")]
    Syscall {
        /// What was being done.
        op: &'static str,
        /// Kind.
        kind: MemoryKind,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A deposited fd is not what its kind says.
    #[error("deposited fd is {found}, not a {expected}")]
    WrongDeposit {
        /// Declared kind.
        expected: MemoryKind,
        /// What it really is.
        found: String,
    },
    /// gmemd cannot create this kind itself.
    #[error("{0} files are created by their VM's VMM and deposited, not created by gmemd")]
    NotCreatable(MemoryKind),
    /// Only memfds and guest_memfds can be deposited.
    #[error("{0} files cannot be deposited; deposit a memfd or a guest_memfd")]
    NotDepositable(MemoryKind),
}

impl MemoryError {
    /// The errno a reply carries for this error.
    pub fn errno(&self) -> Errno {
        match self {
            Self::BadSize { .. }
            | Self::WrongDeposit { .. }
            | Self::NotDepositable(_)
            | Self::NotCreatable(_) => Errno::INVAL,
            Self::NoHugepages { .. } => Errno::NOMEM,
            Self::SecretUnavailable(_) => Errno::NOSYS,
            Self::Syscall { source, .. } => source
                .raw_os_error()
                .map_or(Errno::IO, Errno::from_raw_os_error),
        }
    }
}

/// Result alias of this module.
pub type MemoryResult<T> = Result<T, MemoryError>;

pub(crate) fn syscall(op: &'static str, kind: MemoryKind) -> impl FnOnce(Errno) -> MemoryError {
    move |e| MemoryError::Syscall {
        op,
        kind,
        source: e.into(),
    }
}

/// Creates a memory file of `size` bytes of `kind`, sized and sealed.
///
/// # Errors
/// [`MemoryError`]: bad size, no hugepages, no `memfd_secret`, syscall failures.
pub fn create(name: &Name, size: u64, kind: MemoryKind) -> MemoryResult<OwnedFd> {
    let page_size = check_create(size, kind)?;
    let label = format!("gmemd:{name}");
    match kind {
        MemoryKind::Memfd => {
            let fd =
                rustix::fs::memfd_create(&label, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
                    .map_err(syscall("memfd_create", kind))?;
            rustix::fs::ftruncate(&fd, size).map_err(syscall("ftruncate", kind))?;
            seal(&fd, kind)?;
            Ok(fd)
        }
        MemoryKind::Hugetlb2M | MemoryKind::Hugetlb1G => {
            let (flag, page_kib) = if kind == MemoryKind::Hugetlb2M {
                (MemfdFlags::HUGE_2MB, 2048)
            } else {
                (MemfdFlags::HUGE_1GB, 1_048_576)
            };
            let needed = size / page_size;
            let free = hugepages::free_pages(page_size);
            if free < needed {
                return Err(MemoryError::NoHugepages {
                    page_kib,
                    free,
                    needed,
                });
            }
            let fd = rustix::fs::memfd_create(
                &label,
                MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | MemfdFlags::HUGETLB | flag,
            )
            .map_err(syscall("memfd_create", kind))?;
            rustix::fs::ftruncate(&fd, size).map_err(syscall("ftruncate", kind))?;
            // Allocate now: a hugetlb file that cannot get its pages should
            // fail here with a clear error, not SIGBUS a guest later.
            rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, size).map_err(|e| {
                if e == Errno::NOSPC || e == Errno::NOMEM {
                    MemoryError::NoHugepages {
                        page_kib,
                        free: hugepages::free_pages(page_size),
                        needed,
                    }
                } else {
                    syscall("fallocate", kind)(e)
                }
            })?;
            seal(&fd, kind)?;
            Ok(fd)
        }
        MemoryKind::Secret => {
            let fd = secret_fd().map_err(MemoryError::SecretUnavailable)?;
            rustix::fs::ftruncate(&fd, size).map_err(syscall("ftruncate", kind))?;
            Ok(fd)
        }
        MemoryKind::GuestMemfd => Err(MemoryError::NotCreatable(kind)),
    }
}

/// Checks that gmemd can create a file of `kind` and `size`, before any
/// limit is looked at; returns the kind's page size.
///
/// # Errors
/// [`MemoryError::NotCreatable`], [`MemoryError::BadSize`].
pub fn check_create(size: u64, kind: MemoryKind) -> MemoryResult<u64> {
    if kind == MemoryKind::GuestMemfd {
        return Err(MemoryError::NotCreatable(kind));
    }
    check_size(size, kind)
}

/// Checks that `size` is a non-zero multiple of the kind's page size and
/// returns that page size.
///
/// # Errors
/// [`MemoryError::BadSize`].
pub fn check_size(size: u64, kind: MemoryKind) -> MemoryResult<u64> {
    let page_size = kind.page_size();
    if size == 0 || size % page_size != 0 {
        return Err(MemoryError::BadSize {
            size,
            page_size,
            kind,
        });
    }
    Ok(page_size)
}

fn seal(fd: &OwnedFd, kind: MemoryKind) -> MemoryResult<()> {
    rustix::fs::fcntl_add_seals(fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .map_err(syscall("F_ADD_SEALS", kind))
}

/// A new `memfd_secret(2)` file of size 0, close-on-exec.
///
/// # Errors
/// The syscall's failure: `ENOSYS` where the kernel lacks it or was booted
/// without `secretmem.enable=1`.
pub fn secret_fd() -> io::Result<OwnedFd> {
    // SAFETY: memfd_secret takes one integer flags argument and returns a new
    // fd or -1; it touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_memfd_secret, libc::O_CLOEXEC) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = i32::try_from(ret).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: `raw` is a fresh fd returned by the kernel just above and owned
    // by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// What an fd handed to gmemd really is.
fn fd_target(fd: BorrowedFd<'_>) -> String {
    fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unreadable ({e})"))
}

/// `f_type` of hugetlbfs (linux/magic.h).
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// Whether an fd lives on hugetlbfs (a hugetlb memfd included: its
/// `/proc` link looks like any memfd's).
fn is_hugetlb(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fstatfs(fd).is_ok_and(|st| st.f_type == HUGETLBFS_MAGIC)
}

/// What kind of memory file a kept fd is, for one the journal lost track
/// of: a memfd, a hugetlb memfd (by its page size) or a memfd_secret file;
/// `None` for anything else (a guest_memfd is its VM's, not gmemd's).
pub fn inspect_kept(fd: &OwnedFd) -> Option<FileSpec> {
    /// `f_type` of secretmem (linux/magic.h).
    const SECRETMEM_MAGIC: i64 = 0x5345_434d;
    let target = fd_target(fd.as_fd());
    let st = rustix::fs::fstatfs(fd).ok()?;
    let kind = if st.f_type == HUGETLBFS_MAGIC {
        match st.f_bsize {
            b if b == 2 << 20 => MemoryKind::Hugetlb2M,
            b if b == 1 << 30 => MemoryKind::Hugetlb1G,
            _ => return None,
        }
    } else if st.f_type == SECRETMEM_MAGIC {
        MemoryKind::Secret
    } else if target.starts_with("/memfd:") {
        MemoryKind::Memfd
    } else {
        return None;
    };
    let size = u64::try_from(rustix::fs::fstat(fd).ok()?.st_size).ok()?;
    let page_size = check_size(size, kind).ok()?;
    Some(FileSpec {
        size,
        kind,
        page_size,
    })
}

/// Checks a deposited fd against its declared kind and returns its spec.
/// Nothing about the fd changes here; [`seal_deposit`] seals it once the
/// deposit is accepted.
///
/// # Errors
/// [`MemoryError::WrongDeposit`] when the fd is something else.
pub fn inspect_deposit(fd: &OwnedFd, kind: MemoryKind) -> MemoryResult<FileSpec> {
    let target = fd_target(fd.as_fd());
    let wrong = |found: String| MemoryError::WrongDeposit {
        expected: kind,
        found,
    };
    match kind {
        MemoryKind::Memfd => {
            if !target.starts_with("/memfd:") {
                return Err(wrong(target));
            }
            if is_hugetlb(fd.as_fd()) {
                return Err(wrong(format!(
                    "{target} on hugetlbfs (create hugetlb files with CREATE)"
                )));
            }
            let seals = rustix::fs::fcntl_get_seals(fd)
                .map_err(|_| wrong(format!("{target} without MFD_ALLOW_SEALING")))?;
            let wanted = SealFlags::SHRINK | SealFlags::GROW;
            if !seals.contains(wanted) && seals.contains(SealFlags::SEAL) {
                return Err(wrong(
                    "a memfd sealed against further seals but still resizable".to_owned(),
                ));
            }
        }
        MemoryKind::GuestMemfd => {
            if target != "anon_inode:[kvm-gmem]" {
                return Err(wrong(target));
            }
        }
        other => return Err(MemoryError::NotDepositable(other)),
    }
    let stat = rustix::fs::fstat(fd).map_err(syscall("fstat", kind))?;
    let size = u64::try_from(stat.st_size).unwrap_or(0);
    let page_size = check_size(size, kind)?;
    Ok(FileSpec {
        size,
        kind,
        page_size,
    })
}

/// Seals an accepted memfd deposit like the memfds gmemd creates.
///
/// # Errors
/// The `F_ADD_SEALS` failure.
pub fn seal_deposit(fd: &OwnedFd, kind: MemoryKind) -> MemoryResult<()> {
    if kind != MemoryKind::Memfd {
        return Ok(());
    }
    let seals = rustix::fs::fcntl_get_seals(fd).map_err(syscall("F_GET_SEALS", kind))?;
    // Already sealed against further seals: inspection made sure SHRINK and
    // GROW are among them.
    if seals.contains(SealFlags::SEAL) {
        return Ok(());
    }
    seal(fd, kind)
}

/// An fd for a client: a new open file description of the same file where
/// the kind allows it, so clients share no file offset or status flags with
/// gmemd or each other; a `dup` otherwise.
///
/// # Errors
/// The `dup` failure.
pub fn reopen(fd: &OwnedFd, kind: MemoryKind) -> io::Result<OwnedFd> {
    if matches!(
        kind,
        MemoryKind::Memfd | MemoryKind::Hugetlb2M | MemoryKind::Hugetlb1G
    ) {
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let flags = rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC;
        if let Ok(fresh) = rustix::fs::open(path.as_str(), flags, rustix::fs::Mode::empty()) {
            return Ok(fresh);
        }
    }
    fd.try_clone()
}

/// Destroys a file's content: every page is punched out, so anyone still
/// holding the fd reads zeros and a later owner sees none of it.
///
/// # Errors
/// The `fallocate` failure.
pub fn scrub(fd: &OwnedFd, spec: &FileSpec) -> MemoryResult<()> {
    rustix::fs::fallocate(
        fd,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        0,
        spec.size,
    )
    .map_err(syscall("punch hole", spec.kind))
}

/// The (st_dev, st_ino) pair that identifies the file behind an fd.
///
/// # Errors
/// The `fstat` failure.
pub fn identity(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let stat = rustix::fs::fstat(fd)?;
    Ok((stat.st_dev, stat.st_ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn memfd_is_sized_and_sealed() {
        let fd = create(&name("t"), 1 << 20, MemoryKind::Memfd).unwrap();
        assert_eq!(rustix::fs::fstat(&fd).unwrap().st_size, 1 << 20);
        let seals = rustix::fs::fcntl_get_seals(&fd).unwrap();
        assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL));
        assert_eq!(rustix::fs::ftruncate(&fd, 4096), Err(Errno::PERM));
        assert_eq!(rustix::fs::ftruncate(&fd, 8 << 20), Err(Errno::PERM));
        assert!(fd_target(fd.as_fd()).starts_with("/memfd:gmemd:t"));
    }

    #[test]
    fn bad_sizes_are_refused() {
        for size in [0, 100, 4097] {
            assert!(matches!(
                create(&name("t"), size, MemoryKind::Memfd),
                Err(MemoryError::BadSize { .. })
            ));
        }
        assert!(matches!(
            create(&name("t"), 4096, MemoryKind::Hugetlb2M),
            Err(MemoryError::BadSize { .. })
        ));
    }

    #[test]
    fn hugetlb_without_pages_says_so() {
        // One page more than the host has free: always refused, with or
        // without 1 GiB pages configured.
        let free = hugepages::free_pages(1 << 30);
        let err = create(&name("t"), (free + 1) << 30, MemoryKind::Hugetlb1G).unwrap_err();
        assert!(
            matches!(err, MemoryError::NoHugepages { free: f, needed: n, .. } if f == free && n == free + 1),
            "{err}"
        );
        assert!(err.to_string().contains("nr_hugepages"));
        assert_eq!(err.errno(), Errno::NOMEM);
    }

    #[test]
    fn secret_memory_when_the_kernel_allows() {
        // The kernel itself says whether memfd_secret exists (ENOSYS).
        // SAFETY: memfd_secret takes flags only and returns a new fd or -1.
        let probe = unsafe { libc::syscall(libc::SYS_memfd_secret, 0) };
        let kernel_has_it =
            probe >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS);
        if probe >= 0 {
            // SAFETY: `probe` is a new fd owned by nothing else.
            drop(unsafe {
                <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(
                    i32::try_from(probe).expect("an fd"),
                )
            });
        }
        match create(&name("s"), 1 << 20, MemoryKind::Secret) {
            Ok(fd) => {
                assert!(kernel_has_it);
                assert!(fd_target(fd.as_fd()).contains("secretmem"));
                // The size was set once and cannot change again.
                assert_eq!(rustix::fs::ftruncate(&fd, 2 << 20), Err(Errno::INVAL));
            }
            Err(e) => {
                assert!(!kernel_has_it, "the kernel has memfd_secret, yet: {e}");
                assert!(matches!(e, MemoryError::SecretUnavailable(_)), "{e}");
                assert_ne!(
                    std::env::var("GMEM_E2E").as_deref(),
                    Ok("require"),
                    "memfd_secret is required (GMEM_E2E=require) but the kernel lacks it"
                );
            }
        }
    }

    #[test]
    fn deposits_are_checked() {
        let own = create(&name("t"), 1 << 20, MemoryKind::Memfd).unwrap();
        let spec = inspect_deposit(&own, MemoryKind::Memfd).unwrap();
        assert_eq!(spec.size, 1 << 20);
        // An unsealed client memfd is untouched by inspection, sealed once accepted.
        let client =
            rustix::fs::memfd_create("c", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&client, 8192).unwrap();
        inspect_deposit(&client, MemoryKind::Memfd).unwrap();
        assert!(rustix::fs::fcntl_get_seals(&client).unwrap().is_empty());
        seal_deposit(&client, MemoryKind::Memfd).unwrap();
        assert!(rustix::fs::ftruncate(&client, 4096).is_err());
        // Not a guest_memfd; not a memfd.
        assert!(matches!(
            inspect_deposit(&own, MemoryKind::GuestMemfd),
            Err(MemoryError::WrongDeposit { .. })
        ));
        let file: OwnedFd = tempfile::tempfile().unwrap().into();
        assert!(matches!(
            inspect_deposit(&file, MemoryKind::Memfd),
            Err(MemoryError::WrongDeposit { .. })
        ));
        assert!(matches!(
            inspect_deposit(&own, MemoryKind::Secret),
            Err(MemoryError::NotDepositable(_))
        ));
    }

    #[test]
    fn reopened_fds_share_no_offset() {
        let fd = create(&name("t"), 8192, MemoryKind::Memfd).unwrap();
        let other = reopen(&fd, MemoryKind::Memfd).unwrap();
        rustix::io::write(&other, b"abc").unwrap();
        assert_eq!(
            rustix::fs::seek(&fd, rustix::fs::SeekFrom::Current(0)).unwrap(),
            0
        );
        assert_eq!(
            identity(fd.as_fd()).unwrap(),
            identity(other.as_fd()).unwrap()
        );
        // Seals belong to the file, so the new description is sealed too.
        assert!(rustix::fs::ftruncate(&other, 4096).is_err());
    }

    #[test]
    fn scrub_zeroes_content() {
        let fd = create(&name("t"), 8192, MemoryKind::Memfd).unwrap();
        rustix::io::pwrite(&fd, b"secret", 4096).unwrap();
        let spec = FileSpec {
            size: 8192,
            kind: MemoryKind::Memfd,
            page_size: 4096,
        };
        scrub(&fd, &spec).unwrap();
        let mut buf = [1u8; 6];
        rustix::io::pread(&fd, &mut buf, 4096).unwrap();
        assert_eq!(buf, [0; 6]);
        assert_eq!(rustix::fs::fstat(&fd).unwrap().st_size, 8192);
    }
}
