//! gmem-vmm: a minimal KVM VMM whose guest RAM comes from gmemd.
//!
//! For now only the self-tests, with local memory:
//! - `gmem-vmm --selftest`: three VMs in a row over one memfd print `counter 1`, `2`, `3`.
//! - `gmem-vmm --selftest --private`: the guest runs from a guest_memfd; probes private memory.
//! - `gmem-vmm --selftest --loop [--delay N] [--max-exits N]`: ticks until the exit budget
//!   is spent (unbounded by default) or the process is killed.

mod guest_code;
mod kvm_vm;
mod selftest;

use std::process::ExitCode;

/// Default delay-loop iterations between ticks: ~0.1 s where KVM emulates real mode (PVM
/// hosts, ~1.3 us per iteration), ~0.1 ms on VMX/SVM hardware.
const DEFAULT_DELAY: u32 = 100_000;

const USAGE: &str = "usage: gmem-vmm --selftest [--private | --loop [--delay N] [--max-exits N]]";

fn main() -> ExitCode {
    env_logger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let value = |flag: &str| -> Result<Option<u64>, String> {
        match args.iter().position(|a| a == flag) {
            None => Ok(None),
            Some(i) => args
                .get(i + 1)
                .and_then(|v| v.parse().ok())
                .map(Some)
                .ok_or_else(|| format!("{flag} needs a number")),
        }
    };
    if !has("--selftest") {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let result = if has("--private") {
        selftest::private()
    } else if has("--loop") {
        let parsed = value("--delay").and_then(|d| Ok((d, value("--max-exits")?)));
        let (delay, max_exits) = match parsed {
            Ok(v) => v,
            Err(e) => {
                eprintln!("gmem-vmm: {e}\n{USAGE}");
                return ExitCode::from(2);
            }
        };
        let delay = delay
            .map_or(Ok(DEFAULT_DELAY), u32::try_from)
            .unwrap_or(u32::MAX);
        selftest::looping(delay, max_exits.unwrap_or(u64::MAX))
    } else {
        selftest::shared(3)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gmem-vmm: selftest failed: {e}");
            ExitCode::FAILURE
        }
    }
}
