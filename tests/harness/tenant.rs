//! Another tenant: `gmem-tenant` run as another uid or in another cgroup.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{ChildGuard, Daemon};

/// Uid of the tenants that are not root (`nobody`).
pub const NOBODY: u32 = 65534;
/// A second uid that is not root.
pub const OTHER: u32 = 65533;

/// What a finished `gmem-tenant` printed, step by step.
#[derive(Debug)]
pub struct TenantRun {
    /// Every line.
    pub lines: Vec<String>,
    results: HashMap<String, String>,
}

impl TenantRun {
    fn parse(text: &str) -> Self {
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let results = lines
            .iter()
            .filter_map(|l| l.split_once(" => "))
            .map(|(step, result)| (step.to_owned(), result.to_owned()))
            .collect();
        TenantRun { lines, results }
    }

    /// The result of `step` (`OK ...` or `ERR errno text`).
    ///
    /// # Panics
    /// If the step did not run.
    pub fn result(&self, step: &str) -> &str {
        self.results
            .get(step)
            .unwrap_or_else(|| panic!("step {step} did not run: {:#?}", self.lines))
    }

    /// The errno `step` was refused with.
    ///
    /// # Panics
    /// If it was not refused.
    pub fn errno(&self, step: &str) -> i32 {
        let r = self.result(step);
        r.strip_prefix("ERR ")
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{step} was not refused: {r}"))
    }

    /// Everything printed, for assertions on what must not appear.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// A `gmem-tenant` command on `daemon` as `uid` (`None`: as the test).
pub fn tenant_command(daemon: &Daemon, uid: Option<u32>, args: &[&str]) -> Command {
    let mut cmd = Command::new(crate::bin("gmem-tenant"));
    cmd.arg("--socket").arg(daemon.socket()).args(args);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs a tenant to its end (bounded) and returns what it printed.
///
/// # Panics
/// If it fails to run, does not finish in 60 s, or reports bad usage.
pub fn run_tenant(daemon: &Daemon, uid: Option<u32>, args: &[&str]) -> TenantRun {
    let mut child = ChildGuard::spawn_piped("gmem-tenant", tenant_command(daemon, uid, args));
    let text = child.wait_for_output("DONE", Duration::from_secs(60));
    let status = child.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "gmem-tenant {args:?}: {status}\n{text}");
    TenantRun::parse(&text)
}

/// Starts a tenant that keeps running; wait for its lines with
/// [`ChildGuard::wait_for_output`].
pub fn spawn_tenant(daemon: &Daemon, uid: Option<u32>, args: &[&str]) -> ChildGuard {
    ChildGuard::spawn_piped("gmem-tenant", tenant_command(daemon, uid, args))
}
