//! Host capability probe (`gmemctl caps [--json]`).
//!
//! The probes of KVM are in `kvm`, the table for people in `render`.
//!
//! [`probe`] asks the running kernel what gmemd and its VMMs can rely on: KVM itself, the
//! `KVM_SET_USER_MEMORY_REGION2` / guest_memfd interfaces, the VM types and memory attributes
//! KVM offers, `memfd_secret(2)`, and the hugetlb pools. Every probe records an error string
//! instead of failing, so the report is always complete.
//!
//! Capabilities that KVM answers per VM (guest_memfd flags, memory attributes) are asked on
//! a freshly created VM of the default type, and again on a VM of every other type that
//! `KVM_CAP_VM_TYPES` lists (see [`HostCaps::vm_type_probes`]).

mod kvm;
mod render;

use std::io;
use std::path::Path;

use gmemd::hugepages::{read_pools, SYSFS_HUGEPAGES};
use kvm_bindings::{
    KVM_API_VERSION, KVM_CAP_GUEST_MEMFD, KVM_CAP_USER_MEMORY2, KVM_CAP_VM_TYPES,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
};
use kvm_ioctls::Kvm;
use serde::Serialize;

pub use kvm::flag_combinations;
use kvm::{check_sys, probe_vm_type};

/// `KVM_CAP_GUEST_MEMFD_FLAGS` (Linux 6.18): the guest_memfd flags a VM accepts.
/// Not yet in kvm-bindings 0.14.
pub const KVM_CAP_GUEST_MEMFD_FLAGS: u32 = 244;
/// `GUEST_MEMFD_FLAG_MMAP`: the host may mmap() the guest_memfd (shared memory only).
pub const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;
/// `GUEST_MEMFD_FLAG_INIT_SHARED`: the guest_memfd's memory starts out shared, not private.
pub const GUEST_MEMFD_FLAG_INIT_SHARED: u64 = 1 << 1;

/// Size of the guest_memfd [`probe`] tries to create.
pub const PROBE_GMEM_SIZE: u64 = 2 << 20;

/// Names of the `KVM_CAP_GUEST_MEMFD_FLAGS` bits.
pub const GUEST_MEMFD_FLAG_NAMES: &[(u64, &str)] = &[
    (GUEST_MEMFD_FLAG_MMAP, "MMAP"),
    (GUEST_MEMFD_FLAG_INIT_SHARED, "INIT_SHARED"),
];

/// Names of the `KVM_MEMORY_ATTRIBUTE_*` bits.
pub const MEMORY_ATTRIBUTE_NAMES: &[(u64, &str)] =
    &[(KVM_MEMORY_ATTRIBUTE_PRIVATE as u64, "PRIVATE")];

/// Names of the x86 VM types; bit `n` of `KVM_CAP_VM_TYPES` means type `n` is supported.
pub const VM_TYPE_NAMES: &[(u64, &str)] = &[
    (0, "default"),
    (1, "sw_protected"),
    (2, "sev"),
    (3, "sev_es"),
    (4, "snp"),
    (5, "tdx"),
];

/// The result of one probe: a value, or the reason there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probed<T> {
    /// The probed value; `None` when the probe failed.
    pub value: Option<T>,
    /// Why the probe failed.
    pub error: Option<String>,
}

impl<T> Probed<T> {
    /// A successful probe.
    pub fn ok(value: T) -> Self {
        Self {
            value: Some(value),
            error: None,
        }
    }

    /// A failed probe.
    pub fn err(error: impl Into<String>) -> Self {
        Self {
            value: None,
            error: Some(error.into()),
        }
    }

    pub(crate) fn from_result<E: std::fmt::Display>(r: Result<T, E>) -> Self {
        match r {
            Ok(v) => Self::ok(v),
            Err(e) => Self::err(e.to_string()),
        }
    }
}

/// A raw bitmask and the names of its set bits (`bit N` for bits without a name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bitmask {
    /// The raw value as the kernel returned it.
    pub raw: u64,
    /// Names of the set bits, lowest first.
    pub names: Vec<String>,
}

impl Bitmask {
    /// Decodes `raw` where `names` maps single-bit masks to names.
    pub fn decode(raw: u64, names: &[(u64, &str)]) -> Self {
        let mut out = Vec::new();
        for bit in 0..64 {
            let mask = 1u64 << bit;
            if raw & mask == 0 {
                continue;
            }
            match names.iter().find(|(m, _)| *m == mask) {
                Some((_, n)) => out.push((*n).to_string()),
                None => out.push(format!("bit {bit}")),
            }
        }
        Self { raw, names: out }
    }

