//! gmemd itself under a real systemd 252 (a user instance, see
//! `gmem_tests::systemd`), run by the shipped `gmemd.service` and
//! `gmemd.socket` (less what this instance cannot set up:
//! `gmem_tests::systemd::SANDBOX_DROP_IN`) with `ExecStart=` the built
//! gmemd, its state in the unit's runtime directory and 20 clients on the
//! socket `gmemd.socket` listens on, creating, binding and unbinding:
//! - SIGKILLed twice, gmemd is restarted by systemd and takes back every
//!   file, content, lease, binding and connection from the fd store;
//! - stopped with SIGSTOP, it is restarted by the watchdog and loses
//!   nothing; running, its pings keep the watchdog quiet;
//! - `gmemctl restart` (and `systemctl reload`) exec it in place: same main
//!   pid, restarts counted, nothing lost, and a SIGKILL afterwards still
//!   loses nothing;
//! - `systemctl stop` loses the memory, as `gmemd.service` says, and the
//!   start after it is not counted as a restart.
//!
//! Every step is followed by the invariant check over `status --json`,
//! read while the clients hold still.

// An integration test file is a test module of its own.
#![allow(clippy::tests_outside_test_module)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gmem_protocol::Client;
use gmem_tests::survival::{
    check_clients_kept, check_invariants, start_clients, ClientEnd, Pause, FILE_SIZE,
};
use gmem_tests::systemd::UserSystemd;
use gmem_tests::wait_until;
use rustix::process::Signal;
use serde_json::Value;

const CLIENTS: usize = 20;
const UNIT: &str = "gmemd.service";
/// Bound on every wait for systemd or gmemd.
const WAIT: Duration = Duration::from_secs(30);

/// gmemd run by the shipped units in a systemd user instance.
struct Gmemd {
    systemd: UserSystemd,
}

impl Gmemd {
    /// Installs the units (with `extra` in the drop-in
    /// `gmemd.service.d/test.conf`), starts `gmemd.socket`, then
    /// `gmemd.service`, and waits until gmemd serves; `None` (a skip) where
    /// no systemd user instance can run.
    fn start(extra: &str) -> Option<Gmemd> {
        let systemd = UserSystemd::start()?;
        // Copied out of /tmp if built there (PrivateTmp= would hide it).
        let gmemd = gmem_tests::bin("gmemd");
        systemd.install_gmemd_units(&gmemd.display().to_string());
        std::fs::write(
            systemd.unit_dir().join("gmemd.service.d/test.conf"),
            format!("[Service]\nEnvironment=RUST_LOG=info\n{extra}"),
        )
        .expect("drop-in");
        systemd.systemctl_ok(&["daemon-reload"]);
        systemd.start_unit("gmemd.socket");
        let me = Gmemd { systemd };
        let socket = me.socket();
        wait_until(WAIT, "gmemd.socket to listen", || {
            socket.exists().then_some(())
        });
        me.systemd.start_unit(UNIT);
        me.systemd.wait_running(UNIT, None, WAIT);
        me.wait_serving();
        // No --state-dir in ExecStart=: the state is in the unit's
        // RuntimeDirectory= (%t/gmemd), next to the socket.
        let journal = me.systemd.dir().join("gmemd/ledger.journal");
        assert!(journal.exists(), "{} missing", journal.display());
        Some(me)
    }

    /// The socket `gmemd.socket` listens on (`%t/gmemd/gmemd.sock`).
    fn socket(&self) -> PathBuf {
        self.systemd.dir().join("gmemd/gmemd.sock")
    }

    /// What gmemd logged (`StandardOutput=append:`).
    fn log(&self) -> String {
        std::fs::read_to_string(self.systemd.dir().join("gmemd.out")).unwrap_or_default()
    }

    fn main_pid(&self) -> u32 {
        self.systemd
            .main_pid(UNIT)
            .expect("gmemd.service has a main pid")
    }

    /// How many times systemd restarted the unit.
    fn n_restarts(&self) -> u32 {
        self.systemd
            .show(UNIT, "NRestarts")
            .parse()
            .expect("NRestarts")
    }

