//! The operations and their byte layout.

/// One operation with its raw argument bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `open_lease(next id, vm, pid, principal, rules, operator)`.
    OpenLease {
        /// VM selector byte, see [`vm`].
        vm: u8,
        /// Who connects and under which rules, see [`who`].
        who: u8,
        /// Peer pid.
        pid: u8,
    },
    /// `close_lease`.
    CloseLease {
        /// Lease selector byte, see [`Harness::lease`].
        lease: u8,
    },
    /// `add_file`.
    AddFile {
        /// Namespace selector, see [`space`].
        space: u8,
        /// File selector.
        file: u8,
        /// Kind, modulo 5.
        kind: u8,
        /// Size in pages: below 128 modulo 17, else `(pages - 128) * 8`.
        pages: u8,
        /// Depositor: none unless bit 7; then a lease selector.
        depositor: u8,
    },
    /// `bind` (of a file in the lease's VM's namespace).
    Bind {
        /// Lease selector.
        lease: u8,
        /// Slot, modulo 8.
        slot: u8,
        /// Guest address in units, modulo 32.
        gpa: u8,
        /// File selector.
        file: u8,
        /// Offset in units, modulo 18.
        offset: u8,
        /// Size in units, modulo 6.
        size: u8,
        /// Bits 0–1: unit (file page size, 4 KiB, 2 MiB, 1 byte); bits 2–4:
        /// negate gpa / offset / size (values near 2^64); bit 5: wide, slot,
        /// gpa and offset taken whole (0..=255) instead of modulo, to reach
        /// the per-file binding limit.
        unit: u8,
    },
    /// `unbind`.
    Unbind {
        /// Lease selector.
        lease: u8,
        /// Slot: below 128 modulo 8, else `slot - 128` (wide and Fill slots).
        slot: u8,
    },
    /// `remove_file`.
    RemoveFile {
        /// Namespace selector.
        space: u8,
        /// File selector.
        file: u8,
        /// Bit 0: as operator.
        operator: u8,
    },
    /// `add_holder`.
    AddHolder {
        /// Namespace selector.
        space: u8,
        /// File selector.
        file: u8,
        /// Pid, modulo 8.
        pid: u8,
        /// From 128 on the holder came through a lease (the same byte as a
        /// lease selector).
        lease: u8,
    },
    /// `replace_inode` (SCRUB).
    ReplaceInode {
        /// Namespace selector.
        space: u8,
        /// File selector.
        file: u8,
    },
    /// `prune_holders` with the current liveness mask.
    PruneHolders,
    /// Sets which pids (bit `pid % 8`) are alive for pruning.
    SetAlive {
        /// The mask.
        mask: u8,
    },
    /// `lease_of` and `find_vm` by the VM's UUID and by its name (no
    /// change).
    LeaseOf {
        /// VM selector byte.
        vm: u8,
    },
    /// Binds every page of a file, one page per binding, into a lease (slots
    /// from 8, guest addresses from 2^40), skipping refused pages and
    /// stopping at the per-file binding limit: reaches a full ledger in one
    /// step instead of 64. Accepted if any page was bound.
    Fill {
        /// Lease selector.
        lease: u8,
        /// File selector.
        file: u8,
    },
    /// `move_file` (TRANSFER), checked against `check_move`.
    MoveFile {
        /// Namespace selector of the file.
        from_space: u8,
        /// File selector of the file.
        from_file: u8,
        /// Namespace selector of the destination.
        to_space: u8,
        /// File selector of the destination.
        to_file: u8,
    },
    /// `forget` (FORGET), by UUID or (bit 7) by name.
    Forget {
        /// VM selector byte.
        vm: u8,
    },
}

impl Op {
    /// Number of opcodes.
    pub const COUNT: u8 = 14;

    fn encode_into(self, out: &mut Vec<u8>) {
        let (code, args): (u8, &[u8]) = match self {
            Op::OpenLease { vm, who, pid } => (0, &[vm, who, pid]),
            Op::CloseLease { lease } => (1, &[lease]),
            Op::AddFile {
                space,
                file,
                kind,
                pages,
                depositor,
            } => (2, &[space, file, kind, pages, depositor]),
            Op::Bind {
                lease,
                slot,
                gpa,
                file,
                offset,
                size,
                unit,
            } => (3, &[lease, slot, gpa, file, offset, size, unit]),
            Op::Unbind { lease, slot } => (4, &[lease, slot]),
            Op::RemoveFile {
                space,
                file,
                operator,
            } => (5, &[space, file, operator]),
            Op::AddHolder {
                space,
                file,
                pid,
                lease,
            } => (6, &[space, file, pid, lease]),
            Op::ReplaceInode { space, file } => (7, &[space, file]),
            Op::PruneHolders => (8, &[]),
            Op::SetAlive { mask } => (9, &[mask]),
            Op::LeaseOf { vm } => (10, &[vm]),
            Op::Fill { lease, file } => (11, &[lease, file]),
            Op::MoveFile {
                from_space,
                from_file,
                to_space,
                to_file,
            } => (12, &[from_space, from_file, to_space, to_file]),
            Op::Forget { vm } => (13, &[vm]),
        };
        out.push(code);
        out.extend_from_slice(args);
    }
}

/// Encodes operations as a fuzz input.
pub fn encode(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        op.encode_into(&mut out);
    }
    out
}

/// Decodes a fuzz input into operations.
pub fn decode(data: &[u8]) -> Vec<Op> {
    let mut bytes = data.iter().copied();
    let mut ops = Vec::new();
    while let Some(code) = bytes.next() {
        let mut arg = || bytes.next().unwrap_or(0);
        ops.push(match code % Op::COUNT {
            0 => Op::OpenLease {
                vm: arg(),
                who: arg(),
                pid: arg(),
            },
            1 => Op::CloseLease { lease: arg() },
            2 => Op::AddFile {
                space: arg(),
                file: arg(),
                kind: arg(),
                pages: arg(),
                depositor: arg(),
            },
            3 => Op::Bind {
                lease: arg(),
                slot: arg(),
                gpa: arg(),
                file: arg(),
                offset: arg(),
                size: arg(),
                unit: arg(),
            },
            4 => Op::Unbind {
                lease: arg(),
                slot: arg(),
            },
            5 => Op::RemoveFile {
                space: arg(),
                file: arg(),
                operator: arg(),
            },
            6 => Op::AddHolder {
                space: arg(),
                file: arg(),
                pid: arg(),
                lease: arg(),
            },
            7 => Op::ReplaceInode {
                space: arg(),
                file: arg(),
            },
            8 => Op::PruneHolders,
            9 => Op::SetAlive { mask: arg() },
            10 => Op::LeaseOf { vm: arg() },
            11 => Op::Fill {
                lease: arg(),
                file: arg(),
            },
            12 => Op::MoveFile {
                from_space: arg(),
                from_file: arg(),
                to_space: arg(),
                to_file: arg(),
            },
            _ => Op::Forget { vm: arg() },
        });
    }
    ops
}
