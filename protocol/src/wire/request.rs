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

/// The namespace a file name is looked up in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The session's own: a lease's VM, or the operators' for a control
    /// session. What a name without scope means.
    Own,
    /// The operators' namespace (pools, templates, `gmemctl create`).
    Operators,
    /// A VM's namespace.
    Vm(VmSelector),
}

/// A file: a name in a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// Where the name is looked up.
    pub scope: Scope,
    /// The name.
    pub name: Name,
}

impl FileRef {
    /// `name` in the session's own namespace.
    pub fn own(name: Name) -> Self {
        FileRef {
            scope: Scope::Own,
            name,
        }
    }

    /// `name` in the operators' namespace.
    pub fn operators(name: Name) -> Self {
        FileRef {
            scope: Scope::Operators,
            name,
        }
    }

    /// `name` in VM `vm`'s namespace.
    pub fn vm(vm: VmSelector, name: Name) -> Self {
        FileRef {
            scope: Scope::Vm(vm),
            name,
        }
    }

    fn to_raw(&self) -> RawScopedName {
        let (uuid, vm_name) = match &self.scope {
            Scope::Own | Scope::Operators => ([0; 16], [0; NAME_LEN]),
            Scope::Vm(VmSelector::Uuid(u)) => (u.0, [0; NAME_LEN]),
            Scope::Vm(VmSelector::Name(n)) => ([0; 16], n.to_field()),
        };
        RawScopedName {
            uuid,
            vm_name,
            name: self.name.to_field(),
        }
    }

    fn from_parts(
        uuid: [u8; 16],
        vm_name: &[u8; NAME_LEN],
        name: &[u8; NAME_LEN],
    ) -> WireResult<Self> {
        let scope = match (Uuid(uuid).is_nil(), vm_name.iter().all(|&b| b == 0)) {
            (true, true) => Scope::Operators,
            (true, false) => Scope::Vm(VmSelector::Name(Name::from_field(vm_name, "vm name")?)),
            (false, true) => Scope::Vm(VmSelector::Uuid(Uuid(uuid))),
            (false, false) => return Err(WireError::NonZeroPadding("scope name with uuid")),
        };
        Ok(FileRef {
            scope,
            name: Name::from_field(name, "file name")?,
        })
    }
}

impl fmt::Display for FileRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope {
            Scope::Own => write!(f, "{}", self.name),
            Scope::Operators => write!(f, "operators' {}", self.name),
            Scope::Vm(vm) => write!(f, "{vm}/{}", self.name),
        }
    }
}

/// DEVICE: a vhost-user-blk device for the lease's VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRequest {
    /// Virtqueues, 1 to [`MAX_DEVICE_QUEUES`].
    pub queues: u32,
    /// The disk file (of the VM's namespace), or none.
    pub disk: Option<Name>,
}

/// The most virtqueues a DEVICE serves.
pub const MAX_DEVICE_QUEUES: u32 = 8;

