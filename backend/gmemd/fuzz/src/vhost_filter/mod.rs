//! `vhost_filter`: the real vhost-user filter (`gmemd::vhost::filter::run`)
//! between two socketpairs, fed a sequence of frontend messages with fds.
//!
//! The input is a sequence of records (see `input`), each a message and
//! the fds to attach: memfds the judge knows, memfds it does not, pipes.
//! The harness writes them into the frontend socket (non-blocking, reading
//! the filter's replies in between so neither side can stall the other),
//! then shuts its writing side down; a thread drains the backend socket
//! message by message. The judge accepts regions of the memfds it made as
//! "own" and refuses every other file.
//!
//! Properties: nothing panics and `run` ends once the frontend has hung up
//! (a stall of [`STALL`] is a failure). Every message the backend gets is a
//! well-formed message (version 1, not a reply, whole, at most 0x1000
//! bytes) with exactly the fds its request takes; every region it is sent
//! lies inside its fd's regular file and is one of the judge's. Beyond
//! those, a model written from the protocol (`model`) says for each record
//! whether it is forwarded unchanged (same bytes, same files), refused (not
//! forwarded; a failed REPLY_ACK when NEED_REPLY is set) or ends the
//! connection, and with which error; the backend's messages, the
//! frontend's replies, the judge's tables and `run`'s result must be
//! exactly that.

mod input;
mod model;
mod peer;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use gmemd::vhost::filter::{
    run, FilterEnd, FilterError, MappedRegion, RegionJudge, Side, TransportError, WireError,
};
use rustix::fs::{fstat, ftruncate, memfd_create, FileType, MemfdFlags};

pub use input::{encode, fd_spec, parse, spec, FdKind, Msg, Record, PAGE};
pub use model::{End, Expected, Region};
pub use model::{
    ADD_MEM_REG, NEED_REPLY, REM_MEM_REG, SET_LOG_BASE, SET_LOG_FD, SET_MEM_TABLE, SET_VRING_CALL,
    SET_VRING_ERR, SET_VRING_KICK, VERSION_1, VRING_NOFD,
};

/// How long any side may wait for the other before the run counts as hung.
pub const STALL: Duration = Duration::from_secs(10);

/// The files of one input: one per distinct fd-spec byte.
struct Files {
    by_spec: HashMap<u8, (OwnedFd, model::File)>,
    /// Write ends of pipes, kept open so the read ends stay pipes with a
    /// writer (not that the filter cares).
    _writers: Vec<OwnedFd>,
}

impl Files {
    fn new(records: &[Record<'_>]) -> Self {
        let mut files = Self {
            by_spec: HashMap::new(),
            _writers: Vec::new(),
        };
        for &spec in records.iter().flat_map(|r| r.fds) {
            if files.by_spec.contains_key(&spec) {
                continue;
            }
            let (kind, size) = fd_spec(spec);
            let fd = match kind {
                FdKind::Own | FdKind::Foreign => {
                    let fd = memfd_create("vhost-filter-fuzz", MemfdFlags::CLOEXEC)
                        .expect("memfd_create");
                    ftruncate(&fd, size).expect("ftruncate memfd");
                    fd
                }
                FdKind::Pipe => {
                    let (read, write) = rustix::pipe::pipe().expect("pipe");
                    files._writers.push(write);
                    read
                }
            };
            let stat = fstat(&fd).expect("fstat own file");
            let file = model::File {
                regular: FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile,
                size: u64::try_from(stat.st_size).unwrap_or(0),
                id: (stat.st_dev, stat.st_ino),
                own: kind == FdKind::Own,
            };
            files.by_spec.insert(spec, (fd, file));
        }
        files
    }

    fn get(&self, spec: u8) -> &(OwnedFd, model::File) {
        &self.by_spec[&spec]
    }
}

/// Accepts regions of the harness's own memfds, refuses everything else,
/// and records the tables it is told.
struct Judge {
    own: Vec<(u64, u64)>,
    tables: Vec<Vec<Region>>,
}

impl RegionJudge for Judge {
    fn judge(&mut self, region: &MappedRegion) -> Result<(), String> {
        if self.own.contains(&(region.dev, region.ino)) {
            Ok(())
        } else {
            Err("not the VM's memory".into())
        }
    }

