//! The typed QMP commands of [`QmpClient`]: fd passing (`add-fd`, `getfd`,
//! ...), migration, run state, HMP, QOM objects and devices. Each one is a
//! thin wrapper around [`QmpClient::execute`] (or
//! [`QmpClient::execute_with_fd`]) that builds the arguments and parses the
//! reply.

use std::io;
use std::os::fd::BorrowedFd;
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::*;

impl QmpClient {
    /// `add-fd`: passes `fd` to QEMU and adds it to fd set `fdset_id` (a new
    /// set when `None`; QEMU 10 numbers new sets from 0). QEMU code that
    /// opens files through `qemu_open` (block devices, migration `file:`)
    /// accepts `/dev/fdset/<id>`; `memory-backend-file`'s `mem-path` does
    /// NOT (QEMU 10.0.2 calls plain `open(2)` and fails with ENOENT), so for
    /// guest RAM use an inherited fd or `/proc/<pid>/fd/<n>` instead.
    pub fn add_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        fdset_id: Option<u64>,
    ) -> Result<AddFdInfo, QmpError> {
        self.add_fd_opaque(fd, fdset_id, None)
    }

    /// `add-fd` with an `opaque` string (shown by `query-fdsets`).
    pub fn add_fd_opaque(
        &mut self,
        fd: BorrowedFd<'_>,
        fdset_id: Option<u64>,
        opaque: Option<&str>,
    ) -> Result<AddFdInfo, QmpError> {
        let mut args = Map::new();
        if let Some(id) = fdset_id {
            args.insert("fdset-id".into(), id.into());
        }
        if let Some(o) = opaque {
            args.insert("opaque".into(), o.into());
        }
        let v = self.execute_with_fd("add-fd", Some(Value::Object(args)), fd)?;
        parse_reply("add-fd", v)
    }

    /// `remove-fd`: removes fd set `fdset_id`, or only descriptor `fd` of it.
    pub fn remove_fd(&mut self, fdset_id: u64, fd: Option<i64>) -> Result<(), QmpError> {
        let mut args = json!({ "fdset-id": fdset_id });
        if let Some(fd) = fd {
            args["fd"] = fd.into();
        }
        self.execute("remove-fd", Some(args)).map(drop)
    }

    /// `query-fdsets`.
    pub fn query_fdsets(&mut self) -> Result<Vec<FdsetInfo>, QmpError> {
        let v = self.execute("query-fdsets", None)?;
        parse_reply("query-fdsets", v)
    }

    /// `getfd`: passes `fd` to QEMU under the name `fdname` (for
    /// `fd=<fdname>` / `fds=` properties of netdevs, chardevs, migration...).
    pub fn getfd(&mut self, fd: BorrowedFd<'_>, fdname: &str) -> Result<(), QmpError> {
        self.execute_with_fd("getfd", Some(json!({ "fdname": fdname })), fd)
            .map(drop)
    }

    /// `closefd`: closes a descriptor passed with [`Self::getfd`].
    pub fn closefd(&mut self, fdname: &str) -> Result<(), QmpError> {
        self.execute("closefd", Some(json!({ "fdname": fdname })))
            .map(drop)
    }

    /// `migrate-set-capabilities`, e.g. `&[("x-ignore-shared", true)]`.
    /// Must be issued on both sides before `migrate`/`migrate-incoming`.
    pub fn migrate_set_capabilities(&mut self, caps: &[(&str, bool)]) -> Result<(), QmpError> {
        let list: Vec<Value> = caps
            .iter()
            .map(|(name, state)| json!({ "capability": name, "state": state }))
            .collect();
        self.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": list })),
        )
        .map(drop)
    }

    /// `query-migrate-capabilities` as (name, state) pairs.
    pub fn query_migrate_capabilities(&mut self) -> Result<Vec<(String, bool)>, QmpError> {
        #[derive(Deserialize)]
        struct Cap {
            capability: String,
            state: bool,
        }
        let v = self.execute("query-migrate-capabilities", None)?;
        let caps: Vec<Cap> = parse_reply("query-migrate-capabilities", v)?;
        Ok(caps.into_iter().map(|c| (c.capability, c.state)).collect())
    }

    /// `query-memdev`: each memory backend's id, size and whether it is
    /// shared (`share=on`).
    pub fn query_memdevs(&mut self) -> Result<Vec<(String, u64, bool)>, QmpError> {
        #[derive(Deserialize)]
        struct Memdev {
            #[serde(default)]
            id: String,
            size: u64,
            share: bool,
        }
        let v = self.execute("query-memdev", None)?;
        let devs: Vec<Memdev> = parse_reply("query-memdev", v)?;
        Ok(devs.into_iter().map(|d| (d.id, d.size, d.share)).collect())
    }

    /// `migrate-set-parameters` with a parameter object, e.g.
    /// `json!({"downtime-limit": 100, "max-bandwidth": 0})`.
    pub fn migrate_set_parameters(&mut self, params: Value) -> Result<(), QmpError> {
        self.execute("migrate-set-parameters", Some(params))
            .map(drop)
    }

    /// `migrate` to `uri` (e.g. `unix:/path`, `fd:name`). Returns as soon as
    /// the migration started; see [`Self::wait_migration`].
    pub fn migrate(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate", Some(json!({ "uri": uri })))
            .map(drop)
    }

    /// `migrate-incoming` on a QEMU started with `-incoming defer`. For a
    /// `unix:` URI QEMU listens on the path when this returns.
    pub fn migrate_incoming(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate-incoming", Some(json!({ "uri": uri })))
            .map(drop)
    }

    /// `migrate_cancel`.
    pub fn migrate_cancel(&mut self) -> Result<(), QmpError> {
        self.execute("migrate_cancel", None).map(drop)
    }

    /// `query-migrate`.
    pub fn query_migrate(&mut self) -> Result<MigrationInfo, QmpError> {
        let v = self.execute("query-migrate", None)?;
        Ok(MigrationInfo::from_value(&v))
    }

    /// Polls `query-migrate` (every 2–20 ms) until the migration is
    /// `completed` (returns its info), `failed`/`cancelled`
    /// ([`QmpError::MigrationFailed`]) or `timeout` expires.
    pub fn wait_migration(&mut self, timeout: Duration) -> Result<MigrationInfo, QmpError> {
        let deadline = Instant::now() + timeout;
        let mut interval = MIGRATION_POLL_MIN;
        loop {
            let info = self.query_migrate()?;
            match info.status {
                MigrationStatus::Completed => return Ok(info),
                MigrationStatus::Failed | MigrationStatus::Cancelled => {
                    return Err(QmpError::MigrationFailed {
                        status: info.status,
                        desc: info.error_desc,
                    })
                }
                _ => {}
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(QmpError::Timeout {
                    what: format!("migration to complete (last status {})", info.status),
                    timeout,
                });
            }
            thread::sleep(interval.min(remaining));
            interval = (interval * 2).min(MIGRATION_POLL_MAX);
        }
    }

    /// `query-status`: the run state, e.g. `running`, `paused`,
    /// `postmigrate`, `inmigrate`, `prelaunch`, `shutdown`.
    pub fn query_status(&mut self) -> Result<String, QmpError> {
        let v = self.execute("query-status", None)?;
        v.get("status")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| QmpError::Protocol(format!("query-status without status: {v}")))
    }

    /// `human-monitor-command`: runs an HMP command line (`info mtree`,
    /// `xp /8xb 0x1000`) and returns its output.
    pub fn human_monitor_command(&mut self, command_line: &str) -> Result<String, QmpError> {
        let v = self.execute(
            "human-monitor-command",
            Some(json!({ "command-line": command_line })),
        )?;
        v.as_str().map(str::to_owned).ok_or_else(|| {
            QmpError::Protocol(format!("human-monitor-command returned a non-string: {v}"))
        })
    }

    /// `cont`: resumes the guest.
    pub fn cont(&mut self) -> Result<(), QmpError> {
        self.execute("cont", None).map(drop)
    }

    /// `stop`: pauses the guest.
    pub fn stop(&mut self) -> Result<(), QmpError> {
        self.execute("stop", None).map(drop)
    }

    /// `quit`: makes QEMU exit. QEMU may close the socket before or after
    /// replying; both count as success. The client is closed afterwards.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        let res = match self.execute("quit", None) {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            // QEMU may close the socket while the command is still going out.
            Err(QmpError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        };
        self.closed = true;
        res
    }

    /// `object-add` with the full object description, e.g.
    /// `json!({"qom-type": "memory-backend-file", "id": "mem1", "size": 1<<30, "mem-path": p, "share": true})`.
    pub fn object_add(&mut self, object: Value) -> Result<(), QmpError> {
        self.execute("object-add", Some(object)).map(drop)
    }

    /// `object-del`.
    pub fn object_del(&mut self, id: &str) -> Result<(), QmpError> {
        self.execute("object-del", Some(json!({ "id": id })))
            .map(drop)
    }

    /// `device_add` with the full device description, e.g.
    /// `json!({"driver": "pc-dimm", "id": "dimm1", "memdev": "mem1"})`.
    pub fn device_add(&mut self, device: Value) -> Result<(), QmpError> {
        self.execute("device_add", Some(device)).map(drop)
    }

    /// `device_del`. Only *requests* removal: the guest must cooperate and
    /// completion is the `DEVICE_DELETED` event (see [`Self::wait_event`]).
    pub fn device_del(&mut self, id: &str) -> Result<(), QmpError> {
        self.execute("device_del", Some(json!({ "id": id })))
            .map(drop)
    }

    /// `query-memory-devices`.
    pub fn query_memory_devices(&mut self) -> Result<Vec<MemoryDeviceInfo>, QmpError> {
        let v = self.execute("query-memory-devices", None)?;
        v.as_array()
            .ok_or_else(|| QmpError::Protocol(format!("query-memory-devices: not a list: {v}")))?
            .iter()
            .map(MemoryDeviceInfo::from_value)
            .collect()
    }
}

pub(super) fn parse_reply<T: serde::de::DeserializeOwned>(
    command: &str,
    v: Value,
) -> Result<T, QmpError> {
    serde_json::from_value(v.clone()).map_err(|e| {
        QmpError::Protocol(format!(
            "unexpected reply to {command}: {e}: {}",
            truncate(&v.to_string())
        ))
    })
}
