//! Names, UUIDs, VM identities and lease ids.

use std::fmt;

use super::*;

/// A validated name: 1–63 bytes of `[A-Za-z0-9._:-]`, not starting with `.`.
///
/// The charset keeps names safe as file names in the state directory and
/// unambiguous in logs.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// Validates `s` as a name.
    pub fn new(s: &str) -> WireResult<Self> {
        Self::check(s.as_bytes(), "name")?;
        Ok(Name(s.to_owned()))
    }

    fn check(bytes: &[u8], field: &'static str) -> WireResult<()> {
        let bad = |reason| Err(WireError::BadName { field, reason });
        if bytes.is_empty() {
            return bad("empty");
        }
        if bytes.len() >= NAME_LEN {
            return bad("longer than 63 bytes");
        }
        if bytes[0] == b'.' {
            return bad("starts with '.'");
        }
        if !bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b))
        {
            return bad("characters outside [A-Za-z0-9._:-]");
        }
        Ok(())
    }

    /// Decodes a NUL-padded name field.
    pub fn from_field(field: &[u8; NAME_LEN], what: &'static str) -> WireResult<Self> {
        let len = field.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        if field[len..].iter().any(|&b| b != 0) {
            return Err(WireError::BadName {
                field: what,
                reason: "not NUL-padded",
            });
        }
        Self::check(&field[..len], what)?;
        // The charset check above admits ASCII only.
        Ok(Name(String::from_utf8_lossy(&field[..len]).into_owned()))
    }

    /// Decodes a name field that may be empty (all zero).
    pub fn from_optional_field(
        field: &[u8; NAME_LEN],
        what: &'static str,
    ) -> WireResult<Option<Self>> {
        if field.iter().all(|&b| b == 0) {
            Ok(None)
        } else {
            Self::from_field(field, what).map(Some)
        }
    }

    /// Encodes into a NUL-padded field.
    pub fn to_field(&self) -> [u8; NAME_LEN] {
        let mut out = [0u8; NAME_LEN];
        out[..self.0.len()].copy_from_slice(self.0.as_bytes());
        out
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::str::FromStr for Name {
    type Err = WireError;

    fn from_str(s: &str) -> WireResult<Self> {
        Name::new(s)
    }
}

/// A VM UUID (16 raw bytes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// Whether every byte is zero.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// Parses the canonical 8-4-4-4-12 hex form.
    pub fn parse(s: &str) -> Option<Self> {
        let hex: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
        if hex.len() != 32 || s.len() != 36 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, pair) in hex.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).ok()?;
            out[i] = u8::from_str_radix(text, 16).ok()?;
        }
        Some(Uuid(out))
    }

    /// A stable UUID derived from a name (FNV-1a based, version-8 layout),
    /// so `--vm NAME` maps to the same VM every time without a registry.
    pub fn from_name(name: &str) -> Self {
        let mut out = [0u8; 16];
        for (half, seed) in [0xcbf2_9ce4_8422_2325u64, 0x8422_2325_cbf2_9ce4]
            .into_iter()
            .enumerate()
        {
            let mut hash = seed;
            for b in name.bytes().chain(*b"gmemd-vm") {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
            out[half * 8..half * 8 + 8].copy_from_slice(&hash.to_le_bytes());
        }
        out[6] = (out[6] & 0x0f) | 0x80;
        out[8] = (out[8] & 0x3f) | 0x80;
        Uuid(out)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Uuid {
    type Err = WireError;

    fn from_str(s: &str) -> WireResult<Self> {
        Uuid::parse(s).ok_or(WireError::BadName {
            field: "uuid",
            reason: "not a UUID of the 8-4-4-4-12 hex form",
        })
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The identity a lease is opened with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VmId {
    /// UUID: what ownership compares.
    pub uuid: Uuid,
    /// Name, for people.
    pub name: Name,
}

impl VmId {
    /// A VM identity with a UUID derived from its name.
    pub fn from_name(name: Name) -> Self {
        VmId {
            uuid: Uuid::from_name(name.as_str()),
            name,
        }
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.uuid)
    }
}

/// A lease's id: one per VM connection, never reused while the daemon runs.
/// Never 0: the wire uses 0 for "no lease" (a control session, a file
/// without owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(std::num::NonZeroU64);

impl LeaseId {
    /// The id for a raw value; `None` for 0.
    pub const fn new(raw: u64) -> Option<Self> {
        match std::num::NonZeroU64::new(raw) {
            Some(id) => Some(LeaseId(id)),
            None => None,
        }
    }

    /// The first id a daemon hands out.
    pub const FIRST: LeaseId = LeaseId(std::num::NonZeroU64::MIN);

    /// The raw value (never 0).
    pub const fn get(self) -> u64 {
        self.0.get()
    }

    /// The id after this one.
    ///
    /// # Panics
    /// After 2^64 - 1 leases, which a daemon cannot live to see.
    pub fn next(self) -> Self {
        LeaseId(self.0.checked_add(1).expect("lease ids exhausted"))
    }

    /// Decodes a field that must hold a lease id.
    pub(super) fn from_field(raw: u64, field: &'static str) -> WireResult<Self> {
        LeaseId::new(raw).ok_or(WireError::UnknownValue { field, value: 0 })
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<LeaseId> for u64 {
    fn from(id: LeaseId) -> u64 {
        id.get()
    }
}
