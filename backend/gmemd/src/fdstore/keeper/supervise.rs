//! The keeper's loop: start the serving process, apply its notifications,
//! enforce its deadlines, restart it when it dies.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::process::{pidfd_send_signal, waitid, Signal, WaitId, WaitIdOptions};

use super::host::{
    close_on_exec_from, describe, exit_code, notify_socket, raise_fd_limit, signal_name,
};
use super::spawn::{self, Spawned};
use super::store::Store;
use super::{KeeperError, KeeperOptions, ServeCommand};
use crate::fdstore::notify::{self, Message};
use crate::log_limit::LogLimiter;

/// The keeper's state across restarts.
#[derive(Debug)]
pub(super) struct Keeper {
    serve: ServeCommand,
    options: KeeperOptions,
    socket: OwnedFd,
    address: String,
    signals: OwnedFd,
    store: Store,
    restarts: u32,
    /// Deaths in a row that came sooner than `stable_after`.
    quick_deaths: u32,
    /// Set on SIGTERM/SIGINT: when to SIGKILL the serving process.
    stop_by: Option<Instant>,
    ever_ready: bool,
    log_limit: LogLimiter,
}

/// One run of the serving process.
#[derive(Debug)]
struct Child {
    spawned: Spawned,
    started: Instant,
    ready: bool,
    start_by: Option<Instant>,
    watchdog_by: Option<Instant>,
    /// When SIGABRT was sent.
    aborted: Option<Instant>,
    killed: bool,
}

/// How a run ended.
#[derive(Debug)]
enum Ended {
    /// Not started at all.
    NotStarted,
    /// It exited (or was killed), with this status for the keeper's own exit.
    Died(ExitCode),
    /// It exited after the keeper was told to stop.
    Stopped(ExitCode),
}

