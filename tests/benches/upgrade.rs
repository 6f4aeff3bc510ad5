//! Handoff time of `gmemctl upgrade` against QEMU's own shared-file handoff and copying migration
//! (the measurement is `tests/bench/upgrade.rs`, shared with the bench
//! binary's `upgrade` rows).
//!
//! ```text
//! cargo bench -p gmem-tests --bench upgrade            # 1, 2 and 4 GiB
//! cargo bench -p gmem-tests --bench upgrade -- 1 2     # chosen sizes (GiB)
//! ```

#[path = "../bench/upgrade.rs"]
mod upgrade;

use gmem_tests::guest::guest;

fn main() {
    let gib: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let settings = upgrade::Settings {
        gib: if gib.is_empty() { vec![1, 2, 4] } else { gib },
        upgrades: 5,
        fill_mib: None,
    };
    let Some(rows) = upgrade::run(&settings, guest()) else {
        return;
    };
    println!();
    println!("| {} |", upgrade::HEADER.join(" | "));
    println!("|---|---|---|---|");
    for row in &rows {
        println!("| {} |", upgrade::cells(row).join(" | "));
    }
    println!("\n{}", upgrade::note(&settings));
}
