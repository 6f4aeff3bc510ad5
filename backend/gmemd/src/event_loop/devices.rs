//! The event loop's side of the vhost-user devices: it serves each
//! device's socket (threads of `crate::vhost::server`) and answers their
//! calls to the service, which it polls through an eventfd.

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use epoll::Events;
use log::error;

use super::{DaemonError, EventLoop, Token};
use crate::service::DeviceStarter;
use crate::vhost::{call_channel, CallReceiver, DeviceSpec};

/// What the event loop keeps for the devices.
#[derive(Debug)]
pub(super) struct DeviceCalls {
    receiver: CallReceiver,
}

impl EventLoop {
    /// Serves the VMs' vhost-user devices with sockets in `dir`: the ones
    /// the service has now (recovered), and each DEVICE makes from now on.
    ///
    /// # Errors
    /// [`DaemonError::Setup`].
    pub fn serve_devices(&mut self, dir: PathBuf) -> Result<(), DaemonError> {
        let setup = |what| move |source| DaemonError::Setup { what, source };
        std::fs::create_dir_all(&dir).map_err(setup("device directory"))?;
        let (sender, receiver) = call_channel().map_err(setup("device eventfd"))?;
        self.add(
            receiver.wake_fd().as_raw_fd(),
            Token::Devices,
            Events::EPOLLIN,
        )
        .map_err(setup("epoll_ctl device eventfd"))?;
        let starter_calls = sender.clone();
        self.devices = Some(DeviceCalls { receiver });
        self.service.set_device_dir(dir);
        let specs: Vec<DeviceSpec> = self.service.devices().specs().cloned().collect();
        for spec in &specs {
            let Some(path) = self.service.devices().path(spec.id) else {
                continue;
            };
            if let Err(e) = crate::vhost::server::serve(spec, &path, sender.clone()) {
                error!(
                    "device d{} cannot be served on {}: {e}",
                    spec.id,
                    path.display()
                );
            }
        }
        self.service
            .set_device_starter(DeviceStarter(Box::new(move |spec, path| {
                crate::vhost::server::serve(spec, path, starter_calls.clone())
            })));
        Ok(())
    }

    /// Answers the device threads' calls.
    pub(super) fn answer_device_calls(&mut self) {
        let Some(devices) = &self.devices else {
            return;
        };
        for call in devices.receiver.drain() {
            self.service.device_call(call);
        }
    }
}
