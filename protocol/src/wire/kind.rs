//! Enumerations carried in payloads: memory kinds and STATUS tables.

use std::fmt;

use super::*;

/// What backs a memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MemoryKind {
    /// Sealed memfd on 4 KiB pages (default).
    Memfd = 0,
    /// hugetlb memfd on 2 MiB pages.
    Hugetlb2M = 1,
    /// hugetlb memfd on 1 GiB pages.
    Hugetlb1G = 2,
    /// `memfd_secret`: removed from the kernel direct map.
    Secret = 3,
    /// Kernel guest_memfd, DEPOSITed by the VMM whose VM created it.
    GuestMemfd = 4,
}

impl MemoryKind {
    /// Every kind.
    pub const ALL: [MemoryKind; 5] = [
        MemoryKind::Memfd,
        MemoryKind::Hugetlb2M,
        MemoryKind::Hugetlb1G,
        MemoryKind::Secret,
        MemoryKind::GuestMemfd,
    ];

    /// Page size: the alignment of bindings and of the file size.
    pub fn page_size(self) -> u64 {
        match self {
            MemoryKind::Hugetlb2M => 2 << 20,
            MemoryKind::Hugetlb1G => 1 << 30,
            _ => 4096,
        }
    }

    /// The name used by the CLI and in STATUS.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryKind::Memfd => "memfd",
            MemoryKind::Hugetlb2M => "hugetlb-2m",
            MemoryKind::Hugetlb1G => "hugetlb-1g",
            MemoryKind::Secret => "secret",
            MemoryKind::GuestMemfd => "guest_memfd",
        }
    }
}

impl fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MemoryKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        MemoryKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown memory kind {s:?} (memfd, hugetlb-2m, hugetlb-1g, secret)")
            })
    }
}

impl TryFrom<u32> for MemoryKind {
    type Error = WireError;

    fn try_from(value: u32) -> WireResult<Self> {
        MemoryKind::ALL
            .into_iter()
            .find(|k| *k as u32 == value)
            .ok_or(WireError::UnknownValue {
                field: "kind",
                value,
            })
    }
}

/// Which table a STATUS request pages through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum StatusSection {
    /// Memory files with owners and bindings.
    Files = 0,
    /// Open leases.
    Leases = 1,
}

impl TryFrom<u32> for StatusSection {
    type Error = WireError;

    fn try_from(value: u32) -> WireResult<Self> {
        match value {
            0 => Ok(StatusSection::Files),
            1 => Ok(StatusSection::Leases),
            _ => Err(WireError::UnknownValue {
                field: "section",
                value,
            }),
        }
    }
}
