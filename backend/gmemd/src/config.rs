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

#[cfg(test)]
mod tests {
    use super::*;

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
