//! The handoff itself: a local migration with `x-ignore-shared` between two
//! QEMUs mapping the same memory, so only device state moves.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{ms, qmp_err, UpgradeError};
use crate::qmp::{MigrationInfo, QmpClient};

/// What a migration did.
#[derive(Debug)]
pub(super) struct Handoff {
    /// The source's final figures.
    pub info: MigrationInfo,
    /// From `migrate` to `completed`, ms.
    pub wall_ms: f64,
    /// Guest RAM that stayed in place, at least, as QEMU itself says: the
    /// shared memory backends with `x-ignore-shared` on in the source,
    /// less every page the stream carried.
    pub in_place_bytes: u64,
}

/// Runs the migration.
pub(super) fn migrate(
    old: &mut QmpClient,
    new: &mut QmpClient,
    socket: &Path,
    timeout: Duration,
) -> Result<Handoff, UpgradeError> {
    let caps = [("x-ignore-shared", true)];
    old.migrate_set_capabilities(&caps)
        .map_err(qmp_err("old"))?;
    new.migrate_set_capabilities(&caps)
        .map_err(qmp_err("new"))?;
    let shared = shared_ram_skipped(old).map_err(qmp_err("old"))?;
    let uri = format!("unix:{}", socket.display());
    new.migrate_incoming(&uri).map_err(qmp_err("new"))?;
    let t = Instant::now();
    let result = old.migrate(&uri).and_then(|()| old.wait_migration(timeout));
    let handoff = ms(t.elapsed());
    let _ = std::fs::remove_file(socket);
    match result {
        Ok(info) => Ok(Handoff {
            in_place_bytes: in_place(shared, &info),
            info,
            wall_ms: handoff,
        }),
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

/// Bytes of shared memory backends the source will skip: their sum if its
/// `x-ignore-shared` is on, else 0.
fn shared_ram_skipped(old: &mut QmpClient) -> Result<u64, crate::qmp::QmpError> {
    let ignoring = old
        .query_migrate_capabilities()?
        .iter()
        .any(|(name, on)| name == "x-ignore-shared" && *on);
    if !ignoring {
        return Ok(0);
    }
    Ok(old
        .query_memdevs()?
        .iter()
        .filter(|(_, _, share)| *share)
        .map(|(_, size, _)| size)
        .sum())
}

/// Guest RAM that stayed in place, at least: what QEMU skipped, less every
/// page the stream carried (`ram.normal` + `ram.duplicate`, of the
/// target's 4 KiB), private blocks (firmware, ROMs, video memory)
/// included, so the figure never claims more than was measured.
fn in_place(skipped: u64, info: &MigrationInfo) -> u64 {
    const TARGET_PAGE: u64 = 4096;
    let pages = info.ram_normal_pages.unwrap_or(0) + info.ram_duplicate_pages.unwrap_or(0);
    skipped.saturating_sub(pages.saturating_mul(TARGET_PAGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(normal: u64, duplicate: u64) -> MigrationInfo {
        MigrationInfo {
            ram_normal_pages: Some(normal),
            ram_duplicate_pages: Some(duplicate),
            ..MigrationInfo::default()
        }
    }

    #[test]
    fn ram_stays_in_place_only_as_far_as_the_stream_did_not_carry_it() {
        let gib = 1 << 30;
        // x-ignore-shared: ROM pages only.
        assert_eq!(in_place(gib, &info(52, 78)), gib - 130 * 4096);
        // A copying migration of the same guest: nothing in place.
        assert_eq!(in_place(gib, &info(200_000, 70_000)), 0);
        // Nothing skipped: nothing in place, whatever was sent.
        assert_eq!(in_place(0, &info(52, 78)), 0);
    }
}
