//! One request and its reply, across restarts of gmemd (PROTOCOL.md §14).
//!
//! A restarted daemon sends a NOTICE first on every connection it took
//! over. `pending` set: a whole request was still unread, and will be
//! answered; the client keeps waiting. `pending` clear: every request sent
//! before the notice was read by the daemon that died, unless it was sent
//! after the notice was made (the client cannot tell). So the client sends
//! a **marker**, a request with a reserved code that the daemon refuses
//! without effect (`MARKER_CODES`), and reads on: replies come in order, so
//! the request's reply either comes before the marker's (it was answered)
//! or not at all (it was lost with the daemon, applied or not).
//!
//! A lost request is sent again if that is safe, and the reply of the
//! second try read in that light (§14.4): CREATE's `EEXIST` means the first
//! try created the file (it is opened), BIND's `EEXIST` is fine when the
//! slot holds exactly that binding, UNBIND's and DESTROY's `ENOENT` and
//! DEPOSIT's `EEXIST` (once STATUS shows the file as deposited) mean the
//! first try did it. Any other lost request is [`ClientError::Restarted`].

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;

use super::{Client, ClientError, ClientResult};
use crate::conn::{send_message, ConnError, Frame};
use crate::wire::{
    BindRequest, CreateFlags, CreateRequest, DepositRequest, FileInfo, FileStatus, Header, Name,
    Reply, Request, RequestBody, RestartNotice, MARKER_CODES,
};

/// A reply body and the fds that came with it.
type Answer = (Vec<u8>, Vec<OwnedFd>);

/// What became of a request: its reply (a refusal is an `Err`) and whether
/// it had to be sent a second time, after a restart lost the first.
struct Outcome {
    reply: ClientResult<Answer>,
    resent: bool,
}

/// Whether a lost request may be sent again (§14.4).
fn resendable(request: Request) -> bool {
    matches!(
        request,
        Request::Status
            | Request::Open
            | Request::Create
            | Request::Bind
            | Request::Unbind
            | Request::Destroy
            | Request::Deposit
            | Request::Handoff
    )
}

