//! `gmemctl` against a real daemon: status as a table and as JSON (with
//! namespaces, orphans and the daemon's own line), create, destroy, scrub,
//! transfer, revoke, forget, restart and caps, with clear errors and exit
//! codes; `--timeout` against a daemon that never answers.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::os::unix::net::UnixListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use gmem_protocol::wire::BindRequest;
use gmem_protocol::wire::GuestAddress;
use gmem_tests::{name, vm, wait_until, Daemon};
use serde_json::Value;

fn run(daemon: &Daemon, args: &[&str]) -> Output {
    daemon.gmemctl().args(args).output().expect("gmemctl runs")
}

/// gmemctl with a socket where no daemon listens (for argument errors,
/// which come before any connection).
fn gmemctl_without_daemon() -> Command {
    let mut cmd = Command::new(gmem_tests::bin("gmemctl"));
    cmd.env("GMEMD_SOCKET", "/nonexistent/gmemd.sock")
        .env_remove("GMEMCTL_TIMEOUT");
    cmd
}

/// Runs gmemctl, which must fail with `code` and say `text` on stderr.
fn fails(cmd: &mut Command, args: &[&str], code: i32, text: &str) {
    let out = cmd.args(args).output().expect("gmemctl runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(stderr.contains(text), "{args:?}: {stderr}");
}

fn status_json(daemon: &Daemon) -> Value {
    serde_json::from_str(&ok(daemon, &["status", "--json"])).unwrap()
}

/// The JSON entry of file `name` in namespace `vm` (`None`: operators').
fn find_file(status: &Value, vm: Option<&str>, name: &str) -> Option<Value> {
    status["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name && f["vm"]["name"].as_str() == vm)
        .cloned()
}

fn ok(daemon: &Daemon, args: &[&str]) -> String {
    let out = run(daemon, args);
    assert!(
        out.status.success(),
        "gmemctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn status_create_destroy_and_json_shape() {
    let daemon = Daemon::start();
    assert!(ok(&daemon, &["create", "ram0", "--size", "64M"]).contains("64 MiB memfd"));
    let mut a = daemon.lease(vm("vm-a"));
    // An operators' file becomes vm-a's before vm-a may bind it.
    assert!(ok(&daemon, &["transfer", "ram0", "--to", "vm-a"])
        .contains("transferred ram0 to vm-a/ram0"));
    a.bind(&BindRequest::new(
        2,
        GuestAddress(0x1_0000_0000),
        name("ram0"),
        0,
        1 << 20,
    ))
    .unwrap();

    let json: Value = serde_json::from_str(&ok(&daemon, &["status", "--json"])).unwrap();
    assert_eq!(json["daemon"]["pid"], daemon.pid());
    assert_eq!(json["daemon"]["restarts"], 0);
    assert_eq!(
        (
            json["daemon"]["files"].as_u64(),
            json["daemon"]["leases"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let file = &json["files"][0];
    assert_eq!(file["name"], "ram0");
    assert_eq!(file["vm"]["name"], "vm-a");
    assert_eq!(file["vm"]["uuid"], vm("vm-a").uuid.to_string());
    assert_eq!(file["orphan_secs"], Value::Null);
    assert_eq!(file["size"], 64 << 20);
    assert_eq!(file["kind"], "memfd");
    assert_eq!(file["owner"]["name"], "vm-a");
    assert_eq!(file["owner"]["uuid"], vm("vm-a").uuid.to_string());
    assert_eq!(file["bindings"][0]["slot"], 2);
    assert_eq!(file["bindings"][0]["gpa"], 0x1_0000_0000u64);
    assert_eq!(file["bindings"][0]["offset"], 0);
    assert_eq!(file["bindings"][0]["size"], 1 << 20);
    let lease = &json["leases"][0];
    assert_eq!(lease["id"], a.lease().unwrap().get());
    assert_eq!(lease["name"], "vm-a");
    assert_eq!(lease["pid"], std::process::id());
    assert_eq!(lease["uid"], 0);

    let table = ok(&daemon, &["status"]);
    // The daemon's line, a blank line, then the files table.
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("gmemd pid "), "{table}");
    assert_eq!(lines[1], "", "{table}");
    assert!(lines[2].starts_with("NAMESPACE "), "{table}");
    let row = table.lines().find(|l| l.contains("ram0")).unwrap();
    assert!(
        row.starts_with("vm-a ") && row.contains("vm-a (lease"),
        "{table}"
    );

    // Destroying a bound file is refused for non-operators only; root is one.
    a.unbind(2).unwrap();
    assert!(ok(&daemon, &["destroy", "vm-a/ram0"]).contains("destroyed vm-a/ram0"));
    let json: Value = serde_json::from_str(&ok(&daemon, &["status", "--json"])).unwrap();
    assert_eq!(json["files"].as_array().unwrap().len(), 0);
}

#[test]
fn errors_are_clear_and_exit_nonzero() {
    let daemon = Daemon::start();
    // Refusals exit 1 with the errno PROTOCOL.md names (§7.2, §7.7, §7.9)
    // and a text that says why.
    for (args, errno, text) in [
        (&["destroy", "nope"][..], libc::ENOENT, "no memory file"),
        (
            &["revoke", "ghost"][..],
            libc::ENOENT,
            "no open lease for VM ghost",
        ),
        (
            &["create", "x", "--size", "100"][..],
            libc::EINVAL,
            "not a non-zero multiple",
        ),
        (
            &["create", "x", "--size", "4M", "--kind", "hugetlb-1g"][..],
            libc::EINVAL,
            "1 GiB page size of hugetlb-1g",
        ),
        // 2^64 - 1 bytes parses; as a file size it is invalid, not too much.
        (
            &["create", "x", "--size", "18446744073709551615"][..],
            libc::EINVAL,
            "not a non-zero multiple",
        ),
    ] {
        let out = run(&daemon, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(text), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("(errno {errno})")),
            "{args:?}: {stderr}"
        );
    }
    // Argument errors exit 2, like every clap program, and say what is wrong.
    for (args, text) in [
        (
            &["create", "bad name", "--size", "4M"][..],
            "characters outside",
        ),
        (
            &["create", "vm1/ram", "--size", "4M"][..],
            "gmemctl transfer NAME --to VM",
        ),
        (
            &["create", "x", "--size", "18446744073709551616"],
            "is too large: the most is 16 EiB - 1",
        ),
        (
            &["create", "x", "--size", "1.1K"],
            "not a whole number of bytes",
        ),
        (&["create", "x", "--size", "2X"], "invalid size unit \"X\""),
        (&["create", "x", "--size", "G"], "expected a number"),
        (&["create", "x", "--size", "1.2.3G"], "at most one '.'"),
    ] {
        let out = run(&daemon, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(text), "{args:?}: {stderr}");
    }
    // Fractions that are whole bytes are sizes, as `status` prints them.
    assert!(ok(&daemon, &["create", "half", "--size", "1.5M"]).contains("1.5 MiB memfd"));
    let out = daemon
        .gmemctl()
        .env("GMEMD_SOCKET", daemon.dir().join("missing.sock"))
        .args(["status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to gmemd"));
}

#[test]
fn revoke_and_scrub_from_the_cli() {
    let daemon = Daemon::start();
    let mut a = daemon.lease(vm("vm-a"));
    a.create(&name("ram"), 1 << 20, gmem_protocol::MemoryKind::Memfd)
        .unwrap();
    a.bind(&BindRequest::new(
        0,
        GuestAddress(0),
        name("ram"),
        0,
        1 << 20,
    ))
    .unwrap();
    let out = ok(&daemon, &["revoke", "vm-a"]);
    assert!(
        out.contains("1 lease(s) ended, 1 binding(s) dropped, 1 file(s) scrubbed"),
        "{out}"
    );
    // The file stays in vm-a's namespace after the lease: an operator
    // names it there.
    fails(&mut daemon.gmemctl(), &["scrub", "ram"], 1, "(errno 2)");
    assert!(ok(&daemon, &["scrub", "vm-a/ram"]).contains("scrubbed vm-a/ram"));
}

#[test]
fn caps_reports_this_host() {
    let daemon = Daemon::start();
    let json: Value = serde_json::from_str(&ok(&daemon, &["caps", "--json"])).unwrap();
    // Each answer against the host, asked here without gmemctl: present
    // keys alone would pass a probe that answers wrong.
    let kvm = kvm_ioctls::Kvm::new().ok();
    assert_eq!(json["kvm"], kvm.is_some(), "{json}");
    // SAFETY: memfd_secret takes one integer flags argument and returns a
    // new fd or -1; it touches no memory of ours.
    let secret = unsafe { libc::syscall(libc::SYS_memfd_secret, libc::O_CLOEXEC) };
    if secret >= 0 {
        // SAFETY: the fd the kernel just returned, owned by nobody else.
        unsafe { libc::close(i32::try_from(secret).unwrap()) };
    }
    assert_eq!(
        json["memfd_secret"]["available"],
        secret >= 0,
        "{}",
        json["memfd_secret"]
    );
    if let Some(kvm) = &kvm {
        let guest_memfd =
            kvm.check_extension_raw(libc::c_ulong::from(kvm_bindings::KVM_CAP_GUEST_MEMFD)) > 0;
        assert_eq!(
            json["guest_memfd"]["value"], guest_memfd,
            "{}",
            json["guest_memfd"]
        );
    }
    // One pool per page size the kernel offers.
    let mut sizes: Vec<u64> = std::fs::read_dir("/sys/kernel/mm/hugepages")
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let kb: u64 = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            Some(kb << 10)
        })
        .collect();
    sizes.sort_unstable();
    let pools: Vec<u64> = json["hugepages"]["value"]
        .as_array()
        .unwrap_or_else(|| panic!("no hugepage pools: {json}"))
        .iter()
        .map(|p| p["page_size"].as_u64().unwrap())
        .collect();
    assert_eq!(pools, sizes, "{}", json["hugepages"]);
    let table = ok(&daemon, &["caps"]);
    for line in ["guest_memfd", "memfd_secret"] {
        assert!(table.contains(line), "{table}");
    }
}

#[test]
fn file_and_vm_arguments_are_checked_before_connecting() {
    for (args, text) in [
        (&["destroy", "a/b/c"][..], "more than one '/'"),
        (&["destroy", "/ram"], "expected VM/NAME"),
        (&["scrub", "vm1/"], "expected VM/NAME"),
        (&["scrub", "vm1/.ram"], "starts with '.'"),
        (
            &["destroy", "bad vm/ram"],
            "neither a VM UUID nor a VM name",
        ),
        (&["transfer", "ram"], "--to <VM>"),
        (
            &["transfer", "ram", "--to", "vm1", "--to-operators"],
            "cannot be used with",
        ),
        (
            &["transfer", "ram", "--to", "bad vm"],
            "neither a VM UUID nor a VM name",
        ),
        (
            &["transfer", "ram", "--to", "vm1", "--as", "vm2/ram"],
            "characters outside",
        ),
        (
            &["transfer", "x/y/z", "--to-operators"],
            "more than one '/'",
        ),
        (&["forget"], "<VM>"),
        (&["forget", "a b"], "neither a VM UUID nor a VM name"),
        (&["--timeout", "0", "status"], "expected more than 0"),
        (
            &["status", "--timeout", "soon"],
            "is not a number of seconds",
        ),
        (&["destroy", "ram", "--timeout=-1"], "expected more than 0"),
        // upgrade keeps its own --timeout (whole seconds per step).
        (&["upgrade", "vm1", "--timeout", "0.5"], "invalid digit"),
        (&["restart", "now"], "unexpected argument 'now'"),
        (&["restart", "--timeout", "0"], "expected more than 0"),
        (&["restart", "--json"], "unexpected argument '--json'"),
    ] {
        fails(&mut gmemctl_without_daemon(), args, 2, text);
    }
    // GMEMCTL_TIMEOUT is checked like the flag.
    fails(
        gmemctl_without_daemon().env("GMEMCTL_TIMEOUT", "never"),
        &["status"],
        2,
        "is not a number of seconds",
    );
    // Well-formed arguments get as far as connecting.
    for args in [
        &["transfer", "vm1/ram", "--to-operators", "--as", "pool.1"][..],
        &["restart"],
        &["--timeout", "2", "restart"],
    ] {
        fails(
            &mut gmemctl_without_daemon(),
            args,
            1,
            "cannot connect to gmemd at /nonexistent/gmemd.sock",
        );
    }
}

#[test]
fn a_daemon_that_does_not_answer_is_named_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("mute.sock");
    // Listens, never accepts: connect succeeds into the backlog and HELLO
    // never gets an answer.
    let _listener = UnixListener::bind(&socket).unwrap();
    let want = format!("gmemd at {} did not answer within 0.3s", socket.display());
    for (env, args) in [
        (None, &["--timeout", "0.3", "status"][..]),
        (None, &["status", "--json", "--timeout", "0.3"]),
        (Some("0.3"), &["destroy", "vm1/ram"]),
        (Some("0.3"), &["transfer", "ram", "--to", "vm1"]),
        (Some("0.3"), &["forget", "vm1"]),
        (None, &["restart", "--timeout", "0.3"]),
        // After the subcommand it wins over the one before it.
        (
            None,
            &["--timeout", "60", "revoke", "vm1", "--timeout", "0.3"],
        ),
    ] {
        let mut cmd = Command::new(gmem_tests::bin("gmemctl"));
        cmd.env("GMEMD_SOCKET", &socket)
            .env_remove("GMEMCTL_TIMEOUT");
        if let Some(secs) = env {
            cmd.env("GMEMCTL_TIMEOUT", secs);
        }
        let start = Instant::now();
        fails(&mut cmd, args, 1, &want);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{args:?} took {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn transfer_moves_files_between_namespaces() {
    let daemon = Daemon::start();
    ok(&daemon, &["create", "pool0", "--size", "4M"]);
    // Content written through an operator's fd of the old inode.
    let (old_fd, _) = daemon.control().open(&name("pool0")).unwrap();
    rustix::io::pwrite(&old_fd, b"template", 0).unwrap();

    // The VM must be known (a lease or files) to receive a file.
    fails(
        &mut daemon.gmemctl(),
        &["transfer", "pool0", "--to", "vm-a"],
        1,
        "(errno 2)",
    );
    let mut a = daemon.lease(vm("vm-a"));
    let out = ok(
        &daemon,
        &["transfer", "pool0", "--to", "vm-a", "--as", "vm-a.ram"],
    );
    assert!(
        out.contains("transferred pool0 to vm-a/vm-a.ram: 4 MiB memfd"),
        "{out}"
    );
    // The VM's fresh inode has the content; the old inode is zeroed.
    let (new_fd, _) = a.open(&name("vm-a.ram")).unwrap();
    let mut buf = [0u8; 8];
    rustix::io::pread(&new_fd, &mut buf, 0).unwrap();
    assert_eq!(&buf, b"template");
    rustix::io::pread(&old_fd, &mut buf, 0).unwrap();
    assert_eq!(buf, [0; 8]);
    drop(new_fd);

    let status = status_json(&daemon);
    assert!(find_file(&status, None, "pool0").is_none(), "{status}");
    let file = find_file(&status, Some("vm-a"), "vm-a.ram").expect("moved file");
    assert_eq!(file["orphan_secs"], Value::Null);

    // Addressed by UUID, the same file; the destination name is taken.
    ok(&daemon, &["create", "pool1", "--size", "4M"]);
    let uuid = vm("vm-a").uuid.to_string();
    fails(
        &mut daemon.gmemctl(),
        &["transfer", "pool1", "--to", &uuid, "--as", "vm-a.ram"],
        1,
        "(errno 17)",
    );
    // A bound file stays where it is.
    a.bind(&BindRequest::new(
        0,
        GuestAddress(0),
        name("vm-a.ram"),
        0,
        1 << 20,
    ))
    .unwrap();
    fails(
        &mut daemon.gmemctl(),
        &["transfer", &format!("{uuid}/vm-a.ram"), "--to-operators"],
        1,
        "(errno 16)",
    );
    a.unbind(0).unwrap();
    let out = ok(
        &daemon,
        &[
            "transfer",
            &format!("{uuid}/vm-a.ram"),
            "--to-operators",
            "--as",
            "back",
        ],
    );
    assert!(out.contains("to back (operators')"), "{out}");
    let status = status_json(&daemon);
    let back = find_file(&status, None, "back").expect("returned file");
    assert!(
        back["vm"].is_null() && back["orphan_secs"].is_null(),
        "{back}"
    );
    assert!(find_file(&status, Some("vm-a"), "vm-a.ram").is_none());
    let table = ok(&daemon, &["status"]);
    let row = table.lines().find(|l| l.contains(" back ")).unwrap();
    assert!(row.starts_with("- "), "{table}");
}

#[test]
fn orphans_show_their_age_and_forget_frees_the_vm() {
    let daemon = Daemon::start();
    let mut a = daemon.lease(vm("vm-a"));
    a.create(&name("ram"), 1 << 20, gmem_protocol::MemoryKind::Memfd)
        .unwrap();
    // Forget refuses a VM that has a lease.
    fails(&mut daemon.gmemctl(), &["forget", "vm-a"], 1, "(errno 16)");
    drop(a);

    // Once the lease is gone its file is an orphan, aging.
    let file = wait_until(Duration::from_secs(10), "vm-a's lease to end", || {
        find_file(&status_json(&daemon), Some("vm-a"), "ram").filter(|f| f["orphan_secs"].is_u64())
    });
    assert!(file["orphan_secs"].as_u64().unwrap() < 60, "{file}");
    let table = ok(&daemon, &["status"]);
    let row = table.lines().find(|l| l.contains(" ram ")).unwrap();
    let words: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(words[0], "vm-a", "{table}");
    // ORPHAN is the column before BINDINGS ("-": none).
    let age = words[words.len() - 2];
    assert!(
        age.ends_with('s') && age[..age.len() - 1].parse::<u64>().is_ok(),
        "{table}"
    );

    let out = ok(&daemon, &["forget", "vm-a"]);
    assert!(out.contains("forgot VM vm-a"), "{out}");
    assert!(find_file(&status_json(&daemon), Some("vm-a"), "ram").is_none());
    fails(&mut daemon.gmemctl(), &["forget", "vm-a"], 1, "(errno 2)");
    fails(
        &mut daemon.gmemctl(),
        &["destroy", "vm-a/ram"],
        1,
        "(errno 2)",
    );
}

#[test]
fn restart_in_place_keeps_files_leases_and_bindings() {
    let daemon = Daemon::start();
    ok(&daemon, &["create", "pool", "--size", "4M"]);
    let (pool_fd, _) = daemon.control().open(&name("pool")).unwrap();
    rustix::io::pwrite(&pool_fd, b"template", 0).unwrap();
    let mut a = daemon.lease(vm("vm-a"));
    let (ram_fd, _) = a
        .create(&name("ram"), 1 << 20, gmem_protocol::MemoryKind::Memfd)
        .unwrap();
    rustix::io::pwrite(&ram_fd, b"guest", 4096).unwrap();
    a.bind(&BindRequest::new(
        0,
        GuestAddress(0),
        name("ram"),
        0,
        1 << 20,
    ))
    .unwrap();
    let before = status_json(&daemon);
    assert_eq!(before["daemon"]["restarts"], 0, "{before}");
    assert_eq!(before["daemon"]["pid"], daemon.pid());
    assert_eq!(before["daemon"]["files"], 2);
    assert_eq!(before["daemon"]["leases"], 1);
    let table = ok(&daemon, &["status"]);
    let first = table.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("gmemd pid {}, serving since ", daemon.pid()))
            && first.contains(" UTC (up ")
            && first.contains("0 restart(s) survived; last recovery: "),
        "{table}"
    );

    let out = ok(&daemon, &["restart"]);
    let prefix = format!(
        "gmemd restarted in place: pid {}, restart 1, serving again after ",
        daemon.pid()
    );
    let ms = out
        .trim_end()
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(" ms"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(ms.parse::<u64>().unwrap() < 10_000, "{out}");

    let after = status_json(&daemon);
    let d = &after["daemon"];
    assert_eq!(d["restarts"], 1, "{after}");
    assert_eq!(d["pid"], daemon.pid(), "an exec keeps the pid");
    assert_eq!(d["born"], before["daemon"]["born"]);
    assert!(
        d["started"].as_u64().unwrap() >= before["daemon"]["started"].as_u64().unwrap(),
        "{after}"
    );
    assert_eq!(
        (d["files"].as_u64(), d["leases"].as_u64()),
        (Some(2), Some(1))
    );
    // What the new gmemd took over: both files, the lease, and two
    // connections: the lease's and gmemctl restart's own (it stays,
    // PROTOCOL.md §7.14).
    let recovered = d["recovered"].as_str().unwrap();
    assert!(
        recovered.starts_with("2 file(s), 1 lease(s), 2 connection(s) from "),
        "{after}"
    );
    // Files, the lease and its binding, as they were.
    assert_eq!(after["files"], before["files"], "{after}");
    assert_eq!(after["leases"], before["leases"], "{after}");
    let ram = find_file(&after, Some("vm-a"), "ram").expect("vm-a's ram");
    assert_eq!(ram["bindings"][0]["size"], 1 << 20);
    assert!(ok(&daemon, &["status"]).contains("1 restart(s) survived"));

    // Content survives, through the new gmemd's fds as through the old ones.
    let mut buf = [0u8; 8];
    let (pool_again, _) = daemon.control().open(&name("pool")).unwrap();
    rustix::io::pread(&pool_again, &mut buf, 0).unwrap();
    assert_eq!(&buf, b"template");
    let (ram_again, _) = a.open(&name("ram")).unwrap();
    rustix::io::pread(&ram_again, &mut buf[..5], 4096).unwrap();
    assert_eq!(&buf[..5], b"guest");
    // The lease's connection was kept: it saw the restart and still works.
    a.unbind(0).unwrap();
    assert_eq!(a.restarts_seen(), 1);
    assert_eq!(a.last_restart().map(|n| n.restarts), Some(1));

    // A second restart counts on.
    assert!(ok(&daemon, &["restart"]).contains(", restart 2, "));
    assert_eq!(status_json(&daemon)["daemon"]["restarts"], 2);
}

#[test]
fn only_an_operator_may_restart_gmemd() {
    use std::os::unix::process::CommandExt;
    assert_eq!(
        rustix::process::getuid().as_raw(),
        0,
        "the test runs as root to switch uid"
    );
    // uid 65534 may connect, but is no operator.
    let daemon = Daemon::start_with(&["--allow-uid", "65534"]);
    let as_nobody = || {
        let mut cmd = daemon.gmemctl();
        cmd.uid(65534).gid(65534);
        cmd
    };
    fails(&mut as_nobody(), &["restart"], 1, "(errno 1)");
    // It sees the daemon's line all the same; nothing restarted.
    let out = as_nobody().arg("status").output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.contains("0 restart(s) survived"), "{table}");
    assert_eq!(status_json(&daemon)["daemon"]["restarts"], 0);
}
