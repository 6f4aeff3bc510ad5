//! The journal's byte format: a file header (magic, format version), then
//! records, each `[magic u32][length u32][crc32 u32][payload]`, little
//! endian. The magic lets a reader find the next record after a damaged
//! one; the CRC covers the length and the payload.
//!
//! Reading never panics and never guesses: a torn or damaged tail is cut,
//! a damaged record in the middle is set aside whole (its bytes kept for
//! the operator) and reading resumes at the next intact record.

use std::ops::Range;

/// What every gmemd state file starts with.
pub const FILE_MAGIC: &[u8; 8] = b"GMEMDLG\0";
/// The format this gmemd writes and reads. A newer one is refused.
pub const FORMAT_VERSION: u32 = 1;
/// Header size: magic and version.
pub const HEADER_LEN: usize = 12;
/// What starts every record.
pub const RECORD_MAGIC: u32 = 0x5245_4d47; // "GMER"
/// Bytes before a record's payload.
pub const RECORD_HEAD: usize = 12;
/// Largest payload accepted: a record is one entity's state.
pub const MAX_RECORD: usize = 1 << 20;

/// The file header.
pub fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(FILE_MAGIC);
    h[8..].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// Why a file's header is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Not a gmemd state file.
    #[error("not a gmemd state file (bad magic)")]
    NotOurs,
    /// Written by a newer gmemd.
    #[error(
        "written by a newer gmemd (format {found}; this gmemd reads up to {FORMAT_VERSION}): \
         run that gmemd, or move the state dir aside to start empty"
    )]
    Newer {
        /// The file's version.
        found: u32,
    },
}

/// Checks a file's header; returns its format version.
///
/// # Errors
/// [`HeaderError`]; a file shorter than a header is [`HeaderError::NotOurs`].
pub fn check_header(bytes: &[u8]) -> Result<u32, HeaderError> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != FILE_MAGIC {
        return Err(HeaderError::NotOurs);
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version > FORMAT_VERSION {
        return Err(HeaderError::Newer { found: version });
    }
    Ok(version)
}

/// One record framed for the file.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("records are small");
    let mut out = Vec::with_capacity(RECORD_HEAD + payload.len());
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc(len, payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn crc(len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// What reading the records of a file found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Intact records' payload ranges, in order.
    pub records: Vec<Range<usize>>,
    /// Damaged stretches in the middle, set aside.
    pub damaged: Vec<Range<usize>>,
    /// Where the intact part ends: a torn or damaged tail starts here.
    pub end: usize,
}

impl Scan {
    /// Whether the file has a tail to cut.
    pub fn torn(&self, len: usize) -> bool {
        self.end < len
    }
}

/// Reads the records after the header. Never panics, whatever the bytes.
pub fn scan(bytes: &[u8]) -> Scan {
    let mut scan = Scan {
        end: HEADER_LEN.min(bytes.len()),
        ..Scan::default()
    };
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        match record_at(bytes, at) {
            Some(payload) => {
                at = payload.end;
                scan.records.push(payload);
                scan.end = at;
            }
            None => {
                // Damaged here: find the next intact record. If there is
                // none, this is the tail.
                match next_intact(bytes, at + 1) {
                    Some(next) => {
                        scan.damaged.push(at..next);
                        at = next;
                    }
                    None => break,
                }
            }
        }
    }
    scan
}

/// The payload range of an intact record starting at `at`.
fn record_at(bytes: &[u8], at: usize) -> Option<Range<usize>> {
    let head = bytes.get(at..at.checked_add(RECORD_HEAD)?)?;
    let word = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().expect("4 bytes"));
    if word(0) != RECORD_MAGIC {
        return None;
    }
    let len = word(4);
    let size = usize::try_from(len).ok().filter(|l| *l <= MAX_RECORD)?;
    let start = at + RECORD_HEAD;
    let payload = bytes.get(start..start.checked_add(size)?)?;
    (crc(len, payload) == word(8)).then_some(start..start + size)
}

fn next_intact(bytes: &[u8], from: usize) -> Option<usize> {
    let magic = RECORD_MAGIC.to_le_bytes();
    (from..bytes.len().saturating_sub(RECORD_HEAD - 1))
        .filter(|i| bytes[*i..].starts_with(&magic))
        .find(|i| record_at(bytes, *i).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(payloads: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let mut out = header().to_vec();
        let mut ends = Vec::new();
        for p in payloads {
            out.extend_from_slice(&frame(p));
            ends.push(out.len());
        }
        (out, ends)
    }

    fn payloads<'a>(bytes: &'a [u8], scan: &Scan) -> Vec<&'a [u8]> {
        scan.records.iter().map(|r| &bytes[r.clone()]).collect()
    }

    #[test]
    fn records_round_trip() {
        let (bytes, ends) = file(&[b"one", b"", b"three"]);
        let scan = scan(&bytes);
        assert_eq!(payloads(&bytes, &scan), [&b"one"[..], b"", b"three"]);
        assert!(scan.damaged.is_empty());
        assert_eq!(scan.end, *ends.last().unwrap());
        assert!(!scan.torn(bytes.len()));
    }

    #[test]
    fn a_cut_at_every_byte_keeps_exactly_the_whole_records_before_it() {
        let (bytes, ends) = file(&[b"alpha", b"beta-beta", b"gamma", b"d"]);
        for cut in HEADER_LEN..=bytes.len() {
            let part = &bytes[..cut];
            let scan = scan(part);
            let whole = ends.iter().filter(|e| **e <= cut).count();
            assert_eq!(scan.records.len(), whole, "cut at {cut}");
            assert!(scan.damaged.is_empty(), "cut at {cut}");
            let last = ends.iter().rev().find(|e| **e <= cut).copied();
            assert_eq!(scan.end, last.unwrap_or(HEADER_LEN), "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_byte_loses_only_its_record() {
        let names: [&[u8]; 5] = [b"r0", b"record-1", b"r2", b"record-three", b"r4"];
        let (bytes, ends) = file(&names);
        let starts: Vec<usize> = std::iter::once(HEADER_LEN)
            .chain(ends.iter().copied())
            .collect();
        for at in HEADER_LEN..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            let scan = scan(&bad);
            let hit = starts.iter().rposition(|s| *s <= at).unwrap();
            let got = payloads(&bad, &scan);
            let expected: Vec<&[u8]> = names
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != hit)
                .map(|(_, n)| *n)
                .collect();
            if hit == names.len() - 1 {
                // The last record is the tail: cut, not set aside.
                assert_eq!(got, expected, "flip at {at}");
                assert_eq!(scan.end, starts[hit], "flip at {at}");
            } else {
                assert_eq!(got, expected, "flip at {at}");
                assert_eq!(
                    scan.damaged,
                    vec![starts[hit]..starts[hit + 1]],
                    "flip at {at}"
                );
            }
        }
    }

    #[test]
    fn headers_are_checked() {
        assert_eq!(check_header(&header()), Ok(FORMAT_VERSION));
        assert_eq!(check_header(b"GMEMDLG"), Err(HeaderError::NotOurs));
        let mut newer = header();
        newer[8..].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let err = check_header(&newer).unwrap_err();
        assert!(err.to_string().contains("newer gmemd"), "{err}");
        assert!(scan(b"").records.is_empty());
    }
}
