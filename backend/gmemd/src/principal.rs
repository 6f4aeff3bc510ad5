//! Principals: who a connection is, as the kernel says, and what a VM is
//! tied to (DESIGN invariant 6).
//!
//! A connection's [`Principal`] is read at accept, never from a message:
//! its uid (`SO_PEERCRED`), its cgroup (`/proc/PID/cgroup`) and its
//! security label (`SO_PEERSEC`), see [`crate::peer`]. A VM is tied to the
//! principal of its first lease by a [`Tie`]: the uid always, and where the
//! operator asks for it (`--principal uid+cgroup`, `uid+label`) the cgroup
//! and label too. Where every VMM runs as one uid (libvirt's qemu user),
//! those tell VMs apart; they are matched by pattern, because every start
//! of a VM gets a new cgroup (`machine-qemu\x2dN\x2dNAME.scope`) and a new
//! MCS label, and a relaunch must still be the same VM.
//!
//! Pure data and string matching: no I/O here.

use std::collections::BTreeMap;
use std::fmt;

use gmem_protocol::wire::{Name, VmId};

/// Who a connection is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Principal {
    /// `SO_PEERCRED` uid.
    pub uid: u32,
    /// Cgroup path of the connecting process (the v2 path, or the
    /// `name=systemd` hierarchy on cgroup v1); `None` when it cannot be read.
    pub cgroup: Option<String>,
    /// `SO_PEERSEC` label; `None` without an LSM (`ENOPROTOOPT`).
    pub label: Option<String>,
}

/// What besides the uid ties a VM to its principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrincipalMode {
    /// Match the cgroup.
    pub cgroup: bool,
    /// Match the security label.
    pub label: bool,
}

impl std::str::FromStr for PrincipalMode {
    type Err = String;

    /// `uid`, `uid+cgroup`, `uid+label` or `uid+cgroup+label`.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut mode = PrincipalMode::default();
        let mut parts = text.split('+');
        if parts.next() != Some("uid") {
            return Err(format!(
                "invalid principal {text:?}: it starts with uid (uid, uid+cgroup, uid+label, \
                 uid+cgroup+label)"
            ));
        }
        for part in parts {
            match part {
                "cgroup" if !mode.cgroup => mode.cgroup = true,
                "label" if !mode.label => mode.label = true,
                _ => {
                    return Err(format!(
                    "invalid principal {text:?}: {part:?} is not cgroup or label (or comes twice)"
                ))
                }
            }
        }
        Ok(mode)
    }
}

impl fmt::Display for PrincipalMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("uid")?;
        if self.cgroup {
            f.write_str("+cgroup")?;
        }
        if self.label {
            f.write_str("+label")?;
        }
        Ok(())
    }
}

/// A string a principal's cgroup or label must match.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Matcher {
    /// Exactly this value (the first lease's, when no pattern is configured).
    Exact(String),
    /// A glob: `*` matches any run of characters, `?` any one; nothing else
    /// is special.
    Pattern(String),
}

impl Matcher {
    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(exact) => exact == value,
            Matcher::Pattern(pattern) => glob(pattern.as_bytes(), value.as_bytes()),
        }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::Exact(s) => f.write_str(s),
            Matcher::Pattern(p) => write!(f, "pattern {p}"),
        }
    }
}

/// `*` and `?` glob matching, iterative (no backtracking blow-up: the last
/// `*` is the only one ever returned to).
fn glob(pattern: &[u8], value: &[u8]) -> bool {
    let (mut p, mut v) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while v < value.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, v));
                p += 1;
            }
            Some(&c) if c == b'?' || c == value[v] => {
                p += 1;
                v += 1;
            }
            _ => match star {
                Some((sp, sv)) => {
                    p = sp + 1;
                    v = sv + 1;
                    star = Some((sp, sv + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// What a VM is tied to: the uid of its first lease, and where the mode
/// asks for it, a cgroup and a label matcher. Also the key of the
/// principal's quotas.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tie {
    /// The uid.
    pub uid: u32,
    /// The cgroup it must match, if the mode asks.
    pub cgroup: Option<Matcher>,
    /// The label it must match, if the mode asks.
    pub label: Option<Matcher>,
}

impl Tie {
    /// Whether `principal` may act as a VM tied by this.
    pub fn admits(&self, principal: &Principal) -> bool {
        let field = |matcher: &Option<Matcher>, value: &Option<String>| match (matcher, value) {
            (None, _) => true,
            (Some(m), Some(v)) => m.matches(v),
            (Some(_), None) => false,
        };
        self.uid == principal.uid
            && field(&self.cgroup, &principal.cgroup)
            && field(&self.label, &principal.label)
    }
}

impl fmt::Display for Tie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {}", self.uid)?;
        if let Some(c) = &self.cgroup {
            write!(f, ", cgroup {c}")?;
        }
        if let Some(l) = &self.label {
            write!(f, ", label {l}")?;
        }
        Ok(())
    }
}

/// Patterns for one VM, from the config file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmPatterns {
    /// The uid its first lease must come from: the VM is reserved for it,
    /// so nobody else can take its name first.
    pub uid: Option<u32>,
    /// Cgroup pattern.
    pub cgroup: Option<String>,
    /// Label pattern.
    pub label: Option<String>,
}

