//! The host's hugetlb pools, read from `/sys/kernel/mm/hugepages`.

use std::fs;
use std::io;
use std::path::Path;

/// Where the kernel lists its hugetlb pools.
pub const SYSFS_HUGEPAGES: &str = "/sys/kernel/mm/hugepages";

/// One hugetlb pool: `SYSFS_HUGEPAGES/hugepages-<size>kB/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HugePagePool {
    /// Page size in bytes.
    pub page_size: u64,
    /// `nr_hugepages`.
    pub total: u64,
    /// `free_hugepages`.
    pub free: u64,
}

/// The sysfs directory of the pool of `page_size`-byte pages.
pub fn pool_dir(page_size: u64) -> std::path::PathBuf {
    Path::new(SYSFS_HUGEPAGES).join(format!("hugepages-{}kB", page_size >> 10))
}

/// Parses `hugepages-<N>kB` into a page size in bytes.
pub fn parse_pool_dir(name: &str) -> Option<u64> {
    let kb = name.strip_prefix("hugepages-")?.strip_suffix("kB")?;
    kb.parse::<u64>().ok()?.checked_mul(1024)
}

fn read_count(path: &Path) -> io::Result<u64> {
    let text = fs::read_to_string(path)?;
    text.trim().parse::<u64>().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// Free pages of the `page_size` pool; 0 when the host has no such pool.
pub fn free_pages(page_size: u64) -> u64 {
    read_count(&pool_dir(page_size).join("free_hugepages")).unwrap_or(0)
}

/// Total pages (`nr_hugepages`) of the `page_size` pool; 0 without one.
pub fn total_pages(page_size: u64) -> u64 {
    read_count(&pool_dir(page_size).join("nr_hugepages")).unwrap_or(0)
}

/// Reads every pool under `root` (normally [`SYSFS_HUGEPAGES`]), smallest first.
///
/// # Errors
/// An unreadable directory or count.
pub fn read_pools(root: &Path) -> io::Result<Vec<HugePagePool>> {
    let mut pools = Vec::new();
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let Some(page_size) = entry.file_name().to_str().and_then(parse_pool_dir) else {
            continue;
        };
        let dir = entry.path();
        pools.push(HugePagePool {
            page_size,
            total: read_count(&dir.join("nr_hugepages"))?,
            free: read_count(&dir.join("free_hugepages"))?,
        });
    }
    pools.sort_by_key(|p| p.page_size);
    Ok(pools)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_directories() {
        assert_eq!(parse_pool_dir("hugepages-2048kB"), Some(2 << 20));
        assert_eq!(parse_pool_dir("hugepages-1048576kB"), Some(1 << 30));
        assert_eq!(parse_pool_dir("hugepages-xkB"), None);
        assert_eq!(parse_pool_dir("other"), None);
        assert!(pool_dir(2 << 20).ends_with("hugepages-2048kB"));
    }

    #[test]
    fn pools_are_read_smallest_first() {
        let dir = tempfile::tempdir().unwrap();
        for (kib, total, free) in [(1_048_576, 1, 0), (2048, 8, 3)] {
            let d = dir.path().join(format!("hugepages-{kib}kB"));
            fs::create_dir(&d).unwrap();
            fs::write(d.join("nr_hugepages"), format!("{total}\n")).unwrap();
            fs::write(d.join("free_hugepages"), format!("{free}\n")).unwrap();
        }
        fs::create_dir(dir.path().join("unrelated")).unwrap();
        let pools = read_pools(dir.path()).unwrap();
        assert_eq!(
            pools,
            vec![
                HugePagePool {
                    page_size: 2 << 20,
                    total: 8,
                    free: 3
                },
                HugePagePool {
                    page_size: 1 << 30,
                    total: 1,
                    free: 0
                },
            ]
        );
        fs::write(dir.path().join("hugepages-2048kB/free_hugepages"), "x").unwrap();
        assert!(read_pools(dir.path()).is_err());
    }
}
