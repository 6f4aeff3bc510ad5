//! The ledger's journal in the state dir, so gmemd comes back from its own
//! crash or upgrade knowing every file, VM, lease, binding and connection.
//!
//! Two files: `ledger.snap`, a snapshot written whole (write, fsync,
//! rename), and `ledger.journal`, records appended since (one `write` per
//! change, before its reply is sent). Each record is one entity's state
//! ([`record`]); replaying them in order gives the state ([`state`]).
//! Damage is never silent ([`codec`]): a torn tail is cut, a damaged
//! record in the middle is kept aside in `ledger.journal.damaged.*` (or
//! `ledger.snap.damaged.*`) and reported,
//! and everything the intact records describe comes back. A lock file
//! keeps a second gmemd off a state dir that one already uses.

pub mod codec;
pub mod record;
pub mod state;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

pub use record::Record;
pub use state::State;

const SNAPSHOT: &str = "ledger.snap";
const JOURNAL: &str = "ledger.journal";
const LOCK: &str = "gmemd.lock";
/// The journal is folded into a new snapshot once it is this large and
/// larger than the snapshot.
const COMPACT_AT: u64 = 4 << 20;

/// Why the journal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another gmemd holds the state dir.
    #[error(
        "another gmemd (pid {pid}) uses the state dir {dir}: one gmemd per state dir; stop it, \
         or give this one another --state-dir"
    )]
    Locked {
        /// The state dir.
        dir: PathBuf,
        /// The pid in the lock file, if readable.
        pid: String,
    },
    /// A state file was written by a newer gmemd, or is not ours.
    #[error("cannot use {path}")]
    Header {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: codec::HeaderError,
    },
    /// Reading or writing failed.
    #[error("{what} {path}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The state the intact records describe.
    pub state: State,
    /// Records read (snapshot and journal).
    pub records: usize,
    /// Damage found and what was done about it, for the log and STATUS.
    pub damage: Vec<String>,
}

/// The open journal of a state dir.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: File,
    written: u64,
    snapshot_len: u64,
    _lock: File,
}

impl Journal {
    /// Locks the state dir and reads what it holds.
    ///
    /// # Errors
    /// [`JournalError`]: locked by another gmemd, a newer format, I/O.
    pub fn open(dir: &Path) -> Result<(Self, Recovered), JournalError> {
        let lock = lock(dir)?;
        let mut recovered = Recovered::default();
        let snapshot_len = read_into(&dir.join(SNAPSHOT), &mut recovered, false)?;
        let journal_path = dir.join(JOURNAL);
        let written = read_into(&journal_path, &mut recovered, true)?;
        let io_err = |what| {
            let path = journal_path.clone();
            move |source| JournalError::Io { what, path, source }
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal_path)
            .map_err(io_err("opening"))?;
        let mut written = written;
        if written == 0 {
            file.write_all(&codec::header())
                .map_err(io_err("writing"))?;
            written = codec::HEADER_LEN as u64;
        }
        Ok((
            Journal {
                dir: dir.to_owned(),
                file,
                written,
                snapshot_len,
                _lock: lock,
            },
            recovered,
        ))
    }

