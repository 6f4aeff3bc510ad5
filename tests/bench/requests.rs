//! Request rows: BIND+UNBIND round trips against a real gmemd, 1 client and
//! many, beside servers that answer exactly the same frames (a 108-byte
//! BIND, a 20-byte UNBIND, a 20-byte reply each) and do nothing else:
//!
//! - a single-threaded epoll echo, like for like with gmemd's event loop
//!   (one thread, readiness, non-blocking sockets): the cost of the
//!   transport and the loop. This is the rows' baseline.
//! - a thread-per-client echo: what the cores allow (details table).
//!
//! Rounds interleave the three servers, so a busy moment of the machine
//! hits all of them; medians are reported.

use std::path::Path;

use gmem_protocol::wire::{BindRequest, GuestAddress, MemoryKind};
use gmem_tests::{median, name, vm, Daemon};

use crate::args::Options;
use crate::daemon::{chain, session};
use crate::echo::{EchoKind, EchoServer};
use crate::report::{ratio_text, thousands, Figure, GroupReport, Row, Table, Target};

/// BIND+UNBIND pairs per client and run with 8 clients; scaled so every
/// client count makes about as many requests in all.
const PAIRS_AT_8: usize = 2_000;

/// Runs the group.
pub fn run(options: &Options) -> GroupReport {
    let mut report = GroupReport::default();
    let most = options.clients.iter().copied().max().unwrap_or(1);
    // One lease and one file per client, with room to spare: the defaults
    // (64 connections, 256 files per uid) would refuse 200 clients.
    let room = (most + 64).to_string();
    let daemon = Daemon::start_with(&[
        "--quota-connections",
        &room,
        "--max-connections",
        &room,
        "--quota-files",
        &room,
    ]);
    let servers = EchoServer::start(EchoKind::Epoll)
        .and_then(|e| Ok((e, EchoServer::start(EchoKind::Threaded)?)));
    let (epoll, threaded) = match servers {
        Ok(servers) => servers,
        Err(e) => {
            report.rows.push(Row {
                measurement: "BIND+UNBIND".to_owned(),
                gmemd: Err(e.clone()),
                baseline: Err(e),
                target: None,
            });
            return report;
        }
    };
    let mut details = Table::new(
        "requests per second (BIND+UNBIND), medians of interleaved runs",
        &[
            "clients",
            "gmemd",
            "epoll echo",
            "thread-per-client echo",
            "gmemd/epoll",
            "gmemd/threaded",
            "gmemd round trip",
        ],
    );
    let mut cpu = Table::new(
        "CPU time per request, µs (medians): each server, and the bench's client threads \
         driving it; 2 cores are shared by all of them",
        &[
            "clients",
            "gmemd",
            "its clients",
            "epoll echo",
            "its clients",
        ],
    );
    let (gmemd_pid, echo_pid) = (daemon.pid().to_string(), epoll.pid().to_string());
    for &clients in &options.clients {
        let pairs = pairs(options, clients);
        let (mut g, mut e, mut t) = (Vec::new(), Vec::new(), Vec::new());
        let (mut g_cpu, mut e_cpu) = (CpuShares::default(), CpuShares::default());
        let requests = (clients * pairs * 2) as f64;
        let mut error = None;
        for _ in 0..options.rounds {
            let runs = [
                crate::cpu::during(&echo_pid, || {
                    crate::echo::rate(epoll.path(), clients, pairs)
                })
                .map(|run| e.push(e_cpu.add(run, requests))),
                crate::echo::rate(threaded.path(), clients, pairs).map(|r| t.push(r)),
                crate::cpu::during(&gmemd_pid, || gmemd_rate(&daemon.socket(), clients, pairs))
                    .map(|run| g.push(g_cpu.add(run, requests))),
            ];
            if let Some(Err(why)) = runs.into_iter().find(Result::is_err) {
                error = Some(why);
                break;
            }
        }
        let measured = |xs: Vec<f64>| match &error {
            Some(why) => Err(why.clone()),
            None => Ok(median(xs)),
        };
        let (g, e, t) = (measured(g), measured(e), measured(t));
        if let (Ok(g), Ok(e), Ok(t)) = (&g, &e, &t) {
            // Each client waits for its reply: one round trip per request.
            let round_trip_us = 1e6 * clients as f64 / g;
            details.push(vec![
                clients.to_string(),
                thousands(*g),
                thousands(*e),
                thousands(*t),
                format!("{}x", ratio_text(g / e)),
                format!("{}x", ratio_text(g / t)),
                format!("{} µs", thousands(round_trip_us)),
            ]);
            cpu.push(vec![
                clients.to_string(),
                format!("{:.1}", median(g_cpu.server)),
                format!("{:.1}", median(g_cpu.clients)),
                format!("{:.1}", median(e_cpu.server)),
                format!("{:.1}", median(e_cpu.clients)),
            ]);
        }
        let (label, target) = if clients == 1 {
            ("round trip, 1 client".to_owned(), Target::AtLeast(0.67))
        } else {
            (
                format!("throughput, {clients} clients"),
                Target::AtLeast(0.8),
            )
        };
        report.rows.push(Row {
            measurement: format!("requests: BIND+UNBIND {label} (vs epoll echo)"),
            gmemd: g.map(Figure::PerSecond),
            baseline: e.map(Figure::PerSecond),
            target: Some(target),
        });
    }
    report.details.push(details);
    report.details.push(cpu);
    report.notes.push(format!(
        "gmemd log level {} (GMEMD_TEST_LOG), state on {}; {} BIND+UNBIND pairs per client at 8 clients",
        std::env::var("GMEMD_TEST_LOG").unwrap_or_default(),
        std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".to_owned()),
        pairs(options, 8)
    ));
    report
}

