//! Daemon configuration: who may connect, who is an operator, and limits.

use std::path::PathBuf;

/// Resource limits. Each one refused with a clear error when reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of all memory files together.
    pub max_total_memory: u64,
    /// Files one VM may create or deposit (and still have), across all its
    /// leases.
    pub max_files_per_vm: usize,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total_memory: physical_memory().unwrap_or(1 << 30),
            max_files_per_vm: 64,
            max_connections: 4096,
        }
    }
}

/// What a peer may do, decided once from its uid when it connects
/// ([`Config::admission`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Not allowed at all: every message is refused and the connection closed.
    Refused,
    /// A client: VM leases and control sessions for itself.
    Client,
    /// An operator: also REVOKE, SCRUB, DESTROY of any file, and fds on
    /// control sessions.
    Operator,
}

/// Everything the service needs to decide on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Uids allowed to connect as clients. Operators are always allowed
    /// too, whether listed here or not.
    pub allowed_uids: Vec<u32>,
    /// Uids allowed operator requests (REVOKE, SCRUB, DESTROY of another
    /// VM's file, control-session CREATE/OPEN that hand out fds).
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

impl Config {
    /// What a peer of `uid` may do: the one place that decides it.
    pub fn admission(&self, uid: u32) -> Admission {
        if self.admin_uids.contains(&uid) {
            Admission::Operator
        } else if self.allowed_uids.contains(&uid) {
            Admission::Client
        } else {
            Admission::Refused
        }
    }

    /// Every uid that may connect: the allowed ones and the operators.
    pub fn connecting_uids(&self) -> Vec<u32> {
        let mut uids: Vec<u32> = self
            .allowed_uids
            .iter()
            .chain(&self.admin_uids)
            .copied()
            .collect();
        uids.sort_unstable();
        uids.dedup();
        uids
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
    fn operators_are_always_admitted() {
        let c = Config {
            allowed_uids: vec![1000],
            admin_uids: vec![0, 7],
            limits: Limits::default(),
        };
        assert_eq!(c.admission(0), Admission::Operator);
        assert_eq!(c.admission(7), Admission::Operator);
        assert_eq!(c.admission(1000), Admission::Client);
        assert_eq!(c.admission(1001), Admission::Refused);
        assert_eq!(c.connecting_uids(), vec![0, 7, 1000]);
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
