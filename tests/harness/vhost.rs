//! A raw vhost-user frontend for tests that play a hostile QEMU against a
//! gmemd device socket: whole messages (12-byte header, payload, fds as
//! SCM_RIGHTS) sent exactly as given, replies read back, and whether the
//! other end closed the connection. Numbers are little-endian (vhost-user
//! says native; gmemd runs on little-endian hosts only).
//!
//! Nothing here checks what it sends: building broken messages is the point.

use std::io::{self, IoSlice, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use serde_json::Value;
use vhost::vhost_user::message::{FrontendReq, VhostUserProtocolFeatures, VhostUserVirtioFeatures};

use crate::qemu::Vm;
use crate::wait_until;

/// Header flags: protocol version 1.
pub const VERSION_1: u32 = 0x1;
/// Header flags: the message is a reply (a frontend must never set it).
pub const REPLY: u32 = 0x4;
/// Header flags: the frontend wants a REPLY_ACK.
pub const NEED_REPLY: u32 = 0x8;
/// Bytes in a header.
pub const HEADER_SIZE: usize = 12;
/// The largest payload vhost-user allows.
pub const MAX_PAYLOAD: usize = 0x1000;
/// SET_VRING_KICK/CALL/ERR payload bit: no fd attached.
pub const VRING_NOFD: u64 = 1 << 8;
/// How long a read waits before a test calls the other end stuck.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The request code of `request`, as the header carries it.
pub fn code(request: FrontendReq) -> u32 {
    request as u32
}

/// One region of a SET_MEM_TABLE (its fd travels apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRegion {
    /// Where the guest sees it.
    pub guest_phys_addr: u64,
    /// Its length.
    pub memory_size: u64,
    /// Where the frontend has it mapped (what ring addresses refer to).
    pub user_addr: u64,
    /// Where in its file it starts.
    pub mmap_offset: u64,
}

impl MemRegion {
    /// `memory_size` bytes of a file from `mmap_offset`, at guest address
    /// `guest_phys_addr`; the frontend's own mapping is made up (it only
    /// matters for ring addresses).
    pub fn new(guest_phys_addr: u64, memory_size: u64, mmap_offset: u64) -> Self {
        MemRegion {
            guest_phys_addr,
            memory_size,
            user_addr: 0x7f00_0000_0000u64.wrapping_add(guest_phys_addr),
            mmap_offset,
        }
    }

    fn bytes(&self) -> [u8; 32] {
        let mut out = [0; 32];
        for (i, v) in [
            self.guest_phys_addr,
            self.memory_size,
            self.user_addr,
            self.mmap_offset,
        ]
        .iter()
        .enumerate()
        {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        out
    }
}

/// A SET_MEM_TABLE payload: u32 nregions, u32 padding, the regions.
pub fn table_payload(regions: &[MemRegion]) -> Vec<u8> {
    table_payload_claiming(u32::try_from(regions.len()).expect("few regions"), regions)
}

/// A SET_MEM_TABLE payload whose nregions field says `nregions`, whatever
/// `regions` holds.
pub fn table_payload_claiming(nregions: u32, regions: &[MemRegion]) -> Vec<u8> {
    let mut out = nregions.to_le_bytes().to_vec();
    out.extend_from_slice(&[0; 4]);
    for region in regions {
        out.extend_from_slice(&region.bytes());
    }
    out
}

/// A SET_VRING_ADDR payload: index, flags, descriptor, used, available,
/// log (all but index and flags are frontend addresses).
pub fn vring_addr_payload(index: u32, descriptor: u64, used: u64, available: u64) -> Vec<u8> {
    let mut out = index.to_le_bytes().to_vec();
    out.extend_from_slice(&0u32.to_le_bytes());
    for v in [descriptor, used, available, 0u64] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// A u32 index and a u32 number (SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ENABLE).
pub fn vring_state_payload(index: u32, num: u32) -> Vec<u8> {
    let mut out = index.to_le_bytes().to_vec();
    out.extend_from_slice(&num.to_le_bytes());
    out
}

/// A header followed by `payload`, with the size field saying `size`.
pub fn message_claiming(request: u32, flags: u32, size: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_SIZE + payload.len());
    out.extend_from_slice(&request.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A well-framed message.
pub fn message(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let size = u32::try_from(payload.len()).expect("payload fits a u32");
    message_claiming(request, flags, size, payload)
}

/// A message the backend sent: header fields and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Request code it answers.
    pub request: u32,
    /// Header flags.
    pub flags: u32,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

impl Reply {
    /// The payload as a u64 (REPLY_ACK, GET_FEATURES, …).
    ///
    /// # Panics
    /// If the payload is not 8 bytes.
    pub fn u64(&self) -> u64 {
        let bytes: [u8; 8] = self
            .payload
            .as_slice()
            .try_into()
            .unwrap_or_else(|_| panic!("reply is not a u64: {self:?}"));
        u64::from_le_bytes(bytes)
    }
}

/// How a read from the device ended.
#[derive(Debug)]
pub enum Answer {
    /// A whole message.
    Reply(Reply),
    /// The device closed the connection (EOF or reset) before a whole message.
    Closed,
    /// Nothing within the timeout; the connection is still open.
    Silent,
}

/// One frontend connection to a device socket.
#[derive(Debug)]
pub struct VhostFrontend {
    stream: UnixStream,
}

impl VhostFrontend {
    /// Connects to the device socket at `path`.
    ///
    /// # Errors
    /// When connecting fails.
    pub fn connect(path: impl AsRef<Path>) -> io::Result<Self> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        Ok(VhostFrontend { stream })
    }

    /// The socket itself.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Writes `bytes` with `fds` attached to the first byte, in one
    /// `sendmsg` as QEMU does (more only if the kernel takes less).
    ///
    /// # Errors
    /// When the connection is gone (`EPIPE`, `ECONNRESET`) or sendmsg fails.
    pub fn send_raw(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        // Room for 16 fds: more than any message takes, so tests can send
        // too many on purpose.
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(16))];
        let mut sent = 0;
        while sent < bytes.len() {
            let mut control = SendAncillaryBuffer::new(&mut space);
            if sent == 0 && !fds.is_empty() {
                assert!(
                    control.push(SendAncillaryMessage::ScmRights(fds)),
                    "at most 16 fds"
                );
            }
            // NOSIGNAL: a device that hung up is EPIPE, not SIGPIPE for the test.
            sent += sendmsg(
                &self.stream,
                &[IoSlice::new(&bytes[sent..])],
                &mut control,
                SendFlags::NOSIGNAL,
            )?;
        }
        Ok(())
    }

