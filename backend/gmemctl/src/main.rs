//! `gmemctl`: the operator CLI of gmemd.
//!
//! Files are named `VM/NAME` (file `NAME` of that VM, the VM by name or
//! UUID) or `NAME` (an operators' file): see [`gmemctl::address`]. Every
//! request to gmemd is bounded by `--timeout` (see [`gmemctl::session`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use gmem_protocol::wire::{MemoryKind, Name, Uuid, VmId, VmSelector};
use gmemctl::address::{parse_file, parse_new_file_name, parse_uuid, parse_vm_selector, FileArg};
use gmemctl::launch::vmm::VmmKind;
use gmemctl::launch::{
    HotplugOptions, HotplugReport, LaunchOptions, RunDir, UnplugOptions, UnplugReport,
    UpgradeOptions, UpgradeReport,
};
use gmemctl::session::{parse_timeout, Session};
use gmemd::config::default_socket;

/// How long `create --prefault` waits without any progress before it gives up.
const PREFAULT_STALL: Duration = Duration::from_secs(120);
use gmemd::size::{format_size, parse_size};

/// Operate gmemd: inspect, create, move and destroy memory, revoke and forget VMs.
///
/// Files are named VM/NAME (file NAME of VM, a VM name or UUID) or NAME
/// (a file of the operators' namespace, where `create` puts them).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// gmemd's socket [default: $XDG_RUNTIME_DIR/gmemd/gmemd.sock, /run/gmemd/gmemd.sock for root].
    #[arg(long, env = "GMEMD_SOCKET", global = true)]
    socket: Option<PathBuf>,
    /// Where launched VMs keep their records and sockets [default: vms/ beside the socket].
    #[arg(long, env = "GMEMCTL_RUN_DIR", global = true)]
    run_dir: Option<PathBuf>,
    /// Bound on gmemd's answer to each request (connecting included), in
    /// seconds. Also taken after status, create, destroy, scrub, revoke,
    /// transfer, forget and restart; upgrade, hotplug and unplug have their own.
    #[arg(
        long,
        env = "GMEMCTL_TIMEOUT",
        value_name = "SECS",
        default_value = "5",
        value_parser = parse_timeout
    )]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

/// `--timeout` after a subcommand that talks to gmemd. Not a global
/// argument: `upgrade`, `hotplug` and `unplug` have a `--timeout` of their
/// own, and a global one would leak its value (and `GMEMCTL_TIMEOUT`) into
/// theirs.
#[derive(Debug, clap::Args)]
struct RequestTimeout {
    /// Bound on gmemd's answer to each request, in seconds [default: the
    /// --timeout before the subcommand, $GMEMCTL_TIMEOUT, or 5].
    #[arg(long = "timeout", value_name = "SECS", value_parser = parse_timeout)]
    timeout: Option<Duration>,
}