    /// Decodes a `KVM_CAP_VM_TYPES` mask, where bit `n` stands for VM type `n`.
    pub fn decode_vm_types(raw: u64) -> Self {
        let mut out = Vec::new();
        for bit in 0..64u64 {
            if raw & (1u64 << bit) == 0 {
                continue;
            }
            match VM_TYPE_NAMES.iter().find(|(t, _)| *t == bit) {
                Some((_, n)) => out.push((*n).to_string()),
                None => out.push(format!("type {bit}")),
            }
        }
        Self { raw, names: out }
    }

    /// Whether every bit of `mask` is set.
    pub fn contains(&self, mask: u64) -> bool {
        self.raw & mask == mask
    }

    pub(crate) fn display(&self) -> String {
        if self.names.is_empty() {
            format!("{:#x} (none)", self.raw)
        } else {
            format!("{:#x} ({})", self.raw, self.names.join(", "))
        }
    }
}

/// `memfd_secret(2)` availability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemfdSecret {
    /// Whether `memfd_secret(0)` returned an fd.
    pub available: bool,
    /// errno of the failed call.
    pub errno: Option<i32>,
    /// The error as text.
    pub error: Option<String>,
}

/// One hugetlb pool from `/sys/kernel/mm/hugepages/hugepages-<size>kB/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HugePagePool {
    /// Page size in bytes.
    pub page_size: u64,
    /// `nr_hugepages`.
    pub total: u64,
    /// `free_hugepages`.
    pub free: u64,
}

impl From<gmemd::hugepages::HugePagePool> for HugePagePool {
    fn from(pool: gmemd::hugepages::HugePagePool) -> Self {
        HugePagePool {
            page_size: pool.page_size,
            total: pool.total,
            free: pool.free,
        }
    }
}

/// One attempt at `KVM_CREATE_GUEST_MEMFD` with a given flag combination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GmemAttempt {
    /// The flags passed to `KVM_CREATE_GUEST_MEMFD`.
    pub flags: Bitmask,
    /// Whether the guest_memfd was created.
    pub created: bool,
    /// For combinations with `MMAP`: whether the host could mmap the guest_memfd (and, with
    /// `INIT_SHARED`, write to it and read the byte back). `None` when not tried.
    pub host_mmap: Option<bool>,
    /// The first error met (create or mmap), with errno.
    pub error: Option<String>,
}

/// Per-VM capabilities of one VM type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmTypeProbe {
    /// The `KVM_CREATE_VM` type.
    pub vm_type: u64,
    /// Its name (`default`, `sw_protected`, ...).
    pub name: String,
    /// Whether `KVM_CREATE_VM` with this type succeeded; the error otherwise.
    pub create: Probed<bool>,
    /// `KVM_CAP_GUEST_MEMFD_FLAGS` on that VM.
    pub guest_memfd_flags: Probed<Bitmask>,
    /// `KVM_CAP_MEMORY_ATTRIBUTES` on that VM.
    pub memory_attributes: Probed<Bitmask>,
    /// `KVM_CREATE_GUEST_MEMFD` of [`PROBE_GMEM_SIZE`] bytes with each combination of the
    /// flags the VM reports.
    pub guest_memfd_create: Vec<GmemAttempt>,
}

/// Everything [`probe`] found out about the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostCaps {
    /// `/dev/kvm` opens and `KVM_GET_API_VERSION` is 12.
    pub kvm: bool,
    /// `KVM_GET_API_VERSION`.
    pub kvm_api_version: Probed<i32>,
    /// `KVM_CAP_USER_MEMORY2` (system-wide).
    pub user_memory2: Probed<bool>,
    /// `KVM_CAP_GUEST_MEMFD` (system-wide).
    pub guest_memfd: Probed<bool>,
    /// `KVM_CAP_GUEST_MEMFD_FLAGS` on a default-type VM.
    pub guest_memfd_flags: Probed<Bitmask>,
    /// `KVM_CAP_VM_TYPES` (system-wide).
    pub vm_types: Probed<Bitmask>,
    /// `KVM_CAP_MEMORY_ATTRIBUTES` on a default-type VM.
    pub memory_attributes: Probed<Bitmask>,
    /// `KVM_CREATE_GUEST_MEMFD` attempts on a default-type VM.
    pub guest_memfd_create: Vec<GmemAttempt>,
    /// The same per-VM probes for every non-default VM type in `vm_types`.
    pub vm_type_probes: Vec<VmTypeProbe>,
    /// `memfd_secret(2)`.
    pub memfd_secret: MemfdSecret,
    /// hugetlb pools.
    pub hugepages: Probed<Vec<HugePagePool>>,
}

