//! STATUS pages: files with owners and bindings (and their namespace, in
//! scoped pages), leases, and the daemon itself.

use vm_memory::ByteValued;

use super::*;

/// A file in a STATUS page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStatus {
    /// Name.
    pub name: Name,
    /// Size.
    pub size: u64,
    /// Page size.
    pub page_size: u64,
    /// Kind.
    pub kind: MemoryKind,
    /// Owner, if bound.
    pub owner: Option<OwnerStatus>,
    /// Bindings.
    pub bindings: Vec<BindingStatus>,
}

/// The owner of a file in a STATUS page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerStatus {
    /// Owner VM.
    pub vm: VmId,
    /// Its lease.
    pub lease: LeaseId,
}

/// One binding in a STATUS page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingStatus {
    /// Slot.
    pub slot: u32,
    /// Guest-physical address.
    pub gpa: GuestAddress,
    /// File offset.
    pub offset: u64,
    /// Size.
    pub size: u64,
    /// QEMU's memory table has this very range at this address (reported
    /// by the VM's vhost-user device, PROTOCOL.md §7.15).
    pub confirmed: bool,
}

/// `RawBindingEntry.flags` bit: the binding is confirmed.
pub const BINDING_CONFIRMED: u32 = 1;

/// A lease in a STATUS page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    /// Lease id.
    pub lease: LeaseId,
    /// VM.
    pub vm: VmId,
    /// Client pid.
    pub pid: u32,
    /// Client uid.
    pub uid: u32,
    /// Bindings held.
    pub bindings: u32,
    /// Files created through it.
    pub files: u32,
}

/// One page of a STATUS table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPage<T> {
    /// Entries in the whole table.
    pub total: u32,
    /// Next index to ask for (`total` when done).
    pub next: u32,
    /// Entries of this page.
    pub entries: Vec<T>,
}

/// Builds a STATUS reply body from entries, stopping before the page would
/// exceed the payload limit. Returns the body and the number of entries used.
pub fn encode_status_page<T>(
    total: u32,
    start: u32,
    entries: &[T],
    encode: impl Fn(&T) -> Vec<u8>,
) -> (Vec<u8>, u32) {
    encode_status_page_from(total, start, entries.iter(), |e| encode(e))
}

/// As [`encode_status_page`], pulling entries from an iterator only until
/// the page is full: a page costs what fits in it, however many follow.
pub fn encode_status_page_from<T>(
    total: u32,
    start: u32,
    entries: impl IntoIterator<Item = T>,
    encode: impl Fn(&T) -> Vec<u8>,
) -> (Vec<u8>, u32) {
    let budget = MAX_PAYLOAD - RawReplyHead::SIZE - RawStatusPage::SIZE;
    let mut body = Vec::new();
    let mut count = 0u32;
    for entry in entries {
        let bytes = encode(&entry);
        if body.len() + bytes.len() > budget {
            break;
        }
        body.extend_from_slice(&bytes);
        count += 1;
    }
    let head = RawStatusPage {
        total: total.into(),
        count: count.into(),
        // A start past the end yields an empty page whose cursor is the end.
        next: start.saturating_add(count).min(total).into(),
        pad: 0.into(),
    };
    let mut out = head.as_slice().to_vec();
    out.extend_from_slice(&body);
    (out, count)
}

impl FileStatus {
    /// Wire size of this entry with its bindings.
    pub fn encoded_len(&self) -> usize {
        RawFileEntry::SIZE + self.bindings.len() * RawBindingEntry::SIZE
    }