/// Where `transfer` moves a file: exactly one of `--to VM`, `--to-operators`.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct Destination {
    /// The VM (name or UUID) whose namespace receives the file.
    #[arg(long, value_name = "VM", value_parser = parse_vm_selector)]
    to: Option<VmSelector>,
    /// Return the file to the operators' namespace.
    #[arg(long)]
    to_operators: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// gmemd itself, memory files with their namespaces, owners and bindings; leases.
    ///
    /// The first line says since when gmemd serves, how many restarts its
    /// state survived and what it last recovered (times in UTC). A file of
    /// a VM that has no lease is an orphan: ORPHAN says how long ago the
    /// VM's last lease ended.
    Status {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bound: RequestTimeout,
    },
    /// Create a memory file in the operators' namespace.
    Create {
        /// File name (give it to a VM with `transfer NAME --to VM`).
        #[arg(value_parser = parse_new_file_name)]
        name: Name,
        /// Size, e.g. 512M or 1G.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// memfd, hugetlb-2m, hugetlb-1g or secret.
        #[arg(long, default_value = "memfd")]
        kind: MemoryKind,
        /// Have gmemd populate every page now (in the background, several
        /// files in parallel), and wait for it with a progress bar on a
        /// terminal. An existing file of that size and kind is populated.
        #[arg(long)]
        prefault: bool,
        #[command(flatten)]
        bound: RequestTimeout,
    },
    /// Forget a memory file (its memory is freed once no VMM maps it).
    Destroy {
        /// VM/NAME (a VM's file) or NAME (an operators' file).
        #[arg(value_name = "FILE", value_parser = parse_file)]
        file: FileArg,
        #[command(flatten)]
        bound: RequestTimeout,
    },
    /// Destroy a file's content and forget who received it.
    Scrub {
        /// VM/NAME (a VM's file) or NAME (an operators' file).
        #[arg(value_name = "FILE", value_parser = parse_file)]
        file: FileArg,
        #[command(flatten)]
        bound: RequestTimeout,
    },
    /// Move an unbound file to a VM's namespace (or back to the operators').
    ///
    /// The file arrives as a fresh inode holding a copy of its content,
    /// which no process that had the old one can reach; the old inode is
    /// zeroed. guest_memfd files never move.
    Transfer {
        /// VM/NAME (a VM's file) or NAME (an operators' file).
        #[arg(value_name = "FILE", value_parser = parse_file)]
        file: FileArg,
        #[command(flatten)]
        to: Destination,
        /// Name at the destination [default: the file's name].
        #[arg(long = "as", value_name = "NAME")]
        rename: Option<Name>,
        #[command(flatten)]
        bound: RequestTimeout,
    },
    /// End a VM's lease and destroy the content only it owned.
    Revoke {
        /// VM name or UUID.
        #[arg(value_parser = parse_vm_selector)]
        vm: VmSelector,
        #[command(flatten)]
        bound: RequestTimeout,
    },
    /// Destroy every file of a VM without a lease and free its UUID and
    /// name for any principal (revoke its lease first).
    Forget {
        /// VM name or UUID.
        #[arg(value_parser = parse_vm_selector)]
        vm: VmSelector,
        #[command(flatten)]
        bound: RequestTimeout,
    },
    /// Restart gmemd in place (e.g. into a new release) without losing anything.
    ///
    /// gmemd execs its binary anew and hands over its socket, every
    /// connection, lease and memory file; running VMs notice nothing.
    /// Then waits until a gmemd with one more restart serves (up to 10 s,
    /// or --timeout if that is longer) and says how long that took.
    Restart {
        #[command(flatten)]
        bound: RequestTimeout,
    },
    /// What this host supports: KVM, guest_memfd, memfd_secret, hugepages.
    Caps {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run QEMU or cloud-hypervisor on gmemd memory: `launch --vm NAME
    /// --memory 2G -- qemu-system-x86_64 ARGS...` (or `-- cloud-hypervisor ARGS...`).
    ///
    /// Opens the VM's lease, creates its memory (or reopens it, content
    /// intact), records the bindings, starts the VMM with the memory and the
    /// lease inherited and supervises it; exits with the VMM's status.
    Launch {
        /// VM name (its UUID is derived from it unless --uuid is given).
        #[arg(long)]
        vm: Name,
        /// VM UUID.
        #[arg(long, value_parser = parse_uuid)]
        uuid: Option<Uuid>,
        /// Guest RAM, e.g. 512M or 4G.
        #[arg(long, value_parser = parse_size)]
        memory: u64,
        /// memfd, hugetlb-2m or hugetlb-1g.
        #[arg(long, default_value = "memfd")]
        kind: MemoryKind,
        /// Memory file name [default: NAME.ram].
        #[arg(long)]
        file: Option<Name>,
        /// Hotplug limit (QEMU's maxmem); enables `gmemctl hotplug`.
        #[arg(long, value_parser = parse_size)]
        max_memory: Option<u64>,
        /// Hotplug slots [default: 8 with --max-memory].
        #[arg(long)]
        slots: Option<u32>,
        /// gmemctl's QMP socket for this VM [default: RUN_DIR/NAME.qmp].
        #[arg(long)]
        qmp: Option<PathBuf>,
        /// A disk served by gmemd (vhost-user-blk), NAME=SIZE: a memory file
        /// of the VM that outlives QEMU; repeatable.
        #[arg(long = "disk", value_name = "NAME=SIZE")]
        disks: Vec<gmemctl::launch::devices::DiskArg>,
        /// Attach no vhost-user device when there is no --disk: the bindings
        /// are then the layout gmemctl assumes, unconfirmed by QEMU.
        #[arg(long)]
        no_vhost_device: bool,
        /// The QEMU program and its arguments (without -m or memory-backend).
        #[arg(last = true, required = true, value_name = "QEMU")]
        command: Vec<String>,
    },
    /// Replace a VM's QEMU or cloud-hypervisor live; only device state
    /// moves, RAM stays in place.
    Upgrade {
        /// VM name.
        vm: Name,
        /// New VMM binary, same arguments.
        #[arg(long, alias = "qemu")]
        binary: Option<PathBuf>,
        /// Bound on each step, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// New VMM program and arguments [default: the running ones; for
        /// cloud-hypervisor only process options (-v, --log-file, …) apply].
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Plug new gmemd memory into a running VM as a DIMM.
    Hotplug {
        /// VM name.
        vm: Name,
        /// Size, e.g. 128M or 1G.
        #[arg(value_parser = parse_size)]
        size: u64,
        /// memfd, hugetlb-2m or hugetlb-1g.
        #[arg(long, default_value = "memfd")]
        kind: MemoryKind,
        /// DIMM id [default: the first free dimmN].
        #[arg(long)]
        id: Option<String>,
        /// Memory file name [default: VM.ID].
        #[arg(long)]
        file: Option<Name>,
        /// Bound on each step, in seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Unplug a DIMM (the guest must release it) and destroy its memory.
    Unplug {
        /// VM name.
        vm: Name,
        /// DIMM id.
        id: String,
        /// Keep the memory file in gmemd.
        #[arg(long)]
        keep: bool,
        /// How long the guest may take to release it, in seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gmemctl: {}", gmemctl::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let socket = match args.socket {
        Some(socket) => socket,
        None => {
            // A guessable default (/tmp/gmemd-UID) may have been made by
            // another user, to catch what gmemctl sends.
            let socket = default_socket();
            if let Some(dir) = socket.parent() {
                gmemd::runtime_dir::check_trusted(dir)?;
            }
            socket
        }
    };
    let run_dir = args
        .run_dir
        .map_or_else(|| RunDir::for_socket(&socket), RunDir::new);
    let connect =
        |bound: &RequestTimeout| Session::connect(&socket, bound.timeout.unwrap_or(args.timeout));
    match args.command {
        Command::Status { json, bound } => {
            let status = connect(&bound)?.status()?;
            if json {
                println!("{}", gmemctl::report::status_json(&status));
            } else {
                print!("{}", gmemctl::report::status_table(&status));
            }
        }
        Command::Create {
            name,
            size,
            kind,
            prefault: false,
            bound,
        } => {
            let info = connect(&bound)?.create(&name, size, kind)?;
            println!("created {name}: {} {}", format_size(info.size), info.kind);
        }
        Command::Create {
            name,
            size,
            kind,
            prefault: true,
            bound,
        } => {
            let mut session = connect(&bound)?;
            let began = std::time::Instant::now();
            let info = session.create_prefaulted(&name, size, kind)?;
            gmemctl::prefault::wait_populated(&mut session, &name, size, PREFAULT_STALL)?;
            println!(
                "{} {name}: {} {}, populated in {:.2}s",
                if info.created { "created" } else { "opened" },
                format_size(info.size),
                info.kind,
                began.elapsed().as_secs_f64()
            );
        }
        Command::Destroy { file, bound } => {
            connect(&bound)?.destroy(&file)?;
            println!("destroyed {file}");
        }
        Command::Scrub { file, bound } => {
            connect(&bound)?.scrub(&file)?;
            println!("scrubbed {file}: content destroyed, holders forgotten");
        }
        Command::Transfer {
            file,
            to,
            rename,
            bound,
        } => {
            let name = rename.unwrap_or_else(|| file.name.clone());
            let dest = match to.to {
                Some(vm) => FileArg::in_vm(vm, name),
                None => FileArg::operators(name),
            };
            let info = connect(&bound)?.transfer(&file, &dest)?;
            let place = if dest.is_scoped() {
                ""
            } else {
                " (operators')"
            };
            println!(
                "transferred {file} to {dest}{place}: {} {} in a fresh inode; the old one is zeroed",
                format_size(info.size),
                info.kind
            );
        }
        Command::Revoke { vm, bound } => {
            let report = connect(&bound)?.revoke(&vm)?;
            println!(
                "revoked VM {vm}: {} lease(s) ended, {} binding(s) dropped, {} file(s) scrubbed",
                report.leases, report.bindings, report.scrubbed
            );
        }
        Command::Forget { vm, bound } => {
            connect(&bound)?.forget(&vm)?;
            println!("forgot VM {vm}: its files are destroyed, its UUID and name are free");
        }
        Command::Restart { bound } => {
            let report = gmemctl::daemon::restart(&socket, bound.timeout.unwrap_or(args.timeout))?;
            println!("{}", report.text());
        }
        Command::Caps { json } => {
            let caps = gmemctl::caps::probe();
            if json {
                println!("{}", serde_json::to_string_pretty(&caps)?);
            } else {
                print!("{}", caps.render_table());
            }
        }
        Command::Launch {
            vm,
            uuid,
            memory,
            kind,
            file,
            max_memory,
            slots,
            qmp,
            disks,
            no_vhost_device,
            command,
        } => {
            let vm = match uuid {
                Some(uuid) => VmId { uuid, name: vm },
                None => VmId::from_name(vm),
            };
            let opts = LaunchOptions {
                socket,
                run_dir,
                vm,
                memory,
                kind,
                file,
                max_memory,
                slots,
                qmp,
                disks,
                vhost_device: !no_vhost_device,
                command,
            };
            let code = gmemctl::launch::launch(&opts, |r| {
                eprintln!(
                    "gmemctl: VM {} running: {} pid {}, lease {}, memory {} ({} {}), {} {}",
                    r.vm,
                    r.vmm.kind,
                    r.vmm.process.pid,
                    r.lease,
                    r.memory.file,
                    format_size(r.memory.size),
                    r.memory.kind,
                    match r.vmm.kind {
                        VmmKind::Qemu => "QMP",
                        VmmKind::CloudHypervisor => "API",
                    },
                    r.vmm.monitor.display()
                );
            })?;
            return Ok(ExitCode::from(code));
        }
        Command::Upgrade {
            vm,
            binary,
            timeout,
            json,
            command,
        } => {
            let report = gmemctl::launch::upgrade(&UpgradeOptions {
                run_dir,
                vm,
                command: (!command.is_empty()).then_some(command),
                binary,
                timeout: Duration::from_secs(timeout),
            })?;
            print_report(json, &report, upgrade_text)?;
        }
        Command::Hotplug {
            vm,
            size,
            kind,
            id,
            file,
            timeout,
            json,
        } => {
            let report = gmemctl::launch::hotplug(&HotplugOptions {
                run_dir,
                vm,
                size,
                kind,
                id,
                file,
                timeout: Duration::from_secs(timeout),
            })?;
            print_report(json, &report, hotplug_text)?;
        }
        Command::Unplug {
            vm,
            id,
            keep,
            timeout,
            json,
        } => {
            let report = gmemctl::launch::unplug(&UnplugOptions {
                run_dir,
                vm,
                id,
                keep,
                timeout: Duration::from_secs(timeout),
            })?;
            print_report(json, &report, unplug_text)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report<T: serde::Serialize>(
    json: bool,
    report: &T,
    text: fn(&T) -> String,
) -> Result<(), serde_json::Error> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{}", text(report));
    }
    Ok(())
}

fn opt_ms(v: Option<u64>) -> String {
    v.map_or_else(|| "?".to_owned(), |v| format!("{v} ms"))
}

fn upgrade_text(r: &UpgradeReport) -> String {
    format!(
        "upgraded VM {}: pid {} -> {} (generation {}, lease {} kept, {})\n  \
         downtime {}, migration total {} (setup {}), RAM sent {}, RAM left in place {}\n  \
         new VMM up in {:.1} ms, handoff {:.1} ms, whole upgrade {:.1} ms",
        r.vm,
        r.old_pid,
        r.new_pid,
        r.generation,
        r.lease,
        if r.supervised {
            "the launcher follows it"
        } else {
            "no launcher: unsupervised"
        },
        opt_ms(r.downtime_ms),
        opt_ms(r.total_time_ms),
        opt_ms(r.setup_time_ms),
        r.ram_transferred_bytes
            .map_or_else(|| "?".to_owned(), format_size),
        r.ram_in_place_bytes
            .map_or_else(|| "?".to_owned(), format_size),
        r.start_ms,
        r.handoff_ms,
        r.elapsed_ms
    )
}

fn hotplug_text(r: &HotplugReport) -> String {
    format!(
        "plugged {} into VM {}: {} ({}, {}) at gpa {:#x}, pc-dimm slot {}, binding slot {}; \
         QMP {:.1} ms, total {:.1} ms",
        r.id,
        r.vm,
        format_size(r.size),
        r.file,
        if r.created { "created" } else { "reused" },
        r.addr,
        r.dimm_slot,
        r.slot,
        r.qmp_ms,
        r.elapsed_ms
    )
}

fn unplug_text(r: &UnplugReport) -> String {
    format!(
        "unplugged {} from VM {}: the guest released it in {:.0} ms; {} {}",
        r.id,
        r.vm,
        r.guest_ms,
        r.file,
        if r.destroyed { "destroyed" } else { "kept" }
    )
}
