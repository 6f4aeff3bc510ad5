//! The fd store under a real systemd 252 (a user instance, see
//! `gmem_tests::systemd`): a `Type=notify` service that stores memfds,
//! its listening socket and a connection with `gmemd::fdstore` is restarted
//! after SIGKILL, and after a watchdog timeout, with the same memfd (same
//! content), socket and connection from `LISTEN_FDS`; and the shipped
//! `gmemd.service` and `gmemd.socket`, running the probe, do the same with
//! socket activation and their hardening (less what this user instance
//! cannot set up: `gmem_tests::systemd::SANDBOX_DROP_IN`).

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

use gmem_tests::fdstore::{hold, ping, read_line, Probe};
use gmem_tests::systemd::UserSystemd;
use rustix::process::Signal;

const WAIT: Duration = Duration::from_secs(30);

/// A notify unit running the probe; `extra` goes in `[Service]`.
fn probe_unit(probe: &Probe, extra: &str) -> String {
    let out = probe.dir().join("out.log");
    format!(
        "[Unit]\n\
         StartLimitIntervalSec=0\n\
         [Service]\n\
         Type=notify\n\
         NotifyAccess=main\n\
         ExecStart={}\n\
         Restart=always\n\
         RestartSec=100ms\n\
         FileDescriptorStoreMax=16\n\
         Environment=FDSTORE=16\n\
         LimitCORE=0\n\
         StandardOutput=append:{out}\n\
         StandardError=append:{out}\n\
         {extra}\n",
        probe.command_line(&[]).join(" "),
        out = out.display(),
    )
}

#[test]
fn a_notify_service_keeps_its_memfd_socket_and_connection_across_sigkill() {
    let Some(systemd) = UserSystemd::start() else {
        return;
    };
    let probe = Probe::new(&systemd.dir().join("probe"));
    systemd.install("probe.service", &probe_unit(&probe, ""));
    systemd.start_unit("probe.service");
    let pid = systemd.wait_running("probe.service", None, WAIT);
    let first = probe.wait_start(0, WAIT);
    assert_eq!(first.pid(), pid);
    assert_eq!((first.get("limit"), first.get("restarts")), ("16", "-"));
    let (held, name) = hold(&probe.socket());

    systemd.kill(pid, Signal::KILL);
    let again = systemd.wait_running("probe.service", Some(pid), WAIT);
    let second = probe.wait_start(1, WAIT);
    assert_eq!(second.pid(), again);
    assert_eq!(second.names(), [name.as_str(), "data", "gen", "listen"]);
    assert_eq!(second.get("open"), "3,4,5,6");
    assert_eq!(second.get("data"), first.get("data"), "the same memfd");
    assert_eq!(second.get("sum"), first.get("sum"), "with the same content");
    assert_eq!(read_line(&held), "restarted gen=1");
    assert_eq!(ping(&probe.socket()), "pong gen=1");
    assert_eq!(systemd.show("probe.service", "NRestarts"), "1");
}

#[test]
fn the_watchdog_restarts_a_stopped_service_with_its_memfd() {
    let Some(systemd) = UserSystemd::start() else {
        return;
    };
    let probe = Probe::new(&systemd.dir().join("probe"));
    let unit = probe_unit(&probe, "WatchdogSec=1\nTimeoutAbortSec=2");
    systemd.install("probe.service", &unit);
    systemd.start_unit("probe.service");
    let pid = systemd.wait_running("probe.service", None, WAIT);
    let first = probe.wait_start(0, WAIT);
    assert_eq!(first.get("watchdog_ms"), "1000");
    systemd.kill(pid, Signal::STOP);
    systemd.wait_running("probe.service", Some(pid), WAIT);
    let second = probe.wait_start(1, WAIT);
    assert_eq!(second.get("sum"), first.get("sum"));
    assert_eq!(systemd.show("probe.service", "NRestarts"), "1");
}

#[test]
fn the_shipped_units_socket_activate_and_keep_fds_across_sigkill() {
    let Some(systemd) = UserSystemd::start() else {
        return;
    };
    // The probe in gmemd's place; everything else as shipped. Only the
    // runtime directory is writable (ProtectSystem=strict): the report goes there.
    let probe = Probe::new(&systemd.dir().join("gmemd"));
    systemd.install_gmemd_units(&probe.command_line(&[]).join(" "));
    let verify = systemd.in_namespace(
        "systemd-analyze",
        &["--user", "verify", "gmemd.socket", "gmemd.service"],
    );
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    systemd.start_unit("gmemd.socket");
    let path = systemd.dir().join("gmemd/gmemd.sock");
    gmem_tests::wait_until(WAIT, "gmemd.socket to listen", || {
        path.exists().then_some(())
    });
    // The first connection starts the service, which gets the socket.
    assert_eq!(ping(&path), "pong gen=0");
    let pid = systemd.wait_running("gmemd.service", None, WAIT);
    let first = probe.wait_start(0, WAIT);
    assert_eq!(first.get("names"), "gmemd.socket");
    assert_eq!(
        first.get("limit"),
        systemd.show("gmemd.service", "FileDescriptorStoreMax")
    );
    let (held, name) = hold(&path);

    systemd.kill(pid, Signal::KILL);
    systemd.wait_running("gmemd.service", Some(pid), WAIT);
    let second = probe.wait_start(1, WAIT);
    assert_eq!(
        second.names(),
        [name.as_str(), "data", "gen", "gmemd.socket"]
    );
    assert_eq!(second.get("sum"), first.get("sum"));
    assert_eq!(read_line(&held), "restarted gen=1");
    assert_eq!(ping(&path), "pong gen=1");
}
