//! The baselines of the request rows: servers that answer exactly gmemd's
//! BIND+UNBIND frames (sizes only, no parsing) and clients that send them.
//!
//! Each server runs in a process of its own, as gmemd does: this bench
//! binary started again with `--echo-server epoll|threaded PATH`
//! ([`serve_if_asked`], first thing in `main`). A thread of the bench would
//! switch to and from the clients without changing address space, which
//! this machine makes much cheaper than a switch between processes.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use epoll::{ControlOptions, Event, Events};
use gmem_protocol::wire::HEADER_SIZE;
use gmem_tests::ChildGuard;

use crate::daemon::REPLY_TIMEOUT;

/// A BIND request: header and `RawBind`.
pub const BIND_LEN: usize = HEADER_SIZE + 96;
/// An UNBIND request: header and `RawUnbind`.
pub const UNBIND_LEN: usize = HEADER_SIZE + 8;
/// Either reply: header and the reply head.
pub const REPLY_LEN: usize = HEADER_SIZE + 8;

/// The request sizes a client alternates.
const REQUEST_LENS: [usize; 2] = [BIND_LEN, UNBIND_LEN];

/// How an echo server serves.
#[derive(Debug, Clone, Copy)]
pub enum EchoKind {
    /// One thread, epoll, non-blocking sockets: like gmemd's event loop.
    Epoll,
    /// A thread per client with blocking reads: what the cores allow.
    Threaded,
}

impl EchoKind {
    fn arg(self) -> &'static str {
        match self {
            EchoKind::Epoll => "epoll",
            EchoKind::Threaded => "threaded",
        }
    }
}

/// The argument that makes this binary an echo server.
const SERVE_ARG: &str = "--echo-server";

/// An echo server in a process of its own, killed on drop.
#[derive(Debug)]
pub struct EchoServer {
    path: PathBuf,
    child: ChildGuard,
    _dir: tempfile::TempDir,
}

impl EchoServer {
    /// Starts this binary again as a server of `kind` and waits (up to
    /// 10 s) until it listens.
    ///
    /// # Errors
    /// The process did not start or does not listen.
    pub fn start(kind: EchoKind) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let path = dir.path().join("echo.sock");
        let exe = std::env::current_exe().map_err(|e| format!("the bench binary: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.args([SERVE_ARG, kind.arg()])
            .arg(&path)
            .stdin(Stdio::null());
        let child = crate::process::spawn("echo server", cmd)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&path).is_err() {
            if Instant::now() >= deadline {
                return Err(format!("the {} echo server does not listen", kind.arg()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(EchoServer {
            path,
            child,
            _dir: dir,
        })
    }

    /// Its socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
}

/// Serves as an echo server if this process was started as one (see
/// [`EchoServer::start`]); never returns then.
pub fn serve_if_asked() {
    let args: Vec<String> = std::env::args().collect();
    let Some(at) = args.iter().position(|a| a == SERVE_ARG) else {
        return;
    };
    let (Some(kind), Some(path)) = (args.get(at + 1), args.get(at + 2)) else {
        eprintln!("usage: {SERVE_ARG} epoll|threaded PATH");
        std::process::exit(2);
    };
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("echo server: bind {path}: {e}");
            std::process::exit(1);
        }
    };
    let served = match kind.as_str() {
        "epoll" => serve_epoll(&listener),
        _ => serve_threaded(&listener),
    };
    if let Err(e) = served {
        eprintln!("echo server: {e}");
        std::process::exit(1);
    }
    std::process::exit(0);
}

/// A connection of the epoll server: bytes read so far and the size of the
/// request it waits for.
struct Conn {
    stream: UnixStream,
    pending: Vec<u8>,
    next: usize,
}

fn serve_epoll(listener: &UnixListener) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let epfd = epoll::create(true)?;
    let listen_token = u64::MAX;
    let add = |fd: RawFd, token: u64| {
        epoll::ctl(
            epfd,
            ControlOptions::EPOLL_CTL_ADD,
            fd,
            Event::new(Events::EPOLLIN, token),
        )
    };
    add(listener.as_raw_fd(), listen_token)?;
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    let mut next_token = 0u64;
    let mut events = vec![Event::new(Events::empty(), 0); 64];
    let mut buf = [0u8; 4096];
    loop {
        let n = match epoll::wait(epfd, -1, &mut events) {
            Ok(n) => n,
            // A signal (none is expected): wait again.
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for event in &events[..n] {
            let token = event.data;
            if token == listen_token {
                while let Ok((stream, _)) = listener.accept() {
                    stream.set_nonblocking(true)?;
                    add(stream.as_raw_fd(), next_token)?;
                    conns.insert(
                        next_token,
                        Conn {
                            stream,
                            pending: Vec::new(),
                            next: 0,
                        },
                    );
                    next_token += 1;
                }
                continue;
            }
            let Some(conn) = conns.get_mut(&token) else {
                continue;
            };
            if !echo_ready(conn, &mut buf) {
                conns.remove(&token);
            }
        }
    }
}

/// Reads what is there and answers each whole request; false once the
/// client has gone.
fn echo_ready(conn: &mut Conn, buf: &mut [u8]) -> bool {
    loop {
        match conn.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => conn.pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    while conn.pending.len() >= REQUEST_LENS[conn.next] {
        conn.pending.drain(..REQUEST_LENS[conn.next]);
        conn.next = 1 - conn.next;
        // The client waits for this reply before it sends more, so the
        // socket buffer has room: a full one would be a client that does
        // not read, which the bench has none of.
        let mut reply = &[0u8; REPLY_LEN][..];
        while !reply.is_empty() {
            match conn.stream.write(reply) {
                Ok(n) => reply = &reply[n..],
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(_) => return false,
            }
        }
    }
    true
}

fn serve_threaded(listener: &UnixListener) -> std::io::Result<()> {
    for stream in listener.incoming() {
        let mut stream = stream?;
        std::thread::spawn(move || {
            let mut req = [0u8; BIND_LEN];
            for len in REQUEST_LENS.iter().cycle() {
                if stream.read_exact(&mut req[..*len]).is_err()
                    || stream.write_all(&[0u8; REPLY_LEN]).is_err()
                {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// Requests per second of `clients` clients each sending `rounds` BIND-
/// and UNBIND-sized frames, waiting for each reply. A client makes the
/// system calls gmemd's client library makes for a request: one send of
/// the whole frame, then the reply's header and the rest in two reads, so
/// that only the servers differ.
///
/// # Errors
/// A client's failure to connect, send or read a reply in time.
pub fn rate(path: &Path, clients: usize, rounds: usize) -> Result<f64, String> {
    crate::rate::timed(clients, rounds * 2, |_, start| {
        let path = path.to_owned();
        std::thread::spawn(move || {
            let stream = UnixStream::connect(path)
                .and_then(|s| s.set_read_timeout(Some(REPLY_TIMEOUT)).map(|()| s))
                .map_err(|e| format!("echo client: {e}"));
            start.wait();
            let mut stream = stream?;
            let mut reply = [0u8; REPLY_LEN];
            for _ in 0..rounds {
                for len in REQUEST_LENS {
                    let (head, rest) = reply.split_at_mut(HEADER_SIZE);
                    stream
                        .write_all(&[1u8; BIND_LEN][..len])
                        .and_then(|()| stream.read_exact(head))
                        .and_then(|()| stream.read_exact(rest))
                        .map_err(|e| format!("echo client: {e}"))?;
                }
            }
            Ok(())
        })
    })
}
