//! The vhost-user wire format, as far as the filter acts on it: the header,
//! how many fds each request carries, and the bodies of the requests that
//! make the backend map a file (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG,
//! SET_LOG_BASE). Syntax only; whether a region may be mapped is `region`'s
//! business.
//!
//! Numbers are little-endian: vhost-user says "native", and gmemd only runs
//! on little-endian hosts with QEMU on the same host.

use thiserror::Error;
use vhost::vhost_user::message::FrontendReq;

/// Bytes in a header: u32 request, u32 flags, u32 payload size.
pub(super) const HEADER_SIZE: usize = 12;

/// The largest payload accepted in either direction: the crate's own
/// limit, so nothing the backend would have accepted is refused, and a
/// message never needs more than one bounded buffer.
pub(super) const MAX_PAYLOAD: usize = vhost::vhost_user::message::MAX_MSG_SIZE;

/// VHOST_MEMORY_BASELINE_NREGIONS: the most regions (and fds) one
/// SET_MEM_TABLE carries, and so the most fds any message carries.
pub(super) const MAX_TABLE_REGIONS: usize = 8;

/// The most fds any message may carry.
pub(super) const MAX_FDS: usize = MAX_TABLE_REGIONS;

/// Bits 0-1 of flags: the protocol version, always 1.
const VERSION_MASK: u32 = 0x3;
const VERSION: u32 = 0x1;
/// Bit 2: the message is a reply.
const REPLY: u32 = 1 << 2;
/// Bit 3: the frontend wants a REPLY_ACK.
const NEED_REPLY: u32 = 1 << 3;

/// Bit 8 of a SET_VRING_KICK/CALL/ERR payload: no fd is attached.
const VRING_NOFD: u64 = 1 << 8;

/// One region in a SET_MEM_TABLE: gpa, size, user address, mmap offset.
const REGION_SIZE: usize = 32;
/// SET_MEM_TABLE's u32 nregions and u32 padding before the regions.
const TABLE_PREFIX: usize = 8;
/// ADD_MEM_REG / REM_MEM_REG: u64 padding, then one region.
const SINGLE_REGION_SIZE: usize = 8 + REGION_SIZE;
/// SET_LOG_BASE: u64 mmap size, u64 mmap offset.
const LOG_SIZE: usize = 16;
/// SET_VRING_KICK/CALL/ERR: one u64 (index and NOFD bit).
const VRING_FD_SIZE: usize = 8;

/// A frontend message the filter refuses to relay because it breaks the
/// protocol; the connection ends.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// Flags bits 0-1 are not version 1.
    #[error("request {request}: flags {flags:#x} do not carry protocol version 1")]
    BadVersion { request: u32, flags: u32 },
    /// The frontend sent something flagged as a reply.
    #[error("request {request}: the frontend sent a message flagged as a reply")]
    ReplyFromFrontend { request: u32 },
    /// The payload does not have the size this request's body has.
    #[error("request {request}: payload of {size} bytes, expected {expected}")]
    PayloadSize {
        request: u32,
        size: usize,
        expected: usize,
    },
    /// SET_MEM_TABLE names no region or more than fit in one message.
    #[error("SET_MEM_TABLE with {nregions} regions (1 to {MAX_TABLE_REGIONS} allowed)")]
    RegionCount { nregions: u32 },
    /// The message carries a different number of fds than it takes.
    #[error("request {request}: {got} fds attached, expected {expected}")]
    FdCount {
        request: u32,
        got: usize,
        expected: FdRule,
    },
}

/// How many fds a request takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdRule {
    Exactly(usize),
    /// REM_MEM_REG: the spec says none, QEMU used to send one.
    AtMostOne,
}

impl FdRule {
    fn allows(self, n: usize) -> bool {
        match self {
            Self::Exactly(want) => n == want,
            Self::AtMostOne => n <= 1,
        }
    }
}

impl std::fmt::Display for FdRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exactly(n) => write!(f, "{n}"),
            Self::AtMostOne => f.write_str("0 or 1"),
        }
    }
}

/// A message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub request: u32,
    pub flags: u32,
    pub size: u32,
}

impl Header {
    pub fn parse(bytes: &[u8; HEADER_SIZE]) -> Self {
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        Self {
            request: word(0),
            flags: word(4),
            size: word(8),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0; HEADER_SIZE];
        out[0..4].copy_from_slice(&self.request.to_le_bytes());
        out[4..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8..12].copy_from_slice(&self.size.to_le_bytes());
        out
    }

