//! The virtio-pci transport of one device (virtio 1.2 §4.1): a PCI function
//! on the root bus whose BAR0 (layout in [`super::pci_caps`]) serves the
//! common configuration, ISR, device configuration, notifications and the
//! MSI-X table.
//!
//! The data path bypasses this code: each queue's notify address is a KVM
//! ioeventfd on the queue's kick eventfd, and each queue's call eventfd is
//! a KVM irqfd on its MSI-X vector's GSI ([`super::interrupts`]). The
//! monitor only sees configuration accesses, and notify writes KVM did not
//! match (another address inside a queue's 4-byte slot), which it forwards
//! to the kick eventfd itself.

use std::sync::{Arc, Mutex, Weak};

use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{Bus, BusDevice, BusError, SharedDevice};
use crate::devices::pci_host::{ConfigSpace, PciDevice};
use crate::irq::SharedIrqRouter;
use crate::memory::GuestMemory;

use super::common_cfg::{CommonAction, CommonConfig, NO_VECTOR};
use super::interrupts::{drain, EventRegistrar, InterruptError, Interrupts, CONFIG_SOURCE};
use super::msix::{Msix, TableChange};
use super::pci_caps::*;
use super::{QueueConfig, QueueSet, VirtioDevice};

/// Why a virtio-pci function could not be created or placed.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// The device has no queues, more than the BAR layout holds, or a
    /// maximum queue size that is not a power of two.
    #[error(
        "device has an unusable queue layout: {0:?} (at most {MAX_QUEUES} power-of-two sizes)"
    )]
    BadQueues(Vec<u16>),
    /// A kick eventfd could not be created.
    #[error("cannot create a kick eventfd")]
    EventFd(#[source] std::io::Error),
    /// Interrupt wiring failed.
    #[error("cannot set up interrupts")]
    Interrupts(#[from] InterruptError),
    /// BAR0 does not fit on the MMIO bus.
    #[error("cannot place BAR0")]
    Bus(#[from] BusError),
    /// The MMIO bus or the function itself is gone (the VM is being torn down).
    #[error("the MMIO bus is gone")]
    BusGone,
}

/// What a virtio-pci function needs from the VM.
#[derive(Clone)]
pub struct VirtioPciContext {
    /// Guest RAM, handed to the device at activation.
    pub memory: GuestMemory,
    /// The MMIO bus BAR0 is served on (weak: the bus holds the function).
    pub mmio_bus: Weak<Bus>,
    /// KVM ioeventfd and irqfd registration.
    pub registrar: Arc<dyn EventRegistrar>,
    /// The VM's GSI routing table.
    pub router: SharedIrqRouter,
}

/// A virtio device behind the PCI transport.
///
/// # Invariants
/// - BAR0 is on the MMIO bus, and each queue's notify address is an
///   ioeventfd, exactly while memory decoding is enabled and the BAR
///   address is valid (`mapped` is then that address).
/// - `device.activate` is called once per DRIVER_OK, and `device.reset`
///   before the next one (virtio 1.2 §2.4, §3.1.1); `started` says which.
/// - Interrupt wiring follows every change of vectors or MSI-X state
///   ([`Interrupts`] invariants).
pub struct VirtioPciDevice {
    device: Box<dyn VirtioDevice>,
    config: ConfigSpace,
    common: CommonConfig,
    msix: Msix,
    interrupts: Interrupts,
    kicks: Vec<EventFd>,
    /// Notify address each kick eventfd is registered on, if it is.
    kick_addresses: Vec<Option<u64>>,
    context: VirtioPciContext,
    this: Weak<Mutex<VirtioPciDevice>>,
    mapped: Option<u64>,
    isr: u8,
    started: bool,
}

impl VirtioPciDevice {
    /// A function for `device` with BAR0 at `bar_address` (aligned to
    /// [`BAR_SIZE`]) and INTA on `irq_line`, already decoding on the MMIO bus.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        context: VirtioPciContext,
        bar_address: u64,
        irq_line: u8,
    ) -> Result<Arc<Mutex<Self>>, VirtioPciError> {
        let sizes = device.queue_max_sizes();
        if sizes.is_empty()
            || sizes.len() > MAX_QUEUES
            || !sizes.iter().all(|s| s.is_power_of_two())
        {
            return Err(VirtioPciError::BadQueues(sizes));
        }
        let vectors = sizes.len() + 1;
        let interrupts = Interrupts::new(
            context.registrar.clone(),
            context.router.clone(),
            vectors,
            vectors,
        )?;
        let kicks = (0..sizes.len())
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(VirtioPciError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        let config = build_config_space(&Identity {
            device_type: device.device_type(),
            num_queues: sizes.len(),
            num_vectors: vectors,
            bar_address,
            irq_line,
        });
        let common = CommonConfig::new(device.features(), &sizes, vectors);
        let this = Arc::new_cyclic(|this| {
            Mutex::new(Self {
                device,
                config,
                common,
                msix: Msix::new(vectors),
                interrupts,
                kick_addresses: vec![None; kicks.len()],
                kicks,
                context,
                this: this.clone(),
                mapped: None,
                isr: 0,
                started: false,
            })
        });
        {
            let mut dev = this.lock().unwrap_or_else(|p| p.into_inner());
            let address = bar0_address(&dev.config);
            dev.map_bar(address)?;
        }
        Ok(this)
    }

    /// Each interrupt source's vector: configuration, then the queues.
    fn source_vectors(&self) -> Vec<Option<u16>> {
        let vector = |v: u16| (v != NO_VECTOR).then_some(v);
        std::iter::once(vector(self.common.config_msix_vector()))
            .chain(self.common.queues().iter().map(|q| vector(q.msix_vector)))
            .collect()
    }

    fn sync_interrupts(&mut self) {
        let vectors = self.source_vectors();
        self.interrupts.sync(&vectors, &mut self.msix);
    }

    /// The notify address of queue `q` with BAR0 at `base`.
    fn notify_address(base: u64, q: usize) -> u64 {
        base + NOTIFY_OFFSET + q as u64 * u64::from(NOTIFY_MULTIPLIER)
    }

    fn map_bar(&mut self, base: u64) -> Result<(), VirtioPciError> {
        let bus = self
            .context
            .mmio_bus
            .upgrade()
            .ok_or(VirtioPciError::BusGone)?;
        let this: SharedDevice = self.this.upgrade().ok_or(VirtioPciError::BusGone)?;
        bus.insert(this, base, BAR_SIZE)?;
        self.mapped = Some(base);
        for (q, kick) in self.kicks.iter().enumerate() {
            let addr = Self::notify_address(base, q);
            match self.context.registrar.add_ioeventfd(kick, addr) {
                Ok(()) => self.kick_addresses[q] = Some(addr),
                // Still correct, only slower: the MMIO handler kicks.
                Err(e) => log::error!("virtio-pci: no ioeventfd at {addr:#x}: {e}"),
            }
        }
        Ok(())
    }

    fn unmap_bar(&mut self) {
        let Some(base) = self.mapped.take() else {
            return;
        };
        if let Some(bus) = self.context.mmio_bus.upgrade() {
            bus.remove(base);
        }
        for (kick, addr) in self.kicks.iter().zip(&mut self.kick_addresses) {
            if let Some(addr) = addr.take() {
                if let Err(e) = self.context.registrar.remove_ioeventfd(kick, addr) {
                    log::error!("virtio-pci: cannot remove the ioeventfd at {addr:#x}: {e}");
                }
            }
        }
    }

    /// Follows the command register and BAR0 after a config write.
    fn remap_bar(&mut self) {
        let decode = self.config.read(REG_COMMAND) & COMMAND_MEMORY != 0;
        let base = bar0_address(&self.config);
        let want = (decode && base.checked_add(BAR_SIZE).is_some()).then_some(base);
        if want == self.mapped {
            return;
        }
        self.unmap_bar();
        if let Some(base) = want {
            if let Err(e) = self.map_bar(base) {
                log::debug!("virtio-pci: BAR0 at {base:#x} not decoded: {e}");
            }
        }
    }

    /// BAR0's address while it decodes.
    pub fn mapped_bar(&self) -> Option<u64> {
        self.mapped
    }

    fn activate(&mut self) {
        let calls = |s: &Self, source: usize, vector: u16| -> std::io::Result<Option<EventFd>> {
            // Without MSI-X the ISR path still needs the device's signals.
            if vector == NO_VECTOR && s.msix.enabled() {
                return Ok(None);
            }
            s.interrupts.call_fd(source).transpose()
        };
        let mut queues = Vec::new();
        let result = (|| -> std::io::Result<QueueSet> {
            for (index, q) in self.common.queues().iter().enumerate() {
                if !q.enabled {
                    continue;
                }
                queues.push(QueueConfig {
                    // At most MAX_QUEUES queues: fits a u16.
                    index: index as u16,
                    size: q.size,
                    desc_table: GuestAddress(q.desc),
                    avail_ring: GuestAddress(q.driver),
                    used_ring: GuestAddress(q.device),
                    kick: self.kicks[index].try_clone()?,
                    call: calls(self, index + 1, q.msix_vector)?,
                });
            }
            Ok(QueueSet {
                memory: self.context.memory.clone(),
                acked_features: self.common.driver_features(),
                queues: std::mem::take(&mut queues),
                config_change: calls(self, CONFIG_SOURCE, self.common.config_msix_vector())?,
            })
        })();
        self.started = true;
        let outcome = match result {
            Ok(set) => self.device.activate(set).map_err(|e| e.to_string()),
            Err(e) => Err(format!("cannot duplicate an eventfd: {e}")),
        };
        if let Err(e) = outcome {
            log::error!("virtio-pci: device activation failed: {e}");
            self.common.set_needs_reset();
            self.isr |= super::interrupts::ISR_CONFIG;
            if let Some(Ok(fd)) = self.interrupts.call_fd(CONFIG_SOURCE) {
                let _ = fd.write(1);
            }
        }
    }

    fn reset(&mut self) {
        if std::mem::take(&mut self.started) {
            if let Err(e) = self.device.reset() {
                log::error!("virtio-pci: device reset failed: {e}");
            }
        }
        self.common.reset();
        self.isr = 0;
        self.sync_interrupts();
        self.interrupts.drain_all();
        for kick in &self.kicks {
            drain(kick);
        }
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        match self.common.write(offset, data) {
            CommonAction::None => {}
            CommonAction::VectorsChanged => self.sync_interrupts(),
            CommonAction::Activate => {
                self.sync_interrupts();
                self.activate();
            }
            CommonAction::Reset => self.reset(),
        }
    }

    /// A read of BAR0 at `offset` (from the MMIO bus or the PCI_CFG window).
    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        let len = data.len() as u64;
        match BarRegion::of(offset, len, self.kicks.len(), self.msix.len()) {
            Some(BarRegion::Common(o)) => self.common.read(o, data),
            Some(BarRegion::Isr) => {
                if !self.msix.enabled() {
                    self.isr |= self.interrupts.collect_isr();
                }
                data.fill(0);
                if let Some(byte) = data.first_mut() {
                    *byte = std::mem::take(&mut self.isr);
                }
            }
            Some(BarRegion::DeviceCfg(o)) => self.device.read_config(o, data),
            Some(BarRegion::Table(o)) => self.msix.read_table(o, data),
            Some(BarRegion::Pba(o)) => {
                let vectors = self.source_vectors();
                self.interrupts.collect_pending(&vectors, &mut self.msix);
                self.msix.read_pba(o, data);
            }
            Some(BarRegion::Notify(_)) | None => {
                log::debug!("virtio-pci: BAR0 {len}-byte read at {offset:#x}");
                data.fill(0);
            }
        }
    }

    /// A write to BAR0 at `offset`.
    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        match BarRegion::of(offset, len, self.kicks.len(), self.msix.len()) {
            Some(BarRegion::Common(o)) => self.write_common(o, data),
            Some(BarRegion::DeviceCfg(o)) => self.device.write_config(o, data),
            Some(BarRegion::Notify(q)) => {
                if let Err(e) = self.kicks[q].write(1) {
                    log::error!("virtio-pci: cannot kick queue {q}: {e}");
                }
            }
            Some(BarRegion::Table(o)) => {
                if let TableChange::Vector(_) = self.msix.write_table(o, data) {
                    self.sync_interrupts();
                }
            }
            Some(BarRegion::Isr | BarRegion::Pba(_)) | None => {
                log::debug!("virtio-pci: BAR0 {len}-byte write at {offset:#x} ignored")
            }
        }
    }

    /// The PCI_CFG window's (offset, length), if it selects a valid BAR0 access.
    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let bar = self.config.read(REG_PCI_CFG_BAR) & 0xff;
        let offset = u64::from(self.config.read(REG_PCI_CFG_OFFSET));
        let length = self.config.read(REG_PCI_CFG_LENGTH);
        let ok = bar == 0
            && matches!(length, 1 | 2 | 4)
            && offset % u64::from(length) == 0
            && offset + u64::from(length) <= BAR_SIZE;
        if !ok {
            log::debug!("virtio-pci: PCI_CFG window bar {bar} {length}@{offset:#x} ignored");
        }
        ok.then_some((offset, length as usize))
    }
}

