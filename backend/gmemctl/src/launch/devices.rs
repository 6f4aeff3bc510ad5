//! The VM's vhost-user devices: `--disk NAME=SIZE` (a memfd of the VM
//! served by gmemd as a virtio-blk disk, surviving QEMU) and, without
//! disks, a device without a disk (capacity 0) only so QEMU's memory table
//! confirms the bindings (`--no-vhost-device` leaves it out). gmemd
//! serves each on a socket of its own; QEMU reaches it with
//! `reconnect-ms`, so the device comes back after gmemd restarts.

use std::str::FromStr;

use gmem_protocol::wire::{MemoryKind, Name};
use gmem_protocol::{Client, ClientError};
use serde::{Deserialize, Serialize};

/// How often QEMU retries a device socket that went away (gmemd
/// restarting), in milliseconds.
pub const RECONNECT_MS: u32 = 500;

/// A disk of the command line: `NAME=SIZE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskArg {
    /// Its memory file in the VM's namespace.
    pub name: Name,
    /// Bytes, a multiple of 512 (of 4096: it is a memfd).
    pub size: u64,
}

impl FromStr for DiskArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (name, size) = text
            .split_once('=')
            .ok_or_else(|| format!("--disk {text}: expected NAME=SIZE, e.g. scratch=64M"))?;
        let name = Name::new(name).map_err(|e| format!("--disk {text}: bad name: {e}"))?;
        let size = gmemd::size::parse_size(size).map_err(|e| format!("--disk {text}: {e}"))?;
        if size == 0 || size % MemoryKind::Memfd.page_size() != 0 {
            return Err(format!(
                "--disk {text}: the size must be a non-zero multiple of 4 KiB"
            ));
        }
        Ok(DiskArg { name, size })
    }
}

/// A device as the VM's record keeps it, so an upgrade target gets the
/// same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The disk file, if any.
    pub disk: Option<String>,
    /// gmemd's device socket.
    pub path: String,
}

/// Why a device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The disk file could not be made or opened.
    #[error("disk {name}")]
    Disk {
        /// Its name.
        name: Name,
        /// Cause.
        #[source]
        source: ClientError,
    },
    /// The existing file has another size.
    #[error("disk {name} exists with {found} bytes, not the {wanted} asked for")]
    DiskSize {
        /// Its name.
        name: Name,
        /// Its size.
        found: u64,
        /// The size asked for.
        wanted: u64,
    },
    /// gmemd refused the device.
    #[error("gmemd's vhost-user device{}", .disk.as_ref().map(|d| format!(" for disk {d}")).unwrap_or_default())]
    Device {
        /// The disk.
        disk: Option<Name>,
        /// Cause.
        #[source]
        source: ClientError,
    },
}

/// Makes (or reopens, content intact) each disk and asks gmemd for its
/// device; one device without a disk when `bare` and there are no disks.
///
/// # Errors
/// [`DeviceError`].
pub fn set_up(
    lease: &mut Client,
    disks: &[DiskArg],
    bare: bool,
) -> Result<Vec<DeviceRecord>, DeviceError> {
    let mut out = Vec::new();
    for disk in disks {
        let (_fd, info) = lease
            .create_or_open(&disk.name, disk.size, MemoryKind::Memfd)
            .map_err(|source| DeviceError::Disk {
                name: disk.name.clone(),
                source,
            })?;
        if info.size != disk.size {
            return Err(DeviceError::DiskSize {
                name: disk.name.clone(),
                found: info.size,
                wanted: disk.size,
            });
        }
        out.push(device(lease, Some(&disk.name))?);
    }
    if out.is_empty() && bare {
        out.push(device(lease, None)?);
    }
    Ok(out)
}

fn device(lease: &mut Client, disk: Option<&Name>) -> Result<DeviceRecord, DeviceError> {
    let reply = lease
        .device(disk, 1)
        .map_err(|source| DeviceError::Device {
            disk: disk.cloned(),
            source,
        })?;
    log::info!(
        "vhost-user device d{} ({} bytes) on {}",
        reply.id,
        reply.capacity,
        reply.path
    );
    Ok(DeviceRecord {
        disk: disk.map(|d| d.as_str().to_owned()),
        path: reply.path,
    })
}

/// QEMU's options for `devices`: a reconnecting chardev and a
/// `vhost-user-blk-pci` on it, each.
pub fn qemu_args(devices: &[DeviceRecord]) -> Vec<String> {
    let mut args = Vec::new();
    for (i, device) in devices.iter().enumerate() {
        let chardev = format!("gmemd-vu{i}");
        args.extend([
            "-chardev".to_owned(),
            format!(
                "socket,id={chardev},path={},reconnect-ms={RECONNECT_MS}",
                device.path.replace(',', ",,")
            ),
            "-device".to_owned(),
            format!("vhost-user-blk-pci,id=gmemd-disk{i},chardev={chardev},num-queues=1"),
        ]);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_parse_and_bad_ones_say_why() {
        let d: DiskArg = "scratch=64M".parse().unwrap();
        assert_eq!((d.name.as_str(), d.size), ("scratch", 64 << 20));
        for bad in [
            "scratch",
            "=64M",
            "scratch=0",
            "scratch=1000",
            "bad/name=1M",
        ] {
            let err = bad.parse::<DiskArg>().unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn each_device_gets_a_reconnecting_chardev() {
        let args = qemu_args(&[
            DeviceRecord {
                disk: Some("a".into()),
                path: "/run/g,x/d0.sock".into(),
            },
            DeviceRecord {
                disk: None,
                path: "/run/d1.sock".into(),
            },
        ]);
        assert_eq!(
            args,
            [
                "-chardev",
                "socket,id=gmemd-vu0,path=/run/g,,x/d0.sock,reconnect-ms=500",
                "-device",
                "vhost-user-blk-pci,id=gmemd-disk0,chardev=gmemd-vu0,num-queues=1",
                "-chardev",
                "socket,id=gmemd-vu1,path=/run/d1.sock,reconnect-ms=500",
                "-device",
                "vhost-user-blk-pci,id=gmemd-disk1,chardev=gmemd-vu1,num-queues=1",
            ]
        );
    }
}
