//! Running the guest: resetting the vCPU to real mode, `KVM_RUN`, and handling the vCPU exits
//! (the guest's `out`s to its counter and tick ports, `hlt`, memory faults).

use std::io::{self, Write as _};

use kvm_ioctls::VcpuExit;

use super::{MiniVm, VmError};
use crate::guest_code::{
    GuestMode, CODE_GPA, ONCE_ENTRY, PORT_COUNTER_HI, PORT_COUNTER_LO, PORT_TICK_HI, PORT_TICK_LO,
};

/// What one [`MiniVm::run`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOutcome {
    /// The boot counter the guest reported (complete values only).
    pub counter: Option<u64>,
    /// The last tick the guest reported (loop mode).
    pub last_tick: Option<u64>,
    /// How many ticks were reported.
    pub ticks: u64,
    /// vCPU exits handled.
    pub exits: u64,
    /// Whether the guest halted (otherwise the exit budget ran out).
    pub halted: bool,
}

impl MiniVm {
    /// Resets the vCPU to real mode at [`CODE_GPA`] with the registers of `mode`.
    fn reset_vcpu(&self, mode: GuestMode) -> Result<(), VmError> {
        let vcpu_err = |what| move |source| VmError::Vcpu { what, source };
        let mut sregs = self.vcpu.get_sregs().map_err(vcpu_err("KVM_GET_SREGS"))?;
        for seg in [
            &mut sregs.cs,
            &mut sregs.ds,
            &mut sregs.es,
            &mut sregs.fs,
            &mut sregs.gs,
            &mut sregs.ss,
        ] {
            seg.base = 0;
            seg.selector = 0;
        }
        self.vcpu
            .set_sregs(&sregs)
            .map_err(vcpu_err("KVM_SET_SREGS"))?;
        let regs = kvm_bindings::kvm_regs {
            rip: CODE_GPA + u64::from(ONCE_ENTRY),
            rflags: 2,
            rbx: mode.rbx(),
            rsi: mode.rsi(),
            ..Default::default()
        };
        self.vcpu.set_regs(&regs).map_err(vcpu_err("KVM_SET_REGS"))
    }

