//! Tenant isolation (DESIGN invariant 6) against real processes of other
//! principals: another uid (65534, 65533) or, with `--principal
//! uid+cgroup`, another cgroup. A VM belongs to the principal of its first
//! lease; its files live in its namespace; memory that moves to another VM
//! moves to a fresh inode, whatever fds of the old one travelled where.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use gmem_protocol::wire::MemoryKind;
use gmem_tests::tenant::{run_tenant, spawn_tenant, NOBODY, OTHER};
use gmem_tests::{name, vm, vm_file, wait_until, Daemon};

const EACCES: i32 = 13;
const ENOENT: i32 = 2;
const EPERM: i32 = 1;
const EDQUOT: i32 = 122;

fn wait_lease_gone(daemon: &Daemon, vm_name: &str) {
    wait_until(
        Duration::from_secs(10),
        &format!("{vm_name}'s lease to end"),
        || {
            let leases = daemon.control().leases().unwrap();
            (!leases.iter().any(|l| l.vm.name.as_str() == vm_name)).then_some(())
        },
    );
}

/// A scratch directory every tenant may write into.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

#[test]
fn after_its_vmm_dies_another_uid_cannot_claim_see_or_touch_a_vm() {
    let daemon = Daemon::start_with(&[
        "--allow-uid",
        &NOBODY.to_string(),
        "--allow-uid",
        &OTHER.to_string(),
    ]);
    let victim_uuid = vm("victim").uuid.to_string();
    let mut victim = spawn_tenant(
        &daemon,
        Some(NOBODY),
        &[
            "--vm",
            "victim",
            "create:ram:0x100000",
            "write:ram:0x800:victim-secret",
            "bind:ram",
            "hold",
        ],
    );
    victim.wait_for_output("HOLDING", Duration::from_secs(30));
    victim.kill9();
    wait_lease_gone(&daemon, "victim");

    // Its name, its UUID under another name, its name under another UUID.
    let claims = [
        run_tenant(&daemon, Some(OTHER), &["--vm", "victim"]),
        run_tenant(
            &daemon,
            Some(OTHER),
            &[
                "--vm",
                "victim",
                "--uuid",
                "00000000-0000-0000-0000-00000000abcd",
            ],
        ),
        run_tenant(
            &daemon,
            Some(OTHER),
            &["--vm", "imposter", "--uuid", &victim_uuid],
        ),
    ];
    for claim in &claims {
        assert_eq!(claim.errno("hello"), EACCES, "{:#?}", claim.lines);
        assert!(
            claim.result("hello").contains("another principal"),
            "{:#?}",
            claim.lines
        );
    }
    // Claiming its name under another UUID does not tell the victim's.
    assert!(
        !claims[1].text().contains(&victim_uuid),
        "{}",
        claims[1].text()
    );

    // As its own VM, the attacker can neither name nor see the victim's.
    let evil = run_tenant(
        &daemon,
        Some(OTHER),
        &[
            "--vm",
            "evil",
            "open:ram",
            "open-in:victim/ram",
            "destroy-in:victim/ram",
            "bind:ram",
            "status",
        ],
    );
    assert_eq!(evil.errno("open:ram"), ENOENT);
    assert_eq!(evil.errno("open-in:victim/ram"), EPERM);
    assert_eq!(evil.errno("destroy-in:victim/ram"), EPERM);
    assert_eq!(evil.errno("bind:ram"), ENOENT);
    assert_eq!(evil.result("status"), "OK 0 file(s) 1 lease(s)");
    assert!(!evil.text().contains("SEES file victim"), "{}", evil.text());
    let spy = run_tenant(&daemon, Some(OTHER), &["status"]);
    assert_eq!(spy.result("status"), "OK 0 file(s) 0 lease(s)");
    // An operator sees it all.
    let files = daemon.control().scoped_files().unwrap();
    assert!(files
        .iter()
        .any(|f| f.vm.as_ref().is_some_and(|v| v.name.as_str() == "victim")));

    // The victim's relaunch, by its own uid, finds its memory untouched.
    let again = run_tenant(
        &daemon,
        Some(NOBODY),
        &["--vm", "victim", "open:ram", "read:ram:0x800:13", "status"],
    );
    assert_eq!(again.result("read:ram:0x800:13"), "OK victim-secret");
    assert_eq!(again.result("status"), "OK 1 file(s) 1 lease(s)");
}

/// A cgroup (v1 `name=systemd` hierarchy here, else v2) for one test
/// process, removed on drop.
struct Cgroup(std::path::PathBuf);

