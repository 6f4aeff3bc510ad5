//! Whether a memory region the frontend offers may be mapped by the
//! backend, and the filter's copy of the table the backend holds.
//!
//! vm-memory maps `mmap_offset..mmap_offset + memory_size` of the fd as it
//! is, without comparing it with the file's size, so a range past the end
//! would SIGBUS gmemd on first touch; and any fd at all would be mapped.
//! These checks run before the crate sees the message; gmemd's own
//! judgement (the `RegionJudge`) runs after them.

use std::io;
use std::os::fd::BorrowedFd;

use rustix::fs::{fstat, FileType};
use thiserror::Error;

use super::{MappedRegion, OfferedRegion, RegionJudge};

/// The most regions the backend holds: vhost-user-backend's MAX_MEM_SLOTS,
/// which it reports to QEMU as GET_MAX_MEM_SLOTS.
pub const MAX_MEM_SLOTS: usize = 509;

/// Why a region (or the log area) is not passed on.
#[derive(Debug, Error)]
pub enum RegionRefusal {
    #[error("memory size is 0")]
    ZeroSize,
    #[error("guest physical range overflows")]
    GuestRangeOverflow,
    #[error("user address range overflows")]
    UserRangeOverflow,
    #[error("file range overflows")]
    FileRangeOverflow,
    #[error("fstat on the fd failed")]
    Stat(#[source] io::Error),
    #[error("fd is not a regular file (mode {mode:#o})")]
    NotRegularFile { mode: u32 },
    #[error("file range ends at {end:#x}, past the end of the file ({file_size:#x})")]
    PastEndOfFile { end: u64, file_size: u64 },
    #[error("guest range overlaps the region at {other_gpa:#x} (size {other_size:#x})")]
    Overlap { other_gpa: u64, other_size: u64 },
    #[error("the table would hold {count} regions, more than {MAX_MEM_SLOTS}")]
    TooManyRegions { count: usize },
    #[error("gmemd refused it: {0}")]
    Judge(String),
}

/// A refused region of a message: which one and why.
#[derive(Debug, Error)]
#[error("region {index} (gpa {guest_phys_addr:#x}, size {memory_size:#x})")]
pub struct Refused {
    pub index: usize,
    pub guest_phys_addr: u64,
    pub memory_size: u64,
    #[source]
    pub reason: RegionRefusal,
}

impl Refused {
    fn new(index: usize, region: &OfferedRegion, reason: RegionRefusal) -> Self {
        Self {
            index,
            guest_phys_addr: region.guest_phys_addr,
            memory_size: region.memory_size,
            reason,
        }
    }
}

/// Checks that `offset..offset + size` of `fd` lies inside a regular file;
/// returns the file's (dev, ino).
pub(super) fn check_file_range(
    fd: BorrowedFd<'_>,
    offset: u64,
    size: u64,
) -> Result<(u64, u64), RegionRefusal> {
    let end = offset
        .checked_add(size)
        .ok_or(RegionRefusal::FileRangeOverflow)?;
    let stat = fstat(fd).map_err(|e| RegionRefusal::Stat(e.into()))?;
    // memfds and hugetlbfs files are regular files too.
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(RegionRefusal::NotRegularFile { mode: stat.st_mode });
    }
    // A negative size cannot happen for a regular file; treat it as empty.
    let file_size = u64::try_from(stat.st_size).unwrap_or(0);
    if end > file_size {
        return Err(RegionRefusal::PastEndOfFile { end, file_size });
    }
    Ok((stat.st_dev, stat.st_ino))
}

/// The filter's own checks of one region, without regard to others.
fn check_region(region: &OfferedRegion) -> Result<MappedRegion, RegionRefusal> {
    if region.memory_size == 0 {
        return Err(RegionRefusal::ZeroSize);
    }
    region
        .guest_phys_addr
        .checked_add(region.memory_size)
        .ok_or(RegionRefusal::GuestRangeOverflow)?;
    region
        .user_addr
        .checked_add(region.memory_size)
        .ok_or(RegionRefusal::UserRangeOverflow)?;
    let (dev, ino) = check_file_range(
        std::os::fd::AsFd::as_fd(&region.fd),
        region.mmap_offset,
        region.memory_size,
    )?;
    Ok(MappedRegion {
        guest_phys_addr: region.guest_phys_addr,
        memory_size: region.memory_size,
        mmap_offset: region.mmap_offset,
        dev,
        ino,
    })
}

/// Whether two checked (non-overflowing) guest ranges share an address.
fn overlaps(a: &MappedRegion, b: &MappedRegion) -> bool {
    a.guest_phys_addr < b.guest_phys_addr + b.memory_size
        && b.guest_phys_addr < a.guest_phys_addr + a.memory_size
}

