//! The ownership ledger: memory files, leases, bindings and owners.
//!
//! Pure data and invariants; no fds, sockets, clock or unsafe. Every change
//! is checked completely before anything is modified, so a refused request
//! leaves the ledger exactly as it was (DESIGN invariant 3). The daemon is
//! single-threaded, so the ledger needs no lock of its own: one request is
//! applied at a time, which is the per-file serialization the design asks for.
//!
//! Invariants kept here (numbers from DESIGN.md):
//! 1. a file has at most one owner VM, set by its first binding, cleared with
//!    its last;
//! 2. bindings are page-aligned, inside the file, do not overlap another
//!    binding of the file, use a slot free in their VM and a guest-physical
//!    range free in their VM;
//! 4. ending a lease drops all its bindings at once;
//! 6. a file is not bound for a VM while a live process that received it for
//!    another VM could still reach it.

use std::collections::BTreeMap;

use gmem_protocol::wire::{
    BindRequest, MemoryKind, Name, Uuid, VmId, VmSelector, MAX_BINDINGS_PER_FILE,
};
use rustix::io::Errno;

/// Lease identifier: one per VM connection, never reused while the daemon runs.
pub type LeaseId = u64;

/// Refusals of the ledger. Each names what it refused and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// No memory file of that name.
    #[error("no memory file named {name}")]
    UnknownFile {
        /// File name.
        name: Name,
    },
    /// A memory file of that name exists.
    #[error("memory file {name} already exists")]
    FileExists {
        /// File name.
        name: Name,
    },
    /// The file is bound by another VM.
    #[error("memory file {name} is owned by VM {owner} (lease {lease}); unbind it there first")]
    NotOwner {
        /// File name.
        name: Name,
        /// Current owner.
        owner: VmId,
        /// The owner's lease.
        lease: LeaseId,
    },
    /// A process that received the file for another VM is still alive.
    #[error(
        "memory file {name} is still reachable by pid {pid}, which received it for {holder}; \
         wait for it to exit or scrub the file"
    )]
    HeldElsewhere {
        /// File name.
        name: Name,
        /// The holding process.
        pid: u32,
        /// Who it received the file for.
        holder: String,
    },
    /// The VM already has an open lease.
    #[error("VM {vm} already has lease {lease} (pid {pid})")]
    VmBusy {
        /// The VM.
        vm: VmId,
        /// Its open lease.
        lease: LeaseId,
        /// The process holding it.
        pid: u32,
    },
    /// A number is not a multiple of the file's page size.
    #[error("{field} {value:#x} is not aligned to the {page_size}-byte page size of {name}")]
    Misaligned {
        /// File name.
        name: Name,
        /// `offset`, `size` or `gpa`.
        field: &'static str,
        /// The value.
        value: u64,
        /// Required alignment.
        page_size: u64,
    },
    /// A binding of zero bytes.
    #[error("a binding must cover at least one page")]
    EmptyBinding,
    /// `offset + size` lies past the end of the file.
    #[error("range {offset:#x}+{size:#x} ends past the {file_size:#x}-byte file {name}")]
    PastEnd {
        /// File name.
        name: Name,
        /// Offset.
        offset: u64,
        /// Size.
        size: u64,
        /// File size.
        file_size: u64,
    },
    /// `gpa + size` overflows the guest address space.
    #[error("guest range {gpa:#x}+{size:#x} overflows")]
    GuestOverflow {
        /// Guest-physical address.
        gpa: u64,
        /// Size.
        size: u64,
    },
    /// The file range overlaps another binding of the same file.
    #[error("range {offset:#x}+{size:#x} of {name} overlaps the binding in slot {slot}")]
    FileRangeOverlap {
        /// File name.
        name: Name,
        /// Offset.
        offset: u64,
        /// Size.
        size: u64,
        /// The slot already bound there.
        slot: u32,
    },
    /// The VM already uses the slot.
    #[error("slot {slot} is already bound in this VM")]
    SlotTaken {
        /// Slot.
        slot: u32,
    },
    /// The guest-physical range overlaps another binding of the VM.
    #[error("guest range {gpa:#x}+{size:#x} overlaps slot {slot} of this VM")]
    GuestOverlap {
        /// Guest-physical address.
        gpa: u64,
        /// Size.
        size: u64,
        /// The slot already there.
        slot: u32,
    },
    /// The slot is not bound in this VM.
    #[error("slot {slot} is not bound in this VM")]
    UnknownSlot {
        /// Slot.
        slot: u32,
    },
    /// The file still has bindings.
    #[error("memory file {name} is bound in {bindings} slot(s); unbind or revoke first")]
    FileBound {
        /// File name.
        name: Name,
        /// Number of bindings.
        bindings: usize,
    },
    /// No lease matches.
    #[error("no open lease for VM {0}")]
    UnknownVm(String),
    /// A name matches several VMs' leases.
    #[error("VM name {name} matches {count} leases; name the VM by UUID")]
    AmbiguousVm {
        /// The name.
        name: Name,
        /// Matching leases.
        count: usize,
    },
    /// The file already has the most bindings a file may have.
    #[error("memory file {name} already has {limit} bindings")]
    TooManyBindings {
        /// File name.
        name: Name,
        /// The limit.
        limit: usize,
    },
    /// The lease is not open.
    #[error("lease {0} is not open")]
    UnknownLease(LeaseId),
    /// The lease id is already in use.
    #[error("lease {0} is already open")]
    LeaseExists(LeaseId),
}

