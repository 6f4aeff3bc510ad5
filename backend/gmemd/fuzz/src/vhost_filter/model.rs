//! What the filter must do with each record, written from the vhost-user
//! spec and the filter's documented rules (not from its code): forward it
//! unchanged, refuse it (a failed REPLY_ACK if asked), or end the
//! connection with a given error.

use super::input::{Record, HEADER_SIZE};

/// The largest payload (vhost's MAX_MSG_SIZE).
pub const MAX_PAYLOAD: usize = 0x1000;
/// The most fds a message may carry.
pub const MAX_FDS: usize = 8;
/// The most regions the backend holds (vhost-user-backend's MAX_MEM_SLOTS).
pub const MAX_MEM_SLOTS: usize = 509;

pub const SET_MEM_TABLE: u32 = 5;
pub const SET_LOG_BASE: u32 = 6;
pub const SET_LOG_FD: u32 = 7;
pub const SET_VRING_KICK: u32 = 12;
pub const SET_VRING_CALL: u32 = 13;
pub const SET_VRING_ERR: u32 = 14;
pub const SET_BACKEND_REQ_FD: u32 = 21;
pub const SET_INFLIGHT_FD: u32 = 32;
pub const ADD_MEM_REG: u32 = 37;
pub const REM_MEM_REG: u32 = 38;
pub const SET_DEVICE_STATE_FD: u32 = 42;

pub const VERSION_1: u32 = 1;
pub const REPLY: u32 = 1 << 2;
pub const NEED_REPLY: u32 = 1 << 3;
pub const VRING_NOFD: u64 = 1 << 8;

/// How the filter ends, by error kind (`None` in `Expected::end`: the
/// frontend hung up between messages and the filter ended cleanly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Truncated,
    Oversized,
    TooManyFds,
    BadVersion,
    ReplyFromFrontend,
    PayloadSize,
    RegionCount,
    FdCount,
    LogBaseRefused,
}

/// A file as the model sees it: what fstat would say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct File {
    pub regular: bool,
    pub size: u64,
    pub id: (u64, u64),
    /// The judge knows it as the VM's memory.
    pub own: bool,
}

/// A region of the backend's table, as the judge is told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub gpa: u64,
    pub size: u64,
    pub offset: u64,
    pub id: (u64, u64),
}

/// What the backend must receive for one forwarded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub bytes: Vec<u8>,
    /// The files attached, in order.
    pub fds: Vec<(u64, u64)>,
}