fn check_overlap(new: &MappedRegion, others: &[MappedRegion]) -> Result<(), RegionRefusal> {
    match others.iter().find(|other| overlaps(new, other)) {
        Some(other) => Err(RegionRefusal::Overlap {
            other_gpa: other.guest_phys_addr,
            other_size: other.memory_size,
        }),
        None => Ok(()),
    }
}

/// The table the backend holds, as far as the filter passed it on.
#[derive(Debug, Default)]
pub(super) struct Table {
    regions: Vec<MappedRegion>,
}

impl Table {
    pub fn regions(&self) -> &[MappedRegion] {
        &self.regions
    }

    /// Checks a SET_MEM_TABLE: every region on its own, then against each
    /// other, then each with the judge (who only sees regions that passed
    /// the filter's checks, so it is not asked about a doomed table).
    pub fn vet_table(
        offered: &[OfferedRegion],
        judge: &mut dyn RegionJudge,
    ) -> Result<Vec<MappedRegion>, Refused> {
        // No slot check: a table has at most 8 regions (wire.rs), far
        // below MAX_MEM_SLOTS.
        let mut mapped: Vec<MappedRegion> = Vec::with_capacity(offered.len());
        for (index, region) in offered.iter().enumerate() {
            let checked = check_region(region)
                .and_then(|m| check_overlap(&m, &mapped).map(|()| m))
                .map_err(|reason| Refused::new(index, region, reason))?;
            mapped.push(checked);
        }
        for (index, (region, checked)) in offered.iter().zip(&mapped).enumerate() {
            judge
                .judge(checked)
                .map_err(|why| Refused::new(index, region, RegionRefusal::Judge(why)))?;
        }
        Ok(mapped)
    }

    /// Checks an ADD_MEM_REG against the table so far.
    pub fn vet_add(
        &self,
        offered: &OfferedRegion,
        judge: &mut dyn RegionJudge,
    ) -> Result<MappedRegion, Refused> {
        let refuse = |reason| Refused::new(0, offered, reason);
        if self.regions.len() >= MAX_MEM_SLOTS {
            return Err(refuse(RegionRefusal::TooManyRegions {
                count: self.regions.len() + 1,
            }));
        }
        let checked = check_region(offered).map_err(refuse)?;
        check_overlap(&checked, &self.regions).map_err(refuse)?;
        judge
            .judge(&checked)
            .map_err(|why| refuse(RegionRefusal::Judge(why)))?;
        Ok(checked)
    }

    pub fn replace(&mut self, regions: Vec<MappedRegion>) {
        self.regions = regions;
    }

    pub fn add(&mut self, region: MappedRegion) {
        self.regions.push(region);
    }