    /// Waits until a fresh control session is answered.
    fn wait_serving(&self) {
        let socket = self.socket();
        wait_until(WAIT, "gmemd to serve", || {
            let mut c = Client::connect_control(&socket).ok()?;
            c.set_timeout(Some(Duration::from_secs(5))).ok()?;
            c.files().ok()
        });
    }

    /// A control session.
    fn control(&self) -> Client {
        let c = Client::connect_control(self.socket()).expect("control session");
        c.set_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        c
    }

    /// `gmemctl ARGS` against this gmemd (30 s at most), which must
    /// succeed; its stdout.
    fn gmemctl(&self, args: &[&str]) -> String {
        let out = Command::new("timeout")
            .args(["--kill-after=5", "30"])
            .arg(gmem_tests::bin("gmemctl"))
            .args(args)
            .env("GMEMD_SOCKET", self.socket())
            .stdin(Stdio::null())
            .output()
            .expect("gmemctl runs");
        assert!(
            out.status.success(),
            "gmemctl {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `gmemctl status --json`.
    fn status(&self) -> Value {
        let text = self.gmemctl(&["status", "--json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("status is not JSON ({e}): {text}"))
    }

    /// The restarts gmemd says it survived (`.daemon.restarts`).
    fn restarts(&self) -> u64 {
        daemon_restarts(&self.status())
    }

    /// Sends `signal` to the main pid; waits until systemd runs gmemd
    /// again under another pid, one restart more, and it serves. Returns
    /// how long systemd took to start the new one.
    fn kill_and_wait(&self, signal: Signal) -> Duration {
        let pid = self.main_pid();
        let restarts = self.n_restarts();
        let sent = Instant::now();
        self.systemd.kill(pid, signal);
        self.systemd.wait_running(UNIT, Some(pid), WAIT);
        let took = sent.elapsed();
        wait_until(WAIT, "NRestarts to count the restart", || {
            (self.n_restarts() > restarts).then_some(())
        });
        assert_eq!(self.n_restarts(), restarts + 1, "one restart per kill");
        self.wait_serving();
        took
    }

    /// `gmemctl restart`; checks that the same process serves on (an exec)
    /// with one restart more, and that systemd restarted nothing.
    fn restart_in_place(&self) {
        let (pid, before, n) = (self.main_pid(), self.restarts(), self.n_restarts());
        let said = self.gmemctl(&["restart"]);
        assert!(said.contains("restarted in place"), "{said}");
        self.check_exec(pid, before, n);
    }

    /// `systemctl reload gmemd` (`ExecReload=`: SIGHUP), which returns
    /// before gmemd serves again: waits for that, then checks as
    /// [`Gmemd::restart_in_place`].
    fn reload(&self) {
        let (pid, before, n) = (self.main_pid(), self.restarts(), self.n_restarts());
        self.systemd.systemctl_ok(&["reload", UNIT]);
        wait_until(WAIT, "gmemd to serve after SIGHUP", || {
            (self.restarts() > before).then_some(())
        });
        self.check_exec(pid, before, n);
    }

    fn check_exec(&self, pid: u32, restarts_before: u64, n_restarts: u32) {
        let status = self.status();
        assert_eq!(daemon_restarts(&status), restarts_before + 1, "{status}");
        assert_eq!(
            self.main_pid(),
            pid,
            "the same process: exec, not a new one"
        );
        assert_eq!(status["daemon"]["pid"], pid);
        assert_eq!(self.n_restarts(), n_restarts, "systemd restarted nothing");
        assert_eq!(self.systemd.show(UNIT, "SubState"), "running");
    }
}

impl Drop for Gmemd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "----- gmemd log (last 300 of {} lines) -----\n{}",
                lines.len(),
                lines[lines.len().saturating_sub(300)..].join("\n")
            );
            let status = self.systemd.systemctl(&["status", "--no-pager", UNIT]);
            eprintln!(
                "----- systemctl status -----\n{}",
                String::from_utf8_lossy(&status.stdout)
            );
        }
    }
}

fn daemon_restarts(status: &Value) -> u64 {
    status["daemon"]["restarts"]
        .as_u64()
        .unwrap_or_else(|| panic!("no daemon.restarts: {status}"))
}

