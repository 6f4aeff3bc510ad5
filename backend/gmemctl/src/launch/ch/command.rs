//! cloud-hypervisor's command line: the user's arguments checked (gmemctl
//! sets guest memory and the API socket itself), the options gmemctl adds,
//! the process options an upgrade target keeps, and where
//! cloud-hypervisor maps a memory zone in guest-physical space.
//!
//! Arguments are matched by option name (`--memory`, `--memory=…`) without
//! cloud-hypervisor's option table, as for QEMU.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use gmem_protocol::wire::{GuestAddress, MemoryKind};

use crate::launch::qemu::layout::RamRange;

/// Id of the memory zone of main RAM.
pub const RAM_ZONE_ID: &str = "gmem-ram";
/// cloud-hypervisor's RAM below the 32-bit device hole: `[0, 3 GiB)`
/// (`arch::layout::MEM_32BIT_RESERVED_START`).
pub const LOW_RAM_END: u64 = 3 << 30;
/// Where RAM continues above the hole (`arch::layout::RAM_64BIT_START`).
pub const HIGH_RAM_START: u64 = 4 << 30;

/// Errors in the cloud-hypervisor arguments.
#[derive(Debug, thiserror::Error)]
pub enum ChArgsError {
    /// An option gmemctl sets itself.
    #[error("cloud-hypervisor option {option} cannot be used under gmemctl: {reason}")]
    Reserved {
        /// The option as written.
        option: String,
        /// Why.
        reason: &'static str,
    },
    /// A gmemctl option cloud-hypervisor has no equivalent of here.
    #[error("{option} is not supported with cloud-hypervisor: {reason}")]
    Unsupported {
        /// The gmemctl option.
        option: &'static str,
        /// Why.
        reason: &'static str,
    },
}

/// A cloud-hypervisor command line split into program and arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChCommand {
    /// The cloud-hypervisor binary.
    pub program: PathBuf,
    /// Its arguments, as the user gave them.
    pub args: Vec<String>,
}

/// Options that set what gmemctl sets, with the reason given.
const RESERVED: &[(&str, &str)] = &[
    (
        "--memory",
        "gmemctl sets guest memory (use --memory of gmemctl launch)",
    ),
    (
        "--memory-zone",
        "gmemctl sets guest memory (use --memory of gmemctl launch)",
    ),
    (
        "--api-socket",
        "gmemctl serves the VM's API socket itself (RUN_DIR/NAME.api); use it with ch-remote",
    ),
    (
        "--restore",
        "a restored VM's memory comes from the snapshot, not from gmemd",
    ),
];

/// Options of the cloud-hypervisor process (not of the VM): an upgrade
/// target keeps them, everything else comes with the migrated VM.
/// Flags take no value.
const PROCESS_OPTIONS: &[(&str, bool)] = &[
    ("-v", false),
    ("--verbose", false),
    ("--log-file", true),
    ("--seccomp", true),
    ("--event-monitor", true),
];

impl ChCommand {
    /// Checks `args` of `program`.
    ///
    /// # Errors
    /// [`ChArgsError::Reserved`].
    pub fn new(program: PathBuf, args: Vec<String>) -> Result<Self, ChArgsError> {
        for arg in &args {
            let name = arg.split_once('=').map_or(arg.as_str(), |(n, _)| n);
            if let Some((option, reason)) = RESERVED.iter().find(|(o, _)| *o == name) {
                return Err(ChArgsError::Reserved {
                    option: (*option).to_owned(),
                    reason,
                });
            }
        }
        Ok(ChCommand { program, args })
    }

    /// The process options among the arguments (`-v`, `-vv`, `--log-file
    /// PATH`, …): what an upgrade target is started with.
    pub fn process_options(&self) -> Vec<String> {
        let mut kept = Vec::new();
        let mut args = self.args.iter();
        while let Some(arg) = args.next() {
            if arg.len() > 1 && arg.starts_with('-') && arg[1..].bytes().all(|b| b == b'v') {
                kept.push(arg.clone());
                continue;
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, _)) => (n, true),
                None => (arg.as_str(), false),
            };
            if let Some((_, takes_value)) = PROCESS_OPTIONS.iter().find(|(o, _)| *o == name) {
                kept.push(arg.clone());
                if *takes_value && !inline {
                    kept.extend(args.next().cloned());
                }
            }
        }
        kept
    }
}

impl ChCommand {
    /// `--log-file PATH`, which cloud-hypervisor creates afresh (truncates)
    /// when it starts.
    pub fn log_files(&self) -> Vec<String> {
        self.file_options(true)
    }

    /// The console files of `--serial file=PATH` and `--console file=PATH`,
    /// which cloud-hypervisor creates afresh when it sets the VM up, an
    /// upgrade target too (it gets the VM's configuration).
    pub fn console_files(&self) -> Vec<String> {
        self.file_options(false)
    }

