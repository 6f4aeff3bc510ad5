//! gmem-vmm: a minimal KVM VMM whose guest RAM comes from gmemd.
//!
//! - `gmem-vmm --socket S --vm NAME [--file F] [--size BYTES] [--loop [--delay N]]
//!   [--max-exits N] [--private]`: the guest's RAM comes from gmemd (see `from_gmemd`).
//!
//! Self-tests with local memory, no gmemd:
//! - `gmem-vmm --selftest`: three VMs in a row over one memfd print `counter 1`, `2`, `3`.
//! - `gmem-vmm --selftest --private`: the guest runs from a guest_memfd; probes private memory.
//! - `gmem-vmm --selftest --loop [--delay N] [--max-exits N]`: ticks until the exit budget
//!   is spent (unbounded by default) or the process is killed.

mod from_gmemd;
mod guest_code;
mod kvm_vm;
mod selftest;

use std::process::ExitCode;

/// Default delay-loop iterations between ticks: ~0.1 s where KVM emulates real mode (PVM
/// hosts, ~1.3 us per iteration), ~0.1 ms on VMX/SVM hardware.
const DEFAULT_DELAY: u32 = 100_000;

const USAGE: &str = "usage: gmem-vmm --socket PATH --vm NAME [--file NAME] [--size BYTES] \
[--loop [--delay N]] [--max-exits N] [--private]\n       \
gmem-vmm --selftest [--private | --loop [--delay N] [--max-exits N]]";

/// Guest RAM of the gmemd-backed VMM unless `--size` says otherwise.
const DEFAULT_SIZE: u64 = 1 << 20;

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
        return match gmemd_options(&args) {
            Ok(opts) => {
                let result = if has("--private") {
                    from_gmemd::run_private(&opts)
                } else {
                    from_gmemd::run_shared(&opts)
                };
                match result {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("gmem-vmm: {}", gmem_protocol::error_chain(&e));
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("gmem-vmm: {e}\n{USAGE}");
                ExitCode::from(2)
            }
        };
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

/// Parses the gmemd-backed mode's arguments.
fn gmemd_options(args: &[String]) -> Result<from_gmemd::Options, String> {
    let text = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let number = |flag: &str| -> Result<Option<u64>, String> {
        text(flag)
            .map(|v| v.parse().map_err(|_| format!("{flag} needs a number")))
            .transpose()
    };
    let socket = text("--socket").ok_or("--socket is required")?;
    let vm_name = text("--vm").ok_or("--vm is required")?;
    let vm = gmem_protocol::VmId::from_name(
        gmem_protocol::Name::new(&vm_name).map_err(|e| e.to_string())?,
    );
    let default_file = format!("{vm_name}-ram");
    let file = gmem_protocol::Name::new(&text("--file").unwrap_or(default_file))
        .map_err(|e| e.to_string())?;
    let mode = if args.iter().any(|a| a == "--loop") {
        let delay =
            number("--delay")?.map_or(DEFAULT_DELAY, |d| u32::try_from(d).unwrap_or(u32::MAX));
        guest_code::GuestMode::Loop { delay }
    } else {
        guest_code::GuestMode::Once
    };
    Ok(from_gmemd::Options {
        socket,
        vm,
        file,
        size: number("--size")?.unwrap_or(DEFAULT_SIZE),
        mode,
        max_exits: number("--max-exits")?.unwrap_or(match mode {
            guest_code::GuestMode::Once => 100,
            guest_code::GuestMode::Loop { .. } => u64::MAX,
        }),
    })
}
