//! Starting QEMU with given fds at fixed numbers, inherited across `exec`.
//!
//! The lease socket and the memory files reach QEMU as plain inherited fds:
//! QEMU does not know about the lease, it only keeps the socket open, so
//! the kernel ends the lease when the last process holding it is gone.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::launch::vmm::VmmKind;

/// Errors of spawning QEMU.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// Target fd numbers must be above stdio and distinct.
    #[error("invalid target fd {0} (must be > 2 and unique)")]
    BadTarget(RawFd),
    /// Moving an fd out of the way failed.
    #[error("cannot duplicate an fd for QEMU")]
    Dup(#[source] io::Error),
    /// `fork`/`exec` failed.
    #[error("cannot start {program}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// What to start.
#[derive(Debug)]
pub struct SpawnSpec {
    /// The program.
    pub program: PathBuf,
    /// All its arguments.
    pub args: Vec<String>,
    /// fds to place at fixed numbers in the child, without `FD_CLOEXEC`.
    pub fds: Vec<(OwnedFd, RawFd)>,
    /// stdin, stdout, stderr; `None` inherits ours.
    pub stdio: Option<[OwnedFd; 3]>,
    /// Process group to join; `None` stays in ours.
    pub process_group: Option<i32>,
}

/// Starts the program. The child's signal mask is cleared (a launcher
/// blocks the signals it forwards).
///
/// # Errors
/// [`SpawnError`].
pub fn spawn(spec: SpawnSpec) -> Result<Child, SpawnError> {
    let mut targets: Vec<RawFd> = spec.fds.iter().map(|(_, t)| *t).collect();
    targets.sort_unstable();
    for pair in targets.windows(2) {
        if pair[0] == pair[1] {
            return Err(SpawnError::BadTarget(pair[0]));
        }
    }
    if let Some(&t) = targets.iter().find(|&&t| t <= 2) {
        return Err(SpawnError::BadTarget(t));
    }
    // Every source goes above every target first, so that placing one fd
    // with dup2 never overwrites a source still to be placed.
    let above = targets.last().map_or(3, |t| t + 1);
    let moved = spec
        .fds
        .iter()
        .map(|(fd, target)| {
            rustix::io::fcntl_dupfd_cloexec(fd, above)
                .map(|high| (high, *target))
                .map_err(|e| SpawnError::Dup(e.into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let plan: Vec<(RawFd, RawFd)> = moved
        .iter()
        .map(|(fd, target)| (fd.as_raw_fd(), *target))
        .collect();

    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args);
    if let Some([stdin, stdout, stderr]) = spec.stdio {
        cmd.stdin(Stdio::from(stdin))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
    }
    if let Some(group) = spec.process_group {
        cmd.process_group(group);
    }
    if VmmKind::of_program(&spec.program) == VmmKind::CloudHypervisor {
        // With a backtrace asked for, an error path of cloud-hypervisor
        // captures one, whose getcwd its own seccomp filter kills.
        cmd.env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE");
    }
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (dup2, sigemptyset, sigprocmask) on
    // data prepared in the parent; it allocates nothing (`last_os_error`
    // builds an error from errno without allocating).
    unsafe {
        cmd.pre_exec(move || {
            for &(src, dst) in &plan {
                // SAFETY: `src` is an open fd (kept open by `moved` in the
                // parent until spawn returns) and `dst` a valid fd number;
                // dup2 clears FD_CLOEXEC on `dst`, so it survives exec.
                if libc::dup2(src, dst) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            // SAFETY: sigemptyset initializes the set it is given; the
            // initialized set is then only read by sigprocmask.
            let rc = libc::sigemptyset(set.as_mut_ptr());
            if rc == 0
                && libc::sigprocmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut()) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| SpawnError::Spawn {
        program: spec.program.clone(),
        source,
    })?;
    // The child has its copies; ours (and the moved ones) close here.
    drop(moved);
    Ok(child)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn fds_arrive_at_their_numbers() {
        let (r1, w1) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let (r2, w2) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        rustix::io::write(&w1, b"one").unwrap();
        rustix::io::write(&w2, b"two").unwrap();
        drop((w1, w2));
        let (out_r, out_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let mut out_r = std::fs::File::from(out_r);
        let devnull: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let stderr = rustix::io::dup(std::io::stderr()).unwrap();
        // Targets swapped relative to where the sources might sit.
        let child = spawn(SpawnSpec {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                "cat /proc/self/fd/41 /proc/self/fd/40; [ -e /proc/self/fd/42 ] || echo ok".into(),
            ],
            fds: vec![(r2, 41), (r1, 40)],
            stdio: Some([devnull, out_w, stderr]),
            process_group: None,
        })
        .unwrap();
        let mut text = String::new();
        out_r.read_to_string(&mut text).unwrap();
        let status = child.wait_with_output().unwrap().status;
        assert!(status.success());
        assert_eq!(text, "twooneok\n");
    }

    #[test]
    fn bad_targets_and_programs() {
        let fd = || -> OwnedFd { std::fs::File::open("/dev/null").unwrap().into() };
        let spec = |fds, program: &str| SpawnSpec {
            program: program.into(),
            args: vec![],
            fds,
            stdio: None,
            process_group: None,
        };
        assert!(matches!(
            spawn(spec(vec![(fd(), 1)], "true")),
            Err(SpawnError::BadTarget(1))
        ));
        assert!(matches!(
            spawn(spec(vec![(fd(), 50), (fd(), 50)], "true")),
            Err(SpawnError::BadTarget(50))
        ));
        let err = spawn(spec(vec![], "/nonexistent/qemu")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/qemu"), "{err}");
    }
}