    /// Encodes the entry and its bindings.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(None)
    }

    /// The entry, then `space` (scoped pages only), then the bindings.
    fn encode_with(&self, space: Option<&RawFileSpace>) -> Vec<u8> {
        let (owner_uuid, owner_lease, owner_name) = match &self.owner {
            Some(o) => (o.vm.uuid.0, o.lease.get(), o.vm.name.to_field()),
            None => ([0; 16], 0, [0; NAME_LEN]),
        };
        let count = u32::try_from(self.bindings.len()).unwrap_or(u32::MAX);
        let mut out = RawFileEntry {
            size: self.size.into(),
            page_size: self.page_size.into(),
            kind: self.kind.code().into(),
            bindings: count.into(),
            owner_uuid,
            owner_lease: owner_lease.into(),
            name: self.name.to_field(),
            owner_name,
        }
        .as_slice()
        .to_vec();
        if let Some(space) = space {
            out.extend_from_slice(space.as_slice());
        }
        for b in &self.bindings {
            out.extend_from_slice(
                RawBindingEntry {
                    slot: b.slot.into(),
                    flags: u32::from(b.confirmed).into(),
                    gpa: b.gpa.0.into(),
                    offset: b.offset.into(),
                    size: b.size.into(),
                }
                .as_slice(),
            );
        }
        out
    }

    /// Decodes a files page body.
    pub fn decode_page(body: &[u8]) -> WireResult<StatusPage<FileStatus>> {
        decode_files(body, |raw, rest| {
            let (file, rest) = FileStatus::decode_entry(raw, rest)?;
            Ok((file, rest))
        })
    }

    /// Decodes the bindings after `raw` (and after its space, in a scoped
    /// page); returns the entry and what follows it.
    fn decode_entry(raw: RawFileEntry, mut rest: &[u8]) -> WireResult<(Self, &[u8])> {
        let owner = if raw.owner_uuid == [0; 16] {
            None
        } else {
            Some(OwnerStatus {
                vm: VmId {
                    uuid: Uuid(raw.owner_uuid),
                    name: Name::from_field(&raw.owner_name, "owner name")?,
                },
                lease: LeaseId::from_field(raw.owner_lease.to_native(), "owner lease")?,
            })
        };
        let mut bindings = Vec::new();
        for _ in 0..raw.bindings.to_native() {
            let (b, tail) = take::<RawBindingEntry>(rest)?;
            rest = tail;
            let flags = b.flags.to_native();
            if flags & !BINDING_CONFIRMED != 0 {
                return Err(WireError::UnknownFlags {
                    field: "binding flags",
                    bits: u64::from(flags & !BINDING_CONFIRMED),
                });
            }
            bindings.push(BindingStatus {
                confirmed: flags & BINDING_CONFIRMED != 0,
                slot: b.slot.to_native(),
                gpa: GuestAddress(b.gpa.to_native()),
                offset: b.offset.to_native(),
                size: b.size.to_native(),
            });
        }
        let file = FileStatus {
            name: Name::from_field(&raw.name, "file name")?,
            size: raw.size.to_native(),
            page_size: raw.page_size.to_native(),
            kind: MemoryKind::try_from(raw.kind.to_native())?,
            owner,
            bindings,
        };
        Ok((file, rest))
    }
}

/// A file with its namespace, in a scoped STATUS files page (feature
/// `VM_SCOPE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopedFileStatus {
    /// The file.
    pub file: FileStatus,
    /// The VM whose file it is; `None` for an operators' file.
    pub vm: Option<VmId>,
    /// Seconds since that VM's last lease ended; 0 while it has one.
    pub idle_secs: u64,
}

impl ScopedFileStatus {
    /// Wire size of this entry with its bindings.
    pub fn encoded_len(&self) -> usize {
        self.file.encoded_len() + RawFileSpace::SIZE
    }

    /// Encodes the entry, its namespace and its bindings.
    pub fn encode(&self) -> Vec<u8> {
        let (uuid, vm_name) = match &self.vm {
            Some(vm) => (vm.uuid.0, vm.name.to_field()),
            None => ([0; 16], [0; NAME_LEN]),
        };
        let space = RawFileSpace {
            uuid,
            vm_name,
            idle_secs: self.idle_secs.into(),
        };
        self.file.encode_with(Some(&space))
    }

    /// Decodes a scoped files page body.
    pub fn decode_page(body: &[u8]) -> WireResult<StatusPage<ScopedFileStatus>> {
        decode_files(body, |raw, rest| {
            let (space, rest) = take::<RawFileSpace>(rest)?;
            let vm = match (Uuid(space.uuid).is_nil(), space.vm_name == [0; NAME_LEN]) {
                (true, true) => None,
                (false, false) => Some(VmId {
                    uuid: Uuid(space.uuid),
                    name: Name::from_field(&space.vm_name, "space vm name")?,
                }),
                _ => return Err(WireError::BadReply("file space with half an identity")),
            };
            let (file, rest) = FileStatus::decode_entry(raw, rest)?;
            let entry = ScopedFileStatus {
                file,
                vm,
                idle_secs: space.idle_secs.to_native(),
            };
            Ok((entry, rest))
        })
    }
}

/// Decodes a files page whose entries start with a `RawFileEntry`.
fn decode_files<T>(
    body: &[u8],
    mut entry: impl FnMut(RawFileEntry, &[u8]) -> WireResult<(T, &[u8])>,
) -> WireResult<StatusPage<T>> {
    let (head, mut rest) = split_page(body)?;
    let mut entries = Vec::new();
    for _ in 0..head.count.to_native() {
        let (raw, tail) = take::<RawFileEntry>(rest)?;
        let (decoded, tail) = entry(raw, tail)?;
        rest = tail;
        entries.push(decoded);
    }
    finish_page(head, rest, entries)
}

impl LeaseStatus {
    /// Encodes the entry.
    pub fn encode(&self) -> Vec<u8> {
        RawLeaseEntry {
            lease: self.lease.get().into(),
            pid: self.pid.into(),
            uid: self.uid.into(),
            bindings: self.bindings.into(),
            files: self.files.into(),
            pad: 0.into(),
            uuid: self.vm.uuid.0,
            name: self.vm.name.to_field(),
        }
        .as_slice()
        .to_vec()
    }