/// Probes the host. Never fails; missing features and errors are recorded in the result.
pub fn probe() -> HostCaps {
    let mut caps = HostCaps {
        kvm: false,
        kvm_api_version: Probed::err("not probed"),
        user_memory2: Probed::err("not probed"),
        guest_memfd: Probed::err("not probed"),
        guest_memfd_flags: Probed::err("not probed"),
        vm_types: Probed::err("not probed"),
        memory_attributes: Probed::err("not probed"),
        guest_memfd_create: Vec::new(),
        vm_type_probes: Vec::new(),
        memfd_secret: probe_memfd_secret(),
        hugepages: Probed::from_result(
            read_pools(Path::new(SYSFS_HUGEPAGES))
                .map(|pools| pools.into_iter().map(HugePagePool::from).collect()),
        ),
    };

    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            let msg = format!("open /dev/kvm: {}", io::Error::from_raw_os_error(e.errno()));
            log::debug!("caps: {msg}");
            for p in [
                &mut caps.kvm_api_version.error,
                &mut caps.user_memory2.error,
                &mut caps.guest_memfd.error,
                &mut caps.guest_memfd_flags.error,
                &mut caps.vm_types.error,
                &mut caps.memory_attributes.error,
            ] {
                *p = Some(msg.clone());
            }
            return caps;
        }
    };

    let api = kvm.get_api_version();
    caps.kvm_api_version = Probed::ok(api);
    // KVM_API_VERSION is 12 and has been since Linux 2.6.22.
    caps.kvm = u32::try_from(api).is_ok_and(|v| v == KVM_API_VERSION);
    caps.user_memory2 = check_sys(&kvm, KVM_CAP_USER_MEMORY2).map(|v| v > 0);
    caps.guest_memfd = check_sys(&kvm, KVM_CAP_GUEST_MEMFD).map(|v| v > 0);
    caps.vm_types = check_sys(&kvm, KVM_CAP_VM_TYPES).map(Bitmask::decode_vm_types);

    let default = probe_vm_type(&kvm, 0);
    if let Some(e) = &default.create.error {
        caps.guest_memfd_flags = Probed::err(e.clone());
        caps.memory_attributes = Probed::err(e.clone());
    } else {
        caps.guest_memfd_flags = default.guest_memfd_flags;
        caps.memory_attributes = default.memory_attributes;
    }
    caps.guest_memfd_create = default.guest_memfd_create;

    if let Some(types) = &caps.vm_types.value {
        caps.vm_type_probes = (1..64u64)
            .filter(|t| types.raw & (1u64 << t) != 0)
            .map(|t| probe_vm_type(&kvm, t))
            .collect();
    }
    caps
}

/// Makes a `memfd_secret` file the way gmemd does and closes it.
fn probe_memfd_secret() -> MemfdSecret {
    match gmemd::memory::secret_fd() {
        Ok(_fd) => MemfdSecret {
            available: true,
            errno: None,
            error: None,
        },
        Err(e) => MemfdSecret {
            available: false,
            errno: e.raw_os_error(),
            error: Some(format!("memfd_secret: {e}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_decode_guest_memfd_flags() {
        let b = Bitmask::decode(3, GUEST_MEMFD_FLAG_NAMES);
        assert_eq!(b.raw, 3);
        assert_eq!(b.names, ["MMAP", "INIT_SHARED"]);
        assert!(b.contains(GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED));
        let b = Bitmask::decode(0, GUEST_MEMFD_FLAG_NAMES);
        assert!(b.names.is_empty());
        let b = Bitmask::decode(1 | (1 << 5), GUEST_MEMFD_FLAG_NAMES);
        assert_eq!(b.names, ["MMAP", "bit 5"]);
    }

    #[test]
    fn caps_decode_memory_attributes() {
        let b = Bitmask::decode(8, MEMORY_ATTRIBUTE_NAMES);
        assert_eq!(b.names, ["PRIVATE"]);
        let b = Bitmask::decode(8 | 1, MEMORY_ATTRIBUTE_NAMES);
        assert_eq!(b.names, ["bit 0", "PRIVATE"]);
    }

    #[test]
    fn caps_decode_vm_types() {
        let b = Bitmask::decode_vm_types(0b11);
        assert_eq!(b.names, ["default", "sw_protected"]);
        let b = Bitmask::decode_vm_types((1 << 4) | (1 << 5) | (1 << 9));
        assert_eq!(b.names, ["snp", "tdx", "type 9"]);
    }

    #[test]
    fn caps_probe_runs_and_renders() {
        let caps = probe();
        let table = caps.render_table();
        assert!(table.contains("kvm "), "{table}");
        let json = serde_json::to_value(&caps).unwrap();
        assert!(json.get("kvm").is_some_and(serde_json::Value::is_boolean));
        assert!(json.get("hugepages").is_some());
        eprintln!("{table}");
        if Path::new("/dev/kvm").exists() {
            assert!(caps.kvm, "/dev/kvm exists but probe says no KVM:\n{table}");
            assert_eq!(caps.kvm_api_version.value, Some(12));
        } else {
            assert!(!caps.kvm);
            assert!(caps.kvm_api_version.error.is_some());
        }
    }
}
