//! Typed answers of QMP commands and events.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use super::*;

/// Contents of the QMP greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpGreeting {
    /// QEMU version (major, minor, micro).
    pub version: (u64, u64, u64),
    /// Distribution package string, often empty.
    pub package: String,
    /// Capabilities QEMU offers (e.g. `oob`); none is enabled by the client.
    pub capabilities: Vec<String>,
}

impl QmpGreeting {
    /// Parses `{"QMP": {"version": {"qemu": {...}, "package": ...}, "capabilities": [...]}}`.
    pub fn from_value(v: &Value) -> Result<Self, QmpError> {
        let bad = || QmpError::Greeting(truncate(&v.to_string()));
        let qmp = v.get("QMP").ok_or_else(bad)?;
        let version = qmp.get("version").ok_or_else(bad)?;
        let qemu = version.get("qemu").ok_or_else(bad)?;
        let num = |k: &str| qemu.get(k).and_then(Value::as_u64).ok_or_else(bad);
        Ok(Self {
            version: (num("major")?, num("minor")?, num("micro")?),
            package: version
                .get("package")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            capabilities: qmp
                .get("capabilities")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// An asynchronous QMP event, e.g. `STOP`, `RESUME`, `DEVICE_DELETED`.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// Event name.
    pub event: String,
    /// Event payload (`Value::Null` when absent).
    pub data: Value,
    /// Host time of the event as (seconds, microseconds), if sent.
    pub timestamp: Option<(u64, u64)>,
}

impl QmpEvent {
    /// Parses an event message; `None` if `v` has no `event` member.
    pub fn from_value(v: &Value) -> Option<Self> {
        let event = v.get("event")?.as_str()?.to_owned();
        let timestamp = v.get("timestamp").and_then(|t| {
            Some((
                t.get("seconds")?.as_u64()?,
                t.get("microseconds")?.as_u64()?,
            ))
        });
        Some(Self {
            event,
            data: v.get("data").cloned().unwrap_or(Value::Null),
            timestamp,
        })
    }
}

/// Reply to `add-fd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct AddFdInfo {
    /// The fd set the descriptor was added to.
    #[serde(rename = "fdset-id")]
    pub fdset_id: u64,
    /// The descriptor number inside QEMU (usable as `/dev/fdset/<id>`).
    pub fd: i64,
}

/// One descriptor of an fd set, from `query-fdsets`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FdsetFdInfo {
    /// Descriptor number inside QEMU.
    pub fd: i64,
    /// Opaque string given to `add-fd`.
    #[serde(default)]
    pub opaque: Option<String>,
}

/// One fd set, from `query-fdsets`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FdsetInfo {
    /// Fd set id.
    #[serde(rename = "fdset-id")]
    pub fdset_id: u64,
    /// Descriptors in the set.
    #[serde(default)]
    pub fds: Vec<FdsetFdInfo>,
}

/// A memory device, from `query-memory-devices`.
///
/// The QMP reply is a union `{"type": T, "data": {...}}` whose members differ
/// per type (`dimm`, `nvdimm`, `virtio-mem`, `virtio-pmem`, `sgx-epc`, ...);
/// the common ones are lifted out, everything is kept in `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryDeviceInfo {
    /// Union tag, e.g. `dimm` or `virtio-mem`.
    pub kind: String,
    /// Device id (`id=` of `device_add`), if any.
    pub id: Option<String>,
    /// Guest physical address (`addr` or, for virtio devices, `memaddr`).
    pub addr: Option<u64>,
    /// Size in bytes (currently plugged size for `virtio-mem`).
    pub size: Option<u64>,
    /// QOM path of the memory backend, e.g. `/objects/mem1`.
    pub memdev: Option<String>,
    /// The full `data` member.
    pub data: Value,
}

impl MemoryDeviceInfo {
    /// Parses one element of the `query-memory-devices` reply.
    pub fn from_value(v: &Value) -> Result<Self, QmpError> {
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| QmpError::Protocol(format!("memory device without type: {v}")))?
            .to_owned();
        let data = v.get("data").cloned().unwrap_or(Value::Null);
        let str_of = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(Self {
            kind,
            id: str_of("id"),
            addr: data
                .get("addr")
                .or_else(|| data.get("memaddr"))
                .and_then(Value::as_u64),
            size: data.get("size").and_then(Value::as_u64),
            memdev: str_of("memdev"),
            data,
        })
    }
}