    /// Boots the guest code (already loaded at [`CODE_GPA`]) in `mode` and handles at most
    /// `max_exits` vCPU exits. Returns when the guest halts or the budget is spent
    /// ([`RunOutcome::halted`] tells which). With echo on, prints `GMEM-VMM: counter N` and
    /// `GMEM-VMM: tick N` lines on stdout as values complete.
    pub fn run(&mut self, mode: GuestMode, max_exits: u64) -> Result<RunOutcome, VmError> {
        self.reset_vcpu(mode)?;
        let mut out = RunOutcome::default();
        let mut counter_lo = 0u32;
        let mut tick_lo = 0u32;
        while out.exits < max_exits {
            out.exits += 1;
            let (port, value) = match self.vcpu.run() {
                Ok(VcpuExit::IoOut(port, data)) => (port, le_u32(data)),
                Ok(VcpuExit::Hlt) => {
                    out.halted = true;
                    break;
                }
                Ok(VcpuExit::MemoryFault { flags, gpa, size }) => {
                    return Err(VmError::MemoryFault { gpa, size, flags })
                }
                Ok(exit) => return Err(VmError::UnexpectedExit(format!("{exit:?}"))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => return Err(VmError::Run(e)),
            };
            match port {
                PORT_COUNTER_LO => counter_lo = value,
                PORT_COUNTER_HI => {
                    let n = (u64::from(value) << 32) | u64::from(counter_lo);
                    out.counter = Some(n);
                    self.echo_line(format_args!("counter {n}"));
                }
                PORT_TICK_LO => tick_lo = value,
                PORT_TICK_HI => {
                    let n = (u64::from(value) << 32) | u64::from(tick_lo);
                    out.last_tick = Some(n);
                    out.ticks += 1;
                    self.echo_line(format_args!("tick {n}"));
                }
                port => {
                    return Err(VmError::UnexpectedIo {
                        port,
                        data: value.to_le_bytes().to_vec(),
                    })
                }
            }
        }
        log::debug!("run {mode:?}: {out:?}");
        Ok(out)
    }

    fn echo_line(&self, msg: std::fmt::Arguments<'_>) {
        if !self.echo {
            return;
        }
        let mut so = io::stdout().lock();
        if let Err(e) = writeln!(so, "GMEM-VMM: {msg}").and_then(|()| so.flush()) {
            log::warn!("stdout: {e}");
        }
    }
}

/// Little-endian value of an `out` of 1, 2 or 4 bytes.
fn le_u32(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::guest_code;
    use crate::kvm_vm::test_support::kvm_available;

    fn memfd_memory(size: usize) -> (File, GuestMemoryMmap) {
        let fd =
            rustix::fs::memfd_create("gmem-vmm-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, size as u64).unwrap();
        let file = File::from(fd);
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            size,
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
        )])
        .unwrap();
        (file, mem)
    }

    #[test]
    fn le_u32_pads_short_outs() {
        assert_eq!(le_u32(&[1, 2, 3, 4]), 0x0403_0201);
        assert_eq!(le_u32(&[0xff]), 0xff);
        assert_eq!(le_u32(&[]), 0);
    }

    #[test]
    fn kvm_counter_persists_across_vms() {
        if !kvm_available() {
            return;
        }
        let (file, mem) = memfd_memory(1 << 20);
        guest_code::load(&mem).unwrap();
        for expect in 1..=3u64 {
            let mut vm = MiniVm::new().unwrap();
            vm.set_echo(false);
            // A fresh mapping of the same file for every VM, like a restarted VMM.
            let view = GuestMemoryMmap::from_ranges_with_files([(
                GuestAddress(0),
                1 << 20,
                Some(FileOffset::new(file.try_clone().unwrap(), 0)),
            )])
            .unwrap();
            let slots = vm.add_guest_memory(&view).unwrap();
            assert_eq!(slots.len(), 1);
            assert_eq!(slots[0].guest_phys_addr, 0);
            let out = vm.run(GuestMode::Once, 100).unwrap();
            assert!(out.halted, "{out:?}");
            assert_eq!(out.counter, Some(expect));
            assert_eq!(guest_code::read_counter(&mem).unwrap(), expect);
        }
    }

    #[test]
    fn kvm_counter_carries_into_high_half() {
        if !kvm_available() {
            return;
        }
        let (_file, mem) = memfd_memory(0x2000);
        guest_code::load(&mem).unwrap();
        guest_code::write_counters(&mem, u64::from(u32::MAX), 0).unwrap();
        let mut vm = MiniVm::new().unwrap();
        vm.set_echo(false);
        vm.add_guest_memory(&mem).unwrap();
        let out = vm.run(GuestMode::Once, 100).unwrap();
        assert_eq!(out.counter, Some(1 << 32));
        assert_eq!(guest_code::read_counter(&mem).unwrap(), 1 << 32);
    }

    #[test]
    fn kvm_loop_mode_ticks_until_budget() {
        if !kvm_available() {
            return;
        }
        let (_file, mem) = memfd_memory(0x2000);
        guest_code::load(&mem).unwrap();
        let mut vm = MiniVm::new().unwrap();
        vm.set_echo(false);
        vm.add_guest_memory(&mem).unwrap();
        // 2 exits for the boot counter, then 2 per tick.
        let out = vm.run(GuestMode::Loop { delay: 1000 }, 2 + 2 * 5).unwrap();
        assert!(!out.halted);
        assert_eq!(out.counter, Some(1));
        assert_eq!(out.ticks, 5);
        assert_eq!(out.last_tick, Some(5));
        // The guest stores before it reports, and it stopped right after a report.
        assert_eq!(guest_code::read_ticks(&mem).unwrap(), 5);
    }
}
