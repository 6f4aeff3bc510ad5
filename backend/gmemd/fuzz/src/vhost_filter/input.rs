//! The input layout of `vhost_filter`: a sequence of records, each one
//! frontend message and the fds sent with it.
//!
//! ```text
//! record := ctl fd-spec{ctl.nfds} header[12] payload[header.size]
//! ctl    := bits 0-3: nfds = (bits % 10), 0 to 9 (9 is one too many)
//!           bit 4: split: send the header alone, then the payload with the
//!                  fds (when there is a payload byte to carry them)
//! fd-spec:= bits 0-1: kind: 0, 1 our memfd (the judge accepts it),
//!                     2 a foreign memfd (the judge refuses it), 3 a pipe
//!           bits 2-7: size class s: the file is (s >> 1) pages, plus one
//!                     byte if s is odd
//! ```
//!
//! The header's size is the frontend's word: the payload is that many of
//! the following bytes, or all that is left (a message cut short by the
//! end of the input). Equal fd-specs in one input name the same file.

/// One page, the unit of memfd sizes.
pub const PAGE: u64 = 0x1000;

/// Bytes in a vhost-user header.
pub const HEADER_SIZE: usize = 12;

/// Flags bit 4 of ctl.
const SPLIT: u8 = 1 << 4;

/// What an fd-spec byte makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// A memfd the judge knows as the VM's memory.
    Own,
    /// A memfd the judge does not know.
    Foreign,
    /// The read end of a pipe: not a regular file.
    Pipe,
}

/// Decodes an fd-spec byte: its kind and, for memfds, the file size.
pub fn fd_spec(spec: u8) -> (FdKind, u64) {
    let kind = match spec & 3 {
        0 | 1 => FdKind::Own,
        2 => FdKind::Foreign,
        _ => FdKind::Pipe,
    };
    let class = u64::from(spec >> 2);
    (kind, (class >> 1) * PAGE + (class & 1))
}

/// Encodes an fd-spec: `pages` pages (at most 31), plus one byte if `odd`.
pub fn spec(kind: FdKind, pages: u8, odd: bool) -> u8 {
    assert!(pages < 32, "{pages} pages do not fit an fd-spec");
    let kind = match kind {
        FdKind::Own => 0,
        FdKind::Foreign => 2,
        FdKind::Pipe => 3,
    };
    (pages << 3) | (u8::from(odd) << 2) | kind
}

/// One record of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// The fd-spec of each fd to attach.
    pub fds: &'a [u8],
    pub split: bool,
    /// Header and payload as far as the input has them (never empty).
    pub bytes: &'a [u8],
}

impl Record<'_> {
    /// The header's payload size, if the header is whole.
    pub fn size(&self) -> Option<usize> {
        let raw: [u8; 4] = self.bytes.get(8..12)?.try_into().ok()?;
        Some(u32::from_le_bytes(raw) as usize)
    }

    /// Whether the fds travel with the payload rather than the header.
    pub fn fds_ride_payload(&self) -> bool {
        self.split && self.bytes.len() > HEADER_SIZE
    }
}

/// Splits an input into records.
pub fn parse(data: &[u8]) -> Vec<Record<'_>> {
    let mut records = Vec::new();
    let mut rest = data;
    while let Some((&ctl, tail)) = rest.split_first() {
        let nfds = usize::from(ctl & 0xf) % 10;
        if tail.len() < nfds {
            break;
        }
        let (fds, tail) = tail.split_at(nfds);
        if tail.is_empty() {
            // fds need at least one byte to travel with.
            break;
        }
        let size = match tail.get(8..12) {
            Some(raw) => u32::from_le_bytes(raw.try_into().expect("4 bytes")) as usize,
            None => 0,
        };
        let take = HEADER_SIZE.saturating_add(size).min(tail.len());
        let (bytes, tail) = tail.split_at(take);
        records.push(Record {
            fds,
            split: ctl & SPLIT != 0,
            bytes,
        });
        rest = tail;
    }
    records
}

/// A message to encode into an input (for seeds).
#[derive(Debug, Clone)]
pub struct Msg {
    pub fds: Vec<u8>,
    pub split: bool,
    pub request: u32,
    pub flags: u32,
    pub payload: Vec<u8>,
}

impl Msg {
    pub fn new(request: u32, flags: u32, payload: Vec<u8>) -> Self {
        Self {
            fds: Vec::new(),
            split: false,
            request,
            flags,
            payload,
        }
    }

    pub fn with_fds(mut self, fds: &[u8]) -> Self {
        self.fds = fds.to_vec();
        self
    }

    pub fn split(mut self) -> Self {
        self.split = true;
        self
    }
}

/// Encodes messages as an input.
pub fn encode(messages: &[Msg]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        assert!(m.fds.len() <= 9);
        out.push(u8::try_from(m.fds.len()).expect("at most 9") | if m.split { SPLIT } else { 0 });
        out.extend_from_slice(&m.fds);
        out.extend_from_slice(&m.request.to_le_bytes());
        out.extend_from_slice(&m.flags.to_le_bytes());
        let size = u32::try_from(m.payload.len()).expect("small payload");
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&m.payload);
    }
    out
}
