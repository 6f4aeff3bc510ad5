//! `gmemctl upgrade` of a cloud-hypervisor VM, for real: a second
//! cloud-hypervisor takes the VM over by local migration while the PVH
//! guest counts; guest RAM is handed over as an fd, never copied; the lease
//! follows the new process. A migration that fails leaves the VM running
//! on the old process.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gmem_tests::ch::{ch_remote, holders_at, status_bytes, ChVm};
use gmem_tests::qemu::{gmemctl, gmemctl_json, pid_alive};
use gmem_tests::{e2e, wait_until, Daemon};
use serde_json::Value;

/// Where the test fills guest RAM, clear of the guest's own pages.
const FILL_FROM: u64 = 16 << 20;
const FILL_LEN: usize = 128 << 20;

fn fill(ch: &ChVm) {
    let chunk = vec![0xa5u8; 1 << 20];
    for i in 0..(FILL_LEN / chunk.len()) as u64 {
        let at = FILL_FROM + i * chunk.len() as u64;
        rustix::io::pwrite(ch.ram.fd(), &chunk, at).expect("fill guest RAM");
    }
}

/// Samples the guest's counter every 100 µs until dropped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<u32>>>,
}

impl Sampler {
    fn start(ch: &ChVm) -> Sampler {
        let fd = ch.ram.fd().try_clone().unwrap();
        let ram = gmem_tests::pvh::GuestRam::new(fd);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                seen.push(ram.counter());
                std::thread::sleep(Duration::from_micros(100));
            }
            seen
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<u32> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

fn upgrade_json(daemon: &Daemon, args: &[&str]) -> Value {
    let out = gmemctl(daemon, args);
    assert!(
        out.status.success(),
        "gmemctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the upgrade report")
}

#[test]
fn upgrade_hands_the_ram_over_by_fd_while_the_guest_counts() {
    let Some(tools) = e2e::cloud_hypervisor() else {
        return;
    };
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let old_log = dir.path().join("old.log");
    let mut ch = ChVm::launch(
        &daemon,
        dir.path(),
        "ch-up",
        "512M",
        &tools.pvm,
        &["-v", "--log-file", old_log.to_str().unwrap()],
    );
    let ino = rustix::fs::fstat(ch.ram.fd()).unwrap().st_ino;
    fill(&ch);
    let old_pid = ch.vm.vmm_pid();
    let lease = gmemctl_json(&daemon, &["status"])["leases"][0]["lease"].clone();

    let sampler = Sampler::start(&ch);
    let new_log = dir.path().join("new.log");
    let report = upgrade_json(
        &daemon,
        &[
            "upgrade",
            "ch-up",
            "--json",
            "--",
            tools.pvm.to_str().unwrap(),
            "-vv",
            "--log-file",
            new_log.to_str().unwrap(),
        ],
    );
    let after = ch.wait_counting();
    let seen = sampler.finish();

    // The counter never went back, and it goes on in the new process.
    assert!(seen.len() > 10, "{} samples", seen.len());
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "the counter went back"
    );
    assert!(after >= *seen.last().unwrap());
    let new_pid = u32::try_from(report["new_pid"].as_u64().unwrap()).unwrap();
    assert_eq!(
        report["old_pid"].as_u64(),
        Some(u64::from(old_pid)),
        "{report}"
    );
    assert_eq!(report["generation"], 1);
    assert_eq!(report["supervised"], true, "{report}");

    // The old process is gone; exactly one cloud-hypervisor maps the RAM.
    wait_until(
        Duration::from_secs(10),
        "the old cloud-hypervisor to exit",
        || (!pid_alive(old_pid)).then_some(()),
    );
    assert_eq!(holders_at(ino, 201), [new_pid]);
    assert_eq!(ch.vm.vmm_pid(), new_pid);
    let log = ch.vm.launcher_log();
    assert!(
        log.contains(&format!("now following cloud-hypervisor pid {new_pid}")),
        "{log}"
    );
    // The lease is the same one, now held by the new process.
    let status = gmemctl_json(&daemon, &["status"]);
    assert_eq!(status["leases"][0]["lease"], lease, "{status}");
    assert_eq!(
        status["leases"][0]["pid"].as_u64(),
        Some(u64::from(new_pid))
    );

