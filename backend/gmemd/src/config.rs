//! Daemon configuration: who may connect, who is an operator, what ties a
//! VM to its principal, limits and quotas.

use std::path::PathBuf;
use std::time::Duration;

use crate::principal::TieRules;

/// Resource limits. Each one refused with a clear error when reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of all memory files together, retired ones included.
    pub max_total_memory: u64,
    /// Memory files gmemd keeps at once (each is an fd of gmemd's).
    pub max_files: usize,
    /// Files one VM may create or deposit (and still have), across all its
    /// leases.
    pub max_files_per_vm: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// Of those, how many only operators may use.
    pub reserved_operator_connections: usize,
    /// How long a connection may take to send HELLO.
    pub hello_timeout: Duration,
    /// Destroy the files of a VM that has had no lease for this long.
    pub expire_orphans: Option<Duration>,
    /// How long a lease whose connection did not survive a gmemd restart
    /// keeps its bindings.
    pub lease_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total_memory: physical_memory().unwrap_or(1 << 30),
            max_files: 8192,
            max_files_per_vm: 64,
            max_connections: 1024,
            reserved_operator_connections: 8,
            hello_timeout: Duration::from_secs(5),
            expire_orphans: None,
            lease_grace: Duration::from_secs(30),
        }
    }
}

/// fds gmemd needs besides connections and files: epoll, timer, signals,
/// listener, fds in flight, logging.
pub const SPARE_FDS: usize = 64;

impl Limits {
    /// The fds these limits can take: per connection its socket, a pidfd
    /// of a process holding files and one of a HANDOFF; per file its fd.
    pub fn fds_needed(&self) -> usize {
        self.max_connections
            .saturating_mul(3)
            .saturating_add(self.max_files)
            .saturating_add(SPARE_FDS)
    }

    /// Lowers `max_connections` (and if that is not enough, `max_files`) so
    /// that gmemd cannot run out of its `nofile` fds. Returns what was
    /// lowered, for the log.
    pub fn fit_fds(&mut self, nofile: usize) -> Option<String> {
        if self.fds_needed() <= nofile {
            return None;
        }
        let before = (self.max_connections, self.max_files);
        let room = nofile.saturating_sub(SPARE_FDS);
        // Files keep at least half of the room.
        self.max_files = self.max_files.min(room / 2).max(1);
        self.max_connections = ((room - self.max_files.min(room)) / 3).max(1);
        self.reserved_operator_connections = self
            .reserved_operator_connections
            .min(self.max_connections.saturating_sub(1));
        Some(format!(
            "RLIMIT_NOFILE is {nofile}: connections lowered from {} to {}, files from {} to {}",
            before.0, self.max_connections, before.1, self.max_files
        ))
    }
}

/// Parses a duration: `500ms`, `30s`, `5m`, `2h`, `7d`; a bare number is
/// seconds.
///
/// # Errors
/// What is wrong with the text.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 30s, 5m, 2h or 7d"))?;
    let secs = |mul: u64| {
        n.checked_mul(mul)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration {text:?} is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(format!(
            "invalid duration unit {unit:?} in {text:?}: use ms, s, m, h or d"
        )),
    }
}

/// What one principal (a VM's tie, or a peer at accept) may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    /// Memory files of all its VMs.
    pub files: usize,
    /// Bytes of those, and of retired memory its holders may still reach.
    pub memory: u64,
    /// Connections at once, counted per peer principal at accept.
    pub connections: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            files: 256,
            memory: physical_memory().unwrap_or(1 << 30),
            connections: 64,
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
    /// Quotas per principal.
    pub quotas: Quotas,
    /// What ties a VM to the principal of its first lease.
    pub ties: TieRules,
    /// Memory made ready ahead of use: prefault and warm pools.
    pub warm: Warm,
}

/// Memory made ready ahead of use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warm {
    /// Warm pools (`--pool`).
    pub pools: Vec<crate::pool::PoolSpec>,
    /// Threads populating files CREATEd with `PREFAULT`.
    pub prefault_threads: usize,
    /// NUMA node new memfd files' pages are bound to.
    pub numa_node: Option<u32>,
}

impl Default for Warm {
    fn default() -> Self {
        Warm {
            pools: Vec::new(),
            prefault_threads: std::thread::available_parallelism().map_or(1, usize::from),
            numa_node: None,
        }
    }
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
            quotas: Quotas::default(),
            ties: TieRules::default(),
            warm: Warm::default(),
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
            ..Config::default()
        };
        assert_eq!(c.admission(0), Admission::Operator);
        assert_eq!(c.admission(7), Admission::Operator);
        assert_eq!(c.admission(1000), Admission::Client);
        assert_eq!(c.admission(1001), Admission::Refused);
        assert_eq!(c.connecting_uids(), vec![0, 7, 1000]);
    }

    #[test]
    fn limits_fit_the_fd_limit() {
        let mut l = Limits::default();
        assert_eq!(l.fit_fds(1 << 20), None);
        let said = l.fit_fds(1024).unwrap();
        assert!(said.contains("1024"), "{said}");
        assert!(l.fds_needed() <= 1024, "{l:?}");
        assert!(l.max_connections >= 1 && l.max_files >= 1);
        assert!(l.reserved_operator_connections < l.max_connections);
        let mut tiny = Limits::default();
        tiny.fit_fds(10);
        assert_eq!((tiny.max_connections, tiny.max_files), (1, 1));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_duration("5y").unwrap_err().contains("unit"));
        assert!(parse_duration("s")
            .unwrap_err()
            .contains("invalid duration"));
        assert!(parse_duration("99999999999999999d").is_err());
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
