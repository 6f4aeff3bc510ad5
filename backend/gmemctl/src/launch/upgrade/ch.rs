//! `gmemctl upgrade` of a cloud-hypervisor VM: a second cloud-hypervisor
//! with the same lease socket and memory file takes the VM over by local
//! migration (`local=on`), which hands guest RAM over as fds instead of
//! copying it.
//!
//! The new process gets only the old one's process options (`-v`,
//! `--log-file`, …) and an API socket: the VM's configuration and device
//! state come with the migration. It must also have an fd at the zone's
//! `/proc/self/fd/201`, which it checks before it maps the fd it receives;
//! it gets the very memory file there. The new process answers
//! `receive-migration` once it runs the VM. The old one is asked to keep
//! its copy, paused (`preserve_source`), rather than exit by itself: so it
//! can resume the VM if the switch fails, and it ends only once the
//! launcher follows the new process (an exit before that would look to the
//! launcher like the VM's end).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::target::{start_target, Target};
use super::{ms, UpgradeError, UpgradeOptions, UpgradeReport};
use crate::launch::ch::api::{ApiError, ChApi};
use crate::launch::ch::command::ChCommand;
use crate::launch::qemu::{LEASE_FD, RAM_FD};
use crate::launch::vm::attach::Attached;
use crate::launch::vm::record::VmmRecord;
use crate::launch::vm::run_dir::{check_socket_path, next_qmp_path};
use crate::launch::vmm::VmmKind;

/// How often the new process is asked whether it runs the VM.
const POLL: Duration = Duration::from_millis(2);

/// Replaces the VM's cloud-hypervisor; `att` is the attached VM.
pub(super) fn upgrade(
    opts: &UpgradeOptions,
    mut att: Attached,
    t0: Instant,
) -> Result<UpgradeReport, UpgradeError> {
    let rec = att.record.clone();
    let command = new_command(opts, &rec.vmm)?;
    let running = ChCommand {
        program: rec.vmm.program.clone(),
        args: rec.vmm.args.clone(),
    };
    // The old process's log if the new one logs there too, and the
    // consoles of the VM the new one receives.
    let old_logs = running.log_files();
    let reused_logs = command
        .log_files()
        .into_iter()
        .filter(|f| old_logs.contains(f));
    for file in reused_logs.chain(running.console_files()) {
        log::warn!(
            "{file}: the new cloud-hypervisor empties this file when it starts; keep a copy, \
             or use --serial tty or a socket for the console and another --log-file"
        );
    }
    let old = ChApi::new(&rec.vmm.monitor, opts.timeout);
    let state = old.state().map_err(api_err("old"))?;
    if state != "Running" && state != "Paused" {
        return Err(UpgradeError::State {
            vm: rec.vm.clone(),
            state,
        });
    }

    let fds = vec![
        (att.process.take_fd(LEASE_FD)?, LEASE_FD),
        (att.process.take_fd(RAM_FD)?, RAM_FD),
    ];
    let generation = rec.vmm.generation + 1;
    let new_api = next_qmp_path(&rec.vmm.monitor, generation);
    check_socket_path(&new_api)?;
    let _ = std::fs::remove_file(&new_api);
    let migration = opts.run_dir.migration(&rec.vm);
    let _ = std::fs::remove_file(&migration);
    let mut args = command.process_options();
    args.extend([
        "--api-socket".to_owned(),
        format!("path={}", new_api.display()),
    ]);

    let t_start = Instant::now();
    let mut target = start_target(&att, &command.program, args, fds)?;
    let new = connect_target(&target, &new_api, opts.timeout)?;
    let start_ms = ms(t_start.elapsed());

    // cloud-hypervisor answers `receive-migration` once it has the VM.
    let receiver = {
        let (new, migration) = (new.clone(), migration.clone());
        std::thread::spawn(move || new.receive_migration(&migration))
    };
    wait_for_path(&target, &migration, opts.timeout)?;
    let t_handoff = Instant::now();
    old.send_migration(&migration, true, true)
        .map_err(api_err("old"))?;
    let result = match receiver.join() {
        Ok(Ok(())) => wait_state(&target, &new, &state, opts.timeout),
        Ok(Err(e)) => Err(api_err("new")(e)),
        Err(_) => Err(UpgradeError::ChMigration {
            reason: "the receiving thread panicked".into(),
            fate: "see the logs",
        }),
    };
    let handoff_ms = ms(t_handoff.elapsed());
    let _ = std::fs::remove_file(&migration);
    if let Err(e) = result {
        drop(target);
        let fate = if att.process.is_alive() {
            resume_old(&old, &state, opts.timeout);
            "the VM keeps running on the old cloud-hypervisor"
        } else {
            "the old cloud-hypervisor has exited too: see its log"
        };
        return Err(UpgradeError::ChMigration {
            reason: crate::error_chain(&e),
            fate,
        });
    }
    // The new process runs the VM: it is kept whatever happens next.
    let supervised = target.commit();

    let old_pid = att.process.pid();
    if let Err(e) = old.shutdown_vmm() {
        log::warn!("old cloud-hypervisor did not take vmm.shutdown: {e}");
    }
    super::end_old(&att, VmmKind::CloudHypervisor);
    let monitor = super::move_monitor(new_api, &rec.vmm.monitor);
    att.record.vmm = VmmRecord {
        kind: VmmKind::CloudHypervisor,
        process: target.process.id(),
        generation,
        program: command.program.clone(),
        args: rec.vmm.args.clone(),
        monitor,
        machine: rec.vmm.machine.clone(),
    };
    att.save()?;
    super::hand_lease_over(&target.process, &rec);
    Ok(UpgradeReport {
        vm: rec.vm,
        old_pid,
        new_pid: target.process.pid(),
        generation,
        lease: rec.lease,
        supervised,
        // cloud-hypervisor reports these only in its log.
        total_time_ms: None,
        downtime_ms: None,
        setup_time_ms: None,
        ram_transferred_bytes: None,
        ram_in_place_bytes: None,
        handoff_ms,
        start_ms,
        elapsed_ms: ms(t0.elapsed()),
    })
}

