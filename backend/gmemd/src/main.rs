//! `gmemd`: the guest-memory daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gmemd::config::{default_state_dir, Config, Limits};
use gmemd::event_loop::EventLoop;
use gmemd::service::Service;
use gmemd::size::{format_size, parse_size};

/// Owns guest RAM for KVM VMs and hands it to VMMs over a Unix socket.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Socket to listen on [default: STATE_DIR/gmemd.sock].
    #[arg(long, env = "GMEMD_SOCKET")]
    socket: Option<PathBuf>,
    /// Runtime directory [default: $XDG_RUNTIME_DIR/gmemd, /run/gmemd for root].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Uids allowed to connect as clients (repeatable) [default: gmemd's uid
    /// and root]. Operators are always allowed as well.
    #[arg(long = "allow-uid")]
    allow_uids: Vec<u32>,
    /// Uids allowed operator requests (repeatable) [default: gmemd's uid and root].
    #[arg(long = "admin-uid")]
    admin_uids: Vec<u32>,
    /// Limit on all memory files together, e.g. 64G or 1.5T [default: host RAM].
    #[arg(long, value_parser = parse_size)]
    max_memory: Option<u64>,
    /// Files one VM may create or deposit, across all its leases.
    #[arg(
        long,
        alias = "max-files-per-lease",
        default_value_t = Limits::default().max_files_per_vm
    )]
    max_files_per_vm: usize,
    /// Connections served at once (at least 1).
    #[arg(
        long,
        default_value_t = u32::try_from(Limits::default().max_connections).unwrap_or(u32::MAX),
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    max_connections: u32,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{}", gmemd::error_chain(e.as_ref()));
            eprintln!("gmemd: {}", gmemd::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let state_dir = args.state_dir.unwrap_or_else(default_state_dir);
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| format!("cannot create state dir {}: {e}", state_dir.display()))?;
    let socket = args.socket.unwrap_or_else(|| state_dir.join("gmemd.sock"));

    let mut config = Config::default();
    if !args.allow_uids.is_empty() {
        config.allowed_uids = args.allow_uids;
    }
    if !args.admin_uids.is_empty() {
        config.admin_uids = args.admin_uids;
    }
    if let Some(max) = args.max_memory {
        config.limits.max_total_memory = max;
    }
    config.limits.max_files_per_vm = args.max_files_per_vm;
    config.limits.max_connections = usize::try_from(args.max_connections)?;
    raise_fd_limit();
    log::info!(
        "gmemd {}: state dir {}, clients may connect from uids {:?} (operators {:?} always \
         may), memory limit {}, {} file(s) per VM, {} connection(s)",
        env!("CARGO_PKG_VERSION"),
        state_dir.display(),
        config.connecting_uids(),
        config.admin_uids,
        format_size(config.limits.max_total_memory),
        config.limits.max_files_per_vm,
        config.limits.max_connections,
    );

    let mut event_loop = EventLoop::bind(&socket, Service::new(config))?;
    event_loop.stop_on_signals()?;
    event_loop.run()?;
    Ok(())
}

/// Every client and every memory file is an fd: use the hard limit.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            log::warn!("cannot raise RLIMIT_NOFILE: {e}");
        }
    }
}
