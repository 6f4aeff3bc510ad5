//! Host capability probe (`gmemctl caps [--json]`).
//!
//! [`probe`] asks the running kernel what gmemd and its VMMs can rely on: KVM itself, the
//! `KVM_SET_USER_MEMORY_REGION2` / guest_memfd interfaces, the VM types and memory attributes
//! KVM offers, `memfd_secret(2)`, and the hugetlb pools. Every probe records an error string
//! instead of failing, so the report is always complete.
//!
//! Capabilities that KVM answers per VM (guest_memfd flags, memory attributes) are asked on
//! a freshly created VM of the default type, and again on a VM of every other type that
//! `KVM_CAP_VM_TYPES` lists (see [`HostCaps::vm_type_probes`]).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::raw::c_ulong;
use std::path::Path;

use kvm_bindings::{
    kvm_create_guest_memfd, KVM_API_VERSION, KVM_CAP_GUEST_MEMFD, KVM_CAP_MEMORY_ATTRIBUTES,
    KVM_CAP_USER_MEMORY2, KVM_CAP_VM_TYPES, KVM_MEMORY_ATTRIBUTE_PRIVATE,
};
use kvm_ioctls::{Kvm, VmFd};
use serde::Serialize;

/// `KVM_CAP_GUEST_MEMFD_FLAGS` (Linux 6.18): the guest_memfd flags a VM accepts.
/// Not yet in kvm-bindings 0.14.
pub const KVM_CAP_GUEST_MEMFD_FLAGS: u32 = 244;
/// `GUEST_MEMFD_FLAG_MMAP`: the host may mmap() the guest_memfd (shared memory only).
pub const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;
/// `GUEST_MEMFD_FLAG_INIT_SHARED`: the guest_memfd's memory starts out shared, not private.
pub const GUEST_MEMFD_FLAG_INIT_SHARED: u64 = 1 << 1;

/// Size of the guest_memfd [`probe`] tries to create.
pub const PROBE_GMEM_SIZE: u64 = 2 << 20;

