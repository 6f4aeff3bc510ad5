//! Decoded requests and their encoding.

use std::fmt;

use vm_memory::ByteValued;

use super::*;

/// HELLO: a VM lease or a control session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Features the client supports.
    pub features: Features,
    /// The VM, or `None` for a control session.
    pub vm: Option<VmId>,
}

/// CREATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    /// File name.
    pub name: Name,
    /// Size in bytes (a non-zero multiple of the kind's page size).
    pub size: u64,
    /// Backing.
    pub kind: MemoryKind,
    /// Flags.
    pub flags: CreateFlags,
}

/// BIND.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindRequest {
    /// Memslot.
    pub slot: u32,
    /// Guest-physical address.
    pub gpa: GuestAddress,
    /// File.
    pub name: Name,
    /// Offset in the file.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
}

impl BindRequest {
    /// Binds `size` bytes of `name` from `offset` at `gpa` in memslot `slot`.
    pub fn new(slot: u32, gpa: GuestAddress, name: Name, offset: u64, size: u64) -> Self {
        BindRequest {
            slot,
            gpa,
            name,
            offset,
            size,
        }
    }
}

/// HANDOFF: which process holds the lease socket now, and at which fd
/// number (the process's pidfd travels beside the payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandoffRequest {
    /// The lease socket's fd number in that process.
    pub fd: u32,
}

/// DEPOSIT (the fd travels beside the payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepositRequest {
    /// Name to file it under.
    pub name: Name,
    /// What the client says the fd is; gmemd checks.
    pub kind: MemoryKind,
}

/// STATUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusQuery {
    /// Table.
    pub section: StatusSection,
    /// First entry.
    pub start: u32,
}

/// Selects a VM by UUID or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmSelector {
    /// By UUID.
    Uuid(Uuid),
    /// By name.
    Name(Name),
}

impl fmt::Display for VmSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmSelector::Uuid(u) => u.fmt(f),
            VmSelector::Name(n) => n.fmt(f),
        }
    }
}

/// A decoded request payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBody {
    /// HELLO.
    Hello(Hello),
    /// CREATE.
    Create(CreateRequest),
    /// OPEN.
    Open(Name),
    /// BIND.
    Bind(BindRequest),
    /// UNBIND.
    Unbind {
        /// Slot.
        slot: u32,
    },
    /// DEPOSIT.
    Deposit(DepositRequest),
    /// DESTROY.
    Destroy(Name),
    /// STATUS.
    Status(StatusQuery),
    /// REVOKE.
    Revoke(VmSelector),
    /// SCRUB.
    Scrub(Name),
    /// HANDOFF (the pidfd travels beside the payload).
    Handoff(HandoffRequest),
}

impl RequestBody {
    /// The request code.
    pub fn request(&self) -> Request {
        match self {
            RequestBody::Hello(_) => Request::Hello,
            RequestBody::Create(_) => Request::Create,
            RequestBody::Open(_) => Request::Open,
            RequestBody::Bind(_) => Request::Bind,
            RequestBody::Unbind { .. } => Request::Unbind,
            RequestBody::Deposit(_) => Request::Deposit,
            RequestBody::Destroy(_) => Request::Destroy,
            RequestBody::Status(_) => Request::Status,
            RequestBody::Revoke(_) => Request::Revoke,
            RequestBody::Scrub(_) => Request::Scrub,
            RequestBody::Handoff(_) => Request::Handoff,
        }
    }