    /// Decodes a leases page body.
    pub fn decode_page(body: &[u8]) -> WireResult<StatusPage<LeaseStatus>> {
        let (head, mut rest) = split_page(body)?;
        let mut entries = Vec::new();
        for _ in 0..head.count.to_native() {
            let (raw, tail) = take::<RawLeaseEntry>(rest)?;
            rest = tail;
            entries.push(LeaseStatus {
                lease: LeaseId::from_field(raw.lease.to_native(), "lease")?,
                vm: VmId {
                    uuid: Uuid(raw.uuid),
                    name: Name::from_field(&raw.name, "vm name")?,
                },
                pid: raw.pid.to_native(),
                uid: raw.uid.to_native(),
                bindings: raw.bindings.to_native(),
                files: raw.files.to_native(),
            });
        }
        finish_page(head, rest, entries)
    }
}

/// The daemon itself: the one entry of a STATUS daemon page (section 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonStatus {
    /// pid of the serving gmemd process.
    pub pid: u32,
    /// Restarts the daemon's state has survived (crashes, upgrades).
    pub restarts: u32,
    /// When the state was first made: UNIX seconds.
    pub born: u64,
    /// When this process started serving: UNIX seconds.
    pub started: u64,
    /// Memory files the session may see.
    pub files: u32,
    /// Open leases the session may see.
    pub leases: u32,
    /// What the last recovery brought back, and any problems it met. On
    /// the wire at most [`MAX_RECOVERED_TEXT`] bytes: [`DaemonStatus::encode`]
    /// cuts a longer text at a character boundary.
    pub recovered: String,
}

impl DaemonStatus {
    /// The recovery text as it goes on the wire: at most
    /// [`MAX_RECOVERED_TEXT`] bytes, cut at a character boundary.
    pub fn recovered_on_wire(&self) -> &str {
        cut_at_char_boundary(&self.recovered, MAX_RECOVERED_TEXT)
    }

    /// Wire size of this entry: head, text, padding to 8 bytes.
    pub fn encoded_len(&self) -> usize {
        RawDaemonStatus::SIZE + padded_to_8(self.recovered_on_wire().len())
    }

    /// Encodes the entry: head, text (cut as [`Self::recovered_on_wire`]
    /// says), zeros up to a multiple of 8 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let text = self.recovered_on_wire().as_bytes();
        // At most MAX_RECOVERED_TEXT bytes: always fits.
        let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
        let mut out = RawDaemonStatus {
            pid: self.pid.into(),
            restarts: self.restarts.into(),
            born: self.born.into(),
            started: self.started.into(),
            files: self.files.into(),
            leases: self.leases.into(),
            recovered_len: len.into(),
            pad: 0.into(),
        }
        .as_slice()
        .to_vec();
        out.extend_from_slice(text);
        out.resize(RawDaemonStatus::SIZE + padded_to_8(text.len()), 0);
        out
    }

    /// Decodes a daemon page body (one entry; none for a `start` past it).
    pub fn decode_page(body: &[u8]) -> WireResult<StatusPage<DaemonStatus>> {
        let (head, mut rest) = split_page(body)?;
        let mut entries = Vec::new();
        for _ in 0..head.count.to_native() {
            let (raw, tail) = take::<RawDaemonStatus>(rest)?;
            let len = raw.recovered_len.to_native() as usize;
            if len > MAX_RECOVERED_TEXT {
                return Err(WireError::BadReply("daemon recovery text too long"));
            }
            let padded = padded_to_8(len);
            if tail.len() < padded {
                return Err(WireError::BadReply("status page truncated"));
            }
            let recovered = std::str::from_utf8(&tail[..len])
                .map_err(|_| WireError::BadReply("daemon recovery text is not UTF-8"))?;
            rest = &tail[padded..];
            entries.push(DaemonStatus {
                pid: raw.pid.to_native(),
                restarts: raw.restarts.to_native(),
                born: raw.born.to_native(),
                started: raw.started.to_native(),
                files: raw.files.to_native(),
                leases: raw.leases.to_native(),
                recovered: recovered.to_owned(),
            });
        }
        finish_page(head, rest, entries)
    }
}

/// `len` rounded up to a multiple of 8.
fn padded_to_8(len: usize) -> usize {
    len.div_ceil(8) * 8
}

pub(super) fn split_page(body: &[u8]) -> WireResult<(RawStatusPage, &[u8])> {
    take::<RawStatusPage>(body)
}

pub(super) fn finish_page<T>(
    head: RawStatusPage,
    rest: &[u8],
    entries: Vec<T>,
) -> WireResult<StatusPage<T>> {
    if !rest.is_empty() {
        return Err(WireError::BadReply("trailing bytes in status page"));
    }
    let total = head.total.to_native();
    let next = head.next.to_native();
    if next > total {
        return Err(WireError::BadReply("status page cursor past the end"));
    }
    Ok(StatusPage {
        total,
        next,
        entries,
    })
}

pub(super) fn take<T: ByteValued>(bytes: &[u8]) -> WireResult<(T, &[u8])> {
    let size = std::mem::size_of::<T>();
    if bytes.len() < size {
        return Err(WireError::BadReply("status page truncated"));
    }
    let (head, tail) = bytes.split_at(size);
    Ok((read_raw(head), tail))
}