/// TRANSFER: a file moves to another namespace (and name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRequest {
    /// The file.
    pub from: FileRef,
    /// Where it goes.
    pub to: FileRef,
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
    Open(FileRef),
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
    Destroy(FileRef),
    /// STATUS.
    Status(StatusQuery),
    /// REVOKE.
    Revoke(VmSelector),
    /// SCRUB.
    Scrub(FileRef),
    /// HANDOFF (the pidfd travels beside the payload).
    Handoff(HandoffRequest),
    /// TRANSFER.
    Transfer(TransferRequest),
    /// FORGET.
    Forget(VmSelector),
    /// RESTART (empty payload).
    Restart,
    /// DEVICE.
    Device(DeviceRequest),
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
            RequestBody::Transfer(_) => Request::Transfer,
            RequestBody::Forget(_) => Request::Forget,
            RequestBody::Restart => Request::Restart,
            RequestBody::Device(_) => Request::Device,
        }
    }

    /// Decodes the payload of request `code`. Never panics.
    pub fn decode(code: u32, payload: &[u8]) -> WireResult<Self> {
        let request = Request::try_from(code)?;
        let expected = request.request_len();
        let scoped = request.has_scoped_form() && payload.len() == RawScopedName::SIZE;
        if payload.len() != expected && !scoped {
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
                let file = if scoped {
                    let raw: RawScopedName = read_raw(payload);
                    FileRef::from_parts(raw.uuid, &raw.vm_name, &raw.name)?
                } else {
                    let raw: RawName = read_raw(payload);
                    FileRef::own(Name::from_field(&raw.name, "file name")?)
                };
                match request {
                    Request::Open => RequestBody::Open(file),
                    Request::Destroy => RequestBody::Destroy(file),
                    _ => RequestBody::Scrub(file),
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
            Request::Revoke | Request::Forget => {
                let raw: RawVmSelector = read_raw(payload);
                let uuid = Uuid(raw.uuid);
                let vm = if uuid.is_nil() {
                    VmSelector::Name(Name::from_field(&raw.name, "vm name")?)
                } else {
                    if raw.name != [0; NAME_LEN] {
                        return Err(WireError::NonZeroPadding("VM name with uuid"));
                    }
                    VmSelector::Uuid(uuid)
                };
                if request == Request::Revoke {
                    RequestBody::Revoke(vm)
                } else {
                    RequestBody::Forget(vm)
                }
            }
            Request::Transfer => {
                let raw: RawTransfer = read_raw(payload);
                RequestBody::Transfer(TransferRequest {
                    from: FileRef::from_parts(raw.from_uuid, &raw.from_vm_name, &raw.from_name)?,
                    to: FileRef::from_parts(raw.to_uuid, &raw.to_vm_name, &raw.to_name)?,
                })
            }
            Request::Handoff => {
                let raw: RawHandoff = read_raw(payload);
                zero_pad(raw.flags, "HANDOFF flags")?;
                RequestBody::Handoff(HandoffRequest {
                    fd: raw.fd.to_native(),
                })
            }
            // The length check above admitted only an empty payload.
            Request::Restart => RequestBody::Restart,
            Request::Device => {
                let raw: RawDevice = read_raw(payload);
                zero_pad(raw.flags, "DEVICE flags")?;
                let queues = raw.queues.to_native();
                if !(1..=MAX_DEVICE_QUEUES).contains(&queues) {
                    return Err(WireError::UnknownValue {
                        field: "DEVICE queues",
                        value: queues,
                    });
                }
                let disk = if raw.disk == [0; NAME_LEN] {
                    None
                } else {
                    Some(Name::from_field(&raw.disk, "disk name")?)
                };
                RequestBody::Device(DeviceRequest { queues, disk })
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
            RequestBody::Open(f) | RequestBody::Destroy(f) | RequestBody::Scrub(f) => {
                match f.scope {
                    Scope::Own => RawName {
                        name: f.name.to_field(),
                    }
                    .as_slice()
                    .to_vec(),
                    _ => f.to_raw().as_slice().to_vec(),
                }
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
            RequestBody::Transfer(t) => {
                let (from, to) = (t.from.to_raw(), t.to.to_raw());
                RawTransfer {
                    from_uuid: from.uuid,
                    from_vm_name: from.vm_name,
                    from_name: from.name,
                    to_uuid: to.uuid,
                    to_vm_name: to.vm_name,
                    to_name: to.name,
                }
                .as_slice()
                .to_vec()
            }
            RequestBody::Revoke(sel) | RequestBody::Forget(sel) => {
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
            RequestBody::Restart => Vec::new(),
            RequestBody::Device(d) => RawDevice {
                queues: d.queues.into(),
                flags: 0.into(),
                disk: d.disk.as_ref().map_or([0; NAME_LEN], Name::to_field),
            }
            .as_slice()
            .to_vec(),
        }
    }
}
