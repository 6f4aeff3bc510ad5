//! `gmemctl hotplug` and `unplug`: 128 MiB of new gmemd memory plugged into
//! a running Linux guest as a DIMM appears in the guest and in `gmemctl
//! status` (a binding at the DIMM's address), stays across an upgrade, and
//! goes again when unplugged.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use gmem_tests::qemu::{gmemctl, gmemctl_json, LaunchSpec, Vm, BOOT_TIMEOUT};
use gmem_tests::{e2e, Daemon};
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn dimm_file(status: &Value) -> Option<&Value> {
    status["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "hp-vm.dimm0")
}

#[test]
fn hotplugged_memory_appears_in_the_guest_and_the_ledger() {
    if e2e::qemu().is_none() {
        return;
    }
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = LaunchSpec::new(
        "512M",
        // online_movable: Linux can offline it again for the unplug.
        "gmem.tick=1 gmem.memwatch=1 memhp_default_state=online_movable",
    );
    spec.gmemctl_args = vec![
        "--max-memory".into(),
        "2G".into(),
        "--slots".into(),
        "4".into(),
    ];
    let vm = Vm::launch(&daemon, dir.path(), "hp-vm", &spec);
    let base = vm
        .serial
        .wait_tick(0, BOOT_TIMEOUT, |t| t.memtotal_kb.is_some());
    let (base_kb, base_blocks) = (base.memtotal_kb.unwrap(), base.memblocks_online.unwrap());

    let report = gmemctl_json(&daemon, &["hotplug", "hp-vm", "128M"]);
    assert_eq!(report["id"], "dimm0", "{report}");
    assert_eq!(report["size"], 128 * MIB);
    assert_eq!(report["created"], true);
    let addr = report["addr"].as_u64().unwrap();
    assert!(addr >= 1 << 32, "{report}");
    // In the guest: 128 MiB more, one more online memory block.
    // (Both fields: a tick printed while the kernel changes the memory
    // blocks can come out garbled.)
    let grown = vm.serial.wait_tick(base.n, BOOT_TIMEOUT, |t| {
        t.memtotal_kb == Some(base_kb + 128 * 1024) && t.memblocks_online == Some(base_blocks + 1)
    });
    // In the ledger: a file of the VM bound at the DIMM's address.
    let status = gmemctl_json(&daemon, &["status"]);
    let dimm = dimm_file(&status).expect("the DIMM's file");
    assert_eq!(dimm["owner"]["name"], "hp-vm");
    assert_eq!(dimm["bindings"][0]["gpa"], addr);
    assert_eq!(dimm["bindings"][0]["slot"], report["slot"]);
    assert_eq!(dimm["bindings"][0]["size"], 128 * MIB);
    let table = String::from_utf8(gmemctl(&daemon, &["status"]).stdout).unwrap();
    assert!(table.contains("hp-vm.dimm0"), "{table}");
    eprintln!(
        "hotplug 128 MiB: QMP {:.1} ms, whole command {:.1} ms; guest MemTotal {base_kb} -> {} kB",
        report["qmp_ms"].as_f64().unwrap(),
        report["elapsed_ms"].as_f64().unwrap(),
        grown.memtotal_kb.unwrap()
    );

    // An upgrade carries the DIMM over (the new QEMU has it from the start).
    let up = gmemctl_json(&daemon, &["upgrade", "hp-vm"]);
    // The DIMM's RAM stayed in place too (measured by QEMU, less every
    // page the stream carried: at most 32 MiB of ROMs and video memory).
    let in_place = up["ram_in_place_bytes"].as_u64().unwrap();
    assert!(((640 - 32) * MIB..=640 * MIB).contains(&in_place), "{up}");
    assert!(
        up["ram_transferred_bytes"].as_u64().unwrap() < 4 << 20,
        "{up}"
    );
    let after = vm
        .serial
        .wait_tick(grown.n + 2, BOOT_TIMEOUT, |t| t.memtotal_kb.is_some());
    assert_eq!(after.memtotal_kb, grown.memtotal_kb, "{after:?}");

    // Unplug: the guest offlines and ejects it, the binding and file go.
    let out = gmemctl_json(&daemon, &["unplug", "hp-vm", "dimm0"]);
    assert_eq!(out["destroyed"], true, "{out}");
    vm.serial.wait_tick(after.n, BOOT_TIMEOUT, |t| {
        t.memtotal_kb == Some(base_kb) && t.memblocks_online == Some(base_blocks)
    });
    let status = gmemctl_json(&daemon, &["status"]);
    assert!(dimm_file(&status).is_none(), "{status}");
    assert_eq!(status["leases"][0]["bindings"], 1);
    eprintln!(
        "unplug: the guest released the DIMM in {:.0} ms",
        out["guest_ms"].as_f64().unwrap()
    );
    // A second DIMM can take the freed slot.
    let again = gmemctl_json(&daemon, &["hotplug", "hp-vm", "128M", "--id", "extra"]);
    assert_eq!(again["id"], "extra");
}