impl Keeper {
    pub(super) fn new(serve: ServeCommand, options: KeeperOptions) -> Result<Self, KeeperError> {
        raise_fd_limit();
        // The serving process gets the stored fds and nothing else the
        // keeper inherited (as under systemd).
        close_on_exec_from(3);
        let signals = crate::signals::signal_fd(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
            .map_err(KeeperError::Signals)?;
        let (socket, address) = notify_socket().map_err(KeeperError::Socket)?;
        let mut keeper = Keeper {
            store: Store::new(options.max_fds),
            serve,
            options,
            socket,
            address,
            signals,
            restarts: 0,
            quick_deaths: 0,
            stop_by: None,
            ever_ready: false,
            log_limit: LogLimiter::new(),
        };
        keeper.adopt_passed_fds();
        Ok(keeper)
    }

    /// Keeps fds passed to the keeper itself (socket activation without a
    /// service manager, `systemd-socket-activate`): the serving process gets them.
    fn adopt_passed_fds(&mut self) {
        let passed = match crate::fdstore::listen_fds() {
            Ok(passed) => passed,
            Err(e) => {
                log::warn!("keeper: ignoring LISTEN_FDS: {e}");
                return;
            }
        };
        let mut by_name: BTreeMap<String, Vec<OwnedFd>> = BTreeMap::new();
        for (name, fd) in passed {
            by_name.entry(name).or_default().push(fd);
        }
        for (name, fds) in by_name {
            if let Err(e) = self.store.put(&name, fds) {
                log::error!("keeper: passed fd {name} not kept: {e}");
            }
        }
    }

    pub(super) fn run(&mut self) -> ExitCode {
        let mut delay = Duration::ZERO;
        loop {
            if !delay.is_zero() && self.pause(delay) {
                log::info!(
                    "keeper: stopped while waiting to restart; {} fd(s) released",
                    self.store.len()
                );
                return ExitCode::SUCCESS;
            }
            let started = Instant::now();
            let ended = match self.start() {
                Ok(child) => self.supervise(child),
                Err(e) => {
                    log::error!("keeper: cannot start {}: {e}", self.serve.program.display());
                    Ended::NotStarted
                }
            };
            let code = match ended {
                Ended::Stopped(code) => {
                    log::info!(
                        "keeper: stopped; {} stored fd(s) released",
                        self.store.len()
                    );
                    return code;
                }
                Ended::Died(code) => code,
                Ended::NotStarted => ExitCode::FAILURE,
            };
            if self.restarts == 0
                && !self.ever_ready
                && self.store.is_empty()
                && self.options.exit_if_first_start_fails
            {
                log::error!("keeper: the serving process failed before it was ready, holding nothing; not restarting");
                return code;
            }
            if started.elapsed() >= self.options.stable_after {
                self.quick_deaths = 0;
            } else {
                self.quick_deaths = self.quick_deaths.saturating_add(1);
            }
            delay = backoff(&self.options, self.quick_deaths);
            self.restarts = self.restarts.saturating_add(1);
            log::warn!(
                "keeper: restart {} of the serving process in {delay:?}, with {} stored fd(s)",
                self.restarts,
                self.store.len()
            );
        }
    }

    fn start(&mut self) -> io::Result<Child> {
        let mut env = vec![
            ("NOTIFY_SOCKET", self.address.clone()),
            (crate::fdstore::FDSTORE_ENV, self.store.limit().to_string()),
            (crate::fdstore::RESTARTS_ENV, self.restarts.to_string()),
        ];
        if let Some(watchdog) = self.options.watchdog {
            env.push(("WATCHDOG_USEC", watchdog.as_micros().to_string()));
        }
        let fds: Vec<BorrowedFd<'_>> = self.store.fds().map(|(_, fd)| fd).collect();
        let spawned = spawn::spawn(
            &self.serve.program,
            &self.serve.args,
            &env,
            &fds,
            &self.store.names(),
        )?;
        log::info!(
            "keeper: serving process {} started (restart {}), {} fd(s) passed",
            spawned.pid.as_raw_nonzero(),
            self.restarts,
            fds.len()
        );
        let now = Instant::now();
        Ok(Child {
            spawned,
            started: now,
            ready: false,
            start_by: self.options.start_timeout.map(|t| now + t),
            watchdog_by: None,
            aborted: None,
            killed: false,
        })
    }

    /// Runs until `child` has exited and is reaped.
    fn supervise(&mut self, mut child: Child) -> Ended {
        loop {
            let now = Instant::now();
            self.enforce_deadlines(&mut child, now);
            let timeout = self
                .next_deadline(&child)
                .map(|at| at.saturating_duration_since(now));
            let [message, signal, exited] = self.wait(Some(child.spawned.pidfd.as_fd()), timeout);
            if message {
                self.drain(Some(&mut child));
            }
            if signal {
                self.signals(Some(&child));
            }
            if !exited {
                continue;
            }
            // What it sent before it died counts (systemd reads it first too).
            self.drain(Some(&mut child));
            let pidfd = child.spawned.pidfd.as_fd();
            let status = match waitid(
                WaitId::PidFd(pidfd),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
            ) {
                Ok(Some(status)) => status,
                Ok(None) => continue,
                Err(e) => {
                    // Reaped by someone else? Gone all the same: never
                    // give up what is stored over it.
                    log::error!("keeper: cannot reap the serving process: {e}");
                    return if self.stop_by.is_some() {
                        Ended::Stopped(ExitCode::FAILURE)
                    } else {
                        Ended::Died(ExitCode::FAILURE)
                    };
                }
            };
            let pid = child.spawned.pid.as_raw_nonzero();
            let ran = child.started.elapsed();
            let code = exit_code(&status);
            if self.stop_by.is_some() {
                log::info!(
                    "keeper: serving process {pid} {} after {ran:?}",
                    describe(&status)
                );
                // Dying of the signal forwarded to it is a clean stop, as
                // systemd counts it.
                let clean = status
                    .terminating_signal()
                    .is_some_and(|s| [libc::SIGTERM, libc::SIGINT, libc::SIGHUP].contains(&s));
                return Ended::Stopped(if clean { ExitCode::SUCCESS } else { code });
            }
            log::warn!(
                "keeper: serving process {pid} {} after {ran:?}",
                describe(&status)
            );
            return Ended::Died(code);
        }
    }

    /// Acts on the deadlines that passed: abort a hung or slow child, kill
    /// one that did not die of the abort or of the forwarded stop signal.
    fn enforce_deadlines(&mut self, child: &mut Child, now: Instant) {
        if child.aborted.is_none() {
            let reason = if child.watchdog_by.is_some_and(|at| at <= now) {
                Some("sent no WATCHDOG=1 in time")
            } else if child.start_by.is_some_and(|at| at <= now) {
                Some("was not ready in time")
            } else {
                None
            };
            if let Some(reason) = reason {
                log::error!(
                    "keeper: serving process {} {reason}: SIGABRT",
                    child.spawned.pid.as_raw_nonzero()
                );
                signal_child(child, Signal::ABORT);
                child.aborted = Some(now);
            }
        }
        let abort_over = child
            .aborted
            .is_some_and(|at| at + self.options.abort_grace <= now);
        let stop_over = self.stop_by.is_some_and(|at| at <= now);
        if (abort_over || stop_over) && !child.killed {
            log::error!(
                "keeper: serving process {} still runs: SIGKILL",
                child.spawned.pid.as_raw_nonzero()
            );
            let _ = pidfd_send_signal(&child.spawned.pidfd, Signal::KILL);
            child.killed = true;
        }
    }

    fn next_deadline(&self, child: &Child) -> Option<Instant> {
        let mut at = Vec::with_capacity(4);
        if child.aborted.is_none() {
            at.extend(child.watchdog_by);
            at.extend(child.start_by);
        } else if !child.killed {
            at.extend(child.aborted.map(|t| t + self.options.abort_grace));
        }
        if !child.killed {
            at.extend(self.stop_by);
        }
        at.into_iter().min()
    }

    /// Waits for a message, a signal or (with a pidfd) the child's exit, up
    /// to `timeout`; says which are ready.
    fn wait(&self, pidfd: Option<BorrowedFd<'_>>, timeout: Option<Duration>) -> [bool; 3] {
        let mut fds = vec![
            PollFd::new(&self.socket, PollFlags::IN),
            PollFd::new(&self.signals, PollFlags::IN),
        ];
        if let Some(pidfd) = pidfd {
            fds.push(PollFd::from_borrowed_fd(pidfd, PollFlags::IN));
        }
        let timeout = timeout.map(|t| {
            Timespec::try_from(t).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            })
        });
        match poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                // ENOMEM, say: wait a little and look again, never exit.
                log::error!("keeper: poll: {e}");
                std::thread::sleep(Duration::from_millis(100));
                return [true, true, pidfd.is_some()];
            }
        }
        let ready = |i: usize| fds.get(i).is_some_and(|fd| !fd.revents().is_empty());
        [ready(0), ready(1), ready(2)]
    }

    /// Waits `delay` before a restart; `true` if told to stop meanwhile.
    fn pause(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            let [message, signal, _] = self.wait(None, Some(until - now));
            if message {
                self.drain(None);
            }
            if signal && self.signals(None) {
                return true;
            }
        }
    }

    /// Handles pending signals; `true` if told to stop.
    fn signals(&mut self, child: Option<&Child>) -> bool {
        let mut stop = false;
        loop {
            let signo = crate::signals::read_signal(self.signals.as_fd());
            let Some(signal) = i32::try_from(signo).ok().and_then(Signal::from_named_raw) else {
                return stop;
            };
            let stopping = signal == Signal::TERM || signal == Signal::INT;
            stop |= stopping;
            let Some(child) = child else { continue };
            let pid = child.spawned.pid.as_raw_nonzero();
            if stopping && self.stop_by.is_none() {
                log::info!(
                    "keeper: {}: stopping serving process {pid}; the {} stored fd(s) go with it",
                    signal_name(signal.as_raw()),
                    self.store.len()
                );
                self.stop_by = Some(Instant::now() + self.options.stop_timeout);
            }
            signal_child(child, signal);
        }
    }

    /// Reads every queued message: the child's are applied, others dropped
    /// (their fds closed).
    fn drain(&mut self, mut child: Option<&mut Child>) {
        loop {
            let message = match notify::recv(self.socket.as_fd()) {
                Ok(Some(message)) => message,
                Ok(None) => return,
                Err(e) => {
                    log::warn!("keeper: reading the notify socket: {e}");
                    return;
                }
            };
            match child.as_deref_mut() {
                Some(child)
                    if message.pid
                        == u32::try_from(child.spawned.pid.as_raw_nonzero().get()).ok() =>
                {
                    self.apply(child, message);
                }
                _ => {
                    if let Some(left_out) = self.log_limit.allow("stranger", Instant::now()) {
                        log::warn!(
                            "keeper: ignored a notification from pid {:?}, not the serving process ({left_out} more left out)",
                            message.pid
                        );
                    }
                }
            }
        }
    }

    /// Applies one message of the serving process.
    fn apply(&mut self, child: &mut Child, mut message: Message) {
        let pid = child.spawned.pid.as_raw_nonzero();
        if message.truncated {
            log::error!("keeper: a notification of {pid} was cut (over 4 KiB or 253 fds): fds in it are lost");
        }
        let name = message.get("FDNAME").map(str::to_owned);
        if message.has("FDSTOREREMOVE", "1") {
            if let Some(name) = &name {
                let n = self.store.remove(name);
                log::debug!("keeper: removed {n} fd(s) named {name}");
            }
        }
        let fds = std::mem::take(&mut message.fds);
        if message.has("FDSTORE", "1") {
            let name = name.as_deref().unwrap_or("stored");
            if !notify::valid_name(name) {
                log::error!(
                    "keeper: fd name {name:?} is invalid: {} fd(s) not kept",
                    fds.len()
                );
            } else if !fds.is_empty() {
                let n = fds.len();
                match self.store.put(name, fds) {
                    Ok(()) => log::debug!(
                        "keeper: stored {n} fd(s) as {name} ({} in all)",
                        self.store.len()
                    ),
                    Err(e) => {
                        log::error!("keeper: {name} not kept, it will not survive a restart: {e}")
                    }
                }
            }
        } else if !fds.is_empty() {
            log::warn!(
                "keeper: {pid} sent {} fd(s) without FDSTORE=1; closed",
                fds.len()
            );
        }
        let now = Instant::now();
        if message.has("READY", "1") && !child.ready {
            child.ready = true;
            child.start_by = None;
            self.ever_ready = true;
            log::info!(
                "keeper: serving process {pid} is ready: {}",
                message.get("STATUS").unwrap_or("")
            );
        } else if let Some(status) = message.get("STATUS") {
            log::debug!("keeper: status of {pid}: {status}");
        }
        if child.ready && (message.has("READY", "1") || message.has("WATCHDOG", "1")) {
            child.watchdog_by = self.options.watchdog.map(|w| now + w);
        }
        if message.has("WATCHDOG", "trigger") {
            child.watchdog_by = Some(now);
        }
        if message.has("STOPPING", "1") {
            log::info!("keeper: serving process {pid} is stopping");
        }
    }
}

/// The delay before a restart after `quick_deaths` quick deaths in a row.
fn backoff(options: &KeeperOptions, quick_deaths: u32) -> Duration {
    if quick_deaths == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(quick_deaths - 1).unwrap_or(u32::MAX);
    options
        .restart_delay
        .checked_mul(factor)
        .unwrap_or(options.max_restart_delay)
        .min(options.max_restart_delay)
}

/// Sends `signal`, and `SIGCONT` so that a stopped process gets it (as
/// systemd does).
fn signal_child(child: &Child, signal: Signal) {
    let _ = pidfd_send_signal(&child.spawned.pidfd, signal);
    if signal != Signal::KILL && signal != Signal::CONT {
        let _ = pidfd_send_signal(&child.spawned.pidfd, Signal::CONT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_limit_and_resets() {
        let options = KeeperOptions::default();
        let delays: Vec<_> = (0..10).map(|n| backoff(&options, n).as_millis()).collect();
        assert_eq!(
            delays,
            [0, 100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
        assert_eq!(backoff(&options, u32::MAX), options.max_restart_delay);
    }
}
