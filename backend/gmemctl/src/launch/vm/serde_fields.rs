//! How typed fields appear in records and JSON reports: names and UUIDs as
//! text, lease ids and guest-physical addresses as numbers.

/// `Display` out, `FromStr` in: names and UUIDs.
pub(crate) mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Lease ids as numbers.
pub(crate) mod lease {
    use gmem_protocol::wire::LeaseId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(lease: &LeaseId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(lease.get())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LeaseId, D::Error> {
        LeaseId::new(u64::deserialize(d)?).ok_or_else(|| serde::de::Error::custom("lease 0"))
    }
}

/// Guest-physical addresses as numbers.
pub(crate) mod gpa {
    use gmem_protocol::wire::GuestAddress;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(gpa: &GuestAddress, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(gpa.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<GuestAddress, D::Error> {
        u64::deserialize(d).map(GuestAddress)
    }
}