impl LedgerError {
    /// The errno a reply carries for this refusal (see PROTOCOL.md).
    pub fn errno(&self) -> Errno {
        match self {
            Self::UnknownFile { .. } | Self::UnknownSlot { .. } | Self::UnknownVm(_) => {
                Errno::NOENT
            }
            Self::UnknownLease(_) => Errno::NOENT,
            Self::LeaseExists(_) => Errno::EXIST,
            Self::AmbiguousVm { .. } => Errno::INVAL,
            Self::TooManyBindings { .. } => Errno::NOSPC,
            Self::FileExists { .. } | Self::SlotTaken { .. } => Errno::EXIST,
            Self::NotOwner { .. }
            | Self::HeldElsewhere { .. }
            | Self::VmBusy { .. }
            | Self::FileBound { .. }
            | Self::FileRangeOverlap { .. } => Errno::BUSY,
            Self::Misaligned { .. } | Self::EmptyBinding => Errno::INVAL,
            Self::PastEnd { .. } => Errno::RANGE,
            Self::GuestOverflow { .. } => Errno::OVERFLOW,
            Self::GuestOverlap { .. } => Errno::ADDRINUSE,
        }
    }
}

/// Result alias of the ledger.
pub type LedgerResult<T> = Result<T, LedgerError>;

/// The static description of a memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSpec {
    /// Size in bytes.
    pub size: u64,
    /// Backing kind.
    pub kind: MemoryKind,
    /// Binding alignment.
    pub page_size: u64,
}

/// The VM that owns a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The VM.
    pub vm: VmId,
    /// The lease it binds through.
    pub lease: LeaseId,
}

/// One binding as the ledger stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Memslot.
    pub slot: u32,
    /// Guest-physical address.
    pub gpa: u64,
    /// File.
    pub file: Name,
    /// Offset in the file.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
}

impl Binding {
    fn gpa_end(&self) -> u64 {
        // Checked when the binding was admitted.
        self.gpa + self.size
    }
}

/// A memory file's ledger record.
#[derive(Debug, Clone)]
pub struct FileRecord {
    /// Size, kind and page size.
    pub spec: FileSpec,
    /// Current owner.
    pub owner: Option<Owner>,
    /// Bindings keyed by file offset: (lease, slot, size).
    ranges: BTreeMap<u64, (LeaseId, u32, u64)>,
    /// Processes that received the fd: the VM they received it for, and the
    /// lease it came through (its socket may live on in a process the fds
    /// were handed to, like the QEMU a launcher starts).
    holders: BTreeMap<u32, (Uuid, Option<LeaseId>)>,
    /// The lease that created it, counted against that lease's file limit.
    creator: Option<LeaseId>,
}

impl FileRecord {
    /// Number of bindings.
    pub fn binding_count(&self) -> usize {
        self.ranges.len()
    }

    /// Pids recorded as having received the fd.
    pub fn holders(&self) -> impl Iterator<Item = (u32, Uuid)> + '_ {
        self.holders.iter().map(|(pid, (vm, _))| (*pid, *vm))
    }
}