/// The whole expected run.
#[derive(Debug, Default)]
pub struct Expected {
    pub forwarded: Vec<Forward>,
    /// Failed REPLY_ACKs the frontend must get, concatenated.
    pub replies: Vec<u8>,
    pub refused: u64,
    /// Every table the judge is told, in order.
    pub tables: Vec<Vec<Region>>,
    pub end: Option<End>,
    /// Records the filter reads (the rest come after its end).
    pub records_read: usize,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The region of 32 bytes at `at`: (gpa, size, user address, offset).
fn region_at(b: &[u8], at: usize) -> (u64, u64, u64, u64) {
    (
        u64_at(b, at),
        u64_at(b, at + 8),
        u64_at(b, at + 16),
        u64_at(b, at + 24),
    )
}

/// How many fds `request` with `payload` takes: (least, most).
pub fn fd_rule(request: u32, payload: &[u8]) -> (usize, usize) {
    match request {
        SET_MEM_TABLE if payload.len() >= 4 => {
            let n = u32_at(payload, 0) as usize;
            (n, n)
        }
        ADD_MEM_REG | SET_LOG_BASE | SET_LOG_FD | SET_BACKEND_REQ_FD | SET_INFLIGHT_FD
        | SET_DEVICE_STATE_FD => (1, 1),
        // The spec says none; older QEMUs sent one.
        REM_MEM_REG => (0, 1),
        SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR if payload.len() == 8 => {
            if u64_at(payload, 0) & VRING_NOFD != 0 {
                (0, 0)
            } else {
                (1, 1)
            }
        }
        _ => (0, 0),
    }
}

/// The payload size `request` must have, if fixed.
fn fixed_size(request: u32) -> Option<usize> {
    match request {
        ADD_MEM_REG | REM_MEM_REG => Some(40),
        SET_LOG_BASE => Some(16),
        SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => Some(8),
        _ => None,
    }
}

/// Whether (gpa, size, user, offset) may be mapped from `file`, on its
/// own: the judge's word included.
fn region_ok(r: (u64, u64, u64, u64), file: &File) -> bool {
    let (gpa, size, user, offset) = r;
    size != 0
        && gpa.checked_add(size).is_some()
        && user.checked_add(size).is_some()
        && offset.checked_add(size).is_some_and(|end| end <= file.size)
        && file.regular
        && file.own
}

fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    // Both checked not to overflow.
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

/// The model's filter state.
#[derive(Default)]
struct Model {
    table: Vec<Region>,
    out: Expected,
}

/// Runs the model over `records`; `files[i]` are the files of record `i`.
pub fn expect(records: &[Record<'_>], files: &[Vec<File>]) -> Expected {
    let mut model = Model::default();
    for (record, files) in records.iter().zip(files) {
        model.out.records_read += 1;
        if let Err(end) = model.step(record, files) {
            model.out.end = Some(end);
            break;
        }
    }
    model.out
}

impl Model {
    fn step(&mut self, record: &Record<'_>, files: &[File]) -> Result<(), End> {
        let bytes = record.bytes;
        let nfds = files.len();
        // Framing: the header (with the fds unless they ride the payload).
        if !record.fds_ride_payload() && nfds > MAX_FDS {
            return Err(End::TooManyFds);
        }
        let Some(size) = record.size() else {
            return Err(End::Truncated);
        };
        if size > MAX_PAYLOAD {
            return Err(End::Oversized);
        }
        if record.fds_ride_payload() && nfds > MAX_FDS {
            return Err(End::TooManyFds);
        }
        if bytes.len() < HEADER_SIZE + size {
            return Err(End::Truncated);
        }
        let (request, flags) = (u32_at(bytes, 0), u32_at(bytes, 4));
        let payload = &bytes[HEADER_SIZE..];
        if flags & 3 != VERSION_1 {
            return Err(End::BadVersion);
        }
        if flags & REPLY != 0 {
            return Err(End::ReplyFromFrontend);
        }
        // Syntax.
        if request == SET_MEM_TABLE {
            if payload.len() < 8 {
                return Err(End::PayloadSize);
            }
            let n = u32_at(payload, 0);
            if n == 0 || n > 8 {
                return Err(End::RegionCount);
            }
            if payload.len() != 8 + 32 * n as usize {
                return Err(End::PayloadSize);
            }
        }
        if fixed_size(request).is_some_and(|want| want != payload.len()) {
            return Err(End::PayloadSize);
        }
        let (least, most) = fd_rule(request, payload);
        if nfds < least || nfds > most {
            return Err(End::FdCount);
        }
        let ids: Vec<_> = files.iter().map(|f| f.id).collect();
        let forward = |out: &mut Expected, fds: Vec<(u64, u64)>| {
            out.forwarded.push(Forward {
                bytes: bytes.to_vec(),
                fds,
            });
        };
        // Semantics.
        match request {
            SET_MEM_TABLE => {
                let mut regions: Vec<Region> = Vec::new();
                for (i, file) in files.iter().enumerate() {
                    let r = region_at(payload, 8 + 32 * i);
                    let ok = region_ok(r, file)
                        && !regions.iter().any(|o| overlap((r.0, r.1), (o.gpa, o.size)));
                    if !ok {
                        self.refuse(request, flags);
                        return Ok(());
                    }
                    regions.push(Region {
                        gpa: r.0,
                        size: r.1,
                        offset: r.3,
                        id: file.id,
                    });
                }
                forward(&mut self.out, ids);
                self.table = regions;
                self.out.tables.push(self.table.clone());
            }
            ADD_MEM_REG => {
                let r = region_at(payload, 8);
                let ok = self.table.len() < MAX_MEM_SLOTS
                    && region_ok(r, &files[0])
                    && !self
                        .table
                        .iter()
                        .any(|o| overlap((r.0, r.1), (o.gpa, o.size)));
                if !ok {
                    self.refuse(request, flags);
                    return Ok(());
                }
                forward(&mut self.out, ids);
                self.table.push(Region {
                    gpa: r.0,
                    size: r.1,
                    offset: r.3,
                    id: files[0].id,
                });
                self.out.tables.push(self.table.clone());
            }
            REM_MEM_REG => {
                // Passed on without the fd an old QEMU may attach.
                forward(&mut self.out, Vec::new());
                let r = region_at(payload, 8);
                self.table.retain(|o| !(o.gpa == r.0 && o.size == r.1));
                self.out.tables.push(self.table.clone());
            }
            SET_LOG_BASE => {
                let (size, offset) = (u64_at(payload, 0), u64_at(payload, 8));
                let file = &files[0];
                let ok = file.regular && offset.checked_add(size).is_some_and(|e| e <= file.size);
                if !ok {
                    return Err(End::LogBaseRefused);
                }
                forward(&mut self.out, ids);
            }
            _ => forward(&mut self.out, ids),
        }
        Ok(())
    }

    fn refuse(&mut self, request: u32, flags: u32) {
        self.out.refused += 1;
        if flags & NEED_REPLY != 0 {
            let out = &mut self.out.replies;
            out.extend_from_slice(&request.to_le_bytes());
            out.extend_from_slice(&(VERSION_1 | REPLY).to_le_bytes());
            out.extend_from_slice(&8u32.to_le_bytes());
            out.extend_from_slice(&1u64.to_le_bytes());
        }
    }
}