impl Client {
    /// Sends any request and waits for its reply. Returns the reply body and
    /// the fds that came with it, after checking the reply answers this
    /// request and carries exactly the fds its request code promises
    /// ([`Request::reply_fds`]) on success.
    ///
    /// Restart notices are skipped (counted in [`Client::restarts_seen`]);
    /// a request lost with a daemon that died is sent again and reconciled
    /// as PROTOCOL.md §14.4 says, so the answer is the one the request
    /// would have had: a CREATE that was applied but whose reply was lost
    /// answers with the file opened (`created` set), and so on.
    ///
    /// # Errors
    /// [`ClientError::Refused`] for an error status,
    /// [`ClientError::Restarted`] for a lost request that cannot be sent
    /// again, or transport errors.
    pub fn call(
        &mut self,
        request: &RequestBody,
        fds: &[BorrowedFd<'_>],
    ) -> ClientResult<(Vec<u8>, Vec<OwnedFd>)> {
        let outcome = self.exchange(request, fds)?;
        if !outcome.resent {
            return outcome.reply;
        }
        match outcome.reply {
            Ok(answer) => Ok(answer),
            Err(refusal) => self.reconcile(request, fds, refusal),
        }
    }

    /// Sends `request` and reads until its reply, through any number of
    /// restarts (module docs). Transport errors are the outer `Err`.
    fn exchange(&mut self, request: &RequestBody, fds: &[BorrowedFd<'_>]) -> ClientResult<Outcome> {
        let code = request.request();
        let payload = request.encode();
        let header = Header::request(code, payload.len());
        send_message(self.stream.as_fd(), header, &payload, fds)?;
        let mut resent = false;
        // The request's reply, once read while a marker is outstanding.
        let mut answer: Option<Frame> = None;
        // The latest marker sent; earlier ones are answered or lost.
        let mut marker: Option<u32> = None;
        loop {
            let frame = self.read_frame()?;
            let h = frame.header;
            if h.is_notice() {
                let notice = RestartNotice::decode_payload(&frame.payload)?;
                self.restarts.seen += 1;
                self.restarts.last = Some(notice);
                if !notice.pending {
                    marker = Some(self.send_marker()?);
                }
            } else if h.is_reply && MARKER_CODES.contains(&h.code) {
                if Some(h.code) != marker {
                    continue;
                }
                marker = None;
                if let Some(frame) = answer.take() {
                    return Ok(Outcome {
                        reply: self.check_reply(code, frame),
                        resent,
                    });
                }
                // Everything sent before the marker has been read, and the
                // request got no reply: it was lost with the daemon.
                if !resendable(code) {
                    return Err(ClientError::Restarted { request: code });
                }
                log::info!("gmemd restarted while {code} was in flight; sending it again");
                send_message(self.stream.as_fd(), header, &payload, fds)?;
                resent = true;
            } else if h.is_reply && h.code == code.code() && answer.is_none() {
                if marker.is_none() {
                    return Ok(Outcome {
                        reply: self.check_reply(code, frame),
                        resent,
                    });
                }
                answer = Some(frame);
            } else {
                return Err(ClientError::UnexpectedReply {
                    request: code,
                    what: format!("header code {} reply={}", h.code, h.is_reply),
                });
            }
        }
    }

    /// Reads one frame, blocking up to the timeout.
    fn read_frame(&mut self) -> ClientResult<Frame> {
        Ok(self
            .reader
            .read_frame(self.stream.as_fd())?
            // A blocking socket only yields no frame when its read timeout
            // ([`Client::set_timeout`]) expired: not a hangup.
            .ok_or_else(|| ConnError::Io(std::io::ErrorKind::TimedOut.into()))?)
    }

    /// Sends a marker with a code no outstanding marker has; returns it.
    fn send_marker(&mut self) -> ClientResult<u32> {
        let code = MARKER_CODES.start() | (self.restarts.next_marker & 0xffff);
        self.restarts.next_marker = self.restarts.next_marker.wrapping_add(1);
        let header = Header {
            code,
            is_reply: false,
            size: 0,
        };
        send_message(self.stream.as_fd(), header, &[], &[])?;
        Ok(code)
    }

    /// Checks that `frame` is a well-formed reply to `code`.
    fn check_reply(&self, code: Request, frame: Frame) -> ClientResult<Answer> {
        let reply = Reply::decode(&frame.payload)?;
        if reply.status != 0 {
            return Err(ClientError::Refused {
                request: code,
                errno: -reply.status,
                message: reply.text,
            });
        }
        let reply_fds = code.reply_fds();
        if frame.fds.len() != reply_fds {
            return Err(ClientError::UnexpectedReply {
                request: code,
                what: format!("{} fds, expected {reply_fds}", frame.fds.len()),
            });
        }
        Ok((reply.body, frame.fds))
    }

    /// Reads the refusal of a request sent a second time after a restart
    /// lost the first (§14.4): where it says the first did what was asked,
    /// the answer is what the first would have had.
    fn reconcile(
        &mut self,
        request: &RequestBody,
        fds: &[BorrowedFd<'_>],
        refusal: ClientError,
    ) -> ClientResult<Answer> {
        let errno = refusal.errno().map(Errno::from_raw_os_error);
        let done = match (request, errno) {
            (RequestBody::Create(create), Some(Errno::EXIST))
                if !create.flags.contains(CreateFlags::OPEN_EXISTING) =>
            {
                return self.reopen_created(create, refusal);
            }
            (RequestBody::Bind(bind), Some(Errno::EXIST)) => self.holds_binding(bind)?,
            (RequestBody::Unbind { .. } | RequestBody::Destroy(_), Some(Errno::NOENT)) => true,
            (RequestBody::Deposit(deposit), Some(Errno::EXIST)) => {
                match self.deposited(deposit, fds)? {
                    Some(info) => return Ok((info.encode(), Vec::new())),
                    None => false,
                }
            }
            _ => false,
        };
        if done {
            log::info!("{} was applied before gmemd restarted", request.request());
            Ok((Vec::new(), Vec::new()))
        } else {
            Err(refusal)
        }
    }

    /// A CREATE whose second try found the name taken: the first created
    /// it, if the file there has the size and kind asked for. Opens it.
    fn reopen_created(
        &mut self,
        create: &CreateRequest,
        refusal: ClientError,
    ) -> ClientResult<Answer> {
        let (fd, info) = match self.open(&create.name) {
            Ok(opened) => opened,
            Err(ClientError::Refused { .. }) => return Err(refusal),
            Err(e) => return Err(e),
        };
        if info.size != create.size || info.kind != create.kind {
            return Err(refusal);
        }
        log::info!(
            "CREATE of {} was applied before gmemd restarted",
            create.name
        );
        let info = FileInfo {
            created: true,
            ..info
        };
        Ok((info.encode(), vec![fd]))
    }

    /// Whether this VM's `bind.name` is bound in `bind.slot` exactly as asked.
    fn holds_binding(&mut self, bind: &BindRequest) -> ClientResult<bool> {
        let Some(file) = self.own_file(&bind.name)? else {
            return Ok(false);
        };
        let ours = match (&file.owner, &self.vm) {
            (Some(owner), Some(vm)) => owner.vm.uuid == vm.uuid,
            _ => false,
        };
        Ok(ours
            && file.bindings.iter().any(|b| {
                b.slot == bind.slot
                    && b.gpa == bind.gpa
                    && b.offset == bind.offset
                    && b.size == bind.size
            }))
    }

    /// The file a DEPOSIT's first try filed, if the session's namespace
    /// holds one of that name with the fd's size and the kind asked for.
    fn deposited(
        &mut self,
        deposit: &DepositRequest,
        fds: &[BorrowedFd<'_>],
    ) -> ClientResult<Option<FileInfo>> {
        let Some(fd) = fds.first() else {
            return Ok(None);
        };
        // Without its size the deposit cannot be recognized: the EEXIST stands.
        let Ok(stat) = rustix::fs::fstat(fd) else {
            return Ok(None);
        };
        let size = stat.st_size;
        let Some(file) = self.own_file(&deposit.name)? else {
            return Ok(None);
        };
        if file.kind != deposit.kind || u64::try_from(size).ok() != Some(file.size) {
            return Ok(None);
        }
        Ok(Some(FileInfo {
            size: file.size,
            page_size: file.page_size,
            kind: file.kind,
            created: true,
        }))
    }

    /// The file `name` of the session's own namespace (its VM's, or the
    /// operators' for a control session), from STATUS: the scoped table
    /// where `VM_SCOPE` was negotiated (an operator sees every namespace),
    /// else the plain one.
    fn own_file(&mut self, name: &Name) -> ClientResult<Option<FileStatus>> {
        if self.features().contains(crate::wire::Features::VM_SCOPE) {
            let uuid = self.vm.as_ref().map(|vm| vm.uuid);
            return Ok(self
                .scoped_files()?
                .into_iter()
                .find(|f| &f.file.name == name && f.vm.as_ref().map(|vm| vm.uuid) == uuid)
                .map(|f| f.file));
        }
        Ok(self.files()?.into_iter().find(|f| &f.name == name))
    }
}