/// After a failed switch: the old process has the VM back, paused if the
/// migration got far enough; it runs again if it ran before.
fn resume_old(old: &ChApi, state: &str, timeout: Duration) {
    if state != "Running" {
        return;
    }
    let deadline = Instant::now() + timeout;
    loop {
        match old.state().as_deref() {
            Ok("Running") => return,
            Ok("Paused") => {
                if let Err(e) = old.resume() {
                    log::warn!("cannot resume the VM on the old cloud-hypervisor: {e}");
                }
                return;
            }
            // Busy finishing the migration attempt.
            _ if Instant::now() < deadline => std::thread::sleep(POLL),
            _ => {
                log::warn!("the old cloud-hypervisor does not say how the VM is");
                return;
            }
        }
    }
}

fn api_err(which: &'static str) -> impl Fn(ApiError) -> UpgradeError {
    move |source| UpgradeError::ChApi { which, source }
}

/// The new cloud-hypervisor: the given command, or the running binary
/// (or `--binary`) with the running process options.
fn new_command(opts: &UpgradeOptions, running: &VmmRecord) -> Result<ChCommand, UpgradeError> {
    let mut command = match &opts.command {
        Some(argv) => {
            let (program, args) = argv
                .split_first()
                .ok_or(crate::launch::qemu::args::ArgsError::NoCommand)?;
            let command = ChCommand::new(PathBuf::from(program), args.to_vec())?;
            ChCommand {
                args: command.process_options(),
                ..command
            }
        }
        None => {
            let running = ChCommand {
                program: running.program.clone(),
                args: running.args.clone(),
            };
            ChCommand {
                args: running.process_options(),
                ..running
            }
        }
    };
    if let Some(program) = &opts.binary {
        command.program = program.clone();
    }
    if VmmKind::of_program(&command.program) != VmmKind::CloudHypervisor {
        return Err(UpgradeError::OtherVmm {
            program: command.program,
            running: VmmKind::CloudHypervisor,
        });
    }
    Ok(command)
}

