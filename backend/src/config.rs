//! Daemon configuration: who may connect, who is an operator, and limits.

use std::path::PathBuf;

/// Resource limits. Each one refused with a clear error when reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of all memory files together.
    pub max_total_memory: u64,
    /// Files a lease may create or deposit (and still have).
    pub max_files_per_lease: usize,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total_memory: physical_memory().unwrap_or(1 << 30),
            max_files_per_lease: 64,
            max_connections: 4096,
        }
    }
}

/// Everything the service needs to decide on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Uids allowed to connect at all.
    pub allowed_uids: Vec<u32>,
    /// Uids allowed operator requests (REVOKE, SCRUB, DESTROY of a bound
    /// file, control-session CREATE/OPEN that hand out fds).
    pub admin_uids: Vec<u32>,
    /// Limits.
    pub limits: Limits,
}

impl Default for Config {
    /// gmemd's own uid and root, for both lists.
    fn default() -> Self {
        let own = rustix::process::getuid().as_raw();
        let mut uids = vec![own];
        if own != 0 {
            uids.push(0);
        }
        Config {
            allowed_uids: uids.clone(),
            admin_uids: uids,
            limits: Limits::default(),
        }
    }
}

/// `MemTotal` of the host in bytes.
pub fn physical_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The runtime directory: `$XDG_RUNTIME_DIR/gmemd`, `/run/gmemd` for root,
/// else `/tmp/gmemd-UID`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("gmemd");
    }
    let uid = rustix::process::getuid().as_raw();
    if uid == 0 {
        PathBuf::from("/run/gmemd")
    } else {
        std::env::temp_dir().join(format!("gmemd-{uid}"))
    }
}

/// The socket path used when neither `--socket` nor `GMEMD_SOCKET` is given.
pub fn default_socket() -> PathBuf {
    default_state_dir().join("gmemd.sock")
}

/// Parses sizes like `4096`, `64K`, `512M`, `1G`, `2GiB`.
///
/// # Errors
/// A message naming the bad input.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let value: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected a number with K, M, G or T"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("invalid size unit in {text:?}: use K, M, G or T")),
    };
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("size {text:?} overflows"))
}

/// Formats a byte count for people: `512 MiB`, `1.5 GiB`, `23.5 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    while unit < UNITS.len() - 1 && bytes >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    let scale = 1u64 << (10 * unit);
    if bytes % scale == 0 {
        return format!("{} {}", bytes / scale, UNITS[unit]);
    }
    // Display only: the precision lost above 2^53 bytes does not matter.
    #[allow(clippy::cast_precision_loss)]
    let value = bytes as f64 / scale as f64;
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn sizes_format() {
        assert_eq!(format_size(512 << 20), "512 MiB");
        assert_eq!(format_size(1 << 30), "1 GiB");
        assert_eq!(format_size(1536 << 20), "1.5 GiB");
        assert_eq!(format_size(100), "100 B");
        assert_eq!(format_size(24_105 << 20), "23.5 GiB");
    }

    #[test]
    fn defaults_are_sane() {
        let c = Config::default();
        assert!(c.allowed_uids.contains(&0));
        assert!(c.limits.max_total_memory > 0);
        assert!(
            default_socket().ends_with("gmemd/gmemd.sock")
                || default_socket().ends_with("gmemd.sock")
        );
    }
}