const SYSFS_HUGEPAGES: &str = "/sys/kernel/mm/hugepages";

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

    fn from_result<E: std::fmt::Display>(r: Result<T, E>) -> Self {
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

    fn display(&self) -> String {
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
        hugepages: Probed::from_result(read_hugepages(Path::new(SYSFS_HUGEPAGES))),
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

/// `KVM_CHECK_EXTENSION` on the system fd; negative return values become errors.
fn check_sys(kvm: &Kvm, cap: u32) -> Probed<u64> {
    check_result(kvm.check_extension_raw(c_ulong::from(cap)))
}

/// `KVM_CHECK_EXTENSION` on a VM fd.
fn check_vm(vm: &VmFd, cap: u32) -> Probed<u64> {
    check_result(vm.check_extension_raw(c_ulong::from(cap)))
}

fn check_result(ret: i32) -> Probed<u64> {
    match u64::try_from(ret) {
        Ok(v) => Probed::ok(v),
        // The ioctl wrapper returns -1 and leaves errno set.
        Err(_) => Probed::err(format!(
            "KVM_CHECK_EXTENSION: {}",
            io::Error::last_os_error()
        )),
    }
}

impl<T> Probed<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Probed<U> {
        Probed {
            value: self.value.map(f),
            error: self.error,
        }
    }
}

fn vm_type_name(vm_type: u64) -> String {
    VM_TYPE_NAMES
        .iter()
        .find(|(t, _)| *t == vm_type)
        .map_or_else(|| format!("type {vm_type}"), |(_, n)| (*n).to_string())
}

/// Creates a VM of `vm_type` and asks it the per-VM questions.
fn probe_vm_type(kvm: &Kvm, vm_type: u64) -> VmTypeProbe {
    let mut p = VmTypeProbe {
        vm_type,
        name: vm_type_name(vm_type),
        create: Probed::ok(true),
        guest_memfd_flags: Probed::err("no VM"),
        memory_attributes: Probed::err("no VM"),
        guest_memfd_create: Vec::new(),
    };
    let vm = match kvm.create_vm_with_type(vm_type) {
        Ok(vm) => vm,
        Err(e) => {
            let msg = format!(
                "KVM_CREATE_VM type {vm_type}: {}",
                io::Error::from_raw_os_error(e.errno())
            );
            log::debug!("caps: {msg}");
            p.create = Probed::err(msg);
            return p;
        }
    };
    p.guest_memfd_flags = check_vm(&vm, KVM_CAP_GUEST_MEMFD_FLAGS)
        .map(|v| Bitmask::decode(v, GUEST_MEMFD_FLAG_NAMES));
    p.memory_attributes = check_vm(&vm, KVM_CAP_MEMORY_ATTRIBUTES)
        .map(|v| Bitmask::decode(v, MEMORY_ATTRIBUTE_NAMES));
    let gmem_cap = check_vm(&vm, KVM_CAP_GUEST_MEMFD).value.unwrap_or(0);
    if gmem_cap == 0 {
        return p;
    }
    let flags = p.guest_memfd_flags.value.as_ref().map_or(0, |b| b.raw);
    p.guest_memfd_create = flag_combinations(flags)
        .into_iter()
        .map(|f| try_create_gmem(&vm, f))
        .collect();
    p
}

/// Every subset of the set bits of `flags`, `0` first.
pub fn flag_combinations(flags: u64) -> Vec<u64> {
    let bits: Vec<u64> = (0..64)
        .map(|b| 1u64 << b)
        .filter(|m| flags & m != 0)
        .collect();
    // More than 16 bits would mean 65536 attempts; cap it (there are 2 today).
    let bits = &bits[..bits.len().min(16)];
    (0..(1u32 << bits.len()))
        .map(|sel| {
            bits.iter()
                .enumerate()
                .filter(|(i, _)| sel & (1 << i) != 0)
                .fold(0, |acc, (_, m)| acc | m)
        })
        .collect()
}

fn try_create_gmem(vm: &VmFd, flags: u64) -> GmemAttempt {
    let mut a = GmemAttempt {
        flags: Bitmask::decode(flags, GUEST_MEMFD_FLAG_NAMES),
        created: false,
        host_mmap: None,
        error: None,
    };
    let req = kvm_create_guest_memfd {
        size: PROBE_GMEM_SIZE,
        flags,
        reserved: [0; 6],
    };
    let fd = match vm.create_guest_memfd(req) {
        Ok(fd) => {
            // SAFETY: KVM_CREATE_GUEST_MEMFD returned a new fd that nothing else owns.
            unsafe { OwnedFd::from_raw_fd(fd) }
        }
        Err(e) => {
            a.error = Some(format!(
                "KVM_CREATE_GUEST_MEMFD: {}",
                io::Error::from_raw_os_error(e.errno())
            ));
            return a;
        }
    };
    a.created = true;
    if flags & GUEST_MEMFD_FLAG_MMAP != 0 {
        match try_mmap_write(&fd, flags & GUEST_MEMFD_FLAG_INIT_SHARED != 0) {
            Ok(()) => a.host_mmap = Some(true),
            Err(e) => {
                a.host_mmap = Some(false);
                a.error = Some(e);
            }
        }
    }
    a
}

/// Maps the first page of `fd` shared; when `write` is set, also writes a byte and reads it
/// back.
///
/// Touching a guest_memfd page that is not shared raises SIGBUS, and in Linux 6.18 pages are
/// shared only with `INIT_SHARED`, so callers pass `write` only for that flag.
fn try_mmap_write(fd: &OwnedFd, write: bool) -> Result<(), String> {
    const LEN: usize = 4096;
    // SAFETY: a fresh shared mapping chosen by the kernel (null hint); it aliases no Rust
    // object and is unmapped below before anything else can see it.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(format!("mmap: {}", io::Error::last_os_error()));
    }
    let read_back = if write {
        // SAFETY: `ptr` is a valid, writable, LEN-byte mapping created above, and the caller
        // only asks to write when the guest_memfd's pages are shared (no SIGBUS).
        unsafe {
            std::ptr::write_volatile(ptr.cast::<u8>(), 0x5a);
            Some(std::ptr::read_volatile(ptr.cast::<u8>()))
        }
    } else {
        None
    };
    // SAFETY: unmaps exactly the mapping created above; no reference into it survives.
    let rc = unsafe { libc::munmap(ptr, LEN) };
    if rc != 0 {
        return Err(format!("munmap: {}", io::Error::last_os_error()));
    }
    match read_back {
        Some(0x5a) | None => Ok(()),
        Some(b) => Err(format!("mmap: wrote 0x5a, read back {b:#x}")),
    }
}

