//! The committed seed corpus of a target: `corpus/<target>/seed-*`, each
//! run through the target's check before it is written.

use std::fs;
use std::path::Path;

/// Replaces the `seed-*` files of `dir` with `seeds` (other corpus files,
/// the fuzzer's finds, are kept), running `check` on each first.
///
/// # Panics
/// On I/O errors, and where `check` panics on a seed.
pub fn write_seeds(dir: &Path, seeds: &[(String, Vec<u8>)], check: fn(&[u8])) {
    fs::create_dir_all(dir).expect("create corpus dir");
    for entry in fs::read_dir(dir).expect("read corpus dir") {
        let path = entry.expect("corpus entry").path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("seed-"))
        {
            fs::remove_file(&path).expect("remove old seed");
        }
    }
    for (label, bytes) in seeds {
        check(bytes);
        fs::write(dir.join(format!("seed-{label}")), bytes).expect("write seed");
    }
    println!("{}: {} seeds", dir.display(), seeds.len());
}

/// Labels `items` `00-label`, `01-label`, ... in order.
pub fn numbered<L: std::fmt::Display>(
    items: impl IntoIterator<Item = (L, Vec<u8>)>,
) -> Vec<(String, Vec<u8>)> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, (label, bytes))| (format!("{i:02}-{label}"), bytes))
        .collect()
}
