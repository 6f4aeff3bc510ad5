//! A pseudo-random walk over every operation, checking every invariant after each step.

use super::*;

/// A deterministic xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (small `n`).
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
}

#[test]
fn pseudo_random_operations_keep_invariants() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut l = Ledger::new();
    let uids = [ALICE, BOB, ROOT];
    let vm_of = |rng: &mut Rng| {
        let v = vm(&format!("v{}", rng.below(5)));
        // Now and then a known name with another UUID, or a known UUID
        // with another name.
        match rng.below(16) {
            0 => VmId {
                uuid: uuid(&format!("v{}", rng.below(5))),
                name: v.name,
            },
            _ => v,
        }
    };
    let key_of = |rng: &mut Rng| {
        let file = name(&format!("f{}", rng.below(4)));
        match rng.below(6) {
            0 => FileKey::operators(file),
            n => FileKey::vm(uuid(&format!("v{}", n - 1)), file),
        }
    };
    let mut next_id = LeaseId::FIRST;
    let mut accepted = 0;
    for step in 0..20_000u64 {
        let open: Vec<LeaseId> = l.leases().map(|(id, _)| id).collect();
        let lease = |rng: &mut Rng| {
            if open.is_empty() || rng.below(8) == 0 {
                id(1 + rng.next() % 40)
            } else {
                open[rng.below(open.len())]
            }
        };
        let before = snapshot(&l);
        let ok = match rng.below(13) {
            0 | 1 => {
                let uid = uids[rng.below(3)];
                let v = vm_of(&mut rng);
                let ok = open_as(&mut l, next_id.get(), v, uid, uid == ROOT).is_ok();
                next_id = next_id.next();
                ok
            }
            2 => {
                let id = lease(&mut rng);
                l.close_lease(id, step).is_ok()
            }
            3..=5 => {
                let id = lease(&mut rng);
                let req = bind_req(
                    &format!("f{}", rng.below(4)),
                    u32::try_from(rng.below(8)).unwrap(),
                    (rng.next() % 32) * 4096,
                    (rng.next() % 18) * 4096,
                    (rng.next() % 6) * 4096,
                );
                l.bind(id, &req).is_ok()
            }
            6 => {
                let id = lease(&mut rng);
                l.unbind(id, u32::try_from(rng.below(8)).unwrap()).is_ok()
            }
            7 => {
                let spec = if rng.below(4) == 0 {
                    gmem_spec(16 * 4096)
                } else {
                    memfd_spec(16 * 4096)
                };
                let depositor = (spec.kind == MemoryKind::GuestMemfd).then(|| lease(&mut rng));
                l.add_file(key_of(&mut rng), spec, depositor).is_ok()
            }
            8 => l.remove_file(&key_of(&mut rng), rng.below(2) == 0).is_ok(),
            9 => {
                let (from, to) = (key_of(&mut rng), key_of(&mut rng));
                let checked = l.check_move(&from, &to).is_ok();
                let ok = l.move_file(&from, to).is_ok();
                assert_eq!(checked, ok, "check_move and move_file disagree");
                ok
            }
            10 => {
                let v = VmSelector::Name(name(&format!("v{}", rng.below(5))));
                l.forget(&v).is_ok()
            }
            11 => {
                let through = (rng.below(2) == 0).then(|| lease(&mut rng));
                let pid = u32::try_from(rng.below(4)).unwrap();
                l.add_holder(&key_of(&mut rng), pid, through).is_ok()
            }
            _ => {
                let alive = rng.next();
                l.prune_holders(&mut |pid| alive >> pid & 1 == 1);
                true
            }
        };
        if ok {
            accepted += 1;
        } else {
            assert_eq!(before, snapshot(&l), "a refusal changed the ledger");
        }
        l.assert_consistent();
        check_usage_adds_up(&l);
    }
    assert!(accepted > 5_000, "only {accepted} operations accepted");
}

/// Every byte gmemd counts is charged to exactly one principal, or is an
/// operators' file.
fn check_usage_adds_up(l: &Ledger) {
    let mut ties: Vec<Tie> = l
        .vms()
        .map(|v| v.tie.clone())
        .chain(l.retired().iter().filter_map(|r| r.tie.clone()))
        .collect();
    ties.sort();
    ties.dedup();
    let charged: u64 = ties.iter().map(|t| l.usage_of(t).1).sum();
    let operators: u64 = l.files_in(Space::Operators).map(|(_, f)| f.spec.size).sum();
    let operators_retired: u64 = l
        .retired()
        .iter()
        .filter(|r| r.tie.is_none())
        .map(|r| r.bytes)
        .sum();
    assert_eq!(
        charged + operators + operators_retired,
        l.total_size() + l.retired_bytes()
    );
}