    // No RAM was copied: the old process sent the memory fd, the new one
    // received it, and the new process has not touched the filled pages.
    let old_text = std::fs::read_to_string(&old_log).unwrap();
    assert!(old_text.contains("local=true"), "{old_text}");
    assert!(old_text.contains("Migration completed"), "{old_text}");
    // The old process kept the VM (paused) until gmemctl ended it, after the
    // launcher followed the new one: had it exited by itself, the launcher
    // could have taken that for the VM's end.
    assert!(old_text.contains("VmmShutdown"), "{old_text}");
    let new_text = std::fs::read_to_string(&new_log).unwrap();
    assert!(
        new_text.contains("Command 'MemoryFd' received"),
        "{new_text}"
    );
    let maps = std::fs::read_to_string(format!("/proc/{new_pid}/maps")).unwrap();
    assert!(
        maps.lines()
            .any(|l| l.contains("rw-s") && l.split_whitespace().nth(4) == Some(&ino.to_string())),
        "{maps}"
    );
    let shmem = status_bytes(new_pid, "RssShmem");
    assert!(
        shmem < 16 << 20,
        "new cloud-hypervisor maps {shmem} bytes of RAM resident"
    );
    assert_eq!(
        ch.ram.read(FILL_FROM + (FILL_LEN as u64) - 4096, 4096),
        vec![0xa5; 4096]
    );
    // The API socket is where it was.
    let info: Value =
        serde_json::from_str(&ch_remote(&tools, &ch.api(&daemon), &["info"])).unwrap();
    assert_eq!(info["state"], "Running");

    // A second upgrade to another binary (--binary): generation 2.
    let bin = dir.path().join("v2").join("cloud-hypervisor-pvm");
    std::fs::create_dir(bin.parent().unwrap()).unwrap();
    std::fs::copy(&tools.pvm, &bin).unwrap();
    let report = upgrade_json(
        &daemon,
        &[
            "upgrade",
            "ch-up",
            "--json",
            "--binary",
            bin.to_str().unwrap(),
        ],
    );
    assert_eq!(report["generation"], 2);
    let pid = ch.vm.vmm_pid();
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        bin.canonicalize().unwrap()
    );
    let now = ch.wait_counting();
    assert!(now >= after);

    // The guest powers off: the launcher exits 0 and leaves nothing behind
    // (the lock files of three cloud-hypervisor API sockets included).
    ch.power_off_cleanly(&daemon);
}

#[test]
fn a_failed_migration_leaves_the_vm_on_the_old_process() {
    let Some(tools) = e2e::cloud_hypervisor() else {
        return;
    };
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    // Stock cloud-hypervisor cannot save vCPU state on this host's KVM
    // (no nested state): its send fails after the target started.
    let log = dir.path().join("ch.log");
    let ch = ChVm::launch(
        &daemon,
        dir.path(),
        "ch-fail",
        "256M",
        &tools.stock,
        &["--log-file", log.to_str().unwrap()],
    );
    let old_pid = ch.vm.vmm_pid();
    let record = ch.vm.record();
    let out = gmemctl(&daemon, &["upgrade", "ch-fail", "--timeout", "20"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("migration to the new cloud-hypervisor failed"),
        "{text}"
    );
    assert!(text.contains("keeps running on the old"), "{text}");
    // The same --log-file for the new process: the operator is warned that
    // it empties the old one's log.
    assert!(
        text.contains(&format!(
            "{}: the new cloud-hypervisor empties this file",
            log.display()
        )),
        "{text}"
    );

    // Same process, same lease, same record; still counting; the target is
    // gone.
    assert!(pid_alive(old_pid));
    let a = ch.wait_counting();
    assert!(ch.wait_counting() > a);
    assert_eq!(ch.vm.record(), record);
    let status = gmemctl_json(&daemon, &["status"]);
    assert_eq!(
        status["leases"][0]["pid"].as_u64(),
        Some(u64::from(old_pid))
    );
    let ino = rustix::fs::fstat(ch.ram.fd()).unwrap().st_ino;
    wait_until(Duration::from_secs(10), "the target to be gone", || {
        (holders_at(ino, 201) == [old_pid]).then_some(())
    });
    let info: Value =
        serde_json::from_str(&ch_remote(&tools, &ch.api(&daemon), &["info"])).unwrap();
    assert_eq!(info["state"], "Running");
}
