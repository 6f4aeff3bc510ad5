//! `gmemctl`: the operator CLI of gmemd.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gmem_protocol::wire::{MemoryKind, Name, Uuid, VmSelector};
use gmem_protocol::Client;
use gmemd::config::{default_socket, format_size, parse_size};

/// Operate gmemd: inspect, create and destroy memory, revoke VMs.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// gmemd's socket [default: $XDG_RUNTIME_DIR/gmemd/gmemd.sock, /run/gmemd/gmemd.sock for root].
    #[arg(long, env = "GMEMD_SOCKET", global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Memory files, owners, bindings and leases.
    Status {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a named memory file.
    Create {
        /// File name.
        name: Name,
        /// Size, e.g. 512M or 1G.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// memfd, hugetlb-2m, hugetlb-1g or secret.
        #[arg(long, default_value = "memfd")]
        kind: MemoryKind,
    },
    /// Forget a memory file (its memory is freed once no VMM maps it).
    Destroy {
        /// File name.
        name: Name,
    },
    /// Destroy a file's content and forget who received it.
    Scrub {
        /// File name.
        name: Name,
    },
    /// End a VM's lease and destroy the content only it owned.
    Revoke {
        /// VM name or UUID.
        vm: String,
    },
    /// What this host supports: KVM, guest_memfd, memfd_secret, hugepages.
    Caps {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gmemctl: {}", gmemd::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let socket = args.socket.unwrap_or_else(default_socket);
    let connect = || Client::connect_control(&socket);
    match args.command {
        Command::Status { json } => {
            let mut client = connect()?;
            let files = client.files()?;
            let leases = client.leases()?;
            if json {
                println!("{}", gmemd::report::status_json(&files, &leases));
            } else {
                print!("{}", gmemd::report::status_table(&files, &leases));
            }
        }
        Command::Create { name, size, kind } => {
            let (_fd, info) = connect()?.create(&name, size, kind)?;
            println!("created {name}: {} {}", format_size(info.size), info.kind);
        }
        Command::Destroy { name } => {
            connect()?.destroy(&name)?;
            println!("destroyed {name}");
        }
        Command::Scrub { name } => {
            connect()?.scrub(&name)?;
            println!("scrubbed {name}: content destroyed, holders forgotten");
        }
        Command::Revoke { vm } => {
            let selector = match Uuid::parse(&vm) {
                Some(uuid) => VmSelector::Uuid(uuid),
                None => VmSelector::Name(Name::new(&vm)?),
            };
            let report = connect()?.revoke(&selector)?;
            println!(
                "revoked {vm}: {} lease(s) ended, {} binding(s) dropped, {} file(s) scrubbed",
                report.leases, report.bindings, report.scrubbed
            );
        }
        Command::Caps { json } => {
            let caps = gmemd::caps::probe();
            if json {
                println!("{}", serde_json::to_string_pretty(&caps)?);
            } else {
                print!("{}", caps.render_table());
            }
        }
    }
    Ok(())
}
