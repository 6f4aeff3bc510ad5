//! `gmemd`: the guest-memory daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gmemd::config::{default_state_dir, parse_duration, Config, Limits, Quotas};
use gmemd::config_file::ConfigFile;
use gmemd::event_loop::RunEnd;
use gmemd::fdstore::keeper::{run_keeper, KeeperOptions, ServeCommand};
use gmemd::principal::PrincipalMode;
use gmemd::size::{format_size, parse_size};

/// Owns guest RAM for KVM VMs and hands it to VMMs over a Unix socket.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Socket to listen on [default: STATE_DIR/gmemd.sock].
    #[arg(long, env = "GMEMD_SOCKET")]
    socket: Option<PathBuf>,
    /// Runtime directory, gmemd's own (not writable by others) [default:
    /// $XDG_RUNTIME_DIR/gmemd, /run/gmemd for root].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Config file (TOML): principal, patterns per VM, quotas. Flags win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Uids allowed to connect as clients (repeatable) [default: gmemd's uid
    /// and root]. Operators are always allowed as well.
    #[arg(long = "allow-uid")]
    allow_uids: Vec<u32>,
    /// Uids allowed operator requests (repeatable) [default: gmemd's uid and root].
    #[arg(long = "admin-uid")]
    admin_uids: Vec<u32>,
    /// What ties a VM to the principal of its first lease: uid, uid+cgroup,
    /// uid+label or uid+cgroup+label [default: uid].
    #[arg(long)]
    principal: Option<PrincipalMode>,
    /// Cgroup pattern of every VM (`*`, `?`; `{vm}` is the VM's name)
    /// [default: the exact cgroup of its first lease].
    #[arg(long)]
    cgroup_pattern: Option<String>,
    /// Security label pattern of every VM, likewise.
    #[arg(long)]
    label_pattern: Option<String>,
    /// Limit on all memory files together, e.g. 64G or 1.5T [default: host RAM].
    #[arg(long, value_parser = parse_size)]
    max_memory: Option<u64>,
    /// Memory files gmemd keeps at once [default: 8192, lowered to fit RLIMIT_NOFILE].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_files: Option<u32>,
    /// Files one VM may create or deposit, across all its leases.
    #[arg(
        long,
        alias = "max-files-per-lease",
        default_value_t = Limits::default().max_files_per_vm
    )]
    max_files_per_vm: usize,
    /// Connections served at once (at least 1) [default: 1024, lowered to fit RLIMIT_NOFILE].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
    /// Connection slots only operators may use.
    #[arg(long, default_value_t = Limits::default().reserved_operator_connections)]
    reserved_operator_connections: usize,
    /// Files all VMs of one principal may have [default: 256].
    #[arg(long)]
    quota_files: Option<usize>,
    /// Memory all VMs of one principal may have, destroyed memory its
    /// processes still hold included [default: --max-memory].
    #[arg(long, value_parser = parse_size)]
    quota_memory: Option<u64>,
    /// Connections one principal may hold at once [default: 64].
    #[arg(long)]
    quota_connections: Option<usize>,
    /// How long a new connection may take to send HELLO, e.g. 5s.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    hello_timeout: Duration,
    /// Destroy the files of a VM that has had no lease for this long, e.g.
    /// 7d [default: never].
    #[arg(long, value_parser = parse_duration)]
    expire_orphans: Option<Duration>,
    /// How long a lease whose connection did not survive a gmemd restart
    /// keeps its bindings, e.g. 30s.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    lease_grace: Duration,
    /// Keep COUNT prefaulted, zeroed files of SIZE (and KIND, default
    /// memfd) ready for CREATEs of that size and kind, e.g. 4Gx2 or
    /// 1G:hugetlb-2mx4 (repeatable; adds to the config file's). Refilled
    /// in the background at idle priority. Pool memory counts against
    /// --max-memory and is charged to gmemd's memory cgroup.
    #[arg(long = "pool", value_name = "SIZE[:KIND]xCOUNT")]
    pools: Vec<gmemd::pool::PoolSpec>,
    /// Threads populating files CREATEd with PREFAULT [default: one per core].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    prefault_threads: Option<u32>,
    /// Bind the pages of new memfd files (prefaulted, pooled or faulted
    /// later) to this NUMA node [default: the kernel's policy].
    #[arg(long)]
    numa_node: Option<u32>,
    /// Serve in this process, without a keeper: memory and connections do
    /// not survive gmemd's own crash. (Under systemd, its fd store keeps
    /// them and no keeper is started anyway.)
    #[arg(long)]
    no_keeper: bool,
    /// Serve (the keeper starts gmemd with this; not for people).
    #[arg(long, hide = true)]
    serve: bool,
}

