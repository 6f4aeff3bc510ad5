//! Which VMM a launched VM runs under. `gmemctl launch` recognises it from
//! the program's file name; the VM's record keeps it, so `upgrade`,
//! `hotplug` and `unplug` know how to talk to the running process.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A VMM gmemctl can start on gmemd memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmmKind {
    /// QEMU (`qemu-system-*`, or any program not recognised otherwise).
    #[default]
    Qemu,
    /// cloud-hypervisor (a program named `cloud-hypervisor*`).
    CloudHypervisor,
}

impl VmmKind {
    /// The VMM `program` is: cloud-hypervisor if its file name starts with
    /// `cloud-hypervisor` (`cloud-hypervisor`, `cloud-hypervisor-static`,
    /// a patched build beside it), QEMU otherwise.
    pub fn of_program(program: &Path) -> Self {
        let is_ch = program
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("cloud-hypervisor"));
        if is_ch {
            VmmKind::CloudHypervisor
        } else {
            VmmKind::Qemu
        }
    }

    /// How messages name it.
    pub fn name(self) -> &'static str {
        match self {
            VmmKind::Qemu => "QEMU",
            VmmKind::CloudHypervisor => "cloud-hypervisor",
        }
    }
}

impl fmt::Display for VmmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_name_decides() {
        for (program, kind) in [
            ("qemu-system-x86_64", VmmKind::Qemu),
            ("/usr/bin/qemu-kvm", VmmKind::Qemu),
            ("/usr/local/bin/cloud-hypervisor", VmmKind::CloudHypervisor),
            ("cloud-hypervisor-pvm", VmmKind::CloudHypervisor),
            ("/opt/cloud-hypervisor/bin/qemu", VmmKind::Qemu),
        ] {
            assert_eq!(VmmKind::of_program(Path::new(program)), kind, "{program}");
        }
        assert_eq!(
            serde_json::to_string(&VmmKind::CloudHypervisor).unwrap(),
            "\"cloud-hypervisor\""
        );
    }
}