/// Who is on the other end of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Peer {
    /// Process id (SO_PEERCRED).
    pub pid: u32,
    /// User id.
    pub uid: u32,
}

/// A lease's ledger record.
#[derive(Debug, Clone)]
pub struct LeaseRecord {
    /// The VM.
    pub vm: VmId,
    /// The client process.
    pub peer: Peer,
    bindings: BTreeMap<u32, Binding>,
}

impl LeaseRecord {
    /// Bindings by slot.
    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values()
    }
}

/// What ending a lease removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseEnd {
    /// The VM whose lease ended.
    pub vm: VmId,
    /// Bindings dropped.
    pub bindings: Vec<Binding>,
    /// Files whose owner was cleared.
    pub released: Vec<Name>,
}

/// The ledger.
#[derive(Debug, Default)]
pub struct Ledger {
    files: BTreeMap<Name, FileRecord>,
    leases: BTreeMap<LeaseId, LeaseRecord>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens a lease for `vm`. A VM has at most one lease at a time.
    ///
    /// # Errors
    /// [`LedgerError::VmBusy`], [`LedgerError::LeaseExists`].
    pub fn open_lease(&mut self, id: LeaseId, vm: VmId, peer: Peer) -> LedgerResult<()> {
        if self.leases.contains_key(&id) {
            return Err(LedgerError::LeaseExists(id));
        }
        if let Some((lease, rec)) = self.leases.iter().find(|(_, l)| l.vm.uuid == vm.uuid) {
            return Err(LedgerError::VmBusy {
                vm: rec.vm.clone(),
                lease: *lease,
                pid: rec.peer.pid,
            });
        }
        self.leases.insert(
            id,
            LeaseRecord {
                vm,
                peer,
                bindings: BTreeMap::new(),
            },
        );
        Ok(())
    }

    /// Ends a lease: drops every binding at once and clears the owners that
    /// had no other binding.
    ///
    /// # Errors
    /// [`LedgerError::UnknownLease`].
    pub fn close_lease(&mut self, id: LeaseId) -> LedgerResult<LeaseEnd> {
        let lease = self
            .leases
            .remove(&id)
            .ok_or(LedgerError::UnknownLease(id))?;
        let mut released = Vec::new();
        for binding in lease.bindings.values() {
            if let Some(file) = self.files.get_mut(&binding.file) {
                file.ranges.remove(&binding.offset);
                if file.ranges.is_empty() && file.owner.take().is_some() {
                    released.push(binding.file.clone());
                }
            }
        }
        for file in self.files.values_mut() {
            if file.creator == Some(id) {
                file.creator = None;
            }
        }
        released.sort();
        released.dedup();
        Ok(LeaseEnd {
            vm: lease.vm,
            bindings: lease.bindings.into_values().collect(),
            released,
        })
    }