/// Checks that nothing was lost: each client's lease is the one HELLO
/// gave it, with its one binding; its file is there with its pattern, in
/// the inode it holds; no file has two owners and no binding is doubled
/// (`check_invariants`).
///
/// No other file may be there: a CREATE a kill interrupted before its
/// journal record was written was never answered, and recovery lets go of
/// its memory (the client sends it again and makes its file anew).
fn check_nothing_lost(gmemd: &Gmemd, ends: &[ClientEnd]) {
    let status = gmemd.status();
    check_invariants(&status);
    let leases = status["leases"].as_array().expect("leases");
    assert_eq!(leases.len(), ends.len(), "{status}");
    let mut ctl = gmemd.control();
    check_clients_kept(&status, &mut ctl, ends);
    let files = status["files"].as_array().expect("files");
    let others: Vec<&Value> = files
        .iter()
        .filter(|f| f["name"] != "ram" || f["vm"].is_null())
        .collect();
    assert!(
        others.is_empty(),
        "file(s) besides the clients': {others:?}\n{status}"
    );
    assert_eq!(files.len(), ends.len(), "{status}");
}

/// Runs [`CLIENTS`] clients against `gmemd`; `settle` later calls
/// `disrupt(n)` for n in `0..times`, each followed by the invariant check
/// (clients paused while status is read) and another `settle`; then stops
/// the clients and checks that nothing was lost.
fn under_traffic(
    gmemd: &Gmemd,
    times: usize,
    settle: Duration,
    disrupt: impl Fn(usize),
) -> Vec<ClientEnd> {
    let stop = Arc::new(AtomicBool::new(false));
    let pause = Arc::new(Pause::default());
    let (ready, clients) = start_clients(
        gmemd.socket(),
        CLIENTS,
        Arc::clone(&stop),
        Arc::clone(&pause),
    );
    ready.wait();
    let check = || pause.during(CLIENTS, || check_invariants(&gmemd.status()));
    check();
    for n in 0..times {
        std::thread::sleep(settle);
        disrupt(n);
        check();
    }
    std::thread::sleep(settle);
    stop.store(true, Ordering::Relaxed);
    let ends: Vec<ClientEnd> = clients
        .into_iter()
        .map(|h| {
            h.join()
                .expect("a client thread panicked")
                .unwrap_or_else(|e| panic!("a client failed: {e}"))
        })
        .collect();
    for end in &ends {
        assert!(end.rounds > 0, "{} did nothing", end.vm);
    }
    check_nothing_lost(gmemd, &ends);
    eprintln!(
        "{CLIENTS} clients, {} rounds, {} restart notices seen",
        ends.iter().map(|e| e.rounds).sum::<u64>(),
        ends.iter().map(|e| e.restarts_seen).sum::<u64>()
    );
    ends
}

/// Drops the clients and waits until their leases end with their
/// connections, as they would without any restart.
fn leases_end_with_connections(gmemd: &Gmemd, ends: Vec<ClientEnd>) {
    drop(ends);
    wait_until(WAIT, "the leases to end", || {
        gmemd.control().leases().unwrap().is_empty().then_some(())
    });
}

#[test]
fn systemd_restarts_a_sigkilled_gmemd_under_traffic_and_nothing_is_lost() {
    let Some(gmemd) = Gmemd::start("") else {
        return;
    };
    let first = gmemd.main_pid();
    let ends = under_traffic(&gmemd, 2, Duration::from_millis(300), |_| {
        let took = gmemd.kill_and_wait(Signal::KILL);
        eprintln!("SIGKILL: systemd ran gmemd again after {took:?}");
    });
    assert_ne!(gmemd.main_pid(), first);
    assert_eq!(gmemd.n_restarts(), 2);
    let status = gmemd.status();
    assert_eq!(daemon_restarts(&status), 2, "{}", status["daemon"]);
    assert_eq!(status["daemon"]["pid"], gmemd.main_pid());
    let log = gmemd.log();
    assert_eq!(
        log.matches(" 20 lease(s), 20 connection(s) from").count(),
        2,
        "every connection taken back from the fd store, twice"
    );
    leases_end_with_connections(&gmemd, ends);
}

