//! Spawning real children (`/bin/sh`) and reading what they saw.

use std::io::Write;
use std::os::fd::AsFd;
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::process::{waitid, WaitId, WaitIdOptions};

use super::*;

/// Runs `program` with `args`, waits (bounded) for it to exit 0.
fn run_program(
    program: &str,
    args: &[OsString],
    env: &[(&str, String)],
    fds: &[BorrowedFd<'_>],
    names: &str,
) {
    let child = spawn(Path::new(program), args, env, fds, names).unwrap();
    let mut pfd = [PollFd::new(&child.pidfd, PollFlags::IN)];
    let timeout = Timespec::try_from(Duration::from_secs(10)).unwrap();
    assert_eq!(poll(&mut pfd, Some(&timeout)).unwrap(), 1, "child exits");
    let status = waitid(WaitId::PidFd(child.pidfd.as_fd()), WaitIdOptions::EXITED)
        .unwrap()
        .unwrap();
    assert_eq!(status.exit_status(), Some(0), "{program} failed");
}

/// Runs `script` under `sh -c` with `fds` and returns what it wrote to the
/// file given as `$1`.
fn run(script: &str, env: &[(&str, String)], fds: &[BorrowedFd<'_>], names: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let args = [
        OsString::from("-c"),
        OsString::from(script),
        OsString::from("sh"),
        out.clone().into_os_string(),
    ];
    run_program("/bin/sh", &args, env, fds, names);
    std::fs::read_to_string(out).unwrap()
}

fn file_with(text: &str) -> std::fs::File {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

#[test]
fn fds_land_at_3_and_up_with_listen_pid_of_the_child() {
    let (a, b) = (file_with("alpha"), file_with("beta"));
    let script = r#"{
        echo "pid=$$ listen_pid=$LISTEN_PID fds=$LISTEN_FDS names=$LISTEN_FDNAMES extra=$EXTRA"
        cat /proc/$$/fd/3; echo; cat /proc/$$/fd/4; echo
    } > "$1""#;
    let text = run(
        script,
        &[("EXTRA", "x y".to_owned())],
        &[b.as_fd(), a.as_fd()],
        "f2:f1",
    );
    let mut lines = text.lines();
    let first = lines.next().unwrap();
    let pid = first
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches("pid=");
    assert_eq!(
        first,
        format!("pid={pid} listen_pid={pid} fds=2 names=f2:f1 extra=x y")
    );
    assert_eq!(lines.next(), Some("beta"));
    assert_eq!(lines.next(), Some("alpha"));
    assert_eq!(lines.next(), None, "{text}");
}

#[test]
fn the_child_starts_with_no_signal_blocked_and_sigpipe_default() {
    // The keeper blocks the signals it reads from a signalfd, and Rust
    // ignores SIGPIPE: the child must inherit neither. `cp` reads its own
    // status without touching its mask (a shell would reset it).
    let block = vmm_sys_util::signal::create_sigset(&[libc::SIGUSR1]).unwrap();
    let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: valid sigsets; only this test thread's mask changes.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &block, old.as_mut_ptr()) };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("status");
    let args = [
        OsString::from("/proc/self/status"),
        out.clone().into_os_string(),
    ];
    run_program("/bin/cp", &args, &[], &[], "");
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), std::ptr::null_mut()) };
    let status = std::fs::read_to_string(out).unwrap();
    let mask = |key: &str| {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        u64::from_str_radix(line[key.len()..].trim(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0, "{status}");
    let pipe_bit = 1u64 << (libc::SIGPIPE - 1);
    assert_eq!(mask("SigIgn:") & pipe_bit, 0, "SIGPIPE ignored:\n{status}");
}

#[test]
fn without_fds_there_is_no_listen_env() {
    let script = r#"echo "${LISTEN_FDS-unset} ${LISTEN_PID-unset} ${LISTEN_FDNAMES-unset}" > "$1""#;
    assert_eq!(run(script, &[], &[], ""), "unset unset unset\n");
}

#[test]
fn an_exec_failure_is_reported_and_reaped() {
    let err = spawn(Path::new("/nonexistent/gmemd"), &[], &[], &[], "").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    let bad = spawn(
        Path::new("/bin/sh"),
        &[OsString::from("a\0b")],
        &[],
        &[],
        "",
    );
    assert_eq!(bad.unwrap_err().kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn pids_are_written_in_decimal() {
    for (pid, text) in [(1, "1"), (42, "42"), (4_194_304, "4194304")] {
        let mut buf = [b'x'; 21];
        // SAFETY: `buf` has the 21 bytes write_pid needs.
        unsafe { write_pid(buf.as_mut_ptr(), pid) };
        assert_eq!(&buf[..text.len()], text.as_bytes());
        assert_eq!(buf[text.len()], 0);
    }
}