/// CPU µs per request of a server and of the clients, one entry per run.
#[derive(Debug, Default)]
struct CpuShares {
    server: Vec<f64>,
    clients: Vec<f64>,
}

impl CpuShares {
    /// Keeps the shares of one run of `requests`; returns its rate.
    fn add(
        &mut self,
        (rate, server, clients): (f64, std::time::Duration, std::time::Duration),
        requests: f64,
    ) -> f64 {
        self.server.push(server.as_secs_f64() * 1e6 / requests);
        self.clients.push(clients.as_secs_f64() * 1e6 / requests);
        rate
    }
}

/// BIND+UNBIND pairs each of `clients` clients makes in one run.
fn pairs(options: &Options, clients: usize) -> usize {
    let at_8 = if options.smoke {
        PAIRS_AT_8 / 10
    } else {
        PAIRS_AT_8
    };
    (at_8 * 8 / clients).max(50)
}

/// Requests per second over `clients` leases, each binding and unbinding
/// its own 1 MiB file `pairs` times.
///
/// # Errors
/// A client's connection or a refused request.
pub fn gmemd_rate(socket: &Path, clients: usize, pairs: usize) -> Result<f64, String> {
    crate::rate::timed(clients, pairs * 2, |i, start| {
        let socket = socket.to_owned();
        std::thread::spawn(move || {
            let vm_name = format!("bench-{clients}-{i}");
            let file = name(&format!("{vm_name}-ram"));
            let bind = BindRequest::new(0, GuestAddress(0), file.clone(), 0, 1 << 20);
            let client = session(&socket, Some(vm(&vm_name))).and_then(|mut c| {
                c.create(&file, 1 << 20, MemoryKind::Memfd)
                    .map_err(|e| format!("CREATE: {}", chain(&e)))?;
                Ok(c)
            });
            start.wait();
            let mut client = client?;
            for _ in 0..pairs {
                client
                    .bind(&bind)
                    .map_err(|e| format!("BIND: {}", chain(&e)))?;
                client
                    .unbind(0)
                    .map_err(|e| format!("UNBIND: {}", chain(&e)))?;
            }
            client
                .destroy(&file)
                .map_err(|e| format!("DESTROY: {}", chain(&e)))
        })
    })
}
