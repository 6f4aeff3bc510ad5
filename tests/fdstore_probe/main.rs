//! A tiny notify service for the fd store tests: what gmemd does with
//! [`gmemd::fdstore`], in a few lines, to check systemd and the keeper.
//!
//! `gmem-fdstore-probe --dir DIR [--serve] [options]`. Without
//! `NOTIFY_SOCKET` and `--serve` it runs the keeper (as gmemd does), which
//! starts it again with `--serve`. Serving, it:
//! - takes back what was passed (`listen_fds`) and lists the fds it found open;
//! - keeps a generation counter in a memfd named `gen`, stored again (so
//!   replaced) at every start: generation N is the Nth restart;
//! - keeps a 64 KiB memfd named `data`, made and filled at the first start;
//! - stores and then removes a memfd named `gone` at the first start;
//! - listens on `DIR/probe.sock` (stored as `listen`) or on a socket-activated
//!   `gmemd.socket`; a client line `hold` gets its connection stored as
//!   `c<G>x<K>` and the reply `held NAME`, `ping` gets `pong gen=G`; every
//!   held connection passed back is told `restarted gen=G`;
//! - appends one `start ...` line per start to `DIR/report`, says READY=1 and
//!   pings the watchdog, if one is set, at a third of its interval.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use gmemd::fdstore::keeper::{run_keeper, KeeperOptions, ServeCommand, SERVE_FLAG};
use gmemd::fdstore::{listen_fds, FdStore, LISTEN_NAME, RESTARTS_ENV, SOCKET_UNIT_NAME};

/// Size of the `data` memfd.
const DATA_SIZE: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Args {
    dir: PathBuf,
    serve: bool,
    /// Exit 3 before READY while the generation is below this.
    die_until: u64,
    /// Exit 7 at once if nothing was passed (a first start that fails).
    fail_first: bool,
    /// The keeper's watchdog, in ms (none by default).
    keeper_watchdog_ms: Option<u64>,
}