/// Calls `memfd_secret(0)` and closes the fd it returns.
fn probe_memfd_secret() -> MemfdSecret {
    // SAFETY: memfd_secret takes one integer flags argument and returns a new fd or -1; it
    // touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_memfd_secret, 0 as libc::c_uint) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        return MemfdSecret {
            available: false,
            errno: e.raw_os_error(),
            error: Some(format!("memfd_secret: {e}")),
        };
    }
    match i32::try_from(ret) {
        Ok(fd) => {
            // SAFETY: the syscall returned a new fd that nothing else owns; dropping closes it.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            MemfdSecret {
                available: true,
                errno: None,
                error: None,
            }
        }
        Err(_) => MemfdSecret {
            available: false,
            errno: None,
            error: Some(format!("memfd_secret returned {ret}")),
        },
    }
}

/// Parses `hugepages-<N>kB` into a page size in bytes.
pub fn parse_hugepage_dir(name: &str) -> Option<u64> {
    let kb = name.strip_prefix("hugepages-")?.strip_suffix("kB")?;
    kb.parse::<u64>().ok()?.checked_mul(1024)
}

/// Reads the hugetlb pools under `root` (normally `/sys/kernel/mm/hugepages`), smallest first.
pub fn read_hugepages(root: &Path) -> io::Result<Vec<HugePagePool>> {
    let read_num = |p: &Path| -> io::Result<u64> {
        let s = fs::read_to_string(p)?;
        s.trim().parse::<u64>().map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", p.display()))
        })
    };
    let mut pools = Vec::new();
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(page_size) = name.to_str().and_then(parse_hugepage_dir) else {
            continue;
        };
        let dir = entry.path();
        pools.push(HugePagePool {
            page_size,
            total: read_num(&dir.join("nr_hugepages"))?,
            free: read_num(&dir.join("free_hugepages"))?,
        });
    }
    pools.sort_by_key(|p| p.page_size);
    Ok(pools)
}

fn human_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size && bytes % size == 0 {
            return format!("{} {unit}", bytes / size);
        }
    }
    format!("{bytes} B")
}

fn fmt_probed<T>(p: &Probed<T>, f: impl FnOnce(&T) -> String) -> String {
    match (&p.value, &p.error) {
        (Some(v), _) => f(v),
        (None, Some(e)) => format!("error: {e}"),
        (None, None) => "unknown".to_string(),
    }
}

fn fmt_attempts(out: &mut String, indent: &str, attempts: &[GmemAttempt]) {
    if attempts.is_empty() {
        let _ = writeln!(out, "{indent}(not tried)");
    }
    for a in attempts {
        let names = if a.flags.names.is_empty() {
            "0".to_string()
        } else {
            a.flags.names.join("|")
        };
        let mut line = format!("{indent}flags {names:<16} ");
        line.push_str(if a.created { "created" } else { "FAILED" });
        match a.host_mmap {
            Some(true) => line.push_str(", host mmap ok"),
            Some(false) => line.push_str(", host mmap FAILED"),
            None => {}
        }
        if let Some(e) = &a.error {
            let _ = write!(line, " ({e})");
        }
        let _ = writeln!(out, "{line}");
    }
}

