//! The two directions of the filter and how it ends.
//!
//! The calling thread reads the frontend, checks each message and passes it
//! on; one helper thread copies the backend's messages (replies) back. Both
//! write to the frontend socket, so those writes share a lock: a refusal the
//! filter makes up itself never lands inside a forwarded reply. When either
//! side goes away, both sockets are shut down, which wakes the other thread.

use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;

use log::{debug, warn};
use vhost::vhost_user::message::FrontendReq;

use super::region::{check_file_range, Refused, Table};
use super::transport::{recv_message, send_message, Message, TransportError};
use super::wire::{self, Header, Request, WireRegion};
use super::{error_chain, FilterEnd, FilterError, OfferedRegion, RegionJudge, Side};

/// Runs the filter until the frontend hangs up (Ok) or breaks framing
/// (Err); blocking; spawns one helper thread for the backend→frontend
/// direction. Shutting `frontend` down from another thread (through a
/// clone) ends it with `closed_by: Side::Frontend`; the backend closing its
/// end ends it with `closed_by: Side::Backend`.
pub fn run(
    frontend: UnixStream,
    backend: UnixStream,
    judge: &mut dyn RegionJudge,
) -> Result<FilterEnd, FilterError> {
    let closer = FirstCloser::default();
    let writer = FrontendWriter {
        socket: &frontend,
        lock: Mutex::new(()),
    };
    let mut relay = Relay {
        frontend: &frontend,
        backend: &backend,
        writer: &writer,
        closer: &closer,
        judge,
        table: Table::default(),
        forwarded: 0,
        refused: 0,
    };
    let (served, replies) = thread::scope(|scope| {
        let helper = thread::Builder::new()
            .name("vhost-filter-replies".into())
            .spawn_scoped(scope, || copy_replies(&backend, &writer, &closer))
            .map_err(FilterError::SpawnHelper)?;
        // Also on unwinding (a judge that panics): the scope joins the
        // helper, which only returns once its sockets are shut down.
        let both = ShutDownOnDrop([&frontend, &backend]);
        let served = relay.serve();
        // Unless the backend went first, serving ended on the frontend's
        // side (a hang-up, a shutdown, or a broken message).
        closer.mark(Side::Frontend);
        drop(both);
        let replies = helper
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Ok((served, replies))
    })?;
    let closed_by = closer.first().unwrap_or(Side::Frontend);
    if let Err(e) = served {
        // A message cut short is a framing error, unless the filter cut it
        // short itself because the backend had gone. Other disconnects are
        // a peer hanging up while the filter wrote to it.
        let truncated = matches!(
            e,
            FilterError::ReceiveFromFrontend(TransportError::Truncated { .. })
        );
        if !e.is_disconnect() || (truncated && closed_by == Side::Frontend) {
            return Err(e);
        }
    }
    if let Err(e) = replies {
        if !e.is_disconnect() {
            return Err(e);
        }
    }
    let end = FilterEnd {
        closed_by,
        forwarded: relay.forwarded,
        refused: relay.refused,
    };
    debug!("vhost-user filter ended: {end:?}");
    Ok(end)
}

/// Ends both directions of `socket` so a thread blocked on it returns.
fn shut_down(socket: &UnixStream) {
    // ENOTCONN when the peer already went: nothing left to wake.
    let _ = socket.shutdown(Shutdown::Both);
}

/// Shuts its sockets down when dropped.
struct ShutDownOnDrop<'a>([&'a UnixStream; 2]);

impl Drop for ShutDownOnDrop<'_> {
    fn drop(&mut self) {
        for socket in self.0 {
            shut_down(socket);
        }
    }
}

/// Remembers which side went away first.
#[derive(Debug, Default)]
struct FirstCloser(AtomicU8);

impl FirstCloser {
    const FRONTEND: u8 = 1;
    const BACKEND: u8 = 2;

    fn mark(&self, side: Side) {
        let code = match side {
            Side::Frontend => Self::FRONTEND,
            Side::Backend => Self::BACKEND,
        };
        // Only the first one counts; later ones are consequences.
        let _ = self
            .0
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
    }

    fn first(&self) -> Option<Side> {
        match self.0.load(Ordering::SeqCst) {
            Self::FRONTEND => Some(Side::Frontend),
            Self::BACKEND => Some(Side::Backend),
            _ => None,
        }
    }
}