/// How ties are made: the mode, patterns for every VM (`{vm}` stands for
/// the VM's name), and patterns of single VMs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TieRules {
    /// What must match besides the uid.
    pub mode: PrincipalMode,
    /// Cgroup pattern of every VM, with `{vm}` for its name; `None`: the
    /// exact cgroup of the VM's first lease.
    pub cgroup_pattern: Option<String>,
    /// Label pattern of every VM, likewise.
    pub label_pattern: Option<String>,
    /// Patterns of single VMs, over the ones above.
    pub vms: BTreeMap<Name, VmPatterns>,
}

/// Why no tie can be made for a first lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TieError {
    /// The mode needs a value the kernel did not give.
    #[error(
        "the {what} of the connecting process cannot be read, and --principal {mode} needs it"
    )]
    Unknown {
        /// `cgroup` or `label`.
        what: &'static str,
        /// The mode.
        mode: PrincipalMode,
    },
    /// The first lease does not match the VM's own pattern.
    #[error("the connecting process ({principal}) does not match VM {vm}'s principal ({tie})")]
    Mismatch {
        /// The VM.
        vm: Name,
        /// What it would be tied to.
        tie: String,
        /// Who connected.
        principal: String,
    },
}

impl TieRules {
    /// The tie of VM `vm`, whose first lease comes from `first`.
    ///
    /// # Errors
    /// [`TieError`]: a value the mode needs is unknown, or `first` does not
    /// match the VM's pattern itself.
    pub fn tie_for(&self, vm: &VmId, first: &Principal) -> Result<Tie, TieError> {
        let own = self.vms.get(&vm.name);
        let matcher =
            |on: bool, what, own: Option<&String>, all: &Option<String>, value: &Option<String>| {
                if !on {
                    return Ok(None);
                }
                if let Some(pattern) = own.or(all.as_ref()) {
                    return Ok(Some(Matcher::Pattern(
                        pattern.replace("{vm}", vm.name.as_str()),
                    )));
                }
                value
                    .clone()
                    .map(|v| Some(Matcher::Exact(v)))
                    .ok_or(TieError::Unknown {
                        what,
                        mode: self.mode,
                    })
            };
        let tie = Tie {
            uid: own.and_then(|p| p.uid).unwrap_or(first.uid),
            cgroup: matcher(
                self.mode.cgroup,
                "cgroup",
                own.and_then(|p| p.cgroup.as_ref()),
                &self.cgroup_pattern,
                &first.cgroup,
            )?,
            label: matcher(
                self.mode.label,
                "security label",
                own.and_then(|p| p.label.as_ref()),
                &self.label_pattern,
                &first.label,
            )?,
        };
        if !tie.admits(first) {
            return Err(TieError::Mismatch {
                vm: vm.name.clone(),
                tie: tie.to_string(),
                principal: describe(first),
            });
        }
        Ok(tie)
    }
}