    /// Sends a well-framed message.
    ///
    /// # Errors
    /// As [`VhostFrontend::send_raw`].
    pub fn send(
        &self,
        request: FrontendReq,
        flags: u32,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<()> {
        self.send_raw(&message(code(request), flags, payload), fds)
    }

    /// Reads one message, waiting at most `timeout`.
    pub fn answer(&self, timeout: Duration) -> Answer {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("set a read timeout");
        let mut header = [0u8; HEADER_SIZE];
        match read_full(&self.stream, &mut header) {
            Ok(true) => {}
            Ok(false) => return Answer::Closed,
            Err(e) if is_timeout(&e) => return Answer::Silent,
            Err(_) => return Answer::Closed,
        }
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let size = usize::try_from(word(8)).expect("u32 fits usize");
        assert!(size <= MAX_PAYLOAD, "device sent a {size}-byte payload");
        let mut payload = vec![0; size];
        match read_full(&self.stream, &mut payload) {
            Ok(true) => Answer::Reply(Reply {
                request: word(0),
                flags: word(4),
                payload,
            }),
            Ok(false) => Answer::Closed,
            Err(e) => panic!("device stopped inside a reply: {e}"),
        }
    }

    /// Reads the reply to `request`.
    ///
    /// # Panics
    /// If the connection closes, nothing comes within [`REPLY_TIMEOUT`], or
    /// the message is not a reply to `request`.
    pub fn reply_to(&self, request: FrontendReq) -> Reply {
        match self.answer(REPLY_TIMEOUT) {
            Answer::Reply(reply) => {
                assert_eq!(reply.request, code(request), "reply to another request");
                assert_eq!(reply.flags & (REPLY | 0x3), REPLY | VERSION_1, "{reply:?}");
                reply
            }
            other => panic!("no reply to {request:?}: {other:?}"),
        }
    }

    /// The REPLY_ACK of `request`: 0 is success.
    ///
    /// # Panics
    /// As [`VhostFrontend::reply_to`], or if the payload is not a u64.
    pub fn ack(&self, request: FrontendReq) -> u64 {
        self.reply_to(request).u64()
    }

    /// Sends `request` with NEED_REPLY and returns its REPLY_ACK.
    ///
    /// # Panics
    /// As [`VhostFrontend::ack`], or if sending fails.
    pub fn acked(&self, request: FrontendReq, payload: &[u8], fds: &[BorrowedFd<'_>]) -> u64 {
        self.send(request, VERSION_1 | NEED_REPLY, payload, fds)
            .unwrap_or_else(|e| panic!("sending {request:?}: {e}"));
        self.ack(request)
    }

    /// Whether the device closes the connection within `timeout` without
    /// sending anything first.
    ///
    /// # Panics
    /// If the device sends a message instead.
    pub fn closed_within(&self, timeout: Duration) -> bool {
        match self.answer(timeout) {
            Answer::Closed => true,
            Answer::Silent => false,
            Answer::Reply(reply) => panic!("expected the device to hang up, got {reply:?}"),
        }
    }

    /// What QEMU does first: features with PROTOCOL_FEATURES, protocol
    /// features with REPLY_ACK (so NEED_REPLY is answered), SET_OWNER.
    /// Returns the protocol features the device offered.
    ///
    /// # Panics
    /// If the device does not answer as a vhost-user-blk backend should.
    pub fn handshake(&self) -> VhostUserProtocolFeatures {
        let none: &[BorrowedFd<'_>] = &[];
        self.send(FrontendReq::GET_FEATURES, VERSION_1, &[], none)
            .expect("GET_FEATURES");
        let features = self.reply_to(FrontendReq::GET_FEATURES).u64();
        let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        assert_ne!(features & protocol, 0, "features {features:#x}");
        self.send(
            FrontendReq::SET_FEATURES,
            VERSION_1,
            &features.to_le_bytes(),
            none,
        )
        .expect("SET_FEATURES");
        self.send(FrontendReq::GET_PROTOCOL_FEATURES, VERSION_1, &[], none)
            .expect("GET_PROTOCOL_FEATURES");
        let offered = VhostUserProtocolFeatures::from_bits_truncate(
            self.reply_to(FrontendReq::GET_PROTOCOL_FEATURES).u64(),
        );
        assert!(offered.contains(VhostUserProtocolFeatures::REPLY_ACK));
        let wanted = VhostUserProtocolFeatures::REPLY_ACK;
        assert_eq!(
            self.acked(
                FrontendReq::SET_PROTOCOL_FEATURES,
                &wanted.bits().to_le_bytes(),
                none
            ),
            0
        );
        assert_eq!(self.acked(FrontendReq::SET_OWNER, &[], none), 0);
        offered
    }

    /// Sends a SET_MEM_TABLE of `regions` (fd `i` with region `i`) asking
    /// for a REPLY_ACK; returns the ack, or `None` if the device closed the
    /// connection instead.
    ///
    /// # Panics
    /// If the device neither answers nor hangs up within [`REPLY_TIMEOUT`].
    pub fn set_mem_table(&self, regions: &[MemRegion], fds: &[BorrowedFd<'_>]) -> Option<u64> {
        let payload = table_payload(regions);
        if self
            .send(
                FrontendReq::SET_MEM_TABLE,
                VERSION_1 | NEED_REPLY,
                &payload,
                fds,
            )
            .is_err()
        {
            return None;
        }
        match self.answer(REPLY_TIMEOUT) {
            Answer::Reply(reply) => {
                assert_eq!(reply.request, code(FrontendReq::SET_MEM_TABLE), "{reply:?}");
                Some(reply.u64())
            }
            Answer::Closed => None,
            Answer::Silent => panic!("SET_MEM_TABLE: neither an ack nor a hang-up"),
        }
    }
}

/// Fills `buf`; false on EOF (or a reset) before anything or inside it.
fn read_full(mut stream: &UnixStream, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A plain memfd of `size` bytes that gmemd never saw.
///
/// # Panics
/// If it cannot be made.
pub fn foreign_memfd(size: u64) -> OwnedFd {
    let fd = rustix::fs::memfd_create("not-gmemd", rustix::fs::MemfdFlags::CLOEXEC)
        .expect("memfd_create");
    rustix::fs::ftruncate(&fd, size).expect("ftruncate");
    fd
}

/// An eventfd for SET_VRING_KICK/CALL.
///
/// # Panics
/// If it cannot be made.
pub fn eventfd() -> OwnedFd {
    rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).expect("eventfd")
}

/// Every binding in `gmemctl status --json`, as (file, slot, gpa, offset,
/// size, confirmed), sorted.
pub fn all_bindings(status: &Value) -> Vec<(String, u64, u64, u64, u64, bool)> {
    let mut out: Vec<_> = status["files"]
        .as_array()
        .expect("files")
        .iter()
        .flat_map(|f| {
            let file = f["name"].as_str().expect("name").to_owned();
            f["bindings"]
                .as_array()
                .expect("bindings")
                .iter()
                .map(move |b| {
                    let n = |k: &str| b[k].as_u64().expect("a number");
                    (
                        file.clone(),
                        n("slot"),
                        n("gpa"),
                        n("offset"),
                        n("size"),
                        b["confirmed"] == true,
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out
}

/// The last `GMEM-GUEST: disk io N ok` round on `vm`'s console.
///
/// # Panics
/// If the guest reported a failed round.
pub fn io_rounds(vm: &Vm) -> u64 {
    let text = vm.serial.text();
    assert!(
        !text.contains("GMEM-GUEST: error"),
        "the guest's disk I/O failed:\n{text}"
    );
    text.lines()
        .filter_map(|l| l.strip_prefix("GMEM-GUEST: disk io "))
        .filter_map(|l| l.strip_suffix(" ok"))
        .filter_map(|n| n.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Waits (up to `timeout`) for `more` rounds of guest disk I/O past the
/// current ones; returns the round reached.
pub fn wait_io(vm: &Vm, more: u64, timeout: Duration, what: &str) -> u64 {
    let from = io_rounds(vm);
    let t0 = Instant::now();
    let n = wait_until(timeout, what, || {
        let n = io_rounds(vm);
        (n >= from + more).then_some(n)
    });
    eprintln!("{what}: rounds {from} -> {n} in {:?}", t0.elapsed());
    n
}

/// Borrows every fd of `fds`.
pub fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(AsFd::as_fd).collect()
}