/// The frontend socket's write side, one whole message at a time.
#[derive(Debug)]
struct FrontendWriter<'a> {
    socket: &'a UnixStream,
    lock: Mutex<()>,
}

impl FrontendWriter<'_> {
    fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), TransportError> {
        // The lock guards no data, only the socket's byte stream; a panic
        // while holding it cannot have left anything half-updated.
        let _whole_message = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        send_message(self.socket, bytes, fds)
    }
}

/// The backend→frontend direction: copies each message unchanged.
fn copy_replies(
    backend: &UnixStream,
    writer: &FrontendWriter<'_>,
    closer: &FirstCloser,
) -> Result<(), FilterError> {
    let result = loop {
        match recv_message(backend) {
            Ok(Some(message)) => {
                if let Err(e) = writer.send(&message.bytes, &borrow_all(&message.fds)) {
                    if e.is_disconnect() {
                        closer.mark(Side::Frontend);
                    }
                    break Err(FilterError::RelayToFrontend(e));
                }
            }
            Ok(None) => {
                closer.mark(Side::Backend);
                break Ok(());
            }
            Err(e) => {
                closer.mark(Side::Backend);
                break Err(FilterError::ReceiveFromBackend(e));
            }
        }
    };
    // Wake the frontend direction, and let QEMU see the backend is gone.
    shut_down(writer.socket);
    shut_down(backend);
    result
}

fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(AsFd::as_fd).collect()
}

fn request_name(code: u32) -> String {
    match FrontendReq::try_from(code) {
        Ok(request) => format!("{request:?}"),
        Err(_) => format!("request {code}"),
    }
}

fn offer(region: &WireRegion, fd: OwnedFd) -> OfferedRegion {
    OfferedRegion {
        guest_phys_addr: region.guest_phys_addr,
        memory_size: region.memory_size,
        user_addr: region.user_addr,
        mmap_offset: region.mmap_offset,
        fd,
    }
}

/// The frontend→backend direction and the filter's state.
struct Relay<'a, 'j> {
    frontend: &'a UnixStream,
    backend: &'a UnixStream,
    writer: &'a FrontendWriter<'a>,
    closer: &'a FirstCloser,
    judge: &'j mut dyn RegionJudge,
    table: Table,
    forwarded: u64,
    refused: u64,
}

impl Relay<'_, '_> {
    /// Serves until the frontend closes between messages (Ok) or anything
    /// ends the connection (Err).
    fn serve(&mut self) -> Result<(), FilterError> {
        loop {
            let message = recv_message(self.frontend).map_err(FilterError::ReceiveFromFrontend)?;
            let Some(message) = message else {
                return Ok(());
            };
            self.handle(message)?;
        }
    }

    fn handle(&mut self, message: Message) -> Result<(), FilterError> {
        let header = message.header();
        header
            .check_from_frontend()
            .map_err(FilterError::FrontendMessage)?;
        let request = wire::decode(&header, message.payload(), message.fds.len())
            .map_err(FilterError::FrontendMessage)?;
        let Message { bytes, fds } = message;
        match request {
            Request::SetMemTable(regions) => {
                let offered: Vec<_> = regions
                    .iter()
                    .zip(fds)
                    .map(|(r, fd)| offer(r, fd))
                    .collect();
                match Table::vet_table(&offered, self.judge) {
                    Ok(mapped) => {
                        let fds: Vec<_> = offered.iter().map(|r| r.fd.as_fd()).collect();
                        self.forward(&bytes, &fds)?;
                        self.table.replace(mapped);
                        self.judge.table_changed(self.table.regions());
                    }
                    Err(refused) => self.refuse(&header, &refused)?,
                }
            }
            Request::AddMemReg(region) => {
                // decode checked there is exactly one fd.
                let Some(fd) = fds.into_iter().next() else {
                    unreachable!("ADD_MEM_REG decoded without its fd")
                };
                let offered = offer(&region, fd);
                match self.table.vet_add(&offered, self.judge) {
                    Ok(mapped) => {
                        self.forward(&bytes, &[offered.fd.as_fd()])?;
                        self.table.add(mapped);
                        self.judge.table_changed(self.table.regions());
                    }
                    Err(refused) => self.refuse(&header, &refused)?,
                }
            }
            Request::RemMemReg(region) => {
                // The spec says REM_MEM_REG carries no fd; older QEMUs sent
                // one. The backend has no use for it, so it stops here.
                drop(fds);
                self.forward(&bytes, &[])?;
                if !self
                    .table
                    .remove(region.guest_phys_addr, region.memory_size)
                {
                    debug!(
                        "vhost-user filter: REM_MEM_REG of unknown region gpa {:#x} size {:#x}",
                        region.guest_phys_addr, region.memory_size
                    );
                }
                self.judge.table_changed(self.table.regions());
            }
            Request::SetLogBase {
                mmap_size,
                mmap_offset,
            } => {
                if let Err(reason) = check_file_range(fds[0].as_fd(), mmap_offset, mmap_size) {
                    warn!(
                        "vhost-user filter: refused SET_LOG_BASE (offset {mmap_offset:#x}, \
                         size {mmap_size:#x}): {}; ending the connection",
                        error_chain(&reason)
                    );
                    return Err(FilterError::LogBaseRefused(reason));
                }
                self.forward(&bytes, &borrow_all(&fds))?;
            }
            Request::Other => self.forward(&bytes, &borrow_all(&fds))?,
        }
        Ok(())
    }

