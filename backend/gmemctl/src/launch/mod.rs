//! Unmodified QEMU on gmemd memory: `gmemctl launch`, `upgrade`, `hotplug`
//! and `unplug`.
//!
//! - [`launcher`]: opens the VM's lease, creates or reopens its RAM, records
//!   the bindings QEMU will use and starts QEMU with the memory file and the
//!   lease socket inherited; then supervises it ([`launcher::supervise`]).
//! - [`mod@upgrade`]: live VMM replacement. A second QEMU maps the same RAM and
//!   takes over by local migration with `x-ignore-shared`, so only device
//!   state moves; the lease socket is inherited, so the lease and its
//!   bindings simply continue.
//! - [`mod@hotplug`]: a new gmemd memory file plugged in as a `pc-dimm` over QMP
//!   and recorded as a binding, and its removal.
//! - Parts: [`qemu`] (the user's QEMU arguments, the guest-physical RAM
//!   layout per machine type, the options gmemctl adds), [`process`]
//!   (pidfds and `pidfd_getfd`, fds at fixed numbers across exec, how a
//!   QEMU ended), [`vm`] (the per-VM record and run directory with its lock,
//!   attaching to a running VM, its lease taken from QEMU), and the
//!   launcher's own [`launcher::supervise`] and [`launcher::control`].
//!
//! Inside every QEMU the lease socket is fd [`LEASE_FD`] and main RAM fd
//! [`RAM_FD`]; DIMMs inherited by an upgrade target start at
//! [`DIMM_FD_BASE`] (all in [`qemu`]).

pub mod ch;
pub mod devices;
pub mod hotplug;
pub mod launcher;
pub mod process;
pub mod qemu;
pub mod upgrade;
pub mod vm;
pub mod vmm;

pub use hotplug::{hotplug, unplug, HotplugOptions, HotplugReport, UnplugOptions, UnplugReport};
pub use launcher::{launch, LaunchOptions};
pub use qemu::{DIMM_FD_BASE, DIMM_SLOT_BASE, LEASE_FD, MAIN_SLOT, RAM_FD};
pub use upgrade::{upgrade, UpgradeOptions, UpgradeReport};
pub use vm::run_dir::RunDir;