impl BusDevice for VirtioPciDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.bar_read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.bar_write(offset, data);
    }
}

impl PciDevice for VirtioPciDevice {
    fn read_config_register(&mut self, reg: usize) -> u32 {
        if reg == REG_PCI_CFG_DATA {
            if let Some((offset, length)) = self.pci_cfg_window() {
                let mut bytes = [0u8; 4];
                self.bar_read(offset, &mut bytes[..length]);
                let value = u32::from_le_bytes(bytes);
                self.config.set(REG_PCI_CFG_DATA, value, u32::MAX);
            }
        }
        self.config.read(reg)
    }

    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) {
        self.config.write(reg, offset, data);
        match reg {
            REG_COMMAND | REG_BAR0 | REG_BAR0_HIGH => self.remap_bar(),
            REG_MSIX_CONTROL => {
                // Truncation intended: message control is the upper half.
                let control = (self.config.read(reg) >> 16) as u16;
                self.msix.set_control(
                    control & MSIX_CONTROL_ENABLE != 0,
                    control & MSIX_CONTROL_FUNCTION_MASK != 0,
                );
                self.sync_interrupts();
            }
            REG_PCI_CFG_DATA => {
                if let Some((offset, length)) = self.pci_cfg_window() {
                    let bytes = self.config.read(reg).to_le_bytes();
                    self.bar_write(offset, &bytes[..length]);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "pci_tests.rs"]
mod tests;