    /// The open lease of a VM. Names are not unique (UUIDs are), so a name
    /// matching several leases is refused rather than guessed.
    ///
    /// # Errors
    /// [`LedgerError::UnknownVm`], [`LedgerError::AmbiguousVm`].
    pub fn lease_of(&self, selector: &VmSelector) -> LedgerResult<LeaseId> {
        let matching: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| match selector {
                VmSelector::Uuid(u) => l.vm.uuid == *u,
                VmSelector::Name(n) => l.vm.name == *n,
            })
            .map(|(id, _)| *id)
            .collect();
        match (matching.as_slice(), selector) {
            ([id], _) => Ok(*id),
            ([], _) => Err(LedgerError::UnknownVm(selector.to_string())),
            (many, VmSelector::Name(name)) => Err(LedgerError::AmbiguousVm {
                name: name.clone(),
                count: many.len(),
            }),
            // One lease per UUID is enforced by open_lease.
            (_, VmSelector::Uuid(_)) => Err(LedgerError::UnknownVm(selector.to_string())),
        }
    }

    /// The lease that created a file, while that lease is open.
    pub fn creator_of(&self, name: &Name) -> Option<LeaseId> {
        self.files.get(name).and_then(|f| f.creator)
    }

    /// A lease's record.
    pub fn lease(&self, id: LeaseId) -> Option<&LeaseRecord> {
        self.leases.get(&id)
    }

    /// All leases.
    pub fn leases(&self) -> impl Iterator<Item = (LeaseId, &LeaseRecord)> {
        self.leases.iter().map(|(id, l)| (*id, l))
    }

    /// Adds a memory file.
    ///
    /// # Errors
    /// [`LedgerError::FileExists`].
    pub fn add_file(
        &mut self,
        name: Name,
        spec: FileSpec,
        creator: Option<LeaseId>,
    ) -> LedgerResult<()> {
        if self.files.contains_key(&name) {
            return Err(LedgerError::FileExists { name });
        }
        self.files.insert(
            name,
            FileRecord {
                spec,
                owner: None,
                ranges: BTreeMap::new(),
                holders: BTreeMap::new(),
                creator,
            },
        );
        Ok(())
    }

    /// Checks that a file may be removed by a requester who is (or is not) an
    /// operator: unbound files by anyone, bound files by an operator only.
    ///
    /// # Errors
    /// [`LedgerError::UnknownFile`], [`LedgerError::FileBound`].
    pub fn check_remove(&self, name: &Name, operator: bool) -> LedgerResult<&FileRecord> {
        let file = self.file(name)?;
        if !file.ranges.is_empty() && !operator {
            return Err(LedgerError::FileBound {
                name: name.clone(),
                bindings: file.ranges.len(),
            });
        }
        Ok(file)
    }

    /// Removes a file, dropping its bindings (operator destroy).
    ///
    /// # Errors
    /// As [`Ledger::check_remove`].
    pub fn remove_file(&mut self, name: &Name, operator: bool) -> LedgerResult<Vec<Binding>> {
        self.check_remove(name, operator)?;
        let file = self
            .files
            .remove(name)
            .ok_or(LedgerError::UnknownFile { name: name.clone() })?;
        let mut dropped = Vec::new();
        for (offset, (lease, slot, _)) in file.ranges {
            if let Some(rec) = self.leases.get_mut(&lease) {
                if let Some(b) = rec.bindings.remove(&slot) {
                    debug_assert_eq!(b.offset, offset);
                    dropped.push(b);
                }
            }
        }
        Ok(dropped)
    }

    /// A file's record.
    ///
    /// # Errors
    /// [`LedgerError::UnknownFile`].
    pub fn file(&self, name: &Name) -> LedgerResult<&FileRecord> {
        self.files
            .get(name)
            .ok_or_else(|| LedgerError::UnknownFile { name: name.clone() })
    }

    /// All files.
    pub fn files(&self) -> impl Iterator<Item = (&Name, &FileRecord)> {
        self.files.iter()
    }

    /// Bytes of all memory files.
    pub fn total_size(&self) -> u64 {
        self.files.values().map(|f| f.spec.size).sum()
    }

    /// Files created through a lease and still present.
    pub fn files_created_by(&self, lease: LeaseId) -> usize {
        self.files
            .values()
            .filter(|f| f.creator == Some(lease))
            .count()
    }

    /// Records that process `pid` received the file's fd for VM `vm`.
    ///
    /// # Errors
    /// [`LedgerError::UnknownFile`].
    pub fn add_holder(&mut self, name: &Name, pid: u32, vm: Uuid) -> LedgerResult<()> {
        self.insert_holder(name, pid, vm, None)
    }

    /// Records that process `pid` received the file's fd for VM `vm` through
    /// lease `lease`. Such a holder counts as alive while its process runs or
    /// while its lease is open: whoever keeps the lease socket (a QEMU the
    /// process started and handed the fds to) may hold the fds too.
    ///
    /// # Errors
    /// [`LedgerError::UnknownFile`].
    pub fn add_lease_holder(
        &mut self,
        name: &Name,
        pid: u32,
        vm: Uuid,
        lease: LeaseId,
    ) -> LedgerResult<()> {
        self.insert_holder(name, pid, vm, Some(lease))
    }

    fn insert_holder(
        &mut self,
        name: &Name,
        pid: u32,
        vm: Uuid,
        lease: Option<LeaseId>,
    ) -> LedgerResult<()> {
        let file = self
            .files
            .get_mut(name)
            .ok_or(LedgerError::UnknownFile { name: name.clone() })?;
        file.holders.insert(pid, (vm, lease));
        Ok(())
    }

    fn lease_open(&self, lease: Option<LeaseId>) -> bool {
        lease.is_some_and(|id| self.leases.contains_key(&id))
    }

    /// Forgets every process recorded for the file (after a scrub).
    ///
    /// # Errors
    /// [`LedgerError::UnknownFile`].
    pub fn clear_holders(&mut self, name: &Name) -> LedgerResult<()> {
        let file = self
            .files
            .get_mut(name)
            .ok_or(LedgerError::UnknownFile { name: name.clone() })?;
        file.holders.clear();
        Ok(())
    }

    /// Forgets the holders `is_alive` reports gone whose lease (if any) is
    /// closed too, in every file.
    pub fn prune_holders(&mut self, is_alive: &mut dyn FnMut(u32) -> bool) {
        let leases = &self.leases;
        for file in self.files.values_mut() {
            file.holders.retain(|pid, (_, lease)| {
                is_alive(*pid) || lease.is_some_and(|id| leases.contains_key(&id))
            });
        }
    }

    /// Refuses VM `uuid` access to a file while another VM owns it, or while
    /// a live process holds it for another VM (invariants 1 and 6). A holder
    /// counts while its process runs (`is_alive`) or its lease is open. The
    /// requesting process itself (`requester`, unless 0 = unknown) is not
    /// shielded from: it already holds the fd.
    ///
    /// # Errors
    /// [`LedgerError::NotOwner`], [`LedgerError::HeldElsewhere`],
    /// [`LedgerError::UnknownFile`].
    pub fn check_access(
        &self,
        name: &Name,
        uuid: Uuid,
        requester: u32,
        is_alive: &mut dyn FnMut(u32) -> bool,
    ) -> LedgerResult<()> {
        let file = self.file(name)?;
        if let Some(owner) = &file.owner {
            if owner.vm.uuid != uuid {
                return Err(LedgerError::NotOwner {
                    name: name.clone(),
                    owner: owner.vm.clone(),
                    lease: owner.lease,
                });
            }
        }
        for (pid, (holder_vm, lease)) in &file.holders {
            if *holder_vm == uuid || (*pid != 0 && *pid == requester) {
                continue;
            }
            let process_alive = is_alive(*pid);
            if process_alive || self.lease_open(*lease) {
                let vm = self
                    .leases
                    .values()
                    .find(|l| l.vm.uuid == *holder_vm)
                    .map_or_else(|| format!("VM {holder_vm}"), |l| format!("VM {}", l.vm));
                let holder = match lease {
                    Some(id) if !process_alive => {
                        format!("{vm}; it exited, but lease {id} it shared is still open")
                    }
                    _ => vm,
                };
                return Err(LedgerError::HeldElsewhere {
                    name: name.clone(),
                    pid: *pid,
                    holder,
                });
            }
        }
        Ok(())
    }

    /// Binds a file range into lease `id`'s VM. Validation follows
    /// `kvm_gmem_bind`; `is_alive` tells whether a recorded holder process
    /// still exists (invariant 6). Returns whether this bind set the owner.
    ///
    /// # Errors
    /// Any binding refusal; the ledger is unchanged then.
    pub fn bind(
        &mut self,
        id: LeaseId,
        req: &BindRequest,
        is_alive: &mut dyn FnMut(u32) -> bool,
    ) -> LedgerResult<bool> {
        let lease = self.leases.get(&id).ok_or(LedgerError::UnknownLease(id))?;
        let vm = &lease.vm;
        self.check_access(&req.name, vm.uuid, lease.peer.pid, is_alive)?;
        let file = self.file(&req.name)?;

        let page_size = file.spec.page_size;
        for (field, value) in [("offset", req.offset), ("size", req.size), ("gpa", req.gpa)] {
            if value % page_size != 0 {
                return Err(LedgerError::Misaligned {
                    name: req.name.clone(),
                    field,
                    value,
                    page_size,
                });
            }
        }
        if req.size == 0 {
            return Err(LedgerError::EmptyBinding);
        }
        let end = req.offset.checked_add(req.size);
        if end.is_none_or(|end| end > file.spec.size) {
            return Err(LedgerError::PastEnd {
                name: req.name.clone(),
                offset: req.offset,
                size: req.size,
                file_size: file.spec.size,
            });
        }
        let file_end = req.offset + req.size;
        let gpa_end = req
            .gpa
            .checked_add(req.size)
            .ok_or(LedgerError::GuestOverflow {
                gpa: req.gpa,
                size: req.size,
            })?;
        // The binding starting closest below our end is the only one that
        // can overlap, because bindings of one file never overlap each other.
        if let Some((&start, &(_, slot, size))) = file.ranges.range(..file_end).next_back() {
            if start + size > req.offset {
                return Err(LedgerError::FileRangeOverlap {
                    name: req.name.clone(),
                    offset: req.offset,
                    size: req.size,
                    slot,
                });
            }
        }
        if lease.bindings.contains_key(&req.slot) {
            return Err(LedgerError::SlotTaken { slot: req.slot });
        }
        if file.ranges.len() >= MAX_BINDINGS_PER_FILE {
            return Err(LedgerError::TooManyBindings {
                name: req.name.clone(),
                limit: MAX_BINDINGS_PER_FILE,
            });
        }
        if let Some(other) = lease
            .bindings
            .values()
            .find(|b| b.gpa < gpa_end && req.gpa < b.gpa_end())
        {
            return Err(LedgerError::GuestOverlap {
                gpa: req.gpa,
                size: req.size,
                slot: other.slot,
            });
        }

        // Every check passed: apply.
        let vm = vm.clone();
        let file = self.files.get_mut(&req.name).expect("file checked above");
        let sets_owner = file.owner.is_none();
        if sets_owner {
            file.owner = Some(Owner { vm, lease: id });
        }
        file.ranges.insert(req.offset, (id, req.slot, req.size));
        self.leases
            .get_mut(&id)
            .expect("lease checked above")
            .bindings
            .insert(
                req.slot,
                Binding {
                    slot: req.slot,
                    gpa: req.gpa,
                    file: req.name.clone(),
                    offset: req.offset,
                    size: req.size,
                },
            );
        Ok(sets_owner)
    }

    /// Removes the binding in `slot`. Returns it and whether the file's owner
    /// was cleared (it was the last binding).
    ///
    /// # Errors
    /// [`LedgerError::UnknownSlot`], [`LedgerError::UnknownLease`].
    pub fn unbind(&mut self, id: LeaseId, slot: u32) -> LedgerResult<(Binding, bool)> {
        let lease = self
            .leases
            .get_mut(&id)
            .ok_or(LedgerError::UnknownLease(id))?;
        let binding = lease
            .bindings
            .remove(&slot)
            .ok_or(LedgerError::UnknownSlot { slot })?;
        let mut cleared = false;
        if let Some(file) = self.files.get_mut(&binding.file) {
            file.ranges.remove(&binding.offset);
            if file.ranges.is_empty() {
                cleared = file.owner.take().is_some();
            }
        }
        Ok((binding, cleared))
    }

    /// Checks every invariant over the whole ledger; for tests and fuzzing.
    ///
    /// # Panics
    /// If an invariant does not hold.
    pub fn assert_consistent(&self) {
        let mut seen = 0;
        for (id, lease) in &self.leases {
            for (slot, b) in &lease.bindings {
                assert_eq!(*slot, b.slot);
                let file = &self.files[&b.file];
                assert_eq!(file.ranges.get(&b.offset), Some(&(*id, b.slot, b.size)));
                let owner = file.owner.as_ref().expect("bound file has an owner");
                assert_eq!(owner.vm.uuid, lease.vm.uuid);
                assert_eq!(b.offset % file.spec.page_size, 0);
                assert!(b.offset + b.size <= file.spec.size);
                for other in lease.bindings.values() {
                    if other.slot != b.slot {
                        assert!(other.gpa >= b.gpa_end() || b.gpa >= other.gpa_end());
                    }
                }
                seen += 1;
            }
        }
        let mut ranges = 0;
        for file in self.files.values() {
            assert_eq!(file.owner.is_some(), !file.ranges.is_empty());
            let mut last_end = 0;
            for (start, (_, _, size)) in &file.ranges {
                assert!(*start >= last_end, "overlapping file ranges");
                last_end = start + size;
            }
            ranges += file.ranges.len();
        }
        assert_eq!(seen, ranges);
    }
}

#[cfg(test)]
mod tests;