fn main() -> ExitCode {
    gmemd::startup::mark_exec();
    if let Err(e) = gmemd::log_sink::init() {
        eprintln!("gmemd: no log: {e}");
    }
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{}", gmemd::error_chain(e.as_ref()));
            eprintln!("gmemd: {}", gmemd::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    // Read now: after an upgrade in place the path names the new binary.
    gmemd::handover::binary_path();
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    gmemd::runtime_dir::prepare(&state_dir)?;
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| state_dir.join("gmemd.sock"));
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let keeper = !args.serve && !args.no_keeper && std::env::var_os("NOTIFY_SOCKET").is_none();
    // Everything is checked before a keeper starts: a mistake is said here.
    let config = config_from(args, file)?;
    if keeper {
        // Without a manager (systemd) to keep its fds, gmemd keeps them
        // itself: this process becomes the keeper, serving in a child it
        // starts again whenever it dies.
        let serve = ServeCommand::this_binary(std::env::args_os().skip(1))?;
        return Ok(run_keeper(serve, KeeperOptions::default()));
    }
    log::info!(
        "gmemd {}: state dir {}, clients may connect from uids {:?} (operators {:?} always \
         may), VMs tied to {}, memory limit {}, {} file(s) (per VM {}), {} connection(s) ({} \
         for operators); per principal: {} file(s), {}, {} connection(s); HELLO within {:?}; \
         {} prefault thread(s){}{}",
        env!("CARGO_PKG_VERSION"),
        state_dir.display(),
        config.connecting_uids(),
        config.admin_uids,
        config.ties.mode,
        format_size(config.limits.max_total_memory),
        config.limits.max_files,
        config.limits.max_files_per_vm,
        config.limits.max_connections,
        config.limits.reserved_operator_connections,
        config.quotas.files,
        format_size(config.quotas.memory),
        config.quotas.connections,
        config.limits.hello_timeout,
        config.warm.prefault_threads,
        config
            .warm
            .numa_node
            .map_or_else(String::new, |n| format!(", memory on NUMA node {n}")),
        if config.warm.pools.is_empty() {
            String::new()
        } else {
            let pools: Vec<String> = config.warm.pools.iter().map(ToString::to_string).collect();
            format!(", pools {}", pools.join(", "))
        },
    );
    let mut event_loop = gmemd::startup::start(config, &state_dir, &socket)?;
    event_loop.stop_on_signals()?;
    // Lines wait for the end of each wakeup while it serves (log_sink).
    gmemd::log_sink::hold();
    let end = event_loop.run();
    gmemd::log_sink::release();
    if end? == RunEnd::Restart {
        let fds = event_loop.handover();
        let exe = gmemd::handover::binary_path();
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        let err = gmemd::handover::exec_with_fds(&exe, &args, &fds);
        // The fds were moved for the exec: nothing can go on here. What
        // keeps them (systemd, the keeper) starts gmemd again.
        return Err(format!("restart in place: exec of {} failed: {err}", exe.display()).into());
    }
    Ok(ExitCode::SUCCESS)
}

/// The configuration from flags over the file over defaults; the limits
/// fitted to the fds gmemd may have.
fn config_from(args: Args, file: ConfigFile) -> Result<Config, Box<dyn std::error::Error>> {
    let mut config = Config::default();
    if !args.allow_uids.is_empty() {
        config.allowed_uids = args.allow_uids;
    }
    if !args.admin_uids.is_empty() {
        config.admin_uids = args.admin_uids;
    }
    let limits = &mut config.limits;
    if let Some(max) = args.max_memory {
        limits.max_total_memory = max;
    }
    limits.max_files_per_vm = args.max_files_per_vm;
    limits.reserved_operator_connections = args.reserved_operator_connections;
    limits.hello_timeout = args.hello_timeout;
    limits.expire_orphans = args.expire_orphans;
    limits.lease_grace = args.lease_grace;
    if let Some(n) = args.max_files {
        limits.max_files = usize::try_from(n)?;
    }
    if let Some(n) = args.max_connections {
        limits.max_connections = usize::try_from(n)?;
    }
    let nofile = raise_fd_limit();
    if let Some(lowered) = limits.fit_fds(nofile) {
        log::warn!("{lowered}");
    }
    let defaults = Quotas::default();
    config.quotas = Quotas {
        files: args
            .quota_files
            .or(file.quota_files)
            .unwrap_or(defaults.files),
        memory: args
            .quota_memory
            .or(file.quota_memory)
            .unwrap_or(config.limits.max_total_memory),
        connections: args
            .quota_connections
            .or(file.quota_connections)
            .unwrap_or(defaults.connections),
    };
    let warm = &mut config.warm;
    warm.pools = file.pools;
    warm.pools.extend(args.pools);
    if let Some(n) = args.prefault_threads {
        warm.prefault_threads = usize::try_from(n)?;
    } else if let Some(n) = file.prefault_threads {
        warm.prefault_threads = n.clamp(1, 256);
    }
    warm.numa_node = args.numa_node.or(file.numa_node);
    if let Some(node) = warm.numa_node {
        if !gmemd::memory::populate::node_exists(node) {
            return Err(format!(
                "--numa-node {node}: this host has no NUMA node {node} \
                 (see /sys/devices/system/node)"
            )
            .into());
        }
    }
    let pooled: u64 = warm.pools.iter().map(|p| p.size * u64::from(p.count)).sum();
    if pooled > config.limits.max_total_memory {
        return Err(format!(
            "the pools keep {} but --max-memory is {}",
            format_size(pooled),
            format_size(config.limits.max_total_memory)
        )
        .into());
    }
    let ties = &mut config.ties;
    ties.mode = args.principal.or(file.principal).unwrap_or_default();
    ties.cgroup_pattern = args.cgroup_pattern.or(file.cgroup_pattern);
    ties.label_pattern = args.label_pattern.or(file.label_pattern);
    ties.vms = file.vms;
    let unused = |what: &str, on: bool, set: bool| {
        (set && !on).then(|| {
            format!(
                "a {what} pattern is given but --principal {} does not match {what}s",
                ties.mode
            )
        })
    };
    if let Some(e) = unused("cgroup", ties.mode.cgroup, ties.cgroup_pattern.is_some())
        .or_else(|| unused("label", ties.mode.label, ties.label_pattern.is_some()))
    {
        return Err(e.into());
    }
    Ok(config)
}

/// Every client and every memory file is an fd: use the hard limit.
/// Returns the limit gmemd runs with.
fn raise_fd_limit() -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            log::warn!("cannot raise RLIMIT_NOFILE: {e}");
        }
    }
    let now = getrlimit(Resource::Nofile).current;
    now.and_then(|n| usize::try_from(n).ok())
        .unwrap_or(usize::MAX)
}
