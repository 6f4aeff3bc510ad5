//! The handoff itself: a local migration with `x-ignore-shared` between two
//! QEMUs mapping the same memory, so only device state moves.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{ms, qmp_err, UpgradeError};
use crate::qmp::{MigrationInfo, QmpClient};

/// Runs the migration; returns the source's final figures and the wall
/// time from `migrate` to `completed`.
pub(super) fn migrate(
    old: &mut QmpClient,
    new: &mut QmpClient,
    socket: &Path,
    timeout: Duration,
) -> Result<(MigrationInfo, f64), UpgradeError> {
    let caps = [("x-ignore-shared", true)];
    old.migrate_set_capabilities(&caps)
        .map_err(qmp_err("old"))?;
    new.migrate_set_capabilities(&caps)
        .map_err(qmp_err("new"))?;
    let uri = format!("unix:{}", socket.display());
    new.migrate_incoming(&uri).map_err(qmp_err("new"))?;
    let t = Instant::now();
    let result = old.migrate(&uri).and_then(|()| old.wait_migration(timeout));
    let handoff = ms(t.elapsed());
    let _ = std::fs::remove_file(socket);
    match result {
        Ok(info) => Ok((info, handoff)),
        Err(e) => {
            if let Err(cancel) = old.migrate_cancel() {
                log::debug!("migrate_cancel: {cancel}");
            }
            Err(UpgradeError::Migration(e))
        }
    }
}

/// Waits until the new QEMU runs the guest (resuming it if it came up
/// paused, as with `-S`).
pub(super) fn wait_running(new: &mut QmpClient, timeout: Duration) -> Result<(), UpgradeError> {
    let deadline = Instant::now() + timeout;
    loop {
        let state = new.query_status().map_err(qmp_err("new"))?;
        match state.as_str() {
            "running" => return Ok(()),
            "paused" => new.cont().map_err(qmp_err("new"))?,
            _ if Instant::now() >= deadline => {
                return Err(UpgradeError::TargetState {
                    state,
                    expected: "running",
                })
            }
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}