impl HostCaps {
    /// Renders the capabilities as a human-readable two-column table.
    pub fn render_table(&self) -> String {
        let yes_no = |b: &bool| if *b { "yes" } else { "no" }.to_string();
        let mut out = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(out, "{k:<26} {v}");
        };
        row("kvm", yes_no(&self.kvm));
        row(
            "kvm_api_version",
            fmt_probed(&self.kvm_api_version, ToString::to_string),
        );
        row("user_memory2", fmt_probed(&self.user_memory2, yes_no));
        row("guest_memfd", fmt_probed(&self.guest_memfd, yes_no));
        row(
            "guest_memfd_flags",
            fmt_probed(&self.guest_memfd_flags, Bitmask::display),
        );
        row("vm_types", fmt_probed(&self.vm_types, Bitmask::display));
        row(
            "memory_attributes",
            fmt_probed(&self.memory_attributes, Bitmask::display),
        );
        row(
            "memfd_secret",
            if self.memfd_secret.available {
                "yes".to_string()
            } else {
                format!(
                    "no ({})",
                    self.memfd_secret.error.as_deref().unwrap_or("unknown")
                )
            },
        );
        row(
            "hugepages",
            fmt_probed(&self.hugepages, |pools| {
                if pools.is_empty() {
                    return "none".to_string();
                }
                pools
                    .iter()
                    .map(|p| {
                        format!(
                            "{}: {} total, {} free",
                            human_size(p.page_size),
                            p.total,
                            p.free
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
        );
        let _ = writeln!(
            out,
            "guest_memfd create ({}, default VM):",
            human_size(PROBE_GMEM_SIZE)
        );
        fmt_attempts(&mut out, "  ", &self.guest_memfd_create);
        for p in &self.vm_type_probes {
            let _ = writeln!(out, "vm type {} ({}):", p.vm_type, p.name);
            if let Some(e) = &p.create.error {
                let _ = writeln!(out, "  create                   error: {e}");
                continue;
            }
            let _ = writeln!(
                out,
                "  guest_memfd_flags        {}",
                fmt_probed(&p.guest_memfd_flags, Bitmask::display)
            );
            let _ = writeln!(
                out,
                "  memory_attributes        {}",
                fmt_probed(&p.memory_attributes, Bitmask::display)
            );
            let _ = writeln!(out, "  guest_memfd create:");
            fmt_attempts(&mut out, "    ", &p.guest_memfd_create);
        }
        out
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
    fn caps_flag_combinations() {
        assert_eq!(flag_combinations(0), [0]);
        assert_eq!(flag_combinations(1), [0, 1]);
        let mut c = flag_combinations(0b1010);
        c.sort_unstable();
        assert_eq!(c, [0, 0b10, 0b1000, 0b1010]);
    }

    #[test]
    fn caps_parse_hugepage_dir() {
        assert_eq!(parse_hugepage_dir("hugepages-2048kB"), Some(2 << 20));
        assert_eq!(parse_hugepage_dir("hugepages-1048576kB"), Some(1 << 30));
        assert_eq!(parse_hugepage_dir("hugepages-xkB"), None);
        assert_eq!(parse_hugepage_dir("other"), None);
    }

    #[test]
    fn caps_read_hugepages_from_fake_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        for (name, total, free) in [("hugepages-1048576kB", 1, 0), ("hugepages-2048kB", 8, 3)] {
            let d = dir.path().join(name);
            fs::create_dir(&d).unwrap();
            fs::write(d.join("nr_hugepages"), format!("{total}\n")).unwrap();
            fs::write(d.join("free_hugepages"), format!("{free}\n")).unwrap();
        }
        fs::create_dir(dir.path().join("unrelated")).unwrap();
        let pools = read_hugepages(dir.path()).unwrap();
        assert_eq!(
            pools,
            [
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
        assert!(read_hugepages(&dir.path().join("missing")).is_err());
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