    fn forward(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), FilterError> {
        send_message(self.backend, bytes, fds).map_err(|e| {
            if e.is_disconnect() {
                self.closer.mark(Side::Backend);
            }
            FilterError::ForwardToBackend(e)
        })?;
        self.forwarded += 1;
        Ok(())
    }

    /// Drops a memory message whose regions did not all pass, answering it
    /// as a failed REPLY_ACK if the frontend asked for one.
    fn refuse(&mut self, header: &Header, refused: &Refused) -> Result<(), FilterError> {
        self.refused += 1;
        warn!(
            "vhost-user filter: refused {}: {}",
            request_name(header.request),
            error_chain(refused)
        );
        if header.need_reply() {
            self.writer
                .send(&header.ack(false), &[])
                .map_err(FilterError::ReplyToFrontend)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::thread::JoinHandle;
    use std::time::Duration;

    use rustix::fs::fstat;

    use crate::vhost::filter::region::tests::{memfd, Judge};
    use crate::vhost::filter::wire::tests::{message, region, single_payload, table_payload};
    use crate::vhost::filter::{MappedRegion, RegionRefusal, TransportError, WireError};

    const V1: u32 = 1;
    const NEED_REPLY: u32 = 1 << 3;
    const REPLY: u32 = 1 << 2;
    const GET_FEATURES: u32 = FrontendReq::GET_FEATURES as u32;
    const SET_MEM_TABLE: u32 = FrontendReq::SET_MEM_TABLE as u32;
    const ADD_MEM_REG: u32 = FrontendReq::ADD_MEM_REG as u32;
    const REM_MEM_REG: u32 = FrontendReq::REM_MEM_REG as u32;
    const SET_LOG_BASE: u32 = FrontendReq::SET_LOG_BASE as u32;
    const SET_VRING_KICK: u32 = FrontendReq::SET_VRING_KICK as u32;

    type Outcome = (Result<FilterEnd, FilterError>, Judge);

    /// QEMU's end, the backend crate's end, and the filter between them.
    struct Harness {
        qemu: UnixStream,
        backend: UnixStream,
        /// A clone of the filter's frontend socket, as the lead keeps one.
        frontend_handle: UnixStream,
        filter: JoinHandle<Outcome>,
    }

    impl Harness {
        fn start(judge: Judge) -> Self {
            let (qemu, frontend) = UnixStream::pair().unwrap();
            let (filter_backend, backend) = UnixStream::pair().unwrap();
            // A broken filter fails the test instead of hanging it.
            for s in [&qemu, &backend] {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            }
            let frontend_handle = frontend.try_clone().unwrap();
            let filter = thread::spawn(move || {
                let mut judge = judge;
                let result = run(frontend, filter_backend, &mut judge);
                (result, judge)
            });
            Self {
                qemu,
                backend,
                frontend_handle,
                filter,
            }
        }

        fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
            send_message(&self.qemu, bytes, fds).unwrap();
        }

        fn backend_gets(&self) -> Message {
            recv_message(&self.backend)
                .unwrap()
                .expect("backend got EOF")
        }

        fn qemu_gets(&self) -> Message {
            recv_message(&self.qemu).unwrap().expect("qemu got EOF")
        }

        /// Sends GET_FEATURES and checks it is the next thing the backend
        /// gets: whatever was sent before it was not forwarded.
        fn assert_nothing_forwarded_before_probe(&self) {
            let probe = message(GET_FEATURES, V1, &[]);
            self.send(&probe, &[]);
            assert_eq!(
                self.backend_gets().bytes,
                probe,
                "a refused message was forwarded"
            );
        }

        /// QEMU hangs up; the filter's outcome.
        fn finish(self) -> Outcome {
            drop(self.qemu);
            // The filter passes the hang-up on (and a stuck filter fails
            // here on the read timeout rather than hanging the test).
            assert!(
                recv_message(&self.backend).unwrap().is_none(),
                "backend not closed"
            );
            self.filter.join().unwrap()
        }

        /// The filter ended on its own: both peers see EOF. Checked before
        /// joining, so a filter that goes on fails (read timeout) instead
        /// of hanging the test.
        fn ended(self) -> Outcome {
            assert!(
                recv_message(&self.backend).unwrap().is_none(),
                "backend not closed"
            );
            assert!(
                recv_message(&self.qemu).unwrap().is_none(),
                "qemu not closed"
            );
            self.filter.join().unwrap()
        }
    }

    fn same_file(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
        let (a, b) = (fstat(a).unwrap(), fstat(b).unwrap());
        (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    }

    fn mapped(gpa: u64, size: u64, offset: u64, fd: &OwnedFd) -> MappedRegion {
        let stat = fstat(fd).unwrap();
        MappedRegion {
            guest_phys_addr: gpa,
            memory_size: size,
            mmap_offset: offset,
            dev: stat.st_dev,
            ino: stat.st_ino,
        }
    }

    #[test]
    fn a_good_table_is_forwarded_byte_for_byte_with_its_fds() {
        let h = Harness::start(Judge::default());
        let (a, b) = (memfd(0x4000), memfd(0x2000));
        let regions = [region(0, 0x4000, 0), region(0x10_0000, 0x1000, 0x1000)];
        let sent = message(SET_MEM_TABLE, V1 | NEED_REPLY, &table_payload(&regions));
        h.send(&sent, &[a.as_fd(), b.as_fd()]);
        let got = h.backend_gets();
        assert_eq!(got.bytes, sent);
        assert_eq!(got.fds.len(), 2);
        // The fds arrive in order: region i goes with fd i.
        assert!(same_file(got.fds[0].as_fd(), a.as_fd()));
        assert!(same_file(got.fds[1].as_fd(), b.as_fd()));
        let (result, judge) = h.finish();
        let end = result.unwrap();
        assert_eq!(
            end,
            FilterEnd {
                closed_by: Side::Frontend,
                forwarded: 1,
                refused: 0
            }
        );
        let table = vec![
            mapped(0, 0x4000, 0, &a),
            mapped(0x10_0000, 0x1000, 0x1000, &b),
        ];
        assert_eq!(judge.judged, table);
        assert_eq!(judge.tables, vec![table]);
    }

    /// Sends a table with `regions` and one fd each from `fds`; expects it
    /// refused without a reply (no NEED_REPLY), then a good table served.
    fn assert_table_refused(judge: Judge, regions: &[WireRegion], fds: &[BorrowedFd<'_>]) -> Judge {
        let h = Harness::start(judge);
        h.send(&message(SET_MEM_TABLE, V1, &table_payload(regions)), fds);
        h.assert_nothing_forwarded_before_probe();
        // The filter goes on serving: a good table passes.
        let good = memfd(0x1000);
        let sent = message(SET_MEM_TABLE, V1, &table_payload(&[region(0, 0x1000, 0)]));
        h.send(&sent, &[good.as_fd()]);
        assert_eq!(h.backend_gets().bytes, sent);
        let (result, judge) = h.finish();
        let end = result.unwrap();
        assert_eq!((end.forwarded, end.refused), (2, 1));
        // Only the good table reached the backend.
        assert_eq!(judge.tables, vec![vec![mapped(0, 0x1000, 0, &good)]]);
        judge
    }

    #[test]
    fn a_region_past_the_end_of_its_file_is_refused() {
        let fd = memfd(0x1fff);
        assert_table_refused(Judge::default(), &[region(0, 0x2000, 0)], &[fd.as_fd()]);
        let fd = memfd(0x2000);
        assert_table_refused(
            Judge::default(),
            &[region(0, 0x2000, 0x1000)],
            &[fd.as_fd()],
        );
    }

    #[test]
    fn a_region_of_size_zero_is_refused() {
        let fd = memfd(0x1000);
        assert_table_refused(Judge::default(), &[region(0, 0, 0)], &[fd.as_fd()]);
    }

    #[test]
    fn overflowing_regions_are_refused() {
        let fd = memfd(0x1000);
        assert_table_refused(
            Judge::default(),
            &[region(u64::MAX - 0xfff, 0x1000, 0)],
            &[fd.as_fd()],
        );
        assert_table_refused(
            Judge::default(),
            &[region(0, 0x1000, u64::MAX - 0xfff)],
            &[fd.as_fd()],
        );
        let mut high_user = region(0, 0x1000, 0);
        high_user.user_addr = u64::MAX;
        assert_table_refused(Judge::default(), &[high_user], &[fd.as_fd()]);
    }

    #[test]
    fn overlapping_regions_are_refused() {
        let (a, b) = (memfd(0x2000), memfd(0x2000));
        let judge = assert_table_refused(
            Judge::default(),
            &[region(0x1000, 0x2000, 0), region(0, 0x2000, 0)],
            &[a.as_fd(), b.as_fd()],
        );
        // Only the later good table was judged.
        assert_eq!(judge.judged.len(), 1);
    }

    #[test]
    fn a_non_regular_fd_is_refused_and_closed() {
        let (read_end, write_end) = rustix::pipe::pipe().unwrap();
        let h = Harness::start(Judge::default());
        h.send(
            &message(SET_MEM_TABLE, V1, &table_payload(&[region(0, 0x1000, 0)])),
            &[write_end.as_fd()],
        );
        drop(write_end);
        h.assert_nothing_forwarded_before_probe();
        // The filter held the only other copy of the write end; with it
        // closed the pipe reads EOF instead of blocking.
        let mut pipe = std::fs::File::from(read_end);
        assert_eq!(pipe.read(&mut [0; 1]).unwrap(), 0);
        let (result, judge) = h.finish();
        assert_eq!(result.unwrap().refused, 1);
        assert!(judge.judged.is_empty() && judge.tables.is_empty());
    }

    #[test]
    fn a_directory_fd_is_refused() {
        // A directory has a size, so only the file-type check stops it.
        let dir = rustix::fs::open(
            std::env::temp_dir(),
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        assert!(fstat(&dir).unwrap().st_size > 0);
        assert_table_refused(Judge::default(), &[region(0, 1, 0)], &[dir.as_fd()]);
    }

    #[test]
    fn the_judge_saying_no_keeps_the_table_back() {
        let fd = memfd(0x2000);
        let judge = Judge {
            refuse_gpa: Some(0x8000),
            ..Judge::default()
        };
        let judge = assert_table_refused(
            judge,
            &[region(0, 0x1000, 0), region(0x8000, 0x1000, 0x1000)],
            &[fd.as_fd(), fd.as_fd()],
        );
        assert!(judge.judged.iter().any(|r| r.guest_phys_addr == 0x8000));
    }

    #[test]
    fn a_refusal_is_acked_as_failure_when_the_frontend_asks() {
        let h = Harness::start(Judge::default());
        let fd = memfd(0x1000);
        h.send(
            &message(
                SET_MEM_TABLE,
                V1 | NEED_REPLY,
                &table_payload(&[region(0, 0x2000, 0)]),
            ),
            &[fd.as_fd()],
        );
        let mut nack = message(SET_MEM_TABLE, V1 | REPLY, &1u64.to_le_bytes());
        let got = h.qemu_gets();
        assert_eq!(got.bytes, nack);
        assert!(got.fds.is_empty());
        h.send(
            &message(
                ADD_MEM_REG,
                V1 | NEED_REPLY,
                &single_payload(&region(0, 0, 0)),
            ),
            &[fd.as_fd()],
        );
        nack[..4].copy_from_slice(&ADD_MEM_REG.to_le_bytes());
        assert_eq!(h.qemu_gets().bytes, nack);
        h.assert_nothing_forwarded_before_probe();
        assert_eq!(h.finish().0.unwrap().refused, 2);
    }

    #[test]
    fn adds_and_removes_keep_the_table() {
        let h = Harness::start(Judge::default());
        let fd = memfd(0x4000);
        let add = |gpa, offset| {
            let sent = message(
                ADD_MEM_REG,
                V1,
                &single_payload(&region(gpa, 0x1000, offset)),
            );
            h.send(&sent, &[fd.as_fd()]);
            sent
        };
        let a = add(0, 0);
        let got = h.backend_gets();
        assert_eq!(got.bytes, a);
        assert!(same_file(got.fds[0].as_fd(), fd.as_fd()));
        let sent = add(0x10_0000, 0x1000);
        assert_eq!(h.backend_gets().bytes, sent);
        // Overlaps the first region: refused.
        add(0x800, 0x2000);
        h.assert_nothing_forwarded_before_probe();
        // REM with the fd QEMU used to attach: forwarded without it.
        let rem = message(REM_MEM_REG, V1, &single_payload(&region(0, 0x1000, 0)));
        h.send(&rem, &[fd.as_fd()]);
        let got = h.backend_gets();
        assert_eq!(got.bytes, rem);
        assert!(got.fds.is_empty());
        // The removed range is free again.
        let sent = add(0x800, 0x2000);
        assert_eq!(h.backend_gets().bytes, sent);
        let (result, judge) = h.finish();
        assert_eq!(result.unwrap().refused, 1);
        let (r1, r2, r3) = (
            mapped(0, 0x1000, 0, &fd),
            mapped(0x10_0000, 0x1000, 0x1000, &fd),
            mapped(0x800, 0x1000, 0x2000, &fd),
        );
        assert_eq!(
            judge.tables,
            vec![
                vec![r1.clone()],
                vec![r1, r2.clone()],
                vec![r2.clone()],
                vec![r2, r3]
            ]
        );
    }

    #[test]
    fn a_new_table_replaces_added_regions() {
        let h = Harness::start(Judge::default());
        let fd = memfd(0x2000);
        h.send(
            &message(ADD_MEM_REG, V1, &single_payload(&region(0, 0x1000, 0))),
            &[fd.as_fd()],
        );
        h.backend_gets();
        let table = message(
            SET_MEM_TABLE,
            V1,
            &table_payload(&[region(0x1000, 0x1000, 0x1000)]),
        );
        h.send(&table, &[fd.as_fd()]);
        h.backend_gets();
        // gpa 0 is free again after the table replaced the added region.
        h.send(
            &message(ADD_MEM_REG, V1, &single_payload(&region(0, 0x1000, 0))),
            &[fd.as_fd()],
        );
        h.backend_gets();
        let (_, judge) = h.finish();
        assert_eq!(
            judge.tables.last().unwrap(),
            &vec![
                mapped(0x1000, 0x1000, 0x1000, &fd),
                mapped(0, 0x1000, 0, &fd)
            ]
        );
    }

    #[test]
    fn adds_stop_at_the_slot_limit() {
        let h = Harness::start(Judge::default());
        let fd = memfd(0x1000);
        for i in 0..crate::vhost::filter::MAX_MEM_SLOTS as u64 {
            let sent = message(
                ADD_MEM_REG,
                V1,
                &single_payload(&region(i * 0x1000, 0x1000, 0)),
            );
            h.send(&sent, &[fd.as_fd()]);
            assert_eq!(h.backend_gets().bytes, sent);
        }
        let extra = single_payload(&region(0x1000_0000, 0x1000, 0));
        h.send(
            &message(ADD_MEM_REG, V1 | NEED_REPLY, &extra),
            &[fd.as_fd()],
        );
        assert_eq!(
            h.qemu_gets().bytes,
            message(ADD_MEM_REG, V1 | REPLY, &1u64.to_le_bytes())
        );
        h.assert_nothing_forwarded_before_probe();
        // After a removal there is room again.
        h.send(
            &message(REM_MEM_REG, V1, &single_payload(&region(0, 0x1000, 0))),
            &[],
        );
        h.backend_gets();
        h.send(&message(ADD_MEM_REG, V1, &extra), &[fd.as_fd()]);
        assert_eq!(h.backend_gets().bytes, message(ADD_MEM_REG, V1, &extra));
        let (result, judge) = h.finish();
        assert_eq!(result.unwrap().refused, 1);
        assert_eq!(judge.tables.last().unwrap().len(), 509);
    }

    #[test]
    fn vring_kick_takes_an_fd_unless_nofd_is_set() {
        let h = Harness::start(Judge::default());
        let (eventfd, _other) = rustix::pipe::pipe().unwrap();
        let with_fd = message(SET_VRING_KICK, V1, &0u64.to_le_bytes());
        h.send(&with_fd, &[eventfd.as_fd()]);
        let got = h.backend_gets();
        assert_eq!(got.bytes, with_fd);
        assert!(same_file(got.fds[0].as_fd(), eventfd.as_fd()));
        let no_fd = message(SET_VRING_KICK, V1, &(1u64 << 8).to_le_bytes());
        h.send(&no_fd, &[]);
        let got = h.backend_gets();
        assert_eq!(got.bytes, no_fd);
        assert!(got.fds.is_empty());
        // NOFD with an fd anyway breaks the protocol.
        h.send(&no_fd, &[eventfd.as_fd()]);
        let (result, _) = h.ended();
        assert!(matches!(
            result,
            Err(FilterError::FrontendMessage(WireError::FdCount {
                got: 1,
                ..
            }))
        ));

        let h = Harness::start(Judge::default());
        h.send(&with_fd, &[]);
        let (result, _) = h.ended();
        assert!(matches!(
            result,
            Err(FilterError::FrontendMessage(WireError::FdCount {
                got: 0,
                ..
            }))
        ));
    }

    /// Sends raw bytes (with `fds`) and expects the connection ended.
    fn broken(bytes: &[u8], fds: &[BorrowedFd<'_>]) -> FilterError {
        let h = Harness::start(Judge::default());
        h.send(bytes, fds);
        let (result, judge) = h.ended();
        assert!(judge.tables.is_empty());
        result.expect_err("the filter should end with an error")
    }

    #[test]
    fn protocol_breaks_end_the_connection() {
        let fd = memfd(0x2000);
        let two = table_payload(&[region(0, 0x1000, 0), region(0x1000, 0x1000, 0x1000)]);
        assert!(matches!(
            broken(&message(SET_MEM_TABLE, V1, &two), &[fd.as_fd()]),
            FilterError::FrontendMessage(WireError::FdCount { got: 1, .. })
        ));
        assert!(matches!(
            broken(&message(GET_FEATURES, V1, &[]), &[fd.as_fd()]),
            FilterError::FrontendMessage(WireError::FdCount { got: 1, .. })
        ));
        let nine: Vec<_> = (0..9).map(|_| memfd(0x1000)).collect();
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(9))];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        let nine_borrowed = borrow_all(&nine);
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&nine_borrowed)));
        let h = Harness::start(Judge::default());
        let bytes = message(GET_FEATURES, V1, &[]);
        rustix::net::sendmsg(
            &h.qemu,
            &[std::io::IoSlice::new(&bytes)],
            &mut control,
            rustix::net::SendFlags::empty(),
        )
        .unwrap();
        assert!(matches!(
            h.ended().0,
            Err(FilterError::ReceiveFromFrontend(TransportError::TooManyFds))
        ));
        for flags in [0, 2, 3] {
            assert!(matches!(
                broken(&message(GET_FEATURES, flags, &[]), &[]),
                FilterError::FrontendMessage(WireError::BadVersion { .. })
            ));
        }
        assert!(matches!(
            broken(&message(GET_FEATURES, V1 | REPLY, &[]), &[]),
            FilterError::FrontendMessage(WireError::ReplyFromFrontend { .. })
        ));
        let mut oversized = message(GET_FEATURES, V1, &[]);
        oversized[8..12].copy_from_slice(&0x1001u32.to_le_bytes());
        assert!(matches!(
            broken(&oversized, &[]),
            FilterError::ReceiveFromFrontend(TransportError::Oversized { size: 0x1001 })
        ));
        let mut short_table = message(SET_MEM_TABLE, V1, &two);
        short_table.truncate(short_table.len() - 8);
        short_table[8..12].copy_from_slice(&u32::try_from(two.len() - 8).unwrap().to_le_bytes());
        assert!(matches!(
            broken(&short_table, &[fd.as_fd(), fd.as_fd()]),
            FilterError::FrontendMessage(WireError::PayloadSize { .. })
        ));
    }

