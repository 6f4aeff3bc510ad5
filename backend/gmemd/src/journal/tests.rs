//! The journal against truncation at every byte, flipped bytes, a second
//! gmemd, a newer format and compaction.

use super::record::{FileRec, Meta};
use super::*;

fn file(fid: u64, name: &str) -> Record {
    Record::File(FileRec {
        fid,
        vm: Some([u8::try_from(fid).unwrap(); 16]),
        name: name.to_owned(),
        size: 4096 * fid,
        kind: 0,
        page_size: 4096,
        depositor: None,
        holders: vec![(100 + u32::try_from(fid).unwrap(), Some(fid))],
    })
}

fn history() -> Vec<Record> {
    vec![
        Record::Meta(Meta {
            next_fid: 9,
            ..Meta::default()
        }),
        file(1, "one"),
        file(2, "two"),
        file(3, "three"),
        Record::FileGone { fid: 2 },
        file(4, "four"),
    ]
}

fn state_of(records: &[Record]) -> State {
    let mut s = State::default();
    for r in records {
        s.apply(r.clone());
    }
    s
}

fn write_journal(dir: &Path, records: &[Record]) -> Vec<usize> {
    let mut bytes = codec::header().to_vec();
    let mut ends = Vec::new();
    for r in records {
        bytes.extend_from_slice(&codec::frame(&r.encode()));
        ends.push(bytes.len());
    }
    std::fs::write(dir.join(JOURNAL), &bytes).unwrap();
    ends
}

#[test]
fn appended_records_come_back_and_a_second_gmemd_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.records, 0);
    j.append(&history()).unwrap();
    let err = Journal::open(dir.path()).unwrap_err();
    assert!(matches!(err, JournalError::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains(&std::process::id().to_string()),
        "{err}"
    );
    drop(j);
    let (_j, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.state, state_of(&history()));
    assert!(rec.damage.is_empty(), "{:?}", rec.damage);
}

#[test]
fn truncated_at_every_byte_the_whole_records_before_the_cut_come_back() {
    let records = history();
    let dir = tempfile::tempdir().unwrap();
    let ends = write_journal(dir.path(), &records);
    let full = std::fs::read(dir.path().join(JOURNAL)).unwrap();
    for cut in 0..=full.len() {
        std::fs::write(dir.path().join(JOURNAL), &full[..cut]).unwrap();
        let (_j, rec) = Journal::open(dir.path()).unwrap();
        let whole = ends.iter().filter(|e| **e <= cut).count();
        assert_eq!(rec.state, state_of(&records[..whole]), "cut at {cut}");
        let torn = cut != codec::HEADER_LEN && !ends.contains(&cut) && cut != 0;
        assert_eq!(
            !rec.damage.is_empty(),
            torn,
            "cut at {cut}: {:?}",
            rec.damage
        );
        // The tail was cut: reopening finds nothing more to report.
        drop(_j);
        let (_j, again) = Journal::open(dir.path()).unwrap();
        assert!(again.damage.is_empty(), "cut at {cut}: {:?}", again.damage);
        assert_eq!(again.state, rec.state, "cut at {cut}");
    }
}

#[test]
fn a_flipped_byte_costs_one_record_reported_and_kept_aside() {
    let records = history();
    let dir = tempfile::tempdir().unwrap();
    let ends = write_journal(dir.path(), &records);
    let full = std::fs::read(dir.path().join(JOURNAL)).unwrap();
    let starts: Vec<usize> = std::iter::once(codec::HEADER_LEN)
        .chain(ends.iter().copied())
        .collect();
    for at in (codec::HEADER_LEN..full.len()).step_by(3) {
        let mut bad = full.clone();
        bad[at] ^= 0x10;
        std::fs::write(dir.path().join(JOURNAL), &bad).unwrap();
        let (_j, rec) = Journal::open(dir.path()).unwrap();
        let hit = starts.iter().rposition(|s| *s <= at).unwrap();
        let kept: Vec<Record> = records
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != hit)
            .map(|(_, r)| r.clone())
            .collect();
        assert_eq!(rec.state, state_of(&kept), "flip at {at}");
        assert_eq!(rec.damage.len(), 1, "flip at {at}: {:?}", rec.damage);
    }
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".damaged.")
        })
        .count();
    assert!(aside > 0, "damaged bytes are kept for the operator");
}

#[test]
fn a_newer_format_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = codec::header();
    h[8..].copy_from_slice(&(codec::FORMAT_VERSION + 1).to_le_bytes());
    std::fs::write(dir.path().join(SNAPSHOT), h).unwrap();
    let err = Journal::open(dir.path()).unwrap_err();
    let text = crate::error_chain(&err);
    assert!(
        text.contains("newer gmemd") && text.contains("ledger.snap"),
        "{text}"
    );
}

#[test]
fn compaction_keeps_the_state_and_empties_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path()).unwrap();
    j.append(&history()).unwrap();
    let state = state_of(&history());
    j.compact(&state.records()).unwrap();
    assert_eq!(j.sizes().0, codec::HEADER_LEN as u64);
    j.append(&[Record::FileGone { fid: 1 }]).unwrap();
    drop(j);
    let (_j, rec) = Journal::open(dir.path()).unwrap();
    let mut expected = state;
    expected.apply(Record::FileGone { fid: 1 });
    assert_eq!(rec.state, expected);
}