/// Waits for the new process's API, giving up early if it exits.
fn connect_target(target: &Target, path: &Path, timeout: Duration) -> Result<ChApi, UpgradeError> {
    let api = ChApi::new(path, timeout);
    let deadline = Instant::now() + timeout;
    loop {
        match api.ping() {
            Ok(()) => return Ok(api),
            Err(_) if !target.process.is_alive() => {
                return Err(UpgradeError::TargetDied {
                    pid: target.process.pid(),
                })
            }
            Err(e) if Instant::now() >= deadline => return Err(api_err("new")(e)),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Waits for the receiver's migration socket.
fn wait_for_path(target: &Target, path: &Path, timeout: Duration) -> Result<(), UpgradeError> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if !target.process.is_alive() {
            return Err(UpgradeError::TargetDied {
                pid: target.process.pid(),
            });
        }
        if Instant::now() >= deadline {
            return Err(UpgradeError::ChMigration {
                reason: format!(
                    "the new cloud-hypervisor did not listen on {}",
                    path.display()
                ),
                fate: "the VM keeps running on the old cloud-hypervisor",
            });
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// Waits until the new process has the VM in `state` (`Running` or
/// `Paused`, as the old one had it).
fn wait_state(
    target: &Target,
    new: &ChApi,
    state: &str,
    timeout: Duration,
) -> Result<(), UpgradeError> {
    let deadline = Instant::now() + timeout;
    loop {
        // Until the VM is restored there, `vm.info` is refused.
        let now = new.state();
        if now.as_deref().ok() == Some(state) {
            return Ok(());
        }
        if !target.process.is_alive() {
            return Err(UpgradeError::TargetDied {
                pid: target.process.pid(),
            });
        }
        if Instant::now() >= deadline {
            return Err(UpgradeError::TargetState {
                state: now.unwrap_or_else(|e| e.to_string()),
                expected: "the old VM's state",
            });
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::opts;
    use super::*;
    use crate::launch::process::ProcessId;

    fn running() -> VmmRecord {
        VmmRecord {
            kind: VmmKind::CloudHypervisor,
            process: ProcessId {
                pid: 1,
                start_time: 1,
            },
            generation: 0,
            program: "/usr/bin/cloud-hypervisor".into(),
            args: [
                "-v",
                "--kernel",
                "k.elf",
                "--log-file",
                "/l",
                "--serial",
                "tty",
            ]
            .map(String::from)
            .to_vec(),
            monitor: "/run/vm.api".into(),
            machine: "cloud-hypervisor".into(),
        }
    }

    #[test]
    fn the_target_gets_the_process_options_only() {
        let c = new_command(&opts(), &running()).unwrap();
        assert_eq!(c.program, Path::new("/usr/bin/cloud-hypervisor"));
        assert_eq!(c.args, ["-v", "--log-file", "/l"]);
        let o = UpgradeOptions {
            binary: Some("/opt/ch-55/cloud-hypervisor".into()),
            ..opts()
        };
        assert_eq!(
            new_command(&o, &running()).unwrap().program,
            Path::new("/opt/ch-55/cloud-hypervisor")
        );
        let o = UpgradeOptions {
            command: Some(
                ["cloud-hypervisor-new", "-vv", "--serial", "off"]
                    .map(String::from)
                    .to_vec(),
            ),
            ..opts()
        };
        assert_eq!(new_command(&o, &running()).unwrap().args, ["-vv"]);
    }

    #[test]
    fn another_vmm_cannot_take_over() {
        let o = UpgradeOptions {
            binary: Some("/usr/bin/qemu-system-x86_64".into()),
            ..opts()
        };
        let err = new_command(&o, &running()).unwrap_err();
        assert!(err.to_string().contains("cannot take over"), "{err}");
        let o = UpgradeOptions {
            command: Some(
                ["cloud-hypervisor", "--memory", "size=1G"]
                    .map(String::from)
                    .to_vec(),
            ),
            ..opts()
        };
        assert!(new_command(&o, &running()).is_err());
    }
}
