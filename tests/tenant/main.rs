//! gmem-tenant: a client of another tenant for the isolation tests, run as
//! another uid or in another cgroup. It runs the steps on its command line
//! in order and prints one line per step, `STEP => OK ...` or
//! `STEP => ERR errno text`, then `DONE`; it fails only on bad usage. Every
//! wait is bounded.
//!
//! ```text
//! gmem-tenant --socket S [--no-hello | --vm NAME [--uuid U]] STEP...
//!   create:F:SIZE      create (or reopen) F, keep its fd
//!   open:F             OPEN F (plain name), keep its fd
//!   open-in:VM/F       OPEN with a scoped name, keep its fd
//!   destroy:F          DESTROY F (plain name); its fd is kept
//!   destroy-in:VM/F    DESTROY with a scoped name
//!   bind:F             BIND F's first page at slot 0, gpa 0
//!   status             print what STATUS shows: `SEES file VM/NAME`, `SEES lease VM`
//!   write:F:OFF:TEXT   pwrite through the kept fd
//!   read:F:OFF:LEN     pread; prints the bytes, `.` for each zero
//!   fd:F               print `FD F N`: the kept fd's number
//!   send:F:PATH        pass F's fd over SCM_RIGHTS to the socket at PATH
//!   recv:PATH:F        listen at PATH, print `LISTENING`, take one fd as F
//!   proc-fd:PID:N:F    open /proc/PID/fd/N as F
//!   getfd:PID:N:F      take fd N of PID with pidfd_getfd, as F
//!   fork               the parent prints `FORKED PID` and exits (its lease
//!                      ends); the child, without the lease, goes on
//!   wait-file:PATH     wait (up to 60 s) until PATH exists
//!   end-lease          close the lease connection
//!   flood:N            open N connections that never say HELLO, keep
//!                      them; prints how many connected
//!   hold               print `HOLDING`, then wait to be killed
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use gmem_protocol::conn::{send_message, FrameReader};
use gmem_protocol::wire::{
    BindRequest, FileRef, GuestAddress, Header, MemoryKind, Name, Uuid, VmId, VmSelector,
};
use gmem_protocol::{Client, ClientError};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gmem-tenant: {e}");
            ExitCode::from(2)
        }
    }
}

fn say(line: &str) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

fn num(text: &str) -> Result<u64, String> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .map_err(|e| format!("bad number {text:?}: {e}"))
}

fn name(text: &str) -> Result<Name, String> {
    Name::new(text).map_err(|e| format!("{text:?}: {e}"))
}

fn scoped(text: &str) -> Result<FileRef, String> {
    let (vm, file) = text.split_once('/').ok_or("VM/FILE")?;
    let vm = match Uuid::parse(vm) {
        Some(uuid) => VmSelector::Uuid(uuid),
        None => VmSelector::Name(name(vm)?),
    };
    Ok(FileRef::vm(vm, name(file)?))
}

fn refused(e: &ClientError) -> String {
    match e.errno() {
        Some(errno) => format!("ERR {errno} {}", e.message().unwrap_or("")),
        None => format!("ERR 0 {e}"),
    }
}

struct Tenant {
    socket: String,
    client: Option<Client>,
    files: HashMap<String, OwnedFd>,
    flood: Vec<UnixStream>,
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| {
        args.iter()
            .position(|a| a == f)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let socket = flag("--socket").ok_or("--socket is required")?;
    let vm = flag("--vm")
        .map(|n| -> Result<VmId, String> {
            let n = name(&n)?;
            Ok(match flag("--uuid") {
                Some(u) => VmId {
                    uuid: Uuid::parse(&u).ok_or("bad --uuid")?,
                    name: n,
                },
                None => VmId::from_name(n),
            })
        })
        .transpose()?;
    let no_hello = args.iter().any(|a| a == "--no-hello");
    let connected = match vm {
        _ if no_hello => Err(ClientError::Connect {
            path: socket.clone().into(),
            source: std::io::ErrorKind::NotConnected.into(),
        }),
        Some(vm) => Client::connect(&socket, vm),
        None => Client::connect_control(&socket),
    };
    let mut t = Tenant {
        socket: socket.clone(),
        client: None,
        files: HashMap::new(),
        flood: Vec::new(),
    };
    match connected {
        Ok(c) => {
            say(&format!(
                "hello => OK lease {}",
                c.lease().map_or(0, |l| l.get())
            ));
            t.client = Some(c);
        }
        Err(_) if no_hello => {}
        Err(e) => {
            say(&format!("hello => {}", refused(&e)));
            say("DONE");
            return Ok(());
        }
    }
    let mut skip = false;
    for arg in &args {
        if skip {
            skip = false;
            continue;
        }
        if arg == "--no-hello" {
            continue;
        }
        if arg.starts_with("--") {
            skip = true;
            continue;
        }
        let out = t.step(arg)?;
        say(&format!("{arg} => {out}"));
    }
    say("DONE");
    Ok(())
}

impl Tenant {
    fn client(&mut self) -> Result<&mut Client, String> {
        self.client
            .as_mut()
            .ok_or_else(|| "no lease any more".to_owned())
    }

