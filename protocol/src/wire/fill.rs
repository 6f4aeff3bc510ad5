//! STATUS section 4 (feature `PREFAULT`): memory gmemd is populating ahead
//! of use, files CREATEd with `PREFAULT` and the warm pools.

use vm_memory::ByteValued;

use super::status::{finish_page, split_page, take};
use super::*;

/// How far a file's population got, or that the entry is a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillState {
    /// The file is being populated.
    Prefaulting,
    /// Every page of the file is populated.
    Populated,
    /// Populating stopped with this errno; the file is whole and usable,
    /// its remaining pages are faulted on first touch.
    Failed(u32),
    /// A warm pool (`ready`, `count`, `filling` say how full it is).
    Pool,
}

impl FillState {
    const PREFAULTING: u32 = 0;
    const POPULATED: u32 = 1;
    const FAILED: u32 = 2;
    const POOL: u32 = 3;

    fn code(self) -> (u32, u32) {
        match self {
            FillState::Prefaulting => (Self::PREFAULTING, 0),
            FillState::Populated => (Self::POPULATED, 0),
            FillState::Failed(errno) => (Self::FAILED, errno),
            FillState::Pool => (Self::POOL, 0),
        }
    }

    fn from_code(state: u32, errno: u32) -> WireResult<Self> {
        match state {
            Self::PREFAULTING => Ok(FillState::Prefaulting),
            Self::POPULATED => Ok(FillState::Populated),
            Self::FAILED => Ok(FillState::Failed(errno)),
            Self::POOL => Ok(FillState::Pool),
            _ => Err(WireError::BadReply("unknown memory entry state")),
        }
    }
}

/// What an entry of section 4 is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FillSubject {
    /// A file CREATEd with `PREFAULT`, in the namespace of VM `uuid`
    /// (`None`: the operators').
    File {
        /// Namespace.
        uuid: Option<Uuid>,
        /// Name.
        name: Name,
    },
    /// A warm pool of `count` files.
    Pool {
        /// Files ready to be taken.
        ready: u32,
        /// Files it keeps.
        count: u32,
        /// Files being filled now.
        filling: u32,
    },
}

/// One entry of a STATUS memory page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillStatus {
    /// Bytes of one file.
    pub size: u64,
    /// Kind.
    pub kind: MemoryKind,
    /// Bytes populated so far: of the file, or of the file a pool fills.
    pub populated: u64,
    /// State.
    pub state: FillState,
    /// Which file or pool.
    pub subject: FillSubject,
}

impl FillStatus {
    /// Encodes the entry.
    pub fn encode(&self) -> Vec<u8> {
        let (state, errno) = self.state.code();
        let (uuid, name, ready, count, filling) = match &self.subject {
            FillSubject::File { uuid, name } => {
                (uuid.unwrap_or_default().0, name.to_field(), 0, 0, 0)
            }
            FillSubject::Pool {
                ready,
                count,
                filling,
            } => ([0; 16], [0; NAME_LEN], *ready, *count, *filling),
        };
        RawFillEntry {
            size: self.size.into(),
            populated: self.populated.into(),
            kind: self.kind.code().into(),
            state: state.into(),
            ready: ready.into(),
            count: count.into(),
            filling: filling.into(),
            errno: errno.into(),
            uuid,
            name,
        }
        .as_slice()
        .to_vec()
    }

    /// Decodes a memory page body.
    pub fn decode_page(body: &[u8]) -> WireResult<StatusPage<FillStatus>> {
        let (head, mut rest) = split_page(body)?;
        let mut entries = Vec::new();
        for _ in 0..head.count.to_native() {
            let (raw, tail) = take::<RawFillEntry>(rest)?;
            rest = tail;
            let state = FillState::from_code(raw.state.to_native(), raw.errno.to_native())?;
            let subject = if state == FillState::Pool {
                FillSubject::Pool {
                    ready: raw.ready.to_native(),
                    count: raw.count.to_native(),
                    filling: raw.filling.to_native(),
                }
            } else {
                let uuid = Uuid(raw.uuid);
                FillSubject::File {
                    uuid: (!uuid.is_nil()).then_some(uuid),
                    name: Name::from_field(&raw.name, "file name")?,
                }
            };
            entries.push(FillStatus {
                size: raw.size.to_native(),
                kind: MemoryKind::try_from(raw.kind.to_native())?,
                populated: raw.populated.to_native(),
                state,
                subject,
            });
        }
        finish_page(head, rest, entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(entries: &[FillStatus]) -> Vec<u8> {
        let total = u32::try_from(entries.len()).unwrap();
        encode_status_page(total, 0, entries, FillStatus::encode).0
    }

    #[test]
    fn entries_round_trip() {
        let entries = vec![
            FillStatus {
                size: 4 << 30,
                kind: MemoryKind::Memfd,
                populated: 1 << 30,
                state: FillState::Prefaulting,
                subject: FillSubject::File {
                    uuid: Some(Uuid([7; 16])),
                    name: Name::new("ram0").unwrap(),
                },
            },
            FillStatus {
                size: 2 << 20,
                kind: MemoryKind::Hugetlb2M,
                populated: 0,
                state: FillState::Failed(12),
                subject: FillSubject::File {
                    uuid: None,
                    name: Name::new("op").unwrap(),
                },
            },
            FillStatus {
                size: 1 << 30,
                kind: MemoryKind::Memfd,
                populated: 512 << 20,
                state: FillState::Pool,
                subject: FillSubject::Pool {
                    ready: 1,
                    count: 3,
                    filling: 1,
                },
            },
        ];
        let body = page(&entries);
        assert_eq!(body.len(), RawStatusPage::SIZE + 3 * RawFillEntry::SIZE);
        let decoded = FillStatus::decode_page(&body).unwrap();
        assert_eq!(decoded.entries, entries);
        assert_eq!((decoded.total, decoded.next), (3, 3));
    }

    #[test]
    fn unknown_state_is_refused() {
        let mut body = page(&[FillStatus {
            size: 4096,
            kind: MemoryKind::Memfd,
            populated: 0,
            state: FillState::Populated,
            subject: FillSubject::File {
                uuid: None,
                name: Name::new("x").unwrap(),
            },
        }]);
        // `state` lies at offset 20 of the entry, after the 16-byte page head.
        body[RawStatusPage::SIZE + 20] = 9;
        assert!(FillStatus::decode_page(&body).is_err());
    }
}
