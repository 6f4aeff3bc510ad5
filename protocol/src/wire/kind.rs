//! Enumerations carried in payloads: memory kinds and STATUS tables.

use std::fmt;

use super::*;

wire_enum! {
    /// What backs a memory file.
    pub enum MemoryKind (unknown: |value| WireError::UnknownValue { field: "kind", value }) {
        /// Sealed memfd on 4 KiB pages (default).
        Memfd = 0 => "memfd",
        /// hugetlb memfd on 2 MiB pages.
        Hugetlb2M = 1 => "hugetlb-2m",
        /// hugetlb memfd on 1 GiB pages.
        Hugetlb1G = 2 => "hugetlb-1g",
        /// `memfd_secret`: removed from the kernel direct map.
        Secret = 3 => "secret",
        /// Kernel guest_memfd, DEPOSITed by the VMM whose VM created it.
        GuestMemfd = 4 => "guest_memfd",
    }
}

impl MemoryKind {
    /// Page size: the alignment of bindings and of the file size.
    pub fn page_size(self) -> u64 {
        match self {
            MemoryKind::Hugetlb2M => 2 << 20,
            MemoryKind::Hugetlb1G => 1 << 30,
            _ => 4096,
        }
    }
}

impl std::str::FromStr for MemoryKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        MemoryKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!("unknown memory kind {s:?} (memfd, hugetlb-2m, hugetlb-1g, secret)")
            })
    }
}

wire_enum! {
    /// Which table a STATUS request pages through.
    pub enum StatusSection (unknown: |value| WireError::UnknownValue { field: "section", value }) {
        /// Memory files with owners and bindings.
        Files = 0 => "files",
        /// Open leases.
        Leases = 1 => "leases",
        /// Memory files with their namespace (feature `VM_SCOPE`).
        ScopedFiles = 2 => "scoped-files",
        /// The daemon itself: one entry, since when it serves, the restarts
        /// it survived and what it recovered ([`DaemonStatus`]).
        Daemon = 3 => "daemon",
        /// Files being populated and the warm pools (feature `PREFAULT`,
        /// [`FillStatus`]).
        Memory = 4 => "memory",
    }
}