    fn fd(&self, f: &str) -> Result<&OwnedFd, String> {
        self.files.get(f).ok_or_else(|| format!("no fd {f}"))
    }

    fn keep(&mut self, f: &str, got: Result<OwnedFd, String>) -> String {
        match got {
            Ok(fd) => {
                self.files.insert(f.to_owned(), fd);
                "OK".to_owned()
            }
            Err(e) => e,
        }
    }

    fn step(&mut self, step: &str) -> Result<String, String> {
        let parts: Vec<&str> = step.split(':').collect();
        let arg = |i: usize| {
            parts
                .get(i)
                .copied()
                .ok_or(format!("{step}: missing part {i}"))
        };
        Ok(match parts[0] {
            "create" => {
                let (f, size) = (arg(1)?, num(arg(2)?)?);
                let got = self
                    .client()?
                    .create_or_open(&name(f)?, size, MemoryKind::Memfd)
                    .map(|(fd, _)| fd)
                    .map_err(|e| refused(&e));
                self.keep(f, got)
            }
            "open" => {
                let f = arg(1)?;
                let got = self
                    .client()?
                    .open(&name(f)?)
                    .map(|(fd, _)| fd)
                    .map_err(|e| refused(&e));
                self.keep(f, got)
            }
            "open-in" => {
                let file = scoped(arg(1)?)?;
                let key = arg(1)?.to_owned();
                let got = self
                    .client()?
                    .open_in(&file)
                    .map(|(fd, _)| fd)
                    .map_err(|e| refused(&e));
                self.keep(&key, got)
            }
            "destroy" => {
                let f = name(arg(1)?)?;
                ok_or_refused(self.client()?.destroy(&f))
            }
            "flood" => {
                let n = num(arg(1)?)?;
                let socket = self.socket.clone();
                let mut held = 0;
                for _ in 0..n {
                    match UnixStream::connect(&socket) {
                        Ok(s) => {
                            self.flood.push(s);
                            held += 1;
                        }
                        Err(_) => break,
                    }
                }
                format!("OK {held}")
            }
            "destroy-in" => {
                let file = scoped(arg(1)?)?;
                ok_or_refused(self.client()?.destroy_in(&file))
            }
            "bind" => {
                let bind = BindRequest::new(0, GuestAddress(0), name(arg(1)?)?, 0, 4096);
                ok_or_refused(self.client()?.bind(&bind))
            }
            "status" => self.status()?,
            "write" => {
                let (f, off, text) = (arg(1)?, num(arg(2)?)?, arg(3)?);
                match rustix::io::pwrite(self.fd(f)?, text.as_bytes(), off) {
                    Ok(n) => format!("OK {n}"),
                    Err(e) => format!("ERR {} {e}", e.raw_os_error()),
                }
            }
            "read" => {
                let (f, off, len) = (arg(1)?, num(arg(2)?)?, num(arg(3)?)?);
                let mut buf = vec![0u8; usize::try_from(len).map_err(|e| e.to_string())?];
                match rustix::io::pread(self.fd(f)?, &mut buf, off) {
                    Ok(n) => format!(
                        "OK {}",
                        buf[..n]
                            .iter()
                            .map(|b| if *b == 0 { '.' } else { char::from(*b) })
                            .collect::<String>()
                    ),
                    Err(e) => format!("ERR {} {e}", e.raw_os_error()),
                }
            }
            "fd" => {
                let f = arg(1)?;
                say(&format!("FD {f} {}", self.fd(f)?.as_raw_fd()));
                "OK".to_owned()
            }
            "send" => {
                let (f, path) = (arg(1)?, arg(2)?);
                let stream =
                    UnixStream::connect(path).map_err(|e| format!("connect {path}: {e}"))?;
                let header = Header {
                    code: 0,
                    is_reply: false,
                    size: 0,
                };
                send_message(stream.as_fd(), header, &[], &[self.fd(f)?.as_fd()])
                    .map_err(|e| e.to_string())?;
                "OK".to_owned()
            }
            "recv" => {
                let (path, f) = (arg(1)?, arg(2)?);
                let listener = UnixListener::bind(path).map_err(|e| format!("bind {path}: {e}"))?;
                say("LISTENING");
                let (stream, _) = listener.accept().map_err(|e| e.to_string())?;
                stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .map_err(|e| e.to_string())?;
                let frame = FrameReader::new()
                    .read_frame(stream.as_fd())
                    .map_err(|e| e.to_string())?
                    .ok_or("no frame")?;
                let fd = frame.fds.into_iter().next().ok_or("no fd came")?;
                self.keep(f, Ok(fd))
            }
            "proc-fd" => {
                let (pid, n, f) = (arg(1)?, arg(2)?, arg(3)?);
                let path = format!("/proc/{pid}/fd/{n}");
                let got = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|e| format!("ERR {} {path}: {e}", e.raw_os_error().unwrap_or(0)));
                self.keep(f, got)
            }
            "getfd" => {
                let (pid, n, f) = (num(arg(1)?)?, num(arg(2)?)?, arg(3)?);
                let got = getfd(pid, n).map_err(|e| format!("ERR {} {e}", e.raw_os_error()));
                self.keep(f, got)
            }
            "fork" => {
                // SAFETY: this program is single-threaded, so the child may
                // go on running ordinary Rust code after fork.
                match unsafe { libc::fork() } {
                    -1 => return Err(std::io::Error::last_os_error().to_string()),
                    0 => {
                        // The child keeps the files, not the lease.
                        self.client = None;
                        "OK child".to_owned()
                    }
                    child => {
                        say(&format!("FORKED {child}"));
                        std::process::exit(0);
                    }
                }
            }
            "wait-file" => {
                let path = arg(1)?;
                let start = Instant::now();
                while !std::path::Path::new(path).exists() {
                    if start.elapsed() > Duration::from_secs(60) {
                        return Err(format!("{path} did not appear"));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                "OK".to_owned()
            }
            "end-lease" => {
                self.client = None;
                "OK".to_owned()
            }
            "hold" => {
                say("HOLDING");
                loop {
                    std::thread::park();
                }
            }
            other => return Err(format!("unknown step {other:?}")),
        })
    }

    fn status(&mut self) -> Result<String, String> {
        let client = self.client()?;
        let files = client.scoped_files().map_err(|e| refused(&e));
        let leases = client.leases().map_err(|e| refused(&e));
        let (files, leases) = match (files, leases) {
            (Ok(f), Ok(l)) => (f, l),
            (Err(e), _) | (_, Err(e)) => return Ok(e),
        };
        for f in &files {
            let vm = f.vm.as_ref().map_or("-".to_owned(), |v| v.name.to_string());
            say(&format!("SEES file {vm}/{}", f.file.name));
        }
        for l in &leases {
            say(&format!(
                "SEES lease {} pid {} uid {}",
                l.vm.name, l.pid, l.uid
            ));
        }
        Ok(format!(
            "OK {} file(s) {} lease(s)",
            files.len(),
            leases.len()
        ))
    }
}

fn ok_or_refused(r: Result<(), ClientError>) -> String {
    match r {
        Ok(()) => "OK".to_owned(),
        Err(e) => refused(&e),
    }
}

/// `pidfd_getfd`: takes a copy of fd `n` of process `pid`.
fn getfd(pid: u64, n: u64) -> rustix::io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap_or(0))
        .ok_or(rustix::io::Errno::SRCH)?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
    let n = i32::try_from(n).map_err(|_| rustix::io::Errno::BADF)?;
    rustix::process::pidfd_getfd(&pidfd, n, rustix::process::PidfdGetfdFlags::empty())
}
