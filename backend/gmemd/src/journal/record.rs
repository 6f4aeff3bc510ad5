//! What the journal holds: the state of one entity per record (a file, a
//! VM, a lease, a session, the retired list, the counters), or that it is
//! gone. The last record of an entity wins, so a damaged record costs at
//! most that entity's latest change, never a file another record describes.
//!
//! Plain data (strings, numbers, byte arrays) with its own layout,
//! independent of the daemon's types, so the format changes only on
//! purpose (`codec::FORMAT_VERSION`).

use serde::{Deserialize, Serialize};

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// Counters and the daemon's history.
    Meta(Meta),
    /// A memory file's state.
    File(FileRec),
    /// A memory file is gone.
    FileGone {
        /// Its id.
        fid: u64,
    },
    /// A VM's state.
    Vm(VmRec),
    /// A VM is forgotten.
    VmGone {
        /// Its UUID.
        uuid: [u8; 16],
    },
    /// A lease's state.
    Lease(LeaseRec),
    /// A lease ended.
    LeaseGone {
        /// Its id.
        id: u64,
    },
    /// The whole retired list.
    Retired(Vec<RetiredRec>),
    /// A connection's state.
    Session(SessionRec),
    /// A connection closed.
    SessionGone {
        /// Its id.
        sid: u64,
    },
    /// A vhost-user device (added after format 1's first records, so old
    /// journals still read).
    Device(DeviceRec),
    /// A device is gone.
    DeviceGone {
        /// Its id.
        id: u32,
    },
    /// A ready warm-pool file (added after the device records, so older
    /// journals still read). Taken by a CREATE, it is the `File` of the
    /// same id; let go, a `FileGone`.
    PoolFile(PoolRec),
}

/// A ready warm-pool file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRec {
    /// Its id (its fd is kept as `f<fid>`, like every memory file's).
    pub fid: u64,
    /// Size in bytes.
    pub size: u64,
    /// `MemoryKind` code.
    pub kind: u32,
}

/// A vhost-user device of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRec {
    /// Its id (its socket is `d<id>.sock`).
    pub id: u32,
    /// Its VM's UUID.
    pub vm: [u8; 16],
    /// Its disk file in the VM's namespace, if any.
    pub disk: Option<String>,
    /// Virtqueues.
    pub queues: u32,
}

/// Counters and history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The next lease id.
    pub next_lease: u64,
    /// The next file id.
    pub next_fid: u64,
    /// The next session id.
    pub next_sid: u64,
    /// How many times gmemd came back (crash, restart, upgrade).
    pub restarts: u64,
    /// When this state was first made (UNIX seconds).
    pub born: u64,
}

/// A memory file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRec {
    /// Its id (its fd is stored as `f<fid>`).
    pub fid: u64,
    /// Its VM's UUID; `None`: an operators' file.
    pub vm: Option<[u8; 16]>,
    /// Its name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// `MemoryKind` code.
    pub kind: u32,
    /// Page size.
    pub page_size: u64,
    /// The lease that deposited it (guest_memfd).
    pub depositor: Option<u64>,
    /// Processes that received it, with the lease they got it through.
    pub holders: Vec<(u32, Option<u64>)>,
}

/// A cgroup or label matcher of a tie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatcherRec {
    /// Exact value (else a glob pattern).
    pub exact: bool,
    /// The value or pattern.
    pub text: String,
}

/// A tie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TieRec {
    /// Uid.
    pub uid: u32,
    /// Cgroup matcher.
    pub cgroup: Option<MatcherRec>,
    /// Label matcher.
    pub label: Option<MatcherRec>,
}

/// A VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRec {
    /// UUID.
    pub uuid: [u8; 16],
    /// Name.
    pub name: String,
    /// What it is tied to.
    pub tie: TieRec,
    /// When its last lease ended (UNIX seconds).
    pub idle_since: Option<u64>,
}

/// A binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingRec {
    /// Slot.
    pub slot: u32,
    /// Guest-physical address.
    pub gpa: u64,
    /// File name (in the lease's VM).
    pub file: String,
    /// Offset in the file.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
}

/// A lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRec {
    /// Id.
    pub id: u64,
    /// VM UUID.
    pub uuid: [u8; 16],
    /// VM name.
    pub name: String,
    /// Peer pid.
    pub pid: u32,
    /// Peer uid.
    pub uid: u32,
    /// Bindings.
    pub bindings: Vec<BindingRec>,
    /// The process it was handed to (HANDOFF).
    pub handoff: Option<u32>,
}

/// Retired memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredRec {
    /// Who pays.
    pub tie: Option<TieRec>,
    /// Bytes.
    pub bytes: u64,
    /// Holders.
    pub holders: Vec<(u32, Option<u64>)>,
}

/// A principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalRec {
    /// Uid.
    pub uid: u32,
    /// Cgroup.
    pub cgroup: Option<String>,
    /// Label.
    pub label: Option<String>,
}

/// A connection's standing (its socket is stored as `c<sid>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRec {
    /// Id.
    pub sid: u64,
    /// Peer pid.
    pub pid: u32,
    /// Who it is.
    pub principal: PrincipalRec,
    /// 0 awaiting HELLO, 1 control, 2 lease, 3 revoked.
    pub state: u8,
    /// Negotiated features.
    pub features: u64,
    /// Its lease.
    pub lease: Option<u64>,
}

impl Record {
    /// Encodes the record's payload.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("records always encode")
    }

    /// Decodes a payload.
    ///
    /// # Errors
    /// The bytes are no record of this format.
    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}