/// Status of a migration (`MigrationStatus` in the QAPI schema).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MigrationStatus {
    /// No migration has been started (`none`, or `status` absent).
    #[default]
    None,
    /// `setup`
    Setup,
    /// `active`
    Active,
    /// `pre-switchover`
    PreSwitchover,
    /// `device`
    Device,
    /// `wait-unplug`
    WaitUnplug,
    /// `postcopy-active` and the other `postcopy-*` states.
    Postcopy(String),
    /// `cancelling`
    Cancelling,
    /// `cancelled`
    Cancelled,
    /// `completed`
    Completed,
    /// `failed`
    Failed,
    /// Any status this client does not know.
    Other(String),
}

impl MigrationStatus {
    /// Maps a QMP status string.
    pub fn parse(s: &str) -> Self {
        match s {
            "none" => Self::None,
            "setup" => Self::Setup,
            "active" => Self::Active,
            "pre-switchover" => Self::PreSwitchover,
            "device" => Self::Device,
            "wait-unplug" => Self::WaitUnplug,
            "cancelling" => Self::Cancelling,
            "cancelled" => Self::Cancelled,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            s if s.starts_with("postcopy-") => Self::Postcopy(s.to_owned()),
            s => Self::Other(s.to_owned()),
        }
    }

    /// The QMP spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::None => "none",
            Self::Setup => "setup",
            Self::Active => "active",
            Self::PreSwitchover => "pre-switchover",
            Self::Device => "device",
            Self::WaitUnplug => "wait-unplug",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Postcopy(s) | Self::Other(s) => s,
        }
    }

    /// `completed`, `failed` or `cancelled`.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reply to `query-migrate`. Every field except `status` may be absent
/// depending on the migration state and side (source or destination).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MigrationInfo {
    /// Migration status.
    pub status: MigrationStatus,
    /// `total-time`: ms since the migration started (final value once done).
    pub total_time_ms: Option<u64>,
    /// `downtime`: ms the guest was stopped (only once completed).
    pub downtime_ms: Option<u64>,
    /// `expected-downtime`: estimate while active.
    pub expected_downtime_ms: Option<u64>,
    /// `setup-time`: ms spent in the setup phase.
    pub setup_time_ms: Option<u64>,
    /// `ram.transferred`: bytes sent for RAM so far.
    pub ram_transferred_bytes: Option<u64>,
    /// `ram.total`: bytes of RAM to migrate (excludes ignored blocks).
    pub ram_total_bytes: Option<u64>,
    /// `ram.remaining`: bytes still to send.
    pub ram_remaining_bytes: Option<u64>,
    /// `ram.duplicate`: number of zero pages.
    pub ram_duplicate_pages: Option<u64>,
    /// `ram.normal`: number of full pages sent.
    pub ram_normal_pages: Option<u64>,
    /// `ram.normal-bytes`: bytes of full pages sent.
    pub ram_normal_bytes: Option<u64>,
    /// `ram.dirty-sync-count`: number of dirty bitmap syncs.
    pub ram_dirty_sync_count: Option<u64>,
    /// `ram.mbps`: throughput in Mbit/s.
    pub ram_mbps: Option<f64>,
    /// `error-desc`, set when the migration failed.
    pub error_desc: Option<String>,
    /// The full reply, for fields not lifted out above.
    pub raw: Value,
}

impl MigrationInfo {
    /// Parses the `return` value of `query-migrate`.
    pub fn from_value(v: &Value) -> Self {
        let u = |k: &str| v.get(k).and_then(Value::as_u64);
        let ram = v.get("ram");
        let r = |k: &str| ram.and_then(|r| r.get(k)).and_then(Value::as_u64);
        Self {
            status: v
                .get("status")
                .and_then(Value::as_str)
                .map(MigrationStatus::parse)
                .unwrap_or_default(),
            total_time_ms: u("total-time"),
            downtime_ms: u("downtime"),
            expected_downtime_ms: u("expected-downtime"),
            setup_time_ms: u("setup-time"),
            ram_transferred_bytes: r("transferred"),
            ram_total_bytes: r("total"),
            ram_remaining_bytes: r("remaining"),
            ram_duplicate_pages: r("duplicate"),
            ram_normal_pages: r("normal"),
            ram_normal_bytes: r("normal-bytes"),
            ram_dirty_sync_count: r("dirty-sync-count"),
            ram_mbps: ram.and_then(|r| r.get("mbps")).and_then(Value::as_f64),
            error_desc: v
                .get("error-desc")
                .and_then(Value::as_str)
                .map(str::to_owned),
            raw: v.clone(),
        }
    }
}