    pub fn need_reply(&self) -> bool {
        self.flags & NEED_REPLY != 0
    }

    /// Checks what every frontend message must satisfy.
    pub fn check_from_frontend(&self) -> Result<(), WireError> {
        if self.flags & VERSION_MASK != VERSION {
            return Err(WireError::BadVersion {
                request: self.request,
                flags: self.flags,
            });
        }
        if self.flags & REPLY != 0 {
            return Err(WireError::ReplyFromFrontend {
                request: self.request,
            });
        }
        Ok(())
    }

    /// The REPLY_ACK the backend would have sent: same request, REPLY
    /// flag, u64 payload 0 (success) or 1 (failure).
    pub fn ack(&self, success: bool) -> [u8; HEADER_SIZE + 8] {
        let reply = Header {
            request: self.request,
            flags: VERSION | REPLY,
            size: 8,
        };
        let mut out = [0; HEADER_SIZE + 8];
        out[..HEADER_SIZE].copy_from_slice(&reply.encode());
        out[HEADER_SIZE..].copy_from_slice(&u64::from(!success).to_le_bytes());
        out
    }
}

/// A memory region as the frontend describes it (its fd travels apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WireRegion {
    pub guest_phys_addr: u64,
    pub memory_size: u64,
    pub user_addr: u64,
    pub mmap_offset: u64,
}

impl WireRegion {
    fn parse(bytes: &[u8]) -> Self {
        Self {
            guest_phys_addr: u64_at(bytes, 0),
            memory_size: u64_at(bytes, 8),
            user_addr: u64_at(bytes, 16),
            mmap_offset: u64_at(bytes, 24),
        }
    }
}

/// A frontend request, decoded as far as the filter acts on it. Every
/// variant's fd count has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Request {
    /// Replaces the table; region `i` goes with fd `i`.
    SetMemTable(Vec<WireRegion>),
    AddMemReg(WireRegion),
    RemMemReg(WireRegion),
    SetLogBase {
        mmap_size: u64,
        mmap_offset: u64,
    },
    /// Anything else: relayed as it is.
    Other,
}

/// Decodes `payload` of a message with header `header` that arrived with
/// `nfds` fds.
pub(super) fn decode(header: &Header, payload: &[u8], nfds: usize) -> Result<Request, WireError> {
    let request = header.request;
    let want_size = |expected: usize| {
        if payload.len() == expected {
            Ok(())
        } else {
            Err(WireError::PayloadSize {
                request,
                size: payload.len(),
                expected,
            })
        }
    };
    let (decoded, fds) = match FrontendReq::try_from(request) {
        Ok(FrontendReq::SET_MEM_TABLE) => {
            if payload.len() < TABLE_PREFIX {
                return Err(WireError::PayloadSize {
                    request,
                    size: payload.len(),
                    expected: TABLE_PREFIX,
                });
            }
            let nregions = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
            if nregions == 0 || nregions as usize > MAX_TABLE_REGIONS {
                return Err(WireError::RegionCount { nregions });
            }
            let n = nregions as usize;
            want_size(TABLE_PREFIX + n * REGION_SIZE)?;
            let regions = payload[TABLE_PREFIX..]
                .chunks_exact(REGION_SIZE)
                .map(WireRegion::parse)
                .collect();
            (Request::SetMemTable(regions), FdRule::Exactly(n))
        }
        Ok(FrontendReq::ADD_MEM_REG) => {
            want_size(SINGLE_REGION_SIZE)?;
            (
                Request::AddMemReg(WireRegion::parse(&payload[8..])),
                FdRule::Exactly(1),
            )
        }
        Ok(FrontendReq::REM_MEM_REG) => {
            want_size(SINGLE_REGION_SIZE)?;
            (
                Request::RemMemReg(WireRegion::parse(&payload[8..])),
                FdRule::AtMostOne,
            )
        }
        Ok(FrontendReq::SET_LOG_BASE) => {
            want_size(LOG_SIZE)?;
            let log = Request::SetLogBase {
                mmap_size: u64_at(payload, 0),
                mmap_offset: u64_at(payload, 8),
            };
            (log, FdRule::Exactly(1))
        }
        Ok(
            FrontendReq::SET_VRING_KICK | FrontendReq::SET_VRING_CALL | FrontendReq::SET_VRING_ERR,
        ) => {
            want_size(VRING_FD_SIZE)?;
            let nofd = u64_at(payload, 0) & VRING_NOFD != 0;
            (Request::Other, FdRule::Exactly(usize::from(!nofd)))
        }
        Ok(
            FrontendReq::SET_LOG_FD
            | FrontendReq::SET_BACKEND_REQ_FD
            | FrontendReq::SET_INFLIGHT_FD
            | FrontendReq::SET_DEVICE_STATE_FD,
        ) => (Request::Other, FdRule::Exactly(1)),
        // Unknown codes too: the backend refuses them, but they must not
        // smuggle fds past the filter either way.
        _ => (Request::Other, FdRule::Exactly(0)),
    };
    if !fds.allows(nfds) {
        return Err(WireError::FdCount {
            request,
            got: nfds,
            expected: fds,
        });
    }
    Ok(decoded)
}

