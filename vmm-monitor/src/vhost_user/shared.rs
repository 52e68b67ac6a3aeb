//! [`SharedDevice`]: a [`VhostUserDevice`] the PCI transport drives and the
//! device's supervisor can reach too, to hand it a restarted backend
//! ([`VhostUserDevice::reconnect`]). One lock orders the two: a guest's
//! activation or reset and a replay never interleave their requests.

use std::sync::{Arc, Mutex, MutexGuard};

use super::VhostUserDevice;
use crate::virtio::{QueueSet, VirtioDevice, VirtioDeviceError};

/// A vhost-user device shared by the transport and a supervisor.
#[derive(Clone)]
pub struct SharedDevice(Arc<Mutex<VhostUserDevice>>);

impl SharedDevice {
    /// Shares `device`.
    pub fn new(device: VhostUserDevice) -> Self {
        Self(Arc::new(Mutex::new(device)))
    }

    /// The device, for a replay (a poisoned lock still holds a usable
    /// device: its state is only changed by whole requests).
    pub fn lock(&self) -> MutexGuard<'_, VhostUserDevice> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl VirtioDevice for SharedDevice {
    fn device_type(&self) -> u32 {
        self.lock().device_type()
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        self.lock().queue_max_sizes()
    }

    fn features(&self) -> u64 {
        self.lock().features()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.lock().read_config(offset, data)
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.lock().write_config(offset, data)
    }

    fn activate(&mut self, queues: QueueSet) -> Result<(), VirtioDeviceError> {
        self.lock().activate(queues)
    }

    fn reset(&mut self) -> Result<(), VirtioDeviceError> {
        self.lock().reset()
    }
}