    #[test]
    fn a_truncated_message_is_an_error() {
        let h = Harness::start(Judge::default());
        let whole = message(GET_FEATURES, V1, &[0; 16]);
        (&h.qemu).write_all(&whole[..20]).unwrap();
        let Harness {
            qemu,
            backend,
            filter,
            ..
        } = h;
        drop(qemu);
        let (result, _) = filter.join().unwrap();
        assert!(
            matches!(
                result,
                Err(FilterError::ReceiveFromFrontend(
                    TransportError::Truncated { got: 20, want: 28 }
                ))
            ),
            "{result:?}"
        );
        assert!(matches!(
            result,
            Err(FilterError::ReceiveFromFrontend(
                TransportError::Truncated { got: 20, want: 28 }
            ))
        ));
        assert!(recv_message(&backend).unwrap().is_none());
    }

    #[test]
    fn log_base_is_checked_before_it_is_passed_on() {
        let log = |size: u64, offset: u64| {
            let mut payload = size.to_le_bytes().to_vec();
            payload.extend_from_slice(&offset.to_le_bytes());
            message(SET_LOG_BASE, V1, &payload)
        };
        let fd = memfd(0x2000);
        let h = Harness::start(Judge::default());
        let good = log(0x1000, 0x1000);
        h.send(&good, &[fd.as_fd()]);
        let got = h.backend_gets();
        assert_eq!(got.bytes, good);
        assert!(same_file(got.fds[0].as_fd(), fd.as_fd()));
        h.send(&log(0x1000, 0x1001), &[fd.as_fd()]);
        let (result, _) = h.ended();
        assert!(matches!(
            result,
            Err(FilterError::LogBaseRefused(
                RegionRefusal::PastEndOfFile { .. }
            ))
        ));
        let (pipe, _other) = rustix::pipe::pipe().unwrap();
        assert!(matches!(
            broken(&log(0, 0), &[pipe.as_fd()]),
            FilterError::LogBaseRefused(RegionRefusal::NotRegularFile { .. })
        ));
    }