fn parse_args() -> Args {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().expect("a value after a flag");
        match arg.as_str() {
            "--dir" => args.dir = PathBuf::from(value()),
            "--die-until" => args.die_until = value().parse().expect("a number"),
            "--fail-first" => args.fail_first = true,
            "--keeper-watchdog-ms" => {
                args.keeper_watchdog_ms = Some(value().parse().expect("a number"));
            }
            s if s == SERVE_FLAG => args.serve = true,
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(!args.dir.as_os_str().is_empty(), "--dir is required");
    args
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = parse_args();
    if !args.serve && std::env::var_os("NOTIFY_SOCKET").is_none() {
        // The watchdog tests abort the serving process: no core files.
        let mut core = rustix::process::getrlimit(rustix::process::Resource::Core);
        core.current = Some(0);
        let _ = rustix::process::setrlimit(rustix::process::Resource::Core, core);
        let serve = ServeCommand::this_binary(std::env::args_os().skip(1)).expect("own path");
        let options = KeeperOptions {
            watchdog: args.keeper_watchdog_ms.map(Duration::from_millis),
            abort_grace: Duration::from_millis(500),
            stop_timeout: Duration::from_secs(5),
            ..KeeperOptions::default()
        };
        return run_keeper(serve, options);
    }
    serve(&args)
}

fn serve(args: &Args) -> ExitCode {
    let passed = listen_fds().expect("LISTEN_FDS");
    let open = open_fds();
    if args.fail_first && passed.is_empty() {
        return ExitCode::from(7);
    }
    let mut store = FdStore::from_env()
        .expect("NOTIFY_SOCKET")
        .expect("NOTIFY_SOCKET is set");
    store.adopt(
        passed
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| *name != SOCKET_UNIT_NAME),
    );
    let names: Vec<&str> = passed.iter().map(|(name, _)| name.as_str()).collect();
    let names = names.join(",");
    let (mut gen_fd, mut data, mut listener, mut held) = (None, None, None, Vec::new());
    for (name, fd) in passed {
        match name.as_str() {
            "gen" => gen_fd = Some(fd),
            "data" => data = Some(fd),
            LISTEN_NAME | SOCKET_UNIT_NAME => listener = Some(UnixListener::from(fd)),
            n if n.starts_with('c') => held.push(UnixStream::from(fd)),
            other => panic!("unexpected fd {other}"),
        }
    }
    let gen = gen_fd.map_or(0, |fd| read_all(fd).trim().parse::<u64>().unwrap() + 1);
    store
        .store("gen", memfd("gen", gen.to_string().as_bytes()).as_fd())
        .unwrap();
    let data = data.unwrap_or_else(|| {
        let fd = memfd("data", &pattern(std::process::id()));
        store.store("data", fd.as_fd()).unwrap();
        fd
    });
    if gen == 0 {
        store.store("gone", memfd("gone", b"x").as_fd()).unwrap();
        store.remove("gone").unwrap();
    }
    let listener = listener.unwrap_or_else(|| {
        let path = args.dir.join("probe.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        store.store(LISTEN_NAME, listener.as_fd()).unwrap();
        listener
    });
    for conn in &mut held {
        writeln!(conn, "restarted gen={gen}").unwrap();
    }
    let content = read_all(data.try_clone().unwrap());
    let watchdog = FdStore::watchdog_interval();
    report(
        args,
        &format!(
            "start pid={} gen={gen} restarts={} names={names} open={open} data={} \
             sum={:016x} stored={} limit={} watchdog_ms={} t={}",
            std::process::id(),
            std::env::var(RESTARTS_ENV).unwrap_or_else(|_| "-".to_owned()),
            content.lines().next().unwrap_or("").replace(' ', "_"),
            fnv(content.as_bytes()),
            store.stored(),
            store.limit(),
            watchdog.map_or(0, |w| w.as_millis()),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        ),
    );
    if gen < args.die_until {
        report(args, &format!("dying gen={gen}"));
        return ExitCode::from(3);
    }
    store.ready(&format!("probe gen {gen}")).unwrap();
    serve_clients(&mut store, &listener, gen, watchdog, &mut held)
}

/// Answers clients and pings the watchdog until killed.
fn serve_clients(
    store: &mut FdStore,
    listener: &UnixListener,
    gen: u64,
    watchdog: Option<Duration>,
    held: &mut Vec<UnixStream>,
) -> ExitCode {
    let tick = watchdog.map_or(Duration::from_millis(500), |w| w / 3);
    let mut next = 0;
    loop {
        if watchdog.is_some() {
            store.watchdog().unwrap();
        }
        let mut pfd = [rustix::event::PollFd::new(
            listener,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec::try_from(tick).unwrap();
        if rustix::event::poll(&mut pfd, Some(&timeout)).unwrap_or(0) == 0 {
            continue;
        }
        let Ok((mut conn, _)) = listener.accept() else {
            continue;
        };
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut line = String::new();
        let _ = BufReader::new(&conn).read_line(&mut line);
        match line.trim() {
            "hold" => {
                next += 1;
                let name = format!("c{gen}x{next}");
                store.store(&name, conn.as_fd()).unwrap();
                writeln!(conn, "held {name}").unwrap();
                held.push(conn);
            }
            "ping" => writeln!(conn, "pong gen={gen}").unwrap(),
            other => writeln!(conn, "unknown {other}").unwrap(),
        }
    }
}

/// The fds from 3 up that are open, before this process opens any.
fn open_fds() -> String {
    let open: Vec<String> = (3..1024)
        // SAFETY: F_GETFD on any number is memory-safe; EBADF for closed ones.
        .filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } >= 0)
        .map(|fd: i32| fd.to_string())
        .collect();
    open.join(",")
}

fn memfd(name: &str, content: &[u8]) -> OwnedFd {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let mut file = File::from(fd);
    file.write_all(content).unwrap();
    file.into()
}

/// `DATA_SIZE` bytes: a first line naming the process that made them, then
/// a pattern from its pid.
fn pattern(pid: u32) -> Vec<u8> {
    let mut bytes = format!("probe data of pid {pid}\n").into_bytes();
    let mut x = u64::from(pid) | 1;
    while bytes.len() < DATA_SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.push(b'a' + u8::try_from(x % 26).unwrap());
    }
    bytes
}

fn read_all(fd: OwnedFd) -> String {
    let mut file = File::from(fd);
    file.rewind().unwrap();
    let mut text = String::new();
    file.read_to_string(&mut text).unwrap();
    text
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Appends one line to `DIR/report` in one write.
fn report(args: &Args, line: &str) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.dir.join("report"))
        .unwrap();
    file.write_all(format!("{line}\n").as_bytes()).unwrap();
}