    fn file_options(&self, log: bool) -> Vec<String> {
        let mut files = Vec::new();
        let mut args = self.args.iter();
        while let Some(arg) = args.next() {
            let (name, value) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
                _ => (arg.as_str(), None),
            };
            let wanted = if log {
                name == "--log-file"
            } else {
                matches!(name, "--serial" | "--console")
            };
            if !wanted {
                continue;
            }
            let Some(value) = value.or_else(|| args.next().cloned()) else {
                continue;
            };
            let file = if log {
                Some(value.as_str())
            } else {
                value.split(',').find_map(|kv| kv.strip_prefix("file="))
            };
            files.extend(file.map(str::to_owned));
        }
        files
    }
}

/// The options gmemctl adds: main RAM as one shared memory zone on the
/// inherited memory file and the API socket.
pub fn added_args(size: u64, kind: MemoryKind, ram_fd: RawFd, api: &Path) -> Vec<String> {
    let mut zone = format!("id={RAM_ZONE_ID},size={size},file=/proc/self/fd/{ram_fd},shared=on");
    match kind {
        MemoryKind::Hugetlb2M => zone.push_str(",hugepages=on,hugepage_size=2M"),
        MemoryKind::Hugetlb1G => zone.push_str(",hugepages=on,hugepage_size=1G"),
        _ => {}
    }
    vec![
        "--memory".into(),
        "size=0,shared=on".into(),
        "--memory-zone".into(),
        zone,
        "--api-socket".into(),
        format!("path={}", api.display()),
    ]
}

/// Where cloud-hypervisor maps a `size`-byte zone that is its only one:
/// from guest-physical 0 up to the 32-bit device hole at 3 GiB, the rest
/// from 4 GiB on (`create_memory_regions_from_zones` fills its RAM regions
/// in order, the file offset following along).
pub fn main_ram(size: u64) -> Vec<RamRange> {
    let low = size.min(LOW_RAM_END);
    let mut ranges = vec![RamRange {
        gpa: GuestAddress(0),
        offset: 0,
        size: low,
    }];
    if size > low {
        ranges.push(RamRange {
            gpa: GuestAddress(HIGH_RAM_START),
            offset: low,
            size: size - low,
        });
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn memory_and_api_options_are_refused() {
        for args in [
            &["--memory", "size=1G"][..],
            &["--kernel", "k", "--memory=size=1G"],
            &["--memory-zone", "id=x,size=1G"],
            &["--api-socket", "path=/tmp/a"],
            &["--restore", "source_url=file:///s"],
        ] {
            let err = ChCommand::new("cloud-hypervisor".into(), strings(args)).unwrap_err();
            assert!(
                err.to_string().contains("cannot be used under gmemctl"),
                "{args:?}: {err}"
            );
        }
        let ok = ChCommand::new(
            "cloud-hypervisor".into(),
            strings(&["--kernel", "pvh.elf", "--serial", "tty", "--memory-x"]),
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn an_upgrade_target_keeps_only_process_options() {
        let c = ChCommand::new(
            "cloud-hypervisor".into(),
            strings(&[
                "-vv",
                "--kernel",
                "pvh.elf",
                "--log-file",
                "/var/log/ch.log",
                "--serial",
                "tty",
                "--seccomp=log",
                "--event-monitor",
                "path=/run/ev",
                "-x",
            ]),
        )
        .unwrap();
        assert_eq!(
            c.process_options(),
            strings(&[
                "-vv",
                "--log-file",
                "/var/log/ch.log",
                "--seccomp=log",
                "--event-monitor",
                "path=/run/ev"
            ])
        );
    }

    #[test]
    fn files_an_upgrade_would_empty_are_found() {
        let c = ChCommand::new(
            "cloud-hypervisor".into(),
            strings(&[
                "--log-file",
                "/var/log/ch.log",
                "--serial",
                "file=/var/log/serial.log",
                "--console=off",
                "--serial-x",
                "file=/not",
                "--console=file=/var/log/hvc.log,iommu=off",
            ]),
        )
        .unwrap();
        assert_eq!(c.log_files(), strings(&["/var/log/ch.log"]));
        assert_eq!(
            c.console_files(),
            strings(&["/var/log/serial.log", "/var/log/hvc.log"])
        );
    }

    #[test]
    fn the_zone_is_the_inherited_file() {
        let args = added_args(
            256 << 20,
            MemoryKind::Hugetlb2M,
            201,
            Path::new("/run/vms/a.api"),
        );
        assert_eq!(
            args,
            strings(&[
                "--memory",
                "size=0,shared=on",
                "--memory-zone",
                "id=gmem-ram,size=268435456,file=/proc/self/fd/201,shared=on,hugepages=on,\
                 hugepage_size=2M",
                "--api-socket",
                "path=/run/vms/a.api",
            ])
        );
    }

    #[test]
    fn ram_above_3g_continues_at_4g() {
        assert_eq!(
            main_ram(1 << 30),
            [RamRange {
                gpa: GuestAddress(0),
                offset: 0,
                size: 1 << 30
            }]
        );
        assert_eq!(main_ram(3 << 30).len(), 1);
        assert_eq!(
            main_ram(5 << 30),
            [
                RamRange {
                    gpa: GuestAddress(0),
                    offset: 0,
                    size: 3 << 30
                },
                RamRange {
                    gpa: GuestAddress(4 << 30),
                    offset: 3 << 30,
                    size: 2 << 30
                }
            ]
        );
    }
}
