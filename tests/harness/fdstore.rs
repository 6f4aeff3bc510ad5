//! Driving `gmem-fdstore-probe` (tests/fdstore_probe), the tiny notify
//! service of the fd store tests: its report, its socket, held connections.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::wait_until;

/// One `start ...` line of the report: `key=value` fields.
#[derive(Debug, Clone)]
pub struct Start(HashMap<String, String>);

impl Start {
    /// A field (empty if absent).
    pub fn get(&self, key: &str) -> &str {
        self.0.get(key).map_or("", String::as_str)
    }

    /// A numeric field.
    ///
    /// # Panics
    /// If it is not a number.
    pub fn number(&self, key: &str) -> u64 {
        self.get(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key} is not a number in {self:?}"))
    }

    /// The serving process's pid.
    pub fn pid(&self) -> u32 {
        u32::try_from(self.number("pid")).expect("pid")
    }

    /// The names of the fds passed at this start, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .get("names")
            .split(',')
            .filter(|n| !n.is_empty())
            .collect();
        names.sort_unstable();
        names
    }
}

/// The probe writing its report into `dir`.
#[derive(Debug, Clone)]
pub struct Probe {
    dir: PathBuf,
}

impl Probe {
    /// A probe whose report (and socket, unless socket-activated) live in `dir`.
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("probe dir");
        Probe {
            dir: dir.to_owned(),
        }
    }

    /// The probe's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The probe's own listening socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("probe.sock")
    }

    /// The command line, for `ExecStart=` or a [`Command`].
    pub fn command_line(&self, extra: &[&str]) -> Vec<String> {
        let mut line = vec![
            crate::bin("gmem-fdstore-probe").display().to_string(),
            "--dir".to_owned(),
            self.dir.display().to_string(),
        ];
        line.extend(extra.iter().map(|s| (*s).to_owned()));
        line
    }

    /// A command that runs the probe without a manager, so as its keeper.
    pub fn keeper_command(&self, extra: &[&str]) -> Command {
        let line = self.command_line(extra);
        let mut cmd = Command::new(&line[0]);
        cmd.args(&line[1..])
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("WATCHDOG_USEC")
            .env("RUST_LOG", "debug");
        cmd
    }

    /// Every line of the report.
    pub fn report(&self) -> String {
        std::fs::read_to_string(self.dir.join("report")).unwrap_or_default()
    }

    /// The `start` lines so far.
    pub fn starts(&self) -> Vec<Start> {
        self.report()
            .lines()
            .filter_map(|line| line.strip_prefix("start "))
            .map(|fields| {
                Start(
                    fields
                        .split_whitespace()
                        .filter_map(|f| f.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                )
            })
            .collect()
    }

    /// Waits for the start of generation `gen` (the `gen`th restart).
    pub fn wait_start(&self, gen: u64, timeout: Duration) -> Start {
        wait_until(timeout, &format!("probe generation {gen} to start"), || {
            self.starts().into_iter().find(|s| s.number("gen") == gen)
        })
    }
}

/// Connects to `socket`, sends `hold` and returns the connection and the
/// name it is stored under.
pub fn hold(socket: &Path) -> (UnixStream, String) {
    let mut conn = connect(socket);
    conn.write_all(b"hold\n").expect("send hold");
    let reply = read_line(&conn);
    let name = reply
        .strip_prefix("held ")
        .unwrap_or_else(|| panic!("hold answered {reply:?}"))
        .to_owned();
    (conn, name)
}

/// Sends `ping` on a new connection and returns the answer.
pub fn ping(socket: &Path) -> String {
    let mut conn = connect(socket);
    conn.write_all(b"ping\n").expect("send ping");
    read_line(&conn)
}

/// A connection with a 10 s read timeout.
pub fn connect(socket: &Path) -> UnixStream {
    let conn = UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    conn
}

/// One line from `conn`, without its newline (bounded by its read timeout).
pub fn read_line(conn: &UnixStream) -> String {
    let mut line = String::new();
    BufReader::new(conn)
        .read_line(&mut line)
        .expect("reading a line");
    line.trim_end().to_owned()
}
