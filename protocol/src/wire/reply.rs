//! Replies: the status head, error text and the bodies of successful replies.

use vm_memory::ByteValued;

use super::*;

/// A file as described by CREATE, OPEN and DEPOSIT replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    /// Size.
    pub size: u64,
    /// Page size.
    pub page_size: u64,
    /// Kind.
    pub kind: MemoryKind,
    /// Whether the request created it.
    pub created: bool,
}

impl FileInfo {
    /// Encodes a reply body.
    pub fn encode(&self) -> Vec<u8> {
        let flags = if self.created {
            FileReplyFlags::CREATED
        } else {
            FileReplyFlags::empty()
        };
        RawFileReply {
            size: self.size.into(),
            page_size: self.page_size.into(),
            kind: self.kind.code().into(),
            flags: flags.bits().into(),
        }
        .as_slice()
        .to_vec()
    }

    /// Decodes a reply body.
    pub fn decode(body: &[u8]) -> WireResult<Self> {
        let raw: RawFileReply = read_exact(body)?;
        let flags: FileReplyFlags = flags_from(raw.flags.to_native(), "file reply flags")?;
        Ok(FileInfo {
            size: raw.size.to_native(),
            page_size: raw.page_size.to_native(),
            kind: MemoryKind::try_from(raw.kind.to_native())?,
            created: flags.contains(FileReplyFlags::CREATED),
        })
    }
}

/// HELLO reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloReply {
    /// Negotiated features.
    pub features: Features,
    /// Lease id (`None` for control sessions, 0 on the wire).
    pub lease: Option<LeaseId>,
    /// Daemon protocol version.
    pub version: u32,
}

impl HelloReply {
    /// Encodes a reply body.
    pub fn encode(&self) -> Vec<u8> {
        RawHelloReply {
            features: self.features.bits().into(),
            lease: self.lease.map_or(0, LeaseId::get).into(),
            version: self.version.into(),
            pad: 0.into(),
        }
        .as_slice()
        .to_vec()
    }

    /// Decodes a reply body.
    pub fn decode(body: &[u8]) -> WireResult<Self> {
        let raw: RawHelloReply = read_exact(body)?;
        Ok(HelloReply {
            features: Features::from_bits_truncate(raw.features.to_native()),
            lease: LeaseId::new(raw.lease.to_native()),
            version: raw.version.to_native(),
        })
    }
}

/// REVOKE reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RevokeReport {
    /// Leases ended.
    pub leases: u32,
    /// Bindings dropped.
    pub bindings: u32,
    /// Files whose content was destroyed.
    pub scrubbed: u32,
}

impl RevokeReport {
    /// Encodes a reply body.
    pub fn encode(&self) -> Vec<u8> {
        RawRevokeReply {
            leases: self.leases.into(),
            bindings: self.bindings.into(),
            scrubbed: self.scrubbed.into(),
            pad: 0.into(),
        }
        .as_slice()
        .to_vec()
    }

    /// Decodes a reply body.
    pub fn decode(body: &[u8]) -> WireResult<Self> {
        let raw: RawRevokeReply = read_exact(body)?;
        Ok(RevokeReport {
            leases: raw.leases.to_native(),
            bindings: raw.bindings.to_native(),
            scrubbed: raw.scrubbed.to_native(),
        })
    }
}

/// HANDOFF reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandoffReply {
    /// The pid gmemd now shows as the lease's process.
    pub pid: u32,
}

impl HandoffReply {
    /// Encodes a reply body.
    pub fn encode(&self) -> Vec<u8> {
        RawHandoffReply {
            pid: self.pid.into(),
            pad: 0.into(),
        }
        .as_slice()
        .to_vec()
    }

    /// Decodes a reply body.
    pub fn decode(body: &[u8]) -> WireResult<Self> {
        let raw: RawHandoffReply = read_exact(body)?;
        Ok(HandoffReply {
            pid: raw.pid.to_native(),
        })
    }
}

/// DEVICE reply: where the device listens and how big its disk is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceReply {
    /// Device id (stable across gmemd restarts).
    pub id: u32,
    /// The disk's size in bytes (0 without a disk).
    pub capacity: u64,
    /// The vhost-user socket (QEMU: `-chardev socket,path=...,reconnect-ms=...`).
    pub path: String,
}

/// The longest device socket path a DEVICE reply carries.
pub const MAX_DEVICE_PATH: usize = 112;

impl DeviceReply {
    /// Encodes a reply body.
    ///
    /// # Panics
    /// If the path is longer than [`MAX_DEVICE_PATH`] (the daemon keeps
    /// its paths shorter: a socket path has at most 107 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let bytes = self.path.as_bytes();
        assert!(bytes.len() <= MAX_DEVICE_PATH, "device path too long");
        let mut path = [0u8; MAX_DEVICE_PATH];
        path[..bytes.len()].copy_from_slice(bytes);
        RawDeviceReply {
            capacity: self.capacity.into(),
            id: self.id.into(),
            path_len: wire_len(bytes.len()).into(),
            path,
        }
        .as_slice()
        .to_vec()
    }

    /// Decodes a reply body.
    pub fn decode(body: &[u8]) -> WireResult<Self> {
        let raw: RawDeviceReply = read_exact(body)?;
        let len = raw.path_len.to_native() as usize;
        let path = raw
            .path
            .get(..len)
            .ok_or(WireError::BadReply("DEVICE path length"))?;
        if raw.path[len..].iter().any(|b| *b != 0) {
            return Err(WireError::BadReply("DEVICE path padding"));
        }
        let path = std::str::from_utf8(path)
            .map_err(|_| WireError::BadReply("DEVICE path not UTF-8"))?
            .to_owned();
        Ok(DeviceReply {
            id: raw.id.to_native(),
            capacity: raw.capacity.to_native(),
            path,
        })
    }
}