    #[test]
    fn backend_messages_reach_the_frontend_unchanged() {
        let h = Harness::start(Judge::default());
        let fd = memfd(0x1000);
        let reply = message(31, V1 | REPLY, &[9; 24]);
        send_message(&h.backend, &reply, &[fd.as_fd()]).unwrap();
        let plain = message(1, V1 | REPLY, &0x1234u64.to_le_bytes());
        send_message(&h.backend, &plain, &[]).unwrap();
        let got = h.qemu_gets();
        assert_eq!(got.bytes, reply);
        assert!(same_file(got.fds[0].as_fd(), fd.as_fd()));
        let got = h.qemu_gets();
        assert_eq!(got.bytes, plain);
        assert!(got.fds.is_empty());
        assert_eq!(h.finish().0.unwrap().closed_by, Side::Frontend);
    }

    #[test]
    fn a_shutdown_from_another_thread_ends_run() {
        let h = Harness::start(Judge::default());
        // Make sure the filter is up and blocked in its read.
        h.assert_nothing_forwarded_before_probe();
        h.frontend_handle.shutdown(Shutdown::Both).unwrap();
        let (result, _) = h.filter.join().unwrap();
        assert_eq!(
            result.unwrap(),
            FilterEnd {
                closed_by: Side::Frontend,
                forwarded: 1,
                refused: 0
            }
        );
        assert!(recv_message(&h.backend).unwrap().is_none());
    }