/// A principal for messages: `uid 1000, cgroup /a/b`.
pub fn describe(p: &Principal) -> String {
    let mut out = format!("uid {}", p.uid);
    if let Some(c) = &p.cgroup {
        out.push_str(&format!(", cgroup {c}"));
    }
    if let Some(l) = &p.label {
        out.push_str(&format!(", label {l}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str) -> VmId {
        VmId::from_name(Name::new(name).unwrap())
    }

    fn principal(uid: u32, cgroup: Option<&str>, label: Option<&str>) -> Principal {
        Principal {
            uid,
            cgroup: cgroup.map(str::to_owned),
            label: label.map(str::to_owned),
        }
    }

    #[test]
    fn globs() {
        let m = |p: &str, v: &str| Matcher::Pattern(p.into()).matches(v);
        assert!(m(
            "/machine.slice/machine-qemu\\x2d*\\x2dweb1.scope",
            "/machine.slice/machine-qemu\\x2d3\\x2dweb1.scope"
        ));
        assert!(!m(
            "/machine.slice/machine-qemu\\x2d*\\x2dweb1.scope",
            "/machine.slice/machine-qemu\\x2d3\\x2dweb2.scope"
        ));
        assert!(m("*", ""));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("a?c", "abc") && !m("a?c", "ac"));
        assert!(!m("abc", "abcd") && m("abc*", "abcd"));
        // No exponential blow-up on adversarial input.
        let long = "a".repeat(10_000);
        assert!(!m(&"*a".repeat(50).to_string(), &(long + "b")));
        assert!(
            Matcher::Exact("x*".into()).matches("x*") && !Matcher::Exact("x*".into()).matches("xy")
        );
    }

    #[test]
    fn modes_parse_and_print() {
        for text in ["uid", "uid+cgroup", "uid+label", "uid+cgroup+label"] {
            assert_eq!(text.parse::<PrincipalMode>().unwrap().to_string(), text);
        }
        for bad in ["", "cgroup", "uid+uid", "uid+cgroup+cgroup", "uid+pid"] {
            assert!(bad.parse::<PrincipalMode>().is_err(), "{bad}");
        }
    }

    #[test]
    fn by_uid_only_a_vm_is_its_first_uid() {
        let rules = TieRules::default();
        let tie = rules
            .tie_for(&vm("a"), &principal(1000, Some("/x"), None))
            .unwrap();
        assert_eq!(
            (tie.uid, tie.cgroup.is_none(), tie.label.is_none()),
            (1000, true, true)
        );
        assert!(tie.admits(&principal(1000, Some("/elsewhere"), Some("l"))));
        assert!(!tie.admits(&principal(1001, Some("/x"), None)));
    }

    #[test]
    fn by_cgroup_exactly_without_a_pattern() {
        let rules = TieRules {
            mode: "uid+cgroup".parse().unwrap(),
            ..TieRules::default()
        };
        let tie = rules
            .tie_for(&vm("a"), &principal(107, Some("/vm/a"), None))
            .unwrap();
        assert!(tie.admits(&principal(107, Some("/vm/a"), None)));
        assert!(!tie.admits(&principal(107, Some("/vm/b"), None)));
        assert!(!tie.admits(&principal(107, None, None)));
        let err = rules
            .tie_for(&vm("a"), &principal(107, None, None))
            .unwrap_err();
        assert!(
            matches!(err, TieError::Unknown { what: "cgroup", .. }),
            "{err}"
        );
    }

    #[test]
    fn by_pattern_a_relaunch_in_a_new_scope_is_the_same_vm() {
        let mut rules = TieRules {
            mode: "uid+cgroup+label".parse().unwrap(),
            cgroup_pattern: Some("/machine.slice/machine-qemu\\x2d*\\x2d{vm}.scope".into()),
            label_pattern: Some("system_u:system_r:svirt_t:s0:*".into()),
            ..TieRules::default()
        };
        let first = principal(
            107,
            Some("/machine.slice/machine-qemu\\x2d3\\x2dweb1.scope"),
            Some("system_u:system_r:svirt_t:s0:c1,c2"),
        );
        let tie = rules.tie_for(&vm("web1"), &first).unwrap();
        let relaunch = principal(
            107,
            Some("/machine.slice/machine-qemu\\x2d9\\x2dweb1.scope"),
            Some("system_u:system_r:svirt_t:s0:c7,c8"),
        );
        assert!(tie.admits(&relaunch));
        let other_vm = principal(
            107,
            Some("/machine.slice/machine-qemu\\x2d4\\x2dweb2.scope"),
            Some("system_u:system_r:svirt_t:s0:c3,c4"),
        );
        assert!(!tie.admits(&other_vm));
        // A process outside the pattern cannot even become the first lease.
        let err = rules.tie_for(&vm("web1"), &other_vm).unwrap_err();
        assert!(matches!(err, TieError::Mismatch { .. }), "{err}");
        // A VM of its own overrides the pattern of all.
        rules.vms.insert(
            Name::new("db").unwrap(),
            VmPatterns {
                cgroup: Some("/db/*".into()),
                ..VmPatterns::default()
            },
        );
        let db = principal(
            107,
            Some("/db/1"),
            Some("system_u:system_r:svirt_t:s0:c5,c6"),
        );
        assert!(rules.tie_for(&vm("db"), &db).is_ok());
        // Ties are quota keys: one per VM with `{vm}`.
        assert_ne!(rules.tie_for(&vm("db"), &db).unwrap(), tie);
    }

    #[test]
    fn a_vm_reserved_for_a_uid_is_tied_to_it_only() {
        let mut rules = TieRules::default();
        rules.vms.insert(
            Name::new("prod").unwrap(),
            VmPatterns {
                uid: Some(107),
                ..VmPatterns::default()
            },
        );
        let err = rules
            .tie_for(&vm("prod"), &principal(1000, None, None))
            .unwrap_err();
        assert!(matches!(err, TieError::Mismatch { .. }), "{err}");
        assert!(err.to_string().contains("uid 107"), "{err}");
        let tie = rules
            .tie_for(&vm("prod"), &principal(107, None, None))
            .unwrap();
        assert_eq!(tie.uid, 107);
        // Other VMs are tied to whoever comes first.
        assert_eq!(
            rules
                .tie_for(&vm("dev"), &principal(1000, None, None))
                .unwrap()
                .uid,
            1000
        );
    }
}
