//! What a warm pool keeps: `SIZE[:KIND]xCOUNT`, as `--pool` and the
//! configuration file say it (`4Gx2`, `1G:hugetlb-2mx4`).

use std::fmt;
use std::str::FromStr;

use gmem_protocol::wire::MemoryKind;

use crate::size::{format_size, parse_size};

/// COUNT files of SIZE bytes of KIND, kept ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpec {
    /// Bytes of each file.
    pub size: u64,
    /// Their kind.
    pub kind: MemoryKind,
    /// How many gmemd keeps ready.
    pub count: u32,
}

impl PoolSpec {
    /// Whether a CREATE of `size` and `kind` may take a file of this pool.
    pub fn matches(&self, size: u64, kind: MemoryKind) -> bool {
        self.size == size && self.kind == kind
    }
}

impl FromStr for PoolSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage = || {
            format!(
                "invalid pool {text:?}: expected SIZE[:KIND]xCOUNT, e.g. 4Gx2 or 1G:hugetlb-2mx4"
            )
        };
        // No kind name and no size contains an 'x'.
        let (what, count) = text.rsplit_once('x').ok_or_else(usage)?;
        let count: u32 = count.trim().parse().map_err(|_| usage())?;
        if count == 0 {
            return Err(format!("invalid pool {text:?}: COUNT must be at least 1"));
        }
        let (size, kind) = match what.split_once(':') {
            Some((size, kind)) => (size, kind.parse::<MemoryKind>()?),
            None => (what, MemoryKind::Memfd),
        };
        let size = parse_size(size).map_err(|e| format!("invalid pool {text:?}: {e}"))?;
        if kind == MemoryKind::GuestMemfd {
            return Err(format!(
                "invalid pool {text:?}: guest_memfd files are made by their VM, not pooled"
            ));
        }
        crate::memory::check_create(size, kind)
            .map_err(|e| format!("invalid pool {text:?}: {e}"))?;
        Ok(PoolSpec { size, kind, count })
    }
}

impl fmt::Display for PoolSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} x{}",
            format_size(self.size),
            self.kind,
            self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let p: PoolSpec = "4Gx2".parse().unwrap();
        assert_eq!((p.size, p.kind, p.count), (4 << 30, MemoryKind::Memfd, 2));
        let p: PoolSpec = "1G:hugetlb-2mx4".parse().unwrap();
        assert_eq!(
            (p.size, p.kind, p.count),
            (1 << 30, MemoryKind::Hugetlb2M, 4)
        );
        let p: PoolSpec = "256M:secretx1".parse().unwrap();
        assert_eq!(p.kind, MemoryKind::Secret);
        assert!(p.matches(256 << 20, MemoryKind::Secret));
        assert!(!p.matches(256 << 20, MemoryKind::Memfd));
    }

    #[test]
    fn bad_specs_say_why() {
        for (text, says) in [
            ("4G", "SIZE[:KIND]xCOUNT"),
            ("4Gx0", "at least 1"),
            ("4G:bogusx1", "unknown memory kind"),
            ("4G:guest_memfdx1", "made by their VM"),
            ("3M:hugetlb-2mx1", "multiple"),
            ("x3", "invalid pool"),
        ] {
            let err = text.parse::<PoolSpec>().unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