#[test]
fn the_watchdog_restarts_a_stopped_gmemd_and_nothing_is_lost() {
    const WATCHDOG: Duration = Duration::from_secs(2);
    let Some(gmemd) = Gmemd::start("WatchdogSec=2s\n") else {
        return;
    };
    assert_eq!(gmemd.systemd.show(UNIT, "WatchdogUSec"), "2s");
    let first = gmemd.main_pid();
    // Running, the event loop's pings keep the watchdog quiet: idle, then
    // under traffic, each for twice its timeout.
    std::thread::sleep(2 * WATCHDOG);
    let ends = under_traffic(&gmemd, 1, 2 * WATCHDOG, |_| {
        assert_eq!(gmemd.main_pid(), first, "pinged, gmemd was left alone");
        assert_eq!(gmemd.n_restarts(), 0);
        let took = gmemd.kill_and_wait(Signal::STOP);
        eprintln!("SIGSTOP: systemd ran gmemd again after {took:?}");
        // Pings came every 250 ms until the stop; nothing but the
        // watchdog's timeout restarts a stopped process.
        assert!(
            took >= WATCHDOG - Duration::from_millis(500),
            "restarted after {took:?}, before the watchdog could fire"
        );
    });
    assert_eq!(gmemd.n_restarts(), 1);
    assert_eq!(daemon_restarts(&gmemd.status()), 1);
    leases_end_with_connections(&gmemd, ends);
}

#[test]
fn gmemctl_restart_execs_gmemd_in_place_under_systemd_and_nothing_is_lost() {
    let Some(gmemd) = Gmemd::start("") else {
        return;
    };
    let pid = gmemd.main_pid();
    // Two restarts by RESTART, one by `systemctl reload`, then a SIGKILL:
    // what the exec'd gmemd keeps in systemd's fd store is all there.
    let ends = under_traffic(&gmemd, 4, Duration::from_millis(300), |n| match n {
        0 | 1 => gmemd.restart_in_place(),
        2 => gmemd.reload(),
        _ => {
            assert_eq!(gmemd.main_pid(), pid);
            gmemd.kill_and_wait(Signal::KILL);
        }
    });
    assert_eq!(gmemd.n_restarts(), 1);
    let status = gmemd.status();
    assert_eq!(daemon_restarts(&status), 4, "{}", status["daemon"]);
    assert_eq!(status["daemon"]["pid"], gmemd.main_pid());
    leases_end_with_connections(&gmemd, ends);
}

#[test]
fn systemctl_stop_loses_memory_as_the_unit_says_and_the_next_start_is_no_restart() {
    let Some(gmemd) = Gmemd::start("") else {
        return;
    };
    let mut client = Client::connect(gmemd.socket(), gmem_tests::vm("stopped")).unwrap();
    client.set_timeout(Some(Duration::from_secs(10))).unwrap();
    client
        .create(
            &gmem_tests::name("ram"),
            FILE_SIZE,
            gmem_protocol::wire::MemoryKind::Memfd,
        )
        .unwrap();
    assert_eq!(gmemd.restarts(), 0);
    // A stop discards the fd store (systemd 252): the memory and the
    // connection are gone. gmemd.socket still listens.
    gmemd.systemd.stop_unit(UNIT);
    assert!(gmemd.socket().exists(), "gmemd.socket keeps its socket");
    assert!(
        client.files().is_err(),
        "the connection went with the store"
    );
    gmemd.systemd.start_unit(UNIT);
    gmemd.systemd.wait_running(UNIT, None, WAIT);
    gmemd.wait_serving();
    let status = gmemd.status();
    check_invariants(&status);
    assert_eq!(status["files"].as_array().unwrap().len(), 0, "{status}");
    let recovered = status["daemon"]["recovered"].as_str().unwrap();
    assert!(recovered.contains("1 problem(s)"), "{recovered}");
    assert!(gmemd
        .log()
        .contains("its fd was not kept, so its memory is gone"));
    // Only the socket unit's socket came in LISTEN_FDS: nothing was taken
    // over, so this start is not a restart gmemd survived.
    assert_eq!(daemon_restarts(&status), 0, "{}", status["daemon"]);
    assert_eq!(gmemd.n_restarts(), 0);
}
