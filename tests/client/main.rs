//! gmem-test-client: a VMM stand-in for the integration tests. It opens a
//! lease, creates or opens files, writes through its own mapping, binds, and
//! then exits or holds everything until it is killed.
//!
//! ```text
//! gmem-test-client --socket S --vm NAME [--create F:SIZE] [--open F]
//!     [--write F:OFFSET:TEXT] [--bind F:SLOT:GPA:OFFSET:SIZE] [--hold | --handoff]
//! ```
//! Steps run in command-line order; `READY` is printed when all are done.
//! `--handoff` then starts `sleep` with the lease socket as its stdin, as a
//! launcher hands the lease to QEMU, prints `HANDOFF <pid>` and exits.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;

use gmem_protocol::guest_memory::{guest_memory, RegionSpec};
use gmem_protocol::wire::{BindRequest, LeaseId, MemoryKind, Name, VmId};
use gmem_protocol::Client;
use vm_memory::{Bytes, GuestAddress};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gmem-test-client: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_num(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("bad number {text:?}: {e}"))
}

fn name(text: &str) -> Result<Name, String> {
    Name::new(text).map_err(|e| e.to_string())
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .ok_or_else(|| format!("{flag} is required"))
    };
    let socket = value("--socket")?;
    let vm = VmId::from_name(name(&value("--vm")?)?);
    let mut client = Client::connect(&socket, vm).map_err(|e| e.to_string())?;
    // Keep every received fd open for as long as this process lives.
    let mut files: Vec<(Name, OwnedFd, u64)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let param = args.get(i + 1).cloned().unwrap_or_default();
        let parts: Vec<&str> = param.split(':').collect();
        match arg {
            "--create" => {
                let n = name(parts[0])?;
                let size = parse_num(parts.get(1).ok_or("--create F:SIZE")?)?;
                let (fd, info) = client
                    .create_or_open(&n, size, MemoryKind::Memfd)
                    .map_err(|e| e.to_string())?;
                files.push((n, fd, info.size));
            }
            "--open" => {
                let n = name(parts[0])?;
                let (fd, info) = client.open(&n).map_err(|e| e.to_string())?;
                files.push((n, fd, info.size));
            }
            "--write" => {
                let n = name(parts[0])?;
                let offset = parse_num(parts.get(1).ok_or("--write F:OFFSET:TEXT")?)?;
                let text = parts.get(2).ok_or("--write F:OFFSET:TEXT")?;
                let (_, fd, size) = files
                    .iter()
                    .find(|(f, _, _)| *f == n)
                    .ok_or("--write needs the file created or opened first")?;
                write_through_mapping(fd, *size, offset, text.as_bytes())?;
            }
            "--bind" => {
                if parts.len() != 5 {
                    return Err("--bind F:SLOT:GPA:OFFSET:SIZE".into());
                }
                let slot = u32::try_from(parse_num(parts[1])?).map_err(|e| e.to_string())?;
                let bind = BindRequest::new(
                    slot,
                    GuestAddress(parse_num(parts[2])?),
                    name(parts[0])?,
                    parse_num(parts[3])?,
                    parse_num(parts[4])?,
                );
                client.bind(&bind).map_err(|e| e.to_string())?;
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    println!("READY lease {}", client.lease().map_or(0, LeaseId::get));
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    if args.iter().any(|a| a == "--handoff") {
        let socket = client.stream().try_clone().map_err(|e| e.to_string())?;
        let keeper = std::process::Command::new("sleep")
            .arg("600")
            .stdin(OwnedFd::from(socket))
            .spawn()
            .map_err(|e| e.to_string())?;
        // Tell gmemd who holds the lease now, as gmemctl launch does for QEMU.
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_child(&keeper),
            rustix::process::PidfdFlags::empty(),
        )
        .map_err(|e| e.to_string())?;
        // The keeper has the socket as its stdin.
        let shown = client
            .handoff(pidfd.as_fd(), 0)
            .map_err(|e| e.to_string())?;
        println!("HANDOFF {shown}");
        std::io::stdout().flush().map_err(|e| e.to_string())?;
        return Ok(());
    }
    if args.iter().any(|a| a == "--hold") {
        loop {
            std::thread::park();
        }
    }
    Ok(())
}

/// Writes through a shared mapping, as a VMM's guest would.
fn write_through_mapping(fd: &OwnedFd, size: u64, offset: u64, bytes: &[u8]) -> Result<(), String> {
    let memory = guest_memory(&[RegionSpec {
        fd: fd.as_fd(),
        file_offset: 0,
        gpa: GuestAddress(0),
        size,
    }])
    .map_err(|e| e.to_string())?;
    memory
        .write_slice(bytes, GuestAddress(offset))
        .map_err(|e| e.to_string())
}
