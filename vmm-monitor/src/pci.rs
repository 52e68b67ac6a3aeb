//! Putting virtio-pci functions on the VM's PCI root bus.
//!
//! [`PciDevices`] holds what every function needs from the VM (the PCI
//! root behind the config ports, the MMIO bus, KVM registration, the GSI
//! router, guest RAM) and hands out slots and BAR addresses:
//! - slot: the lowest free one on bus 0 (slot 0 is the host bridge);
//! - BAR0: the next [`BAR_SIZE`]-aligned block of the 32-bit window
//!   [`layout::PCI_MMIO32_START`]..+[`layout::PCI_MMIO32_SIZE`], in order
//!   of creation; the guest may move it later;
//! - INTA: the GSI the DSDT's `_PRT` gives the slot's pin A;
//! - MSI-X: one GSI per vector from [`crate::irq::IrqRouter`] (24 upward).

use std::sync::{Arc, Mutex};

use crate::acpi::{PCI_INTX_GSI_BASE, PCI_INTX_GSI_COUNT};
use crate::bus::Bus;
use crate::devices::pci_host::{PciConfigIo, PciError};
use crate::irq::SharedIrqRouter;
use crate::layout;
use crate::memory::GuestMemory;
use crate::virtio::interrupts::EventRegistrar;
use crate::virtio::pci::{VirtioPciContext, VirtioPciDevice, VirtioPciError};
use crate::virtio::pci_caps::BAR_SIZE;
use crate::virtio::VirtioDevice;

/// Why a device could not be added.
#[derive(Debug, thiserror::Error)]
pub enum PciSetupError {
    /// No slot for it.
    #[error("no PCI slot")]
    Slot(#[from] PciError),
    /// The 32-bit BAR window is full.
    #[error("the PCI MMIO window has no room for another {BAR_SIZE:#x}-byte BAR")]
    WindowFull,
    /// The transport could not be built.
    #[error("cannot create the virtio-pci function")]
    Transport(#[from] VirtioPciError),
}

/// The PCI side of a VM, for adding devices.
///
/// # Invariants
/// - `next_bar` is [`BAR_SIZE`]-aligned and every BAR handed out lies in
///   the 32-bit window below it.
pub struct PciDevices {
    config_io: Arc<Mutex<PciConfigIo>>,
    context: VirtioPciContext,
    next_bar: u64,
}

impl PciDevices {
    /// Devices go on the root bus behind `config_io`, BARs on `mmio`.
    pub fn new(
        config_io: Arc<Mutex<PciConfigIo>>,
        mmio: &Arc<Bus>,
        registrar: Arc<dyn EventRegistrar>,
        router: SharedIrqRouter,
        memory: GuestMemory,
    ) -> Self {
        Self {
            config_io,
            context: VirtioPciContext {
                memory,
                mmio_bus: Arc::downgrade(mmio),
                registrar,
                router,
            },
            next_bar: layout::PCI_MMIO32_START.0.next_multiple_of(BAR_SIZE),
        }
    }

    /// Adds `device` as a virtio-pci function at the lowest free slot and
    /// returns the slot.
    pub fn add_virtio_device(
        &mut self,
        device: Box<dyn VirtioDevice>,
    ) -> Result<u8, PciSetupError> {
        let window_end = layout::PCI_MMIO32_START.0 + layout::PCI_MMIO32_SIZE;
        let bar = self.next_bar;
        if bar + BAR_SIZE > window_end {
            return Err(PciSetupError::WindowFull);
        }
        let mut config_io = self.config_io.lock().unwrap_or_else(|p| p.into_inner());
        let root = config_io.root_mut();
        let slot = root.next_free_slot()?;
        // The _PRT rule of acpi.rs for pin A (pin index 0); below 24, fits a byte.
        let irq_line = (PCI_INTX_GSI_BASE + u32::from(slot) % PCI_INTX_GSI_COUNT) as u8;
        let device_type = device.device_type();
        let function = VirtioPciDevice::new(device, self.context.clone(), bar, irq_line)?;
        root.add_device(slot, function)?;
        self.next_bar = bar + BAR_SIZE;
        log::info!("pci: virtio device type {device_type} at 00:{slot:02x}.0, BAR0 {bar:#x}");
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pci_host::PCI_CONFIG_IO_BASE;
    use crate::exit::VmEvents;
    use crate::irq::IrqRouter;
    use crate::virtio::pci_caps::MSIX_TABLE_OFFSET;
    use crate::virtio::{QueueSet, VirtioDeviceError};
    use kvm_ioctls::Kvm;
    use vm_memory::GuestAddress;

    struct Net;

    impl VirtioDevice for Net {
        fn device_type(&self) -> u32 {
            1
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![256, 256]
        }
        fn features(&self) -> u64 {
            1 << 32
        }
        fn read_config(&self, _: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, _: QueueSet) -> Result<(), VirtioDeviceError> {
            Ok(())
        }
        fn reset(&mut self) -> Result<(), VirtioDeviceError> {
            Ok(())
        }
    }

    /// The real KVM calls: MSI routes, MMIO ioeventfds without datamatch,
    /// irqfds on MSI GSIs. Skipped where /dev/kvm cannot be opened.
    #[test]
    fn pci_add_virtio_device_under_kvm_places_bars_and_routes() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("SKIPPED: no /dev/kvm");
            return;
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let router = IrqRouter::new(vm.clone());
        router.install().unwrap();
        let (events, _rx) = VmEvents::new();
        let config_io = Arc::new(Mutex::new(PciConfigIo::new(events)));
        let mmio = Arc::new(Bus::new());
        let memory = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let router = Arc::new(Mutex::new(router));
        let mut pci = PciDevices::new(config_io.clone(), &mmio, vm.clone(), router.clone(), memory);
        assert_eq!(pci.add_virtio_device(Box::new(Net)).unwrap(), 1);
        assert_eq!(pci.add_virtio_device(Box::new(Net)).unwrap(), 2);
        let bar1 = layout::PCI_MMIO32_START.0 + BAR_SIZE;
        let mut d = [0u8; 2];
        assert!(mmio.read(bar1 + 0x12, &mut d), "second BAR0 decodes");
        assert_eq!(u16::from_le_bytes(d), 2, "num_queues");
        // Enable MSI-X on 00:01.0 and unmask vector 1 with a message: the
        // route goes into KVM and the queue's irqfd is registered.
        let select = |reg: u32| (1u32 << 31) | (1 << 11) | (reg << 2);
        let io = crate::bus::Bus::new();
        io.insert(config_io, PCI_CONFIG_IO_BASE, 8).unwrap();
        io.write(PCI_CONFIG_IO_BASE, &select(0x40 / 4).to_le_bytes());
        io.write(PCI_CONFIG_IO_BASE + 6, &0x8000u16.to_le_bytes());
        let bar0 = layout::PCI_MMIO32_START.0;
        assert!(
            mmio.write(bar0 + 0x16, &0u16.to_le_bytes()),
            "queue_select 0"
        );
        assert!(
            mmio.write(bar0 + 0x1a, &1u16.to_le_bytes()),
            "queue vector 1"
        );
        let entry = bar0 + MSIX_TABLE_OFFSET + 16;
        assert!(mmio.write(entry, &0xfee0_0000u64.to_le_bytes()));
        assert!(mmio.write(entry + 8, &0x31u32.to_le_bytes()));
        assert!(mmio.write(entry + 12, &0u32.to_le_bytes()));
        let r = router.lock().unwrap();
        let gsi = crate::irq::FIRST_MSI_GSI + 1;
        assert_eq!(r.msi(gsi).map(|m| m.data), Some(0x31));
    }
}
