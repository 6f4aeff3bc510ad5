//! Who gets a connection slot, decided at accept before anything else is
//! read: operators may use every slot, everyone else all but the reserved
//! ones, and each principal at most its quota. So idle connections of one
//! principal (allowed or not) can never lock out an operator or another
//! principal.

use std::collections::HashMap;

use crate::principal::Principal;

/// Why a connection was turned away at accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Every slot is taken.
    #[error("all {0} connection slots are taken")]
    Full(usize),
    /// Only the operators' reserved slots are left.
    #[error("only the {0} slots reserved for operators are left")]
    Reserved(usize),
    /// The principal has its quota of connections.
    #[error("it already has {0} connections, its quota")]
    Quota(usize),
}

/// Connection slots and who holds them.
#[derive(Debug)]
pub struct Gate {
    max: usize,
    reserved: usize,
    per_principal: usize,
    total: usize,
    held: HashMap<Principal, usize>,
}

impl Gate {
    /// `max` slots, `reserved` of them for operators, `per_principal` for
    /// each principal that is no operator.
    pub fn new(max: usize, reserved: usize, per_principal: usize) -> Self {
        Gate {
            max,
            reserved: reserved.min(max.saturating_sub(1)),
            per_principal,
            total: 0,
            held: HashMap::new(),
        }
    }

    /// Takes a slot for `principal`, or says why not.
    ///
    /// # Errors
    /// [`Refusal`].
    pub fn enter(&mut self, principal: &Principal, operator: bool) -> Result<(), Refusal> {
        if self.total >= self.max {
            return Err(Refusal::Full(self.max));
        }
        if !operator {
            if self.total >= self.max - self.reserved {
                return Err(Refusal::Reserved(self.reserved));
            }
            if self.held.get(principal).copied().unwrap_or(0) >= self.per_principal {
                return Err(Refusal::Quota(self.per_principal));
            }
        }
        self.total += 1;
        *self.held.entry(principal.clone()).or_default() += 1;
        Ok(())
    }

    /// Gives back the slot of a connection of `principal` that closed.
    pub fn leave(&mut self, principal: &Principal) {
        if let Some(n) = self.held.get_mut(principal) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(principal);
            }
            self.total -= 1;
        }
    }

    /// Slots taken.
    pub fn taken(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(uid: u32) -> Principal {
        Principal {
            uid,
            ..Principal::default()
        }
    }

    #[test]
    fn a_principal_stops_at_its_quota_and_operators_keep_their_slots() {
        let mut g = Gate::new(10, 2, 4);
        for _ in 0..4 {
            g.enter(&uid(1000), false).unwrap();
        }
        assert_eq!(g.enter(&uid(1000), false), Err(Refusal::Quota(4)));
        for _ in 0..4 {
            g.enter(&uid(1001), false).unwrap();
        }
        // 8 of 10 taken: the last two are the operators'.
        assert_eq!(g.enter(&uid(1002), false), Err(Refusal::Reserved(2)));
        g.enter(&uid(0), true).unwrap();
        g.enter(&uid(0), true).unwrap();
        assert_eq!(g.enter(&uid(0), true), Err(Refusal::Full(10)));
        g.leave(&uid(1000));
        assert_eq!(g.taken(), 9);
        assert_eq!(g.enter(&uid(1000), false), Err(Refusal::Reserved(2)));
        g.enter(&uid(0), true).unwrap();
        // Leaving for a principal that holds nothing changes nothing.
        g.leave(&uid(4242));
        assert_eq!(g.taken(), 10);
    }

    #[test]
    fn one_slot_is_never_all_reserved() {
        let mut g = Gate::new(1, 8, 1);
        g.enter(&uid(1000), false).unwrap();
    }
}