    fn table_changed(&mut self, table: &[MappedRegion]) {
        self.tables.push(
            table
                .iter()
                .map(|r| Region {
                    gpa: r.guest_phys_addr,
                    size: r.memory_size,
                    offset: r.mmap_offset,
                    id: (r.dev, r.ino),
                })
                .collect(),
        );
    }
}

/// What one run did, for gen-seeds to check its seeds reach what they
/// were written to reach.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    pub forwarded: usize,
    pub refused: u64,
    pub replies: usize,
    pub end: Option<End>,
}

/// Runs every property of the `vhost_filter` target on `data`.
pub fn check_filter(data: &[u8]) {
    run_input(data);
}

/// Runs `data` through the filter, checks every property, and says what
/// happened.
pub fn run_input(data: &[u8]) -> Summary {
    let records = parse(data);
    let files = Files::new(&records);
    let record_files: Vec<Vec<model::File>> = records
        .iter()
        .map(|r| r.fds.iter().map(|&s| files.get(s).1).collect())
        .collect();
    let expected = model::expect(&records, &record_files);

    let (qemu, frontend) = UnixStream::pair().expect("socketpair");
    let (filter_backend, backend) = UnixStream::pair().expect("socketpair");
    let mut judge = Judge {
        own: files
            .by_spec
            .values()
            .filter(|(_, f)| f.own)
            .map(|(_, f)| f.id)
            .collect(),
        tables: Vec::new(),
    };
    let (result, received, replies) = thread::scope(|scope| {
        let filter = scope.spawn(|| run(frontend, filter_backend, &mut judge));
        let drain = scope.spawn(|| peer::drain_backend(&backend));
        let replies = peer::play_frontend(&qemu, &records, |spec| files.get(spec).0.as_fd());
        let received = drain
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let result = filter
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (result, received, replies)
    });

    // What the backend got, on its own terms.
    for message in &received {
        peer::check_forwarded(message, &judge.own);
    }
    // And exactly what the model says.
    let got: Vec<model::Forward> = received
        .iter()
        .map(|m| model::Forward {
            bytes: m.bytes.clone(),
            fds: m.ids.clone(),
        })
        .collect();
    assert_eq!(
        got.len(),
        expected.forwarded.len(),
        "forwarded message count (model: {expected:?})"
    );
    for (i, (got, want)) in got.iter().zip(&expected.forwarded).enumerate() {
        assert_eq!(got, want, "forwarded message {i}");
    }
    assert_eq!(replies, expected.replies, "replies to the frontend");
    assert_eq!(judge.tables, expected.tables, "tables the judge was told");
    match (&result, expected.end) {
        (Ok(end), None) => assert_eq!(
            *end,
            FilterEnd {
                closed_by: Side::Frontend,
                forwarded: expected.forwarded.len() as u64,
                refused: expected.refused,
            }
        ),
        (Err(e), Some(want)) => assert_eq!(error_kind(e), Some(want), "filter error {e:?}"),
        _ => panic!(
            "filter ended with {result:?}, model expected {:?}",
            expected.end
        ),
    }
    Summary {
        forwarded: expected.forwarded.len(),
        refused: expected.refused,
        replies: expected.replies.len() / 20,
        end: expected.end,
    }
}

/// The model's name for a filter error, if it has one.
fn error_kind(e: &FilterError) -> Option<End> {
    Some(match e {
        FilterError::ReceiveFromFrontend(TransportError::Truncated { .. }) => End::Truncated,
        FilterError::ReceiveFromFrontend(TransportError::Oversized { .. }) => End::Oversized,
        FilterError::ReceiveFromFrontend(TransportError::TooManyFds) => End::TooManyFds,
        FilterError::FrontendMessage(w) => match w {
            WireError::BadVersion { .. } => End::BadVersion,
            WireError::ReplyFromFrontend { .. } => End::ReplyFromFrontend,
            WireError::PayloadSize { .. } => End::PayloadSize,
            WireError::RegionCount { .. } => End::RegionCount,
            WireError::FdCount { .. } => End::FdCount,
        },
        FilterError::LogBaseRefused(_) => End::LogBaseRefused,
        _ => return None,
    })
}