/// The little-endian u64 at `at`; callers have checked the length.
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Raw message bytes, as a frontend would write them.
    pub(in crate::vhost::filter) fn message(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        let header = Header {
            request,
            flags,
            size: u32::try_from(payload.len()).unwrap(),
        };
        let mut out = header.encode().to_vec();
        out.extend_from_slice(payload);
        out
    }

    fn region_bytes(r: &WireRegion) -> Vec<u8> {
        [r.guest_phys_addr, r.memory_size, r.user_addr, r.mmap_offset]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    /// A SET_MEM_TABLE payload.
    pub(in crate::vhost::filter) fn table_payload(regions: &[WireRegion]) -> Vec<u8> {
        let mut out = u32::try_from(regions.len()).unwrap().to_le_bytes().to_vec();
        out.extend_from_slice(&[0; 4]);
        for r in regions {
            out.extend(region_bytes(r));
        }
        out
    }

    /// An ADD_MEM_REG / REM_MEM_REG payload.
    pub(in crate::vhost::filter) fn single_payload(region: &WireRegion) -> Vec<u8> {
        let mut out = vec![0; 8];
        out.extend(region_bytes(region));
        out
    }

    pub(in crate::vhost::filter) fn region(gpa: u64, size: u64, offset: u64) -> WireRegion {
        WireRegion {
            guest_phys_addr: gpa,
            memory_size: size,
            user_addr: 0x7f00_0000_0000u64.wrapping_add(gpa),
            mmap_offset: offset,
        }
    }

    fn header(request: FrontendReq, size: usize) -> Header {
        Header {
            request: request as u32,
            flags: 1,
            size: u32::try_from(size).unwrap(),
        }
    }

    fn decode_req(request: FrontendReq, payload: &[u8], nfds: usize) -> Result<Request, WireError> {
        decode(&header(request, payload.len()), payload, nfds)
    }

    #[test]
    fn header_round_trips_and_acks() {
        let h = Header {
            request: 37,
            flags: 1 | NEED_REPLY,
            size: 40,
        };
        assert_eq!(Header::parse(&h.encode()), h);
        assert!(h.need_reply());
        let nack = h.ack(false);
        assert_eq!(
            Header::parse(nack[..HEADER_SIZE].try_into().unwrap()),
            Header {
                request: 37,
                flags: 1 | REPLY,
                size: 8
            }
        );
        assert_eq!(u64_at(&nack, HEADER_SIZE), 1);
        assert_eq!(u64_at(&h.ack(true), HEADER_SIZE), 0);
    }

    #[test]
    fn frontend_headers_need_version_1_and_no_reply_flag() {
        let ok = Header {
            request: 1,
            flags: 1 | NEED_REPLY,
            size: 0,
        };
        assert_eq!(ok.check_from_frontend(), Ok(()));
        for flags in [0, 2, 3] {
            assert!(matches!(
                Header { flags, ..ok }.check_from_frontend(),
                Err(WireError::BadVersion { .. })
            ));
        }
        assert_eq!(
            Header {
                flags: 1 | REPLY,
                ..ok
            }
            .check_from_frontend(),
            Err(WireError::ReplyFromFrontend { request: 1 })
        );
    }

    #[test]
    fn mem_table_decodes_and_checks_its_size_and_fds() {
        let regions = [region(0, 0x1000, 0), region(0x1_0000, 0x2000, 0x1000)];
        let payload = table_payload(&regions);
        assert_eq!(
            decode_req(FrontendReq::SET_MEM_TABLE, &payload, 2),
            Ok(Request::SetMemTable(regions.to_vec()))
        );
        assert!(matches!(
            decode_req(FrontendReq::SET_MEM_TABLE, &payload, 1),
            Err(WireError::FdCount { got: 1, .. })
        ));
        assert!(matches!(
            decode_req(FrontendReq::SET_MEM_TABLE, &payload[..payload.len() - 1], 2),
            Err(WireError::PayloadSize { .. })
        ));
        let mut extra = payload.clone();
        extra.extend_from_slice(&[0; 8]);
        assert!(matches!(
            decode_req(FrontendReq::SET_MEM_TABLE, &extra, 2),
            Err(WireError::PayloadSize { .. })
        ));
        assert!(matches!(
            decode_req(FrontendReq::SET_MEM_TABLE, &[0; 4], 0),
            Err(WireError::PayloadSize { .. })
        ));
        assert_eq!(
            decode_req(FrontendReq::SET_MEM_TABLE, &table_payload(&[]), 0),
            Err(WireError::RegionCount { nregions: 0 })
        );
        let nine = vec![region(0, 0x1000, 0); 9];
        assert_eq!(
            decode_req(FrontendReq::SET_MEM_TABLE, &table_payload(&nine), 9),
            Err(WireError::RegionCount { nregions: 9 })
        );
    }

    #[test]
    fn single_region_requests_decode() {
        let r = region(0x4000, 0x1000, 0x2000);
        let payload = single_payload(&r);
        assert_eq!(
            decode_req(FrontendReq::ADD_MEM_REG, &payload, 1),
            Ok(Request::AddMemReg(r))
        );
        assert!(decode_req(FrontendReq::ADD_MEM_REG, &payload, 0).is_err());
        assert!(decode_req(FrontendReq::ADD_MEM_REG, &payload[..32], 1).is_err());
        assert_eq!(
            decode_req(FrontendReq::REM_MEM_REG, &payload, 0),
            Ok(Request::RemMemReg(r))
        );
        assert_eq!(
            decode_req(FrontendReq::REM_MEM_REG, &payload, 1),
            Ok(Request::RemMemReg(r))
        );
        assert!(decode_req(FrontendReq::REM_MEM_REG, &payload, 2).is_err());
        // Postcopy's 8-byte ADD/REM acks: the crate is built without postcopy.
        assert!(decode_req(FrontendReq::REM_MEM_REG, &[0; 8], 0).is_err());
    }

    #[test]
    fn log_base_decodes() {
        let mut payload = 0x1000u64.to_le_bytes().to_vec();
        payload.extend_from_slice(&0x2000u64.to_le_bytes());
        assert_eq!(
            decode_req(FrontendReq::SET_LOG_BASE, &payload, 1),
            Ok(Request::SetLogBase {
                mmap_size: 0x1000,
                mmap_offset: 0x2000
            })
        );
        assert!(decode_req(FrontendReq::SET_LOG_BASE, &payload, 0).is_err());
        assert!(decode_req(FrontendReq::SET_LOG_BASE, &payload[..8], 1).is_err());
    }

    #[test]
    fn vring_fd_requests_follow_the_nofd_bit() {
        for req in [
            FrontendReq::SET_VRING_KICK,
            FrontendReq::SET_VRING_CALL,
            FrontendReq::SET_VRING_ERR,
        ] {
            let with_fd = 1u64.to_le_bytes();
            let no_fd = (1u64 | VRING_NOFD).to_le_bytes();
            assert_eq!(decode_req(req, &with_fd, 1), Ok(Request::Other));
            assert!(decode_req(req, &with_fd, 0).is_err());
            assert_eq!(decode_req(req, &no_fd, 0), Ok(Request::Other));
            assert!(decode_req(req, &no_fd, 1).is_err());
            assert!(decode_req(req, &[0; 4], 1).is_err());
        }
    }

    #[test]
    fn other_requests_take_their_fixed_fd_counts() {
        for req in [
            FrontendReq::SET_LOG_FD,
            FrontendReq::SET_BACKEND_REQ_FD,
            FrontendReq::SET_INFLIGHT_FD,
            FrontendReq::SET_DEVICE_STATE_FD,
        ] {
            assert_eq!(decode_req(req, &[0; 8], 1), Ok(Request::Other));
            assert!(decode_req(req, &[0; 8], 0).is_err());
        }
        assert_eq!(
            decode_req(FrontendReq::GET_FEATURES, &[], 0),
            Ok(Request::Other)
        );
        assert!(decode_req(FrontendReq::GET_FEATURES, &[], 1).is_err());
        let unknown = Header {
            request: 9999,
            flags: 1,
            size: 0,
        };
        assert_eq!(decode(&unknown, &[], 0), Ok(Request::Other));
        assert!(decode(&unknown, &[], 1).is_err());
    }
}
