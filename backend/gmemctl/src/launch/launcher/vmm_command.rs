//! The VMM command of a launch, checked: QEMU with its machine type, or
//! cloud-hypervisor, each with where it will map main RAM.

use std::path::Path;

use crate::launch::ch::command::ChCommand;
use crate::launch::qemu::args::QemuCommand;
use crate::launch::qemu::layout::{Machine, RamRange};
use crate::launch::vmm::VmmKind;

/// The VMM command line, checked, with where it will map main RAM.
#[derive(Debug)]
pub(super) enum VmmCommand {
    /// QEMU and its machine type.
    Qemu {
        command: QemuCommand,
        machine: Machine,
        ram: Vec<RamRange>,
    },
    /// cloud-hypervisor.
    Ch {
        command: ChCommand,
        ram: Vec<RamRange>,
    },
}

impl VmmCommand {
    pub(super) fn kind(&self) -> VmmKind {
        match self {
            VmmCommand::Qemu { .. } => VmmKind::Qemu,
            VmmCommand::Ch { .. } => VmmKind::CloudHypervisor,
        }
    }

    pub(super) fn ram(&self) -> &[RamRange] {
        match self {
            VmmCommand::Qemu { ram, .. } | VmmCommand::Ch { ram, .. } => ram,
        }
    }

    pub(super) fn program(&self) -> &Path {
        match self {
            VmmCommand::Qemu { command, .. } => &command.program,
            VmmCommand::Ch { command, .. } => &command.program,
        }
    }

    pub(super) fn user_args(&self) -> &[String] {
        match self {
            VmmCommand::Qemu { command, .. } => &command.args,
            VmmCommand::Ch { command, .. } => &command.args,
        }
    }

    /// The machine type recorded for the layout.
    pub(super) fn machine(&self) -> String {
        match self {
            VmmCommand::Qemu { machine, .. } => machine.type_name.clone(),
            VmmCommand::Ch { .. } => "cloud-hypervisor".into(),
        }
    }
}