    /// Appends records in one `write`.
    ///
    /// # Errors
    /// The write failure; the caller must not answer as if it was kept.
    pub fn append(&mut self, records: &[Record]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::new();
        for r in records {
            bytes.extend_from_slice(&codec::frame(&r.encode()));
        }
        self.file.write_all(&bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Whether the journal should be folded into a snapshot.
    pub fn wants_compaction(&self) -> bool {
        self.written > COMPACT_AT && self.written > self.snapshot_len
    }

    /// Writes `records` (the whole state) as the new snapshot and starts an
    /// empty journal. Crash-safe: each file is written, synced and renamed
    /// into place, the snapshot first; a crash in between leaves the old
    /// journal, whose records the new snapshot already contains.
    ///
    /// # Errors
    /// I/O; the old files stay in use then.
    pub fn compact(&mut self, records: &[Record]) -> io::Result<()> {
        let mut snap = codec::header().to_vec();
        for r in records {
            snap.extend_from_slice(&codec::frame(&r.encode()));
        }
        replace(&self.dir.join(SNAPSHOT), &snap)?;
        replace(&self.dir.join(JOURNAL), &codec::header())?;
        self.file = OpenOptions::new()
            .append(true)
            .open(self.dir.join(JOURNAL))?;
        self.written = codec::HEADER_LEN as u64;
        self.snapshot_len = snap.len() as u64;
        Ok(())
    }

    /// Bytes in the journal and the snapshot.
    pub fn sizes(&self) -> (u64, u64) {
        (self.written, self.snapshot_len)
    }
}

/// Takes the state dir's lock (flock, released when gmemd's process ends,
/// however it ends) and writes gmemd's pid into it.
fn lock(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join(LOCK);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|source| JournalError::Io {
            what: "opening",
            path: path.clone(),
            source,
        })?;
    if rustix::fs::flock(
        file.as_fd(),
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .is_err()
    {
        let pid = std::fs::read_to_string(&path).unwrap_or_default();
        return Err(JournalError::Locked {
            dir: dir.to_owned(),
            pid: pid.trim().to_owned(),
        });
    }
    let _ = file.set_len(0);
    let _ = write!(file, "{}", std::process::id());
    Ok(file)
}

/// Applies the records of `path` (if it exists) to `recovered`; returns
/// the length of its intact part. A torn tail of the journal is cut.
fn read_into(path: &Path, recovered: &mut Recovered, cut_tail: bool) -> Result<u64, JournalError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(JournalError::Io {
                what: "reading",
                path: path.to_owned(),
                source,
            })
        }
    };
    if bytes.len() < codec::HEADER_LEN {
        // Torn while its header was written: nothing in it yet.
        if !bytes.is_empty() {
            recovered.damage.push(format!(
                "{}: {} bytes, no header: started anew",
                path.display(),
                bytes.len()
            ));
        }
        let file = OpenOptions::new().write(true).open(path);
        file.and_then(|f| f.set_len(0))
            .map_err(|source| JournalError::Io {
                what: "emptying",
                path: path.to_owned(),
                source,
            })?;
        return Ok(0);
    }
    codec::check_header(&bytes).map_err(|source| JournalError::Header {
        path: path.to_owned(),
        source,
    })?;
    let scan = codec::scan(&bytes);
    for range in &scan.damaged {
        let kept = quarantine(path, &bytes[range.clone()]);
        recovered.damage.push(format!(
            "{}: damaged record at bytes {}..{} set aside{kept}; the entity it described keeps \
             its previous state",
            path.display(),
            range.start,
            range.end
        ));
    }
    for range in &scan.records {
        match Record::decode(&bytes[range.clone()]) {
            Ok(record) => {
                recovered.state.apply(record);
                recovered.records += 1;
            }
            Err(e) => recovered.damage.push(format!(
                "{}: record at byte {} does not decode ({e}); skipped",
                path.display(),
                range.start
            )),
        }
    }
    if scan.torn(bytes.len()) {
        let kept = quarantine(path, &bytes[scan.end..]);
        recovered.damage.push(format!(
            "{}: torn tail of {} bytes after byte {} cut{kept}",
            path.display(),
            bytes.len() - scan.end,
            scan.end
        ));
        if cut_tail {
            let file = OpenOptions::new().write(true).open(path);
            if let Err(source) = file.and_then(|f| f.set_len(scan.end as u64)) {
                return Err(JournalError::Io {
                    what: "cutting the torn tail of",
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(scan.end as u64)
}

/// Keeps damaged bytes beside the state for the operator.
fn quarantine(path: &Path, bytes: &[u8]) -> String {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!(
        "{}.damaged.{stamp}",
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    );
    let aside = path.with_file_name(name);
    match std::fs::write(&aside, bytes) {
        Ok(()) => format!(" (kept in {})", aside.display()),
        Err(e) => format!(" (could not keep it: {e})"),
    }
}

/// Writes `bytes` to `path` crash-safely: a temp file, synced, renamed.
fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
