//! Virtio devices as the monitor sees them, behind the virtio-pci transport.
//!
//! The transport (virtio 1.2 §4.1, "Virtio Over PCI Bus") owns what the
//! guest driver programs: feature negotiation, device status, queue
//! addresses and sizes, MSI-X vectors. When the driver sets DRIVER_OK it
//! hands the device a [`QueueSet`]: for each enabled queue its rings, a kick
//! eventfd (a KVM ioeventfd on the queue's notify address) and a call
//! eventfd (a KVM irqfd on the queue's MSI-X route). The device, usually a
//! vhost-user frontend, passes those to a device process, so that the data
//! path never goes through the monitor.
//!
//! Transport files: [`pci`] (the PCI function: config space hooks, BAR0
//! dispatch, BAR moves, activation and reset), [`pci_caps`] (BAR layout and
//! capability list), [`common_cfg`] (feature negotiation, status, queue
//! registers), [`msix`] (MSI-X table and PBA), [`interrupts`] (call
//! eventfds as KVM irqfds on MSI routes, masking).
//!
//! # Invariants
//! - [`VirtioDevice::activate`] is called at most once between resets, and
//!   only with features the device offered and the driver accepted.
//! - After [`VirtioDevice::reset`] returns, the device no longer touches
//!   guest memory or the eventfds it was given.

pub mod common_cfg;
pub mod interrupts;
pub mod msix;
pub mod pci;
pub mod pci_caps;

use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;

/// One queue as the driver configured it.
#[derive(Debug)]
pub struct QueueConfig {
    /// Queue index within the device.
    pub index: u16,
    /// Number of descriptors (a power of two, at most the device's maximum).
    pub size: u16,
    /// Guest address of the descriptor table.
    pub desc_table: GuestAddress,
    /// Guest address of the available (driver) ring.
    pub avail_ring: GuestAddress,
    /// Guest address of the used (device) ring.
    pub used_ring: GuestAddress,
    /// Signalled by KVM when the driver notifies this queue.
    pub kick: EventFd,
    /// Signalling it interrupts the guest on this queue's MSI-X vector; `None`
    /// when the driver gave the queue no vector (it polls).
    pub call: Option<EventFd>,
}

/// What a device is given when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct QueueSet {
    /// Guest RAM (every region backed by the guest RAM memfd).
    pub memory: GuestMemory,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// The enabled queues, by increasing index.
    pub queues: Vec<QueueConfig>,
    /// Signalling it raises the configuration-change interrupt.
    pub config_change: Option<EventFd>,
}

impl QueueSet {
    /// A copy with its own duplicates of the eventfds (to try an
    /// activation again).
    pub fn try_clone(&self) -> std::io::Result<QueueSet> {
        let queues = self
            .queues
            .iter()
            .map(|q| {
                Ok(QueueConfig {
                    index: q.index,
                    size: q.size,
                    desc_table: q.desc_table,
                    avail_ring: q.avail_ring,
                    used_ring: q.used_ring,
                    kick: q.kick.try_clone()?,
                    call: q.call.as_ref().map(EventFd::try_clone).transpose()?,
                })
            })
            .collect::<std::io::Result<_>>()?;
        Ok(QueueSet {
            memory: self.memory.clone(),
            acked_features: self.acked_features,
            queues,
            config_change: self
                .config_change
                .as_ref()
                .map(EventFd::try_clone)
                .transpose()?,
        })
    }
}

/// A device could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum VirtioDeviceError {
    /// The device process or backend refused or failed.
    #[error("{device}: {what}")]
    Backend {
        /// Which device.
        device: String,
        /// What went wrong.
        what: String,
    },
}

/// A virtio device behind the PCI transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (virtio 1.2 §5: 2 = block, 1 = net, 3 = console).
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Feature bits the device offers (VIRTIO_F_VERSION_1 included).
    fn features(&self) -> u64;
    /// Reads device-specific configuration at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device-specific configuration at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device on the queues the driver set up.
    fn activate(&mut self, queues: QueueSet) -> Result<(), VirtioDeviceError>;
    /// Stops the device (driver reset): it gives back the eventfds it held.
    fn reset(&mut self) -> Result<(), VirtioDeviceError>;
}