impl Cgroup {
    fn new(tag: &str) -> Self {
        let root = [
            "/sys/fs/cgroup/systemd",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists())
        .expect("a cgroup hierarchy to move processes in");
        let dir = root.join(format!("gmem-test-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Cgroup(dir)
    }

    /// A tenant command that moves itself into this cgroup before it runs.
    fn command(&self, daemon: &Daemon, args: &[&str]) -> std::process::Command {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::process::CommandExt;
        let procs =
            std::ffi::CString::new(self.0.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
        let mut cmd = gmem_tests::tenant::tenant_command(daemon, None, args);
        // SAFETY: between fork and exec the hook makes only the
        // async-signal-safe calls open, write and close, on memory
        // allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
        cmd
    }

    fn run(&self, daemon: &Daemon, args: &[&str]) -> String {
        let mut child =
            gmem_tests::ChildGuard::spawn_piped("gmem-tenant", self.command(daemon, args));
        let text = child.wait_for_output("DONE", Duration::from_secs(60));
        assert!(child.wait_exit(Duration::from_secs(10)).success(), "{text}");
        text
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty once its processes are gone.
        let _ = wait_until_ok(|| std::fs::remove_dir(&self.0).is_ok());
    }
}

fn wait_until_ok(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn the_same_uid_in_another_cgroup_is_another_principal() {
    // Root as a plain client; VMs tied to uid and cgroup.
    let daemon = Daemon::start_with(&[
        "--allow-uid",
        "0",
        "--admin-uid",
        "4242",
        "--principal",
        "uid+cgroup",
    ]);
    let (victim_cg, attacker_cg) = (Cgroup::new("victim"), Cgroup::new("attacker"));
    let mut victim = gmem_tests::ChildGuard::spawn_piped(
        "victim",
        victim_cg.command(
            &daemon,
            &[
                "--vm",
                "victim",
                "create:ram:0x100000",
                "write:ram:0:victim-secret",
                "hold",
            ],
        ),
    );
    victim.wait_for_output("HOLDING", Duration::from_secs(30));
    victim.kill9();
    wait_lease_gone(&daemon, "victim");
    let out = attacker_cg.run(&daemon, &["--vm", "victim"]);
    assert!(out.contains("hello => ERR 13"), "{out}");
    let out = attacker_cg.run(
        &daemon,
        &["--vm", "evil", "open:ram", "open-in:victim/ram", "status"],
    );
    assert!(out.contains("open:ram => ERR 2"), "{out}");
    assert!(out.contains("open-in:victim/ram => ERR 1"), "{out}");
    assert!(out.contains("status => OK 0 file(s) 1 lease(s)"), "{out}");
    // Root outside both cgroups is no operator here, and no victim either.
    let err = gmem_protocol::Client::connect(daemon.socket(), vm("victim")).unwrap_err();
    assert_eq!(err.errno(), Some(EACCES), "{err}");
    // The victim's own cgroup gets it back.
    let out = victim_cg.run(&daemon, &["--vm", "victim", "open:ram", "read:ram:0:13"]);
    assert!(out.contains("read:ram:0:13 => OK victim-secret"), "{out}");
}

#[test]
fn a_cgroup_pattern_lets_a_relaunch_in_a_new_cgroup_be_the_same_vm() {
    let daemon = Daemon::start_with(&[
        "--allow-uid",
        "0",
        "--admin-uid",
        "4242",
        "--principal",
        "uid+cgroup",
        "--cgroup-pattern",
        &format!("*gmem-test-{}-*-{{vm}}", std::process::id()),
    ]);
    // Like libvirt's machine-qemu-N-NAME.scope: a new cgroup each start.
    let first = Cgroup::new("1-web");
    let out = first.run(
        &daemon,
        &["--vm", "web", "create:ram:0x100000", "write:ram:0:web-data"],
    );
    assert!(out.contains("create:ram:0x100000 => OK"), "{out}");
    wait_lease_gone(&daemon, "web");
    let second = Cgroup::new("2-web");
    let out = second.run(&daemon, &["--vm", "web", "open:ram", "read:ram:0:8"]);
    assert!(out.contains("read:ram:0:8 => OK web-data"), "{out}");
    // Another VM's cgroup does not match web's pattern.
    let other = Cgroup::new("3-db");
    let out = other.run(&daemon, &["--vm", "web"]);
    assert!(out.contains("hello => ERR 13"), "{out}");
}

#[test]
fn fds_that_travelled_four_ways_never_see_the_next_vms_data() {
    let daemon = Daemon::start_with(&["--allow-uid", &NOBODY.to_string()]);
    let dir = shared_dir();
    let path = |f: &str| dir.path().join(f).to_str().unwrap().to_owned();
    let (scm, h_go, go) = (path("scm.sock"), path("h-go"), path("go"));
    let spy_steps = |take: &str| -> Vec<String> {
        [
            take,
            "read:x:0:6",
            &format!("wait-file:{go}"),
            "read:x:0:6",
            "read:x:0x2000:8",
            "write:x:0x3000:planted",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let spawn = |steps: &[String]| {
        let args: Vec<&str> = steps.iter().map(String::as_str).collect();
        spawn_tenant(&daemon, Some(NOBODY), &args)
    };
    // 1. SCM_RIGHTS to another process.
    let mut scm_spy = spawn(&spy_steps(&format!("recv:{scm}:x")));
    scm_spy.wait_for_output("LISTENING", Duration::from_secs(30));
    // VM a's process: its file, handed out four ways, then (2) a fork.
    let mut holder = spawn(
        &[
            "--vm",
            "a",
            "create:ram:0x100000",
            "write:ram:0:a-data",
            "fd:ram",
            &format!("send:ram:{scm}"),
            &format!("wait-file:{h_go}"),
            "fork",
            "end-lease",
            "read:ram:0:6",
            &format!("wait-file:{go}"),
            "read:ram:0:6",
            "read:ram:0x2000:8",
            "write:ram:0x3000:planted",
        ]
        .map(str::to_owned),
    );
    let out = holder.wait_for_output(&format!("send:ram:{scm} => OK"), Duration::from_secs(30));
    let fd_no = out
        .lines()
        .find_map(|l| l.strip_prefix("FD ram "))
        .expect("the holder's fd number")
        .to_owned();
    let pid = holder.pid().to_string();
    // 3. /proc/PID/fd/N and 4. pidfd_getfd, from processes of the same uid.
    let proc_spy = spawn(&spy_steps(&format!("proc-fd:{pid}:{fd_no}:x")));
    let getfd_spy = spawn(&spy_steps(&format!("getfd:{pid}:{fd_no}:x")));
    let mut spies = [scm_spy, proc_spy, getfd_spy];
    let mut texts: Vec<String> = spies
        .iter_mut()
        .map(|s| s.wait_for_output("read:x:0:6 => OK", Duration::from_secs(30)))
        .collect();
    for text in &texts {
        assert!(
            text.contains("read:x:0:6 => OK a-data"),
            "the fd travelled: {text}"
        );
    }
    std::fs::write(&h_go, b"").unwrap();
    let out = holder.wait_for_output("FORKED", Duration::from_secs(30));
    let forked = out
        .lines()
        .find_map(|l| l.strip_prefix("FORKED "))
        .unwrap()
        .to_owned();
    wait_lease_gone(&daemon, "a");

    // An operator gives a's memory to VM b, whose guest then writes.
    let mut b = daemon.lease(vm("b"));
    let mut ctl = daemon.control();
    ctl.transfer(&vm_file("a", "ram"), &vm_file("b", "ram"))
        .unwrap();
    let (b_ram, _) = b.open(&name("ram")).unwrap();
    let mut buf = [0u8; 6];
    rustix::io::pread(&b_ram, &mut buf, 0).unwrap();
    assert_eq!(&buf, b"a-data", "the content moved with the file");
    rustix::io::pwrite(&b_ram, b"b-secret", 0x2000).unwrap();
    std::fs::write(&go, b"").unwrap();

    // Every spy, the forked child of a's process too: zeros, never b's data.
    let forked_text = holder.wait_for_output("DONE", Duration::from_secs(30));
    for (spy, text) in spies.iter_mut().zip(texts.iter_mut()) {
        text.push_str(&spy.wait_for_output("DONE", Duration::from_secs(30)));
    }
    texts.push(forked_text.replace("read:ram:", "read:x:"));
    for text in &texts {
        assert!(!text.contains("b-secret"), "{text}");
        assert!(text.contains("read:x:0x2000:8 => OK ........"), "{text}");
        assert!(
            text.contains("read:x:0:6 => OK ......"),
            "the old inode was punched: {text}"
        );
    }
    // What the spies wrote reached nobody.
    let mut planted = [0u8; 7];
    rustix::io::pread(&b_ram, &mut planted, 0x3000).unwrap();
    assert_eq!(planted, [0; 7]);
    drop(forked);
}

#[test]
fn a_recycled_pid_inherits_nothing() {
    let daemon = Daemon::start_with(&[
        "--allow-uid",
        &NOBODY.to_string(),
        "--allow-uid",
        &OTHER.to_string(),
    ]);
    let mut holder = spawn_tenant(
        &daemon,
        Some(NOBODY),
        &[
            "--vm",
            "a",
            "create:ram:0x100000",
            "write:ram:0:a-data",
            "hold",
        ],
    );
    holder.wait_for_output("HOLDING", Duration::from_secs(30));
    let pid = holder.pid();
    holder.kill9();
    wait_lease_gone(&daemon, "a");
    // Another uid's process gets the same pid: the kernel hands out
    // ns_last_pid + 1 next (root only; other processes may race us).
    let steps = [
        "--vm",
        "evil",
        "open:ram",
        "open-in:a/ram",
        "bind:ram",
        "status",
    ];
    let mut recycled = None;
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let mut child = gmem_tests::ChildGuard::spawn_piped(
            "gmem-tenant",
            gmem_tests::tenant::tenant_command(&daemon, Some(OTHER), &steps),
        );
        let text = child.wait_for_output("DONE", Duration::from_secs(60));
        if child.pid() == pid {
            recycled = Some(text);
            break;
        }
    }
    let text = recycled.expect("pid reused within 200 tries");
    assert!(text.contains("open:ram => ERR 2"), "{text}");
    assert!(text.contains("open-in:a/ram => ERR 1"), "{text}");
    assert!(text.contains("bind:ram => ERR 2"), "{text}");
    assert!(text.contains("status => OK 0 file(s) 1 lease(s)"), "{text}");
}

#[test]
fn nobody_can_pre_create_a_name_another_vm_will_use() {
    let daemon = Daemon::start_with(&[
        "--allow-uid",
        &NOBODY.to_string(),
        "--allow-uid",
        &OTHER.to_string(),
    ]);
    // The attacker makes "newvm.ram" (in its own namespace) and keeps it.
    let mut squatter = spawn_tenant(
        &daemon,
        Some(OTHER),
        &[
            "--vm",
            "squatter",
            "create:newvm.ram:0x100000",
            "wait-file:/nonexistent/never",
            "hold",
        ],
    );
    squatter.wait_for_output("create:newvm.ram:0x100000 => OK", Duration::from_secs(30));
    // The new VM launches and gets its own file.
    let mut newvm = spawn_tenant(
        &daemon,
        Some(NOBODY),
        &[
            "--vm",
            "newvm",
            "create:newvm.ram:0x100000",
            "write:newvm.ram:0:live-ram",
            "hold",
        ],
    );
    newvm.wait_for_output("HOLDING", Duration::from_secs(30));
    let files = daemon.control().scoped_files().unwrap();
    let mut named: Vec<_> = files
        .iter()
        .filter(|f| f.file.name.as_str() == "newvm.ram")
        .map(|f| f.vm.as_ref().unwrap().name.to_string())
        .collect();
    named.sort();
    assert_eq!(named, ["newvm", "squatter"]);
    let (fd, _) = daemon
        .control()
        .open_in(&vm_file("squatter", "newvm.ram"))
        .unwrap();
    let mut buf = [0u8; 8];
    rustix::io::pread(&fd, &mut buf, 0).unwrap();
    assert_eq!(
        buf, [0; 8],
        "the squatter's file never holds the new VM's RAM"
    );
    drop(squatter);
}

#[test]
fn create_fill_destroy_repeat_stops_at_the_quota_and_a_new_lease_does_not_reset_it() {
    let daemon = Daemon::start_with(&["--allow-uid", &NOBODY.to_string(), "--quota-memory", "8M"]);
    let mut filler = spawn_tenant(
        &daemon,
        Some(NOBODY),
        &[
            "--vm",
            "a",
            "create:f1:0x400000",
            "write:f1:0:x",
            "destroy:f1",
            "create:f2:0x400000",
            "write:f2:0:x",
            "destroy:f2",
            "create:f3:0x400000",
            "hold",
        ],
    );
    let out = filler.wait_for_output("HOLDING", Duration::from_secs(30));
    assert!(out.contains("destroy:f2 => OK"), "{out}");
    assert!(out.contains("create:f3:0x400000 => ERR 122"), "{out}");
    // Another VM of the same uid, on a new lease: the same quota.
    let again = run_tenant(&daemon, Some(NOBODY), &["--vm", "b", "create:g:0x400000"]);
    assert_eq!(again.errno("create:g:0x400000"), EDQUOT);
    // The filler gone, its destroyed memory is free.
    filler.kill9();
    wait_lease_gone(&daemon, "a");
    // (Its pidfd reports the exit a moment after its lease socket closed.)
    wait_until(Duration::from_secs(10), "the memory to be free", || {
        let again = run_tenant(&daemon, Some(NOBODY), &["--vm", "b", "create:g:0x400000"]);
        (again.result("create:g:0x400000") == "OK").then_some(())
    });
    // Root's VMs have a quota of their own.
    let mut root_vm = daemon.lease(vm("root-vm"));
    root_vm
        .create(&name("r"), 8 << 20, MemoryKind::Memfd)
        .unwrap();
}