    /// A judge that panics: a bug, but it must not leave `run` stuck.
    struct PanickingJudge;

    impl RegionJudge for PanickingJudge {
        fn judge(&mut self, _: &MappedRegion) -> Result<(), String> {
            panic!("judge bug");
        }

        fn table_changed(&mut self, _: &[MappedRegion]) {}
    }

    #[test]
    fn a_panicking_judge_unwinds_instead_of_hanging() {
        let (qemu, frontend) = UnixStream::pair().unwrap();
        let (filter_backend, _backend) = UnixStream::pair().unwrap();
        let filter = thread::spawn(move || run(frontend, filter_backend, &mut PanickingJudge));
        let fd = memfd(0x1000);
        let table = message(SET_MEM_TABLE, V1, &table_payload(&[region(0, 0x1000, 0)]));
        send_message(&qemu, &table, &[fd.as_fd()]).unwrap();
        qemu.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The unwinding filter shut QEMU's connection down.
        assert!(recv_message(&qemu).unwrap().is_none());
        assert!(filter.join().is_err());
    }

    #[test]
    fn the_backend_closing_ends_run() {
        let h = Harness::start(Judge::default());
        let Harness {
            qemu,
            backend,
            filter,
            ..
        } = h;
        drop(backend);
        assert!(recv_message(&qemu).unwrap().is_none());
        let (result, _) = filter.join().unwrap();
        assert_eq!(result.unwrap().closed_by, Side::Backend);
        // The frontend was shut down, not merely left: writes fail.
        assert!(send_message(&qemu, &message(GET_FEATURES, V1, &[]), &[]).is_err());
    }
}