    /// Drops the region at `guest_phys_addr` with `memory_size`, as the
    /// crate's GuestMemoryMmap::remove_region does; false if there is none
    /// (the backend will refuse the removal itself).
    pub fn remove(&mut self, guest_phys_addr: u64, memory_size: u64) -> bool {
        let before = self.regions.len();
        self.regions
            .retain(|r| !(r.guest_phys_addr == guest_phys_addr && r.memory_size == memory_size));
        self.regions.len() != before
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::os::fd::{AsFd, OwnedFd};

    use rustix::fs::{ftruncate, memfd_create, MemfdFlags};

    pub(in crate::vhost::filter) fn memfd(size: u64) -> OwnedFd {
        let fd = memfd_create("filter-test", MemfdFlags::CLOEXEC).unwrap();
        ftruncate(&fd, size).unwrap();
        fd
    }

    /// A judge that refuses one guest address and records what it saw.
    #[derive(Debug, Default)]
    pub(in crate::vhost::filter) struct Judge {
        pub refuse_gpa: Option<u64>,
        pub judged: Vec<MappedRegion>,
        pub tables: Vec<Vec<MappedRegion>>,
    }

    impl RegionJudge for Judge {
        fn judge(&mut self, region: &MappedRegion) -> Result<(), String> {
            self.judged.push(region.clone());
            if Some(region.guest_phys_addr) == self.refuse_gpa {
                return Err("not this VM's memory".into());
            }
            Ok(())
        }

        fn table_changed(&mut self, table: &[MappedRegion]) {
            self.tables.push(table.to_vec());
        }
    }

    fn offered(gpa: u64, size: u64, offset: u64, fd: OwnedFd) -> OfferedRegion {
        OfferedRegion {
            guest_phys_addr: gpa,
            memory_size: size,
            user_addr: 0x7f00_0000_0000,
            mmap_offset: offset,
            fd,
        }
    }

    fn refusal(result: Result<MappedRegion, Refused>) -> RegionRefusal {
        result.expect_err("region should be refused").reason
    }

    #[test]
    fn a_region_inside_its_file_passes_with_its_identity() {
        let fd = memfd(0x3000);
        let stat = fstat(&fd).unwrap();
        let mut judge = Judge::default();
        let mapped = Table::default()
            .vet_add(&offered(0x10_0000, 0x2000, 0x1000, fd), &mut judge)
            .unwrap();
        assert_eq!(
            mapped,
            MappedRegion {
                guest_phys_addr: 0x10_0000,
                memory_size: 0x2000,
                mmap_offset: 0x1000,
                dev: stat.st_dev,
                ino: stat.st_ino,
            }
        );
        assert_eq!(judge.judged, vec![mapped]);
    }

    #[test]
    fn bad_regions_are_refused_before_the_judge() {
        let table = Table::default();
        let mut judge = Judge::default();
        let mut vet = |r: OfferedRegion| refusal(table.vet_add(&r, &mut judge));
        assert!(matches!(
            vet(offered(0, 0x2000, 0x1000, memfd(0x2fff))),
            RegionRefusal::PastEndOfFile {
                end: 0x3000,
                file_size: 0x2fff
            }
        ));
        assert!(matches!(
            vet(offered(0, 0, 0, memfd(0x1000))),
            RegionRefusal::ZeroSize
        ));
        assert!(matches!(
            vet(offered(u64::MAX - 0xfff, 0x1000, 0, memfd(0x1000))),
            RegionRefusal::GuestRangeOverflow
        ));
        assert!(matches!(
            vet(offered(0, 0x1000, u64::MAX - 0xfff, memfd(0x1000))),
            RegionRefusal::FileRangeOverflow
        ));
        let mut high_user = offered(0, 0x1000, 0, memfd(0x1000));
        high_user.user_addr = u64::MAX - 0xfff;
        assert!(matches!(vet(high_user), RegionRefusal::UserRangeOverflow));
        let (read_end, _write_end) = rustix::pipe::pipe().unwrap();
        assert!(matches!(
            vet(offered(0, 0x1000, 0, read_end)),
            RegionRefusal::NotRegularFile { .. }
        ));
        assert!(judge.judged.is_empty());
    }

    #[test]
    fn the_judge_has_the_last_word() {
        let mut judge = Judge {
            refuse_gpa: Some(0x4000),
            ..Judge::default()
        };
        let reason = refusal(
            Table::default().vet_add(&offered(0x4000, 0x1000, 0, memfd(0x1000)), &mut judge),
        );
        assert!(matches!(reason, RegionRefusal::Judge(ref why) if why == "not this VM's memory"));
    }

    #[test]
    fn a_table_must_not_overlap_itself() {
        let mut judge = Judge::default();
        let overlapping = [
            offered(0x0, 0x2000, 0, memfd(0x2000)),
            offered(0x1000, 0x2000, 0, memfd(0x2000)),
        ];
        let err = Table::vet_table(&overlapping, &mut judge).unwrap_err();
        assert_eq!(err.index, 1);
        assert!(matches!(
            err.reason,
            RegionRefusal::Overlap {
                other_gpa: 0,
                other_size: 0x2000
            }
        ));
        // Nothing was judged: the table was doomed by the filter's checks.
        assert!(judge.judged.is_empty());
        let adjacent = [
            offered(0x0, 0x2000, 0, memfd(0x2000)),
            offered(0x2000, 0x2000, 0, memfd(0x2000)),
        ];
        assert_eq!(Table::vet_table(&adjacent, &mut judge).unwrap().len(), 2);
    }

    #[test]
    fn adds_are_checked_against_the_table_and_the_slot_limit() {
        let mut table = Table::default();
        let mut judge = Judge::default();
        let fd = memfd(0x1000);
        let one = |gpa| offered(gpa, 0x1000, 0, fd.try_clone().unwrap());
        table.add(table.vet_add(&one(0), &mut judge).unwrap());
        assert!(matches!(
            refusal(table.vet_add(&one(0), &mut judge)),
            RegionRefusal::Overlap { .. }
        ));
        for i in 1..MAX_MEM_SLOTS as u64 {
            table.add(table.vet_add(&one(i * 0x1000), &mut judge).unwrap());
        }
        assert!(matches!(
            refusal(table.vet_add(&one(0x1_0000_0000), &mut judge)),
            RegionRefusal::TooManyRegions { count: 510 }
        ));
        assert!(table.remove(0x1000, 0x1000));
        assert!(!table.remove(0x1000, 0x1000));
        assert!(!table.remove(0x2000, 0x2000));
        assert!(table.vet_add(&one(0x1_0000_0000), &mut judge).is_ok());
    }

    #[test]
    fn log_ranges_are_checked_like_regions() {
        let fd = memfd(0x1000);
        assert!(check_file_range(fd.as_fd(), 0, 0x1000).is_ok());
        assert!(matches!(
            check_file_range(fd.as_fd(), 1, 0x1000),
            Err(RegionRefusal::PastEndOfFile { .. })
        ));
        assert!(matches!(
            check_file_range(fd.as_fd(), u64::MAX, 1),
            Err(RegionRefusal::FileRangeOverflow)
        ));
    }
}
