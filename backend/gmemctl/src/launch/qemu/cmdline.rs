//! The QEMU options gmemctl adds to the user's: guest RAM from the inherited
//! gmemd memory file, the machine's memory backend, `-m`, gmemctl's own QMP
//! monitor, the DIMMs an upgrade target must have from the start, and
//! `-incoming defer`.
//!
//! RAM is `memory-backend-file` with `mem-path=/proc/self/fd/N,share=on`:
//! QEMU re-opens the inherited memfd through procfs and maps it shared, so
//! the guest writes straight into gmemd's file. `/dev/fdset/…` does not work
//! for RAM in QEMU 10 (it calls plain `open(2)`). `share=on` also marks the
//! RAM block as one that migration with `x-ignore-shared` leaves alone.

use std::os::fd::RawFd;
use std::path::Path;

use gmem_protocol::wire::MemoryKind;

/// A memory kind QEMU cannot map as RAM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("memory kind {kind} cannot back QEMU's RAM: {reason}")]
pub struct KindError {
    /// The kind.
    pub kind: MemoryKind,
    /// Why.
    pub reason: &'static str,
}

/// Refuses memory kinds unmodified QEMU cannot map through `mem-path`.
///
/// # Errors
/// [`KindError`].
pub fn check_kind(kind: MemoryKind) -> Result<(), KindError> {
    let reason = match kind {
        MemoryKind::Memfd | MemoryKind::Hugetlb2M | MemoryKind::Hugetlb1G => return Ok(()),
        MemoryKind::Secret => {
            "QEMU and cloud-hypervisor map RAM by opening /proc/self/fd/N, and a memfd_secret \
             file cannot be opened that way (ENXIO)"
        }
        MemoryKind::GuestMemfd => "a guest_memfd is created by a VM's KVM, not by gmemd",
    };
    Err(KindError { kind, reason })
}

/// QOM id of the main RAM backend (the same in every generation, as
/// migration matches RAM blocks by id).
pub const RAM_BACKEND_ID: &str = "gmem-ram";

/// QOM id of a DIMM's memory backend.
pub fn dimm_backend_id(dimm_id: &str) -> String {
    format!("gmem-{dimm_id}")
}

/// A path inside a QEMU option value (`,` is doubled).
pub fn opt_path(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// `mem-path` of an fd QEMU inherited or got through `add-fd`.
pub fn fd_path(fd: RawFd) -> String {
    format!("/proc/self/fd/{fd}")
}

/// A size for `-m` (whose bare numbers mean MiB): in KiB, exact for any
/// page-aligned size.
fn m_size(bytes: u64) -> String {
    debug_assert_eq!(bytes % 1024, 0, "sizes are page aligned");
    format!("{}K", bytes / 1024)
}

/// A DIMM a QEMU has from its start (an upgrade target gets the running
/// QEMU's DIMMs this way), with its memory file's fd number inside it.
#[derive(Debug, Clone, Copy)]
pub struct StartDimm<'a> {
    /// QEMU device id.
    pub id: &'a str,
    /// Bytes.
    pub size: u64,
    /// Guest-physical address (where the running QEMU has it).
    pub addr: u64,
    /// `slot` property of the pc-dimm.
    pub dimm_slot: u32,
    /// fd number of its memory file inside QEMU.
    pub fd: RawFd,
}

/// What to add.
#[derive(Debug, Clone)]
pub struct AddedOptions<'a> {
    /// Main RAM bytes.
    pub size: u64,
    /// `maxmem` (enables memory hotplug), with `slots`.
    pub max_memory: Option<u64>,
    /// Hotplug slots.
    pub slots: u32,
    /// fd number of the RAM file inside QEMU.
    pub ram_fd: RawFd,
    /// gmemctl's QMP socket.
    pub qmp: &'a Path,
    /// DIMMs to create at start.
    pub dimms: &'a [StartDimm<'a>],
    /// Add `-incoming defer`.
    pub incoming: bool,
}

impl AddedOptions<'_> {
    /// The arguments, to append after the user's.
    pub fn to_args(&self) -> Vec<String> {
        let mut m = m_size(self.size);
        if let Some(max) = self.max_memory {
            m.push_str(&format!(",slots={},maxmem={}", self.slots, m_size(max)));
        }
        let mut args = vec![
            "-object".to_owned(),
            format!(
                "memory-backend-file,id={RAM_BACKEND_ID},size={},mem-path={},share=on",
                self.size,
                fd_path(self.ram_fd)
            ),
            "-machine".to_owned(),
            format!("memory-backend={RAM_BACKEND_ID}"),
            "-m".to_owned(),
            m,
            "-qmp".to_owned(),
            format!("unix:{},server=on,wait=off", opt_path(self.qmp)),
        ];
        for dimm in self.dimms {
            let backend = dimm_backend_id(dimm.id);
            args.extend([
                "-object".to_owned(),
                format!(
                    "memory-backend-file,id={backend},size={},mem-path={},share=on",
                    dimm.size,
                    fd_path(dimm.fd)
                ),
                "-device".to_owned(),
                format!(
                    "pc-dimm,id={},memdev={backend},addr={:#x},slot={}",
                    dimm.id, dimm.addr, dimm.dimm_slot
                ),
            ]);
        }
        if self.incoming {
            args.extend(["-incoming".to_owned(), "defer".to_owned()]);
        }
        args
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn kinds_qemu_cannot_map_are_refused() {
        for kind in [
            MemoryKind::Memfd,
            MemoryKind::Hugetlb2M,
            MemoryKind::Hugetlb1G,
        ] {
            check_kind(kind).unwrap();
        }
        let err = check_kind(MemoryKind::Secret).unwrap_err();
        assert!(err.to_string().contains("ENXIO"), "{err}");
        assert!(check_kind(MemoryKind::GuestMemfd).is_err());
    }

    #[test]
    fn launch_options() {
        let args = AddedOptions {
            size: 512 << 20,
            max_memory: None,
            slots: 0,
            ram_fd: 201,
            qmp: Path::new("/run/vm,1.qmp"),
            dimms: &[],
            incoming: false,
        }
        .to_args();
        assert_eq!(
            args,
            [
                "-object",
                "memory-backend-file,id=gmem-ram,size=536870912,mem-path=/proc/self/fd/201,share=on",
                "-machine",
                "memory-backend=gmem-ram",
                "-m",
                "524288K",
                "-qmp",
                "unix:/run/vm,,1.qmp,server=on,wait=off",
            ]
        );
    }

    #[test]
    fn upgrade_target_options() {
        let dimm = StartDimm {
            id: "dimm0",
            size: 128 << 20,
            addr: 0x1_4000_0000,
            dimm_slot: 2,
            fd: 210,
        };
        let args = AddedOptions {
            size: 1 << 30,
            max_memory: Some(4 << 30),
            slots: 4,
            ram_fd: 201,
            qmp: Path::new("/q"),
            dimms: &[dimm],
            incoming: true,
        }
        .to_args();
        assert!(args.contains(&"1048576K,slots=4,maxmem=4194304K".to_owned()));
        assert!(args.contains(
            &"memory-backend-file,id=gmem-dimm0,size=134217728,mem-path=/proc/self/fd/210,share=on"
                .to_owned()
        ));
        assert!(
            args.contains(&"pc-dimm,id=dimm0,memdev=gmem-dimm0,addr=0x140000000,slot=2".to_owned())
        );
        assert_eq!(args[args.len() - 2..], ["-incoming", "defer"]);
    }
}
