//! How a QEMU ended: in words for its user, and as the launcher's exit
//! code (QEMU's, or 128 + signal as shells do).

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// The exit code for a QEMU status: its code, or 128 + signal as shells do.
pub fn exit_code(status: ExitStatus) -> u8 {
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    u8::try_from(code).unwrap_or(1)
}

/// How a process ended, for people: `exited with status 1`, `was killed
/// by SIGKILL`.
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(0), _) => "exited normally (status 0)".to_owned(),
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => {
            format!(
                "was killed by {}{}",
                signal_name(signal),
                if status.core_dumped() {
                    " (core dumped)"
                } else {
                    ""
                }
            )
        }
        (None, None) => format!("ended ({status})"),
    }
}

/// `SIGKILL`, `SIGTERM`, ... or `signal N`.
fn signal_name(signal: i32) -> String {
    const NAMES: [(i32, &str); 15] = [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGILL, "SIGILL"),
        (libc::SIGTRAP, "SIGTRAP"),
        (libc::SIGABRT, "SIGABRT"),
        (libc::SIGBUS, "SIGBUS"),
        (libc::SIGFPE, "SIGFPE"),
        (libc::SIGKILL, "SIGKILL"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGSEGV, "SIGSEGV"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGPIPE, "SIGPIPE"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGTERM, "SIGTERM"),
    ];
    NAMES.iter().find(|(n, _)| *n == signal).map_or_else(
        || format!("signal {signal}"),
        |(_, name)| (*name).to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
    }

    #[test]
    fn exits_are_described() {
        let cases = [
            (ExitStatus::from_raw(0), "exited normally (status 0)"),
            (ExitStatus::from_raw(3 << 8), "exited with status 3"),
            (ExitStatus::from_raw(libc::SIGKILL), "was killed by SIGKILL"),
            (
                ExitStatus::from_raw(libc::SIGSEGV | 0x80),
                "was killed by SIGSEGV (core dumped)",
            ),
            (ExitStatus::from_raw(40), "was killed by signal 40"),
        ];
        for (status, text) in cases {
            assert_eq!(describe_exit(status), text);
        }
    }
}
