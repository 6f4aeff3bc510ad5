//! Upgrade rows: the measurement of `upgrade.rs` (shared with `cargo bench
//! --bench upgrade`) as lines of the table, two per guest size: the whole
//! `gmemctl upgrade` (start of the new QEMU to the guest running there)
//! beside QEMU's own handoff of RAM on a shared file, and beside QEMU's
//! copying migration.
//!
//! In smoke mode each guest fills 64 MiB instead of 3/4 of its RAM and is
//! upgraded once: the rows are exercised, not measured.

use crate::args::Options;
use crate::report::{Figure, GroupReport, Row, Table};
use crate::upgrade::{self, Settings};

/// MiB a smoke run's guests fill (a TCG guest fills about 100 MiB/s).
const SMOKE_FILL_MIB: u64 = 64;

/// Runs the group.
pub fn run(options: &Options) -> GroupReport {
    let mut report = GroupReport::default();
    let settings = Settings {
        gib: options.upgrade_gib.clone(),
        upgrades: options.rounds,
        fill_mib: options.smoke.then_some(SMOKE_FILL_MIB),
    };
    let measured = crate::guest::build()
        .and_then(|guest| upgrade::run(&settings, &guest).ok_or_else(|| "no QEMU".to_owned()));
    let sizes = match measured {
        Ok(sizes) => sizes,
        Err(e) => {
            report.rows.push(Row {
                measurement: "upgrade".to_owned(),
                gmemd: Err(e.clone()),
                baseline: Err(e),
                target: None,
            });
            return report;
        }
    };
    let mut details = Table::new("handoff of a running guest", &upgrade::HEADER);
    for size in &sizes {
        for (baseline, figures) in [
            (
                "QEMU alone, RAM on a shared file, x-ignore-shared",
                size.shared,
            ),
            ("QEMU copying migration", size.copy),
        ] {
            report.rows.push(Row {
                measurement: format!(
                    "upgrade {} GiB guest ({} MiB filled): gmemctl upgrade, new QEMU start to running (vs {baseline})",
                    size.gib, size.fill_mib
                ),
                gmemd: Ok(Figure::Millis(size.upgrade.whole_ms)),
                baseline: Ok(Figure::Millis(figures.whole_ms)),
                target: None,
            });
        }
        details.push(upgrade::cells(size).to_vec());
    }
    report.details.push(details);
    report.notes.push(upgrade::note(&settings));
    report
}
