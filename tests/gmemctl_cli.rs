//! `gmemctl` against a real daemon: status as a table and as JSON, create,
//! destroy, scrub, revoke and caps, with clear errors and exit codes.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::process::Output;

use gmem_protocol::wire::BindRequest;
use gmem_protocol::wire::GuestAddress;
use gmem_tests::{name, vm, Daemon};
use serde_json::Value;

fn run(daemon: &Daemon, args: &[&str]) -> Output {
    daemon.gmemctl().args(args).output().expect("gmemctl runs")
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
    a.bind(&BindRequest::new(
        2,
        GuestAddress(0x1_0000_0000),
        name("ram0"),
        0,
        1 << 20,
    ))
    .unwrap();

    let json: Value = serde_json::from_str(&ok(&daemon, &["status", "--json"])).unwrap();
    let file = &json["files"][0];
    assert_eq!(file["name"], "ram0");
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
    assert!(
        table.contains("ram0") && table.contains("vm-a (lease"),
        "{table}"
    );

    // Destroying a bound file is refused for non-operators only; root is one.
    a.unbind(2).unwrap();
    assert!(ok(&daemon, &["destroy", "ram0"]).contains("destroyed ram0"));
    let json: Value = serde_json::from_str(&ok(&daemon, &["status", "--json"])).unwrap();
    assert_eq!(json["files"].as_array().unwrap().len(), 0);
}

#[test]
fn errors_are_clear_and_exit_nonzero() {
    let daemon = Daemon::start();
    for (args, text) in [
        (&["destroy", "nope"][..], "no memory file named nope"),
        (&["revoke", "ghost"][..], "no open lease for VM ghost"),
        (
            &["create", "x", "--size", "100"][..],
            "not a non-zero multiple",
        ),
        (
            &["create", "x", "--size", "4M", "--kind", "hugetlb-1g"][..],
            "1 GiB page size of hugetlb-1g",
        ),
        // 2^64 - 1 bytes parses; as a file size it is invalid, not too much.
        (
            &["create", "x", "--size", "18446744073709551615"][..],
            "errno 22",
        ),
    ] {
        let out = run(&daemon, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(text), "{args:?}: {stderr}");
    }
    // Argument errors exit 2, like every clap program, and say what is wrong.
    for (args, text) in [
        (
            &["create", "bad/name", "--size", "4M"][..],
            "characters outside",
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
    assert!(ok(&daemon, &["scrub", "ram"]).contains("scrubbed ram"));
}

#[test]
fn caps_reports_this_host() {
    let daemon = Daemon::start();
    let json: Value = serde_json::from_str(&ok(&daemon, &["caps", "--json"])).unwrap();
    let has_kvm = std::path::Path::new("/dev/kvm").exists();
    assert_eq!(json["kvm"], has_kvm);
    assert!(json.get("memfd_secret").is_some() && json.get("hugepages").is_some());
    assert!(ok(&daemon, &["caps"]).contains("guest_memfd"));
}