    /// Decodes the payload of request `code`. Never panics.
    pub fn decode(code: u32, payload: &[u8]) -> WireResult<Self> {
        let request = Request::try_from(code)?;
        let expected = request.request_len();
        if payload.len() != expected {
            return Err(WireError::BadLength {
                request,
                expected,
                actual: payload.len(),
            });
        }
        Ok(match request {
            Request::Hello => {
                let raw: RawHello = read_raw(payload);
                zero_pad(raw.pad, "HELLO pad")?;
                let flags = flags_from::<HelloFlags>(raw.flags.to_native(), "HELLO flags")?;
                // Unknown feature bits are masked, not refused: newer clients
                // offer more than this daemon knows and negotiation drops it.
                let features = Features::from_bits_truncate(raw.features.to_native());
                let vm = if flags.contains(HelloFlags::CONTROL) {
                    if raw.uuid != [0; 16] || raw.name != [0; NAME_LEN] {
                        return Err(WireError::NonZeroPadding("HELLO control identity"));
                    }
                    None
                } else {
                    let uuid = Uuid(raw.uuid);
                    if uuid.is_nil() {
                        return Err(WireError::BadName {
                            field: "vm uuid",
                            reason: "all zero",
                        });
                    }
                    Some(VmId {
                        uuid,
                        name: Name::from_field(&raw.name, "vm name")?,
                    })
                };
                RequestBody::Hello(Hello { features, vm })
            }
            Request::Create => {
                let raw: RawCreate = read_raw(payload);
                RequestBody::Create(CreateRequest {
                    name: Name::from_field(&raw.name, "file name")?,
                    size: raw.size.to_native(),
                    kind: MemoryKind::try_from(raw.kind.to_native())?,
                    flags: flags_from(raw.flags.to_native(), "CREATE flags")?,
                })
            }
            Request::Open | Request::Destroy | Request::Scrub => {
                let raw: RawName = read_raw(payload);
                let name = Name::from_field(&raw.name, "file name")?;
                match request {
                    Request::Open => RequestBody::Open(name),
                    Request::Destroy => RequestBody::Destroy(name),
                    _ => RequestBody::Scrub(name),
                }
            }
            Request::Bind => {
                let raw: RawBind = read_raw(payload);
                zero_pad(raw.flags, "BIND flags")?;
                RequestBody::Bind(BindRequest {
                    slot: raw.slot.to_native(),
                    gpa: GuestAddress(raw.gpa.to_native()),
                    name: Name::from_field(&raw.name, "file name")?,
                    offset: raw.offset.to_native(),
                    size: raw.size.to_native(),
                })
            }
            Request::Unbind => {
                let raw: RawUnbind = read_raw(payload);
                zero_pad(raw.pad, "UNBIND pad")?;
                RequestBody::Unbind {
                    slot: raw.slot.to_native(),
                }
            }
            Request::Deposit => {
                let raw: RawDeposit = read_raw(payload);
                zero_pad(raw.flags, "DEPOSIT flags")?;
                RequestBody::Deposit(DepositRequest {
                    name: Name::from_field(&raw.name, "file name")?,
                    kind: MemoryKind::try_from(raw.kind.to_native())?,
                })
            }
            Request::Status => {
                let raw: RawStatusQuery = read_raw(payload);
                RequestBody::Status(StatusQuery {
                    section: StatusSection::try_from(raw.section.to_native())?,
                    start: raw.start.to_native(),
                })
            }
            Request::Revoke => {
                let raw: RawVmSelector = read_raw(payload);
                let uuid = Uuid(raw.uuid);
                RequestBody::Revoke(if uuid.is_nil() {
                    VmSelector::Name(Name::from_field(&raw.name, "vm name")?)
                } else {
                    if raw.name != [0; NAME_LEN] {
                        return Err(WireError::NonZeroPadding("REVOKE name with uuid"));
                    }
                    VmSelector::Uuid(uuid)
                })
            }
            Request::Handoff => {
                let raw: RawHandoff = read_raw(payload);
                zero_pad(raw.flags, "HANDOFF flags")?;
                RequestBody::Handoff(HandoffRequest {
                    fd: raw.fd.to_native(),
                })
            }
        })
    }

    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            RequestBody::Hello(h) => {
                let (flags, uuid, name) = match &h.vm {
                    Some(vm) => (HelloFlags::empty(), vm.uuid.0, vm.name.to_field()),
                    None => (HelloFlags::CONTROL, [0; 16], [0; NAME_LEN]),
                };
                RawHello {
                    features: h.features.bits().into(),
                    flags: flags.bits().into(),
                    pad: 0.into(),
                    uuid,
                    name,
                }
                .as_slice()
                .to_vec()
            }
            RequestBody::Create(c) => RawCreate {
                size: c.size.into(),
                kind: c.kind.code().into(),
                flags: c.flags.bits().into(),
                name: c.name.to_field(),
            }
            .as_slice()
            .to_vec(),
            RequestBody::Open(n) | RequestBody::Destroy(n) | RequestBody::Scrub(n) => {
                RawName { name: n.to_field() }.as_slice().to_vec()
            }
            RequestBody::Bind(b) => RawBind {
                slot: b.slot.into(),
                flags: 0.into(),
                gpa: b.gpa.0.into(),
                offset: b.offset.into(),
                size: b.size.into(),
                name: b.name.to_field(),
            }
            .as_slice()
            .to_vec(),
            RequestBody::Unbind { slot } => RawUnbind {
                slot: (*slot).into(),
                pad: 0.into(),
            }
            .as_slice()
            .to_vec(),
            RequestBody::Deposit(d) => RawDeposit {
                kind: d.kind.code().into(),
                flags: 0.into(),
                name: d.name.to_field(),
            }
            .as_slice()
            .to_vec(),
            RequestBody::Status(q) => RawStatusQuery {
                section: q.section.code().into(),
                start: q.start.into(),
            }
            .as_slice()
            .to_vec(),
            RequestBody::Revoke(sel) => {
                let (uuid, name) = match sel {
                    VmSelector::Uuid(u) => (u.0, [0; NAME_LEN]),
                    VmSelector::Name(n) => ([0; 16], n.to_field()),
                };
                RawVmSelector { uuid, name }.as_slice().to_vec()
            }
            RequestBody::Handoff(h) => RawHandoff {
                fd: h.fd.into(),
                flags: 0.into(),
            }
            .as_slice()
            .to_vec(),
        }
    }
}