/// The NOTICE a restarted daemon sends first on every connection it took
/// over (PROTOCOL.md §14.2): header code [`NOTICE_CODE`] with `REPLY` set,
/// then a success reply whose body is [`RawRestartNotice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartNotice {
    /// Restarts the daemon has survived, this one included.
    pub restarts: u32,
    /// Whether a whole request of this connection was still unread when the
    /// notice was sent: it will be answered as usual. When `false`, a
    /// request sent before the notice and not answered yet was read by the
    /// daemon that died and may or may not have been applied.
    pub pending: bool,
}

impl RestartNotice {
    /// Encodes the notice body.
    pub fn encode(&self) -> Vec<u8> {
        RawRestartNotice {
            restarts: self.restarts.into(),
            pending: u32::from(self.pending).into(),
        }
        .as_slice()
        .to_vec()
    }

    /// Decodes a notice body.
    pub fn decode(body: &[u8]) -> WireResult<Self> {
        let raw: RawRestartNotice = read_exact(body)?;
        let pending = match raw.pending.to_native() {
            0 => false,
            1 => true,
            value => {
                return Err(WireError::UnknownValue {
                    field: "notice pending",
                    value,
                })
            }
        };
        Ok(RestartNotice {
            restarts: raw.restarts.to_native(),
            pending,
        })
    }

    /// Encodes the whole payload of a NOTICE frame: reply head and body.
    pub fn encode_payload(&self) -> Vec<u8> {
        Reply::ok(self.encode()).encode()
    }

    /// Decodes the whole payload of a NOTICE frame.
    pub fn decode_payload(payload: &[u8]) -> WireResult<Self> {
        let reply = Reply::decode(payload)?;
        if reply.status != 0 {
            return Err(WireError::BadReply("notice with an error status"));
        }
        Self::decode(&reply.body)
    }
}

/// A decoded reply: status, error text, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// 0 or a negative errno.
    pub status: i32,
    /// Error text (empty on success).
    pub text: String,
    /// Request-specific body (empty on error).
    pub body: Vec<u8>,
}

impl Reply {
    /// A success reply with `body`.
    pub fn ok(body: Vec<u8>) -> Self {
        Reply {
            status: 0,
            text: String::new(),
            body,
        }
    }

    /// An error reply; `errno` is positive, the text is cut to [`MAX_ERROR_TEXT`].
    pub fn error(errno: i32, text: &str) -> Self {
        let mut end = text.len().min(MAX_ERROR_TEXT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Reply {
            status: -errno.abs(),
            text: text[..end].to_owned(),
            body: Vec::new(),
        }
    }

    /// Encodes the reply payload.
    pub fn encode(&self) -> Vec<u8> {
        let text_len = wire_len(self.text.len());
        let head = RawReplyHead {
            // Two's complement on the wire, like every errno-in-u32 protocol.
            #[allow(clippy::cast_sign_loss)]
            status: (self.status as u32).into(),
            text_len: text_len.into(),
        };
        let mut out = Vec::with_capacity(RawReplyHead::SIZE + self.text.len() + self.body.len());
        out.extend_from_slice(head.as_slice());
        out.extend_from_slice(self.text.as_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// Decodes a reply payload. Never panics.
    pub fn decode(payload: &[u8]) -> WireResult<Self> {
        if payload.len() < RawReplyHead::SIZE {
            return Err(WireError::BadReply("shorter than the reply head"));
        }
        let (head, rest) = payload.split_at(RawReplyHead::SIZE);
        let head: RawReplyHead = read_raw(head);
        #[allow(clippy::cast_possible_wrap)]
        let status = head.status.to_native() as i32;
        let text_len = head.text_len.to_native() as usize;
        if status > 0 {
            return Err(WireError::BadReply("positive status"));
        }
        if text_len > MAX_ERROR_TEXT || text_len > rest.len() {
            return Err(WireError::BadReply("error text length"));
        }
        if status == 0 && text_len != 0 {
            return Err(WireError::BadReply("error text on success"));
        }
        if status != 0 && text_len == 0 {
            return Err(WireError::BadReply("error without text"));
        }
        let (text, body) = rest.split_at(text_len);
        if status != 0 && !body.is_empty() {
            return Err(WireError::BadReply("body on error"));
        }
        // Strict UTF-8: a lossy conversion could grow the text past
        // MAX_ERROR_TEXT and make the decoded reply impossible to re-encode.
        let text = std::str::from_utf8(text)
            .map_err(|_| WireError::BadReply("error text is not UTF-8"))?;
        Ok(Reply {
            status,
            text: text.to_owned(),
            body: body.to_vec(),
        })
    }
}
