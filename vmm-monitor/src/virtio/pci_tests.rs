//! Unit tests of the virtio-pci transport, without KVM: a fake device that
//! records its calls, a fake ioeventfd/irqfd registrar and a recording GSI
//! route installer. Register offsets are spelled out from virtio 1.2
//! §4.1.4.3 here, independently of the implementation.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_irq_routing_entry, KVM_IRQ_ROUTING_MSI};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::bus::Bus;
use crate::irq::{IrqRouter, RouteInstaller};
use crate::virtio::VirtioDeviceError;

const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;
const ACKNOWLEDGE: u8 = 1;
const DRIVER: u8 = 2;
const DRIVER_OK: u8 = 4;
const FEATURES_OK: u8 = 8;
const VERSION_1: u64 = 1 << 32;
const BAR: u64 = 0xc000_0000;
const MAX_SIZES: [u16; 3] = [256, 128, 64];
/// Device-specific features offered: bit 1 and bit 39 (both pages).
const OFFERED: u64 = VERSION_1 | (1 << 1) | (1 << 39);

/// A queue as activated: (index, size, desc, avail, used, has call).
type SeenQueue = (u16, u16, u64, u64, u64, bool);

/// What the fake device saw: per activation (features, queues,
/// config_change present).
#[derive(Default)]
struct Record {
    activations: Vec<(u64, Vec<SeenQueue>, bool)>,
    resets: usize,
    config_writes: Vec<(u64, Vec<u8>)>,
    /// Eventfds of the last activation: kicks and calls by queue index.
    kicks: Vec<EventFd>,
    calls: Vec<Option<EventFd>>,
}

struct FakeDevice(Arc<Mutex<Record>>);

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        2
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        MAX_SIZES.to_vec()
    }
    fn features(&self) -> u64 {
        OFFERED
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = (offset as u8).wrapping_add(i as u8);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.0
            .lock()
            .unwrap()
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(&mut self, set: QueueSet) -> Result<(), VirtioDeviceError> {
        let mut r = self.0.lock().unwrap();
        let queues = set
            .queues
            .iter()
            .map(|q| {
                let (d, a, u) = (q.desc_table.0, q.avail_ring.0, q.used_ring.0);
                (q.index, q.size, d, a, u, q.call.is_some())
            })
            .collect();
        r.activations
            .push((set.acked_features, queues, set.config_change.is_some()));
        r.kicks = set
            .queues
            .iter()
            .map(|q| q.kick.try_clone().unwrap())
            .collect();
        r.calls = set.queues.into_iter().map(|q| q.call).collect();
        Ok(())
    }
    fn reset(&mut self) -> Result<(), VirtioDeviceError> {
        self.0.lock().unwrap().resets += 1;
        Ok(())
    }
}

/// ioeventfds as (fd, address), irqfds as fd → GSI.
#[derive(Default)]
struct FakeRegistrar {
    ioevents: Mutex<BTreeSet<(i32, u64)>>,
    irqfds: Mutex<BTreeMap<i32, u32>>,
}

impl EventRegistrar for FakeRegistrar {
    fn add_ioeventfd(&self, fd: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error> {
        assert!(self.ioevents.lock().unwrap().insert((fd.as_raw_fd(), addr)));
        Ok(())
    }
    fn remove_ioeventfd(&self, fd: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error> {
        assert!(self
            .ioevents
            .lock()
            .unwrap()
            .remove(&(fd.as_raw_fd(), addr)));
        Ok(())
    }
    fn add_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error> {
        let old = self.irqfds.lock().unwrap().insert(fd.as_raw_fd(), gsi);
        assert_eq!(old, None, "KVM refuses an eventfd registered twice");
        Ok(())
    }
    fn remove_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error> {
        assert_eq!(
            self.irqfds.lock().unwrap().remove(&fd.as_raw_fd()),
            Some(gsi)
        );
        Ok(())
    }
}

#[derive(Default)]
struct Installer(Mutex<Vec<Vec<kvm_irq_routing_entry>>>);

impl RouteInstaller for Installer {
    fn install_routes(&self, routes: &[kvm_irq_routing_entry]) -> Result<(), kvm_ioctls::Error> {
        self.0.lock().unwrap().push(routes.to_vec());
        Ok(())
    }
}

struct Harness {
    dev: Arc<Mutex<VirtioPciDevice>>,
    bus: Arc<Bus>,
    registrar: Arc<FakeRegistrar>,
    installer: Arc<Installer>,
    record: Arc<Mutex<Record>>,
}

fn harness() -> Harness {
    let record = Arc::new(Mutex::new(Record::default()));
    let bus = Arc::new(Bus::new());
    let registrar = Arc::new(FakeRegistrar::default());
    let installer = Arc::new(Installer::default());
    let context = VirtioPciContext {
        memory: GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap(),
        mmio_bus: Arc::downgrade(&bus),
        registrar: registrar.clone(),
        router: Arc::new(Mutex::new(IrqRouter::new(installer.clone()))),
    };
    let dev = VirtioPciDevice::new(Box::new(FakeDevice(record.clone())), context, BAR, 17).unwrap();
    Harness {
        dev,
        bus,
        registrar,
        installer,
        record,
    }
}

impl Harness {
    fn cfg(&self, reg: usize) -> u32 {
        self.dev.lock().unwrap().read_config_register(reg)
    }
    fn cfg_byte(&self, offset: usize) -> u8 {
        self.cfg(offset / 4).to_le_bytes()[offset % 4]
    }
    fn cfg_write(&self, reg: usize, value: u32) {
        self.dev
            .lock()
            .unwrap()
            .write_config_register(reg, 0, &value.to_le_bytes());
    }
    fn read(&self, offset: u64, len: usize) -> u64 {
        let mut d = [0u8; 8];
        assert!(
            self.bus.read(BAR + offset, &mut d[..len]),
            "BAR0 not on the bus"
        );
        u64::from_le_bytes(d)
    }
    fn write(&self, offset: u64, value: u64, len: usize) {
        assert!(self.bus.write(BAR + offset, &value.to_le_bytes()[..len]));
    }
    fn status(&self) -> u8 {
        self.read(DEVICE_STATUS, 1) as u8
    }
    fn negotiate(&self, features: u64) {
        self.write(DEVICE_STATUS, 0, 1);
        self.write(DEVICE_STATUS, u64::from(ACKNOWLEDGE | DRIVER), 1);
        for page in 0..2 {
            self.write(DRIVER_FEATURE_SELECT, page, 4);
            self.write(DRIVER_FEATURE, (features >> (32 * page)) & 0xffff_ffff, 4);
        }
        self.write(
            DEVICE_STATUS,
            u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK),
            1,
        );
    }
    fn setup_queue(&self, q: u16, size: u16, base: u64, vector: u16) {
        self.write(QUEUE_SELECT, q.into(), 2);
        self.write(QUEUE_SIZE, size.into(), 2);
        self.write(QUEUE_MSIX_VECTOR, vector.into(), 2);
        self.write(QUEUE_DESC, base, 8);
        self.write(QUEUE_DRIVER, base + 0x1000, 4);
        self.write(QUEUE_DRIVER + 4, 0, 4);
        self.write(QUEUE_DEVICE, base + 0x2000, 8);
        self.write(QUEUE_ENABLE, 1, 2);
    }
    fn driver_ok(&self) {
        let s = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
        self.write(DEVICE_STATUS, s.into(), 1);
    }
    fn msix_control(&self, enable: bool, function_mask: bool) {
        let reg = self.cfg(REG_MSIX_CONTROL);
        let control = (u32::from(enable) << 15) | (u32::from(function_mask) << 14);
        self.cfg_write(REG_MSIX_CONTROL, (reg & 0xffff) | (control << 16));
    }
    fn program_vector(&self, vector: u64, address: u64, data: u32, masked: bool) {
        let entry = MSIX_TABLE_OFFSET + vector * MSIX_ENTRY_SIZE;
        self.write(entry, address, 8);
        self.write(entry + 8, data.into(), 4);
        self.write(entry + 12, masked.into(), 4);
    }
    fn gsi(&self, vector: usize) -> u32 {
        self.dev.lock().unwrap().interrupts.gsi(vector).unwrap()
    }
    fn msi_route(&self, gsi: u32) -> Option<(u32, u32)> {
        let tables = self.installer.0.lock().unwrap();
        let r = tables
            .last()?
            .iter()
            .find(|r| r.gsi == gsi && r.type_ == KVM_IRQ_ROUTING_MSI)
            .copied()?;
        // SAFETY: the route is of type MSI, so `msi` is the live member.
        Some(unsafe { (r.u.msi.address_lo, r.u.msi.data) })
    }
}

#[test]
fn virtio_pci_identity_and_capability_chain() {
    let h = harness();
    assert_eq!(
        h.cfg(0),
        0x1042_1af4,
        "vendor 0x1af4, device 0x1040 + block"
    );
    assert_eq!(h.cfg(2), 0x0180_0001, "class 01/80/00, revision 1");
    assert_eq!(h.cfg(11), 0x1100_1af4);
    assert_eq!(h.cfg(15) & 0xffff, 0x0111, "INTA, line 17");
    assert_ne!(h.cfg(1) & (1 << 20), 0, "status: capability list");
    let mut found = BTreeMap::new();
    let mut at = h.cfg_byte(0x34) as usize;
    for _ in 0..48 {
        if at == 0 {
            break;
        }
        assert_eq!(at % 4, 0);
        let id = h.cfg_byte(at);
        if id == 0x11 {
            let control = h.cfg(at / 4) >> 16;
            found.insert(
                0x11u8,
                (control & 0x7ff, h.cfg(at / 4 + 1), h.cfg(at / 4 + 2)),
            );
        } else {
            assert_eq!(id, 0x09, "vendor capability at {at:#x}");
            let cfg_type = h.cfg_byte(at + 3);
            assert_eq!(h.cfg_byte(at + 4), 0, "BAR0");
            let len = h.cfg_byte(at + 2);
            assert_eq!(len, if matches!(cfg_type, 2 | 5) { 20 } else { 16 });
            found.insert(cfg_type, (h.cfg(at / 4 + 2), h.cfg(at / 4 + 3), 0));
            if cfg_type == 2 {
                assert_eq!(h.cfg(at / 4 + 4), 4, "notify_off_multiplier");
            }
        }
        at = h.cfg_byte(at + 1) as usize;
    }
    assert_eq!(at, 0, "chain ends");
    assert_eq!(found[&1], (0x0000, 0x38, 0), "common");
    assert_eq!(found[&2], (0x3000, 12, 0), "notify: three queues");
    assert_eq!(found[&3], (0x1000, 1, 0), "ISR");
    assert_eq!(found[&4], (0x2000, 0x1000, 0), "device");
    assert!(found.contains_key(&5), "PCI_CFG");
    assert_eq!(
        found[&0x11],
        (3, 0x4000, 0x6000),
        "4 vectors, table and PBA in BAR0"
    );
}

#[test]
fn virtio_pci_features_negotiate_over_both_pages() {
    let h = harness();
    h.write(DEVICE_FEATURE_SELECT, 0, 4);
    assert_eq!(h.read(DEVICE_FEATURE, 4), 1 << 1);
    h.write(DEVICE_FEATURE_SELECT, 1, 4);
    assert_eq!(h.read(DEVICE_FEATURE, 4), 1 | (1 << 7));
    h.write(DEVICE_FEATURE_SELECT, 2, 4);
    assert_eq!(h.read(DEVICE_FEATURE, 4), 0);
    let wanted = VERSION_1 | (1 << 39);
    h.negotiate(wanted);
    assert_eq!(h.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    h.write(DRIVER_FEATURE_SELECT, 1, 4);
    assert_eq!(h.read(DRIVER_FEATURE, 4), 0x81);
    h.write(DRIVER_FEATURE, 0, 4);
    assert_eq!(h.read(DRIVER_FEATURE, 4), 0x81, "frozen after FEATURES_OK");
    assert_eq!(h.read(NUM_QUEUES, 2), 3);
}

#[test]
fn virtio_pci_features_ok_refused_for_unoffered_or_legacy() {
    let h = harness();
    h.negotiate(VERSION_1 | (1 << 2));
    assert_eq!(h.status(), ACKNOWLEDGE | DRIVER, "bit 2 was not offered");
    h.negotiate(1 << 1);
    assert_eq!(h.status(), ACKNOWLEDGE | DRIVER, "VERSION_1 missing");
    h.driver_ok();
    assert_eq!(h.status() & DRIVER_OK, 0);
    assert!(h.record.lock().unwrap().activations.is_empty());
}

#[test]
fn virtio_pci_driver_ok_activates_with_configured_queues() {
    let h = harness();
    h.negotiate(OFFERED);
    h.write(CONFIG_MSIX_VECTOR, 0, 2);
    h.setup_queue(0, 128, 0x10000, 1);
    h.write(QUEUE_SELECT, 1, 2);
    h.write(QUEUE_SIZE, 100, 2);
    assert_eq!(h.read(QUEUE_SIZE, 2), 128, "not a power of two: refused");
    h.write(QUEUE_SIZE, 256, 2);
    assert_eq!(h.read(QUEUE_SIZE, 2), 128, "above the maximum: refused");
    h.setup_queue(2, 64, 0x20000, 0xffff);
    h.write(QUEUE_SELECT, 2, 2);
    assert_eq!(h.read(QUEUE_NOTIFY_OFF, 2), 2);
    h.write(QUEUE_SIZE, 32, 2);
    assert_eq!(h.read(QUEUE_SIZE, 2), 64, "enabled queue is frozen");
    assert_eq!(h.read(QUEUE_DRIVER, 8), 0x21000);
    h.driver_ok();
    let r = h.record.lock().unwrap();
    assert_eq!(r.activations.len(), 1);
    let (features, queues, config_change) = &r.activations[0];
    assert_eq!(*features, OFFERED);
    assert_eq!(
        queues,
        &vec![
            (0, 128, 0x10000, 0x11000, 0x12000, true),
            (2, 64, 0x20000, 0x21000, 0x22000, true),
        ]
    );
    assert!(*config_change);
}

#[test]
fn virtio_pci_reset_then_reinit_activates_again() {
    let h = harness();
    h.negotiate(OFFERED);
    h.setup_queue(0, 256, 0x10000, 0xffff);
    h.driver_ok();
    h.write(DEVICE_STATUS, 0, 1);
    assert_eq!(h.status(), 0);
    assert_eq!(h.record.lock().unwrap().resets, 1);
    h.write(QUEUE_SELECT, 0, 2);
    assert_eq!(h.read(QUEUE_ENABLE, 2), 0);
    assert_eq!(h.read(QUEUE_SIZE, 2), 256);
    assert_eq!(h.read(QUEUE_DESC, 8), 0);
    h.negotiate(VERSION_1);
    h.setup_queue(1, 32, 0x30000, 0xffff);
    h.driver_ok();
    let r = h.record.lock().unwrap();
    assert_eq!(r.activations.len(), 2);
    assert_eq!(r.activations[1].0, VERSION_1);
    // MSI-X is off: the queue still gets a call eventfd, for the ISR path.
    assert_eq!(
        r.activations[1].1,
        vec![(1, 32, 0x30000, 0x31000, 0x32000, true)]
    );
}

#[test]
fn virtio_pci_msix_table_write_updates_route_and_irqfd() {
    let h = harness();
    h.msix_control(true, false);
    h.negotiate(OFFERED);
    h.setup_queue(0, 128, 0x10000, 1);
    let gsi = h.gsi(1);
    assert!(gsi >= 24);
    h.program_vector(1, 0xfee0_0000, 0x31, false);
    assert_eq!(h.msi_route(gsi), Some((0xfee0_0000, 0x31)));
    let call_fd = h.dev.lock().unwrap().interrupts.registered(1);
    assert_eq!(
        call_fd,
        Some(gsi),
        "queue 0 (source 1) is an irqfd on vector 1's GSI"
    );
    h.write(MSIX_TABLE_OFFSET + MSIX_ENTRY_SIZE + 8, 0x32, 4);
    assert_eq!(h.msi_route(gsi), Some((0xfee0_0000, 0x32)));
    assert_eq!(h.read(MSIX_TABLE_OFFSET + MSIX_ENTRY_SIZE + 8, 4), 0x32);
    h.write(QUEUE_SELECT, 1, 2);
    h.write(QUEUE_MSIX_VECTOR, 9, 2);
    assert_eq!(
        h.read(QUEUE_MSIX_VECTOR, 2),
        0xffff,
        "vector beyond the table"
    );
}

#[test]
fn virtio_pci_masked_vector_holds_interrupt_until_unmask() {
    let h = harness();
    h.msix_control(true, false);
    h.negotiate(OFFERED);
    h.setup_queue(0, 128, 0x10000, 1);
    h.program_vector(1, 0xfee0_0000, 0x31, false);
    h.driver_ok();
    let call = h.record.lock().unwrap().calls[0].take().unwrap();
    assert_eq!(h.registrar.irqfds.lock().unwrap().len(), 1);
    // Mask the vector: the irqfd goes, the device's signal is held.
    h.write(MSIX_TABLE_OFFSET + MSIX_ENTRY_SIZE + 12, 1, 4);
    assert!(h.registrar.irqfds.lock().unwrap().is_empty());
    call.write(1).unwrap();
    assert_eq!(
        h.read(MSIX_PBA_OFFSET, 8),
        1 << 1,
        "pending bit of vector 1"
    );
    // Unmask: irqfd back, pending consumed, one signal for KVM to deliver.
    h.write(MSIX_TABLE_OFFSET + MSIX_ENTRY_SIZE + 12, 0, 4);
    assert_eq!(h.registrar.irqfds.lock().unwrap().len(), 1);
    assert_eq!(h.read(MSIX_PBA_OFFSET, 8), 0);
    assert_eq!(call.read().unwrap(), 1);
    // The function mask holds interrupts the same way.
    h.msix_control(true, true);
    assert!(h.registrar.irqfds.lock().unwrap().is_empty());
    call.write(1).unwrap();
    h.msix_control(true, false);
    assert_eq!(call.read().unwrap(), 1, "released on function unmask");
}

#[test]
fn virtio_pci_bar_sizing_reads_size_mask() {
    let h = harness();
    assert_eq!(h.cfg(REG_BAR0), 0xc000_0004);
    h.cfg_write(REG_COMMAND, 0);
    h.cfg_write(REG_BAR0, u32::MAX);
    h.cfg_write(REG_BAR0_HIGH, u32::MAX);
    assert_eq!(h.cfg(REG_BAR0), !(BAR_SIZE as u32 - 1) | 4);
    assert_eq!(h.cfg(REG_BAR0_HIGH), u32::MAX);
    for reg in 6..10 {
        h.cfg_write(reg, u32::MAX);
        assert_eq!(h.cfg(reg), 0, "BAR{} not implemented", reg - 4);
    }
    assert_eq!(h.dev.lock().unwrap().mapped_bar(), None, "decode off");
}

#[test]
fn virtio_pci_bar_move_updates_bus_and_ioeventfds() {
    let h = harness();
    let new = 0xd000_0000u64;
    let ioevents = |h: &Harness| -> Vec<u64> {
        h.registrar
            .ioevents
            .lock()
            .unwrap()
            .iter()
            .map(|(_, a)| *a)
            .collect()
    };
    assert_eq!(ioevents(&h), vec![BAR + 0x3000, BAR + 0x3004, BAR + 0x3008]);
    h.cfg_write(REG_COMMAND, 0);
    let mut d = [0u8; 2];
    assert!(!h.bus.read(BAR + NUM_QUEUES, &mut d), "memory decode off");
    assert!(ioevents(&h).is_empty());
    h.cfg_write(REG_BAR0, new as u32);
    h.cfg_write(REG_BAR0_HIGH, 1);
    h.cfg_write(REG_COMMAND, COMMAND_MEMORY);
    let base = (1 << 32) | new;
    assert!(h.bus.read(base + NUM_QUEUES, &mut d));
    assert_eq!(u16::from_le_bytes(d), 3);
    assert!(!h.bus.read(BAR + NUM_QUEUES, &mut d));
    assert_eq!(
        ioevents(&h),
        vec![base + 0x3000, base + 0x3004, base + 0x3008]
    );
    // Moved while decoding: follows at once.
    h.cfg_write(REG_BAR0_HIGH, 0);
    assert!(h.bus.read(new + NUM_QUEUES, &mut d));
    assert_eq!(h.dev.lock().unwrap().mapped_bar(), Some(new));
}

#[test]
fn virtio_pci_notify_write_missed_by_kvm_kicks_queue() {
    let h = harness();
    h.negotiate(OFFERED);
    h.setup_queue(1, 128, 0x10000, 0xffff);
    h.driver_ok();
    let kick = h.record.lock().unwrap().kicks.remove(0);
    h.write(NOTIFY_OFFSET + 4 + 2, 1, 1);
    assert_eq!(kick.read().unwrap(), 1);
    h.write(NOTIFY_OFFSET + 4 * 3, 3, 2);
}

#[test]
fn virtio_pci_device_config_and_pci_cfg_window() {
    let h = harness();
    assert_eq!(h.read(DEVICE_CFG_OFFSET + 8, 4), 0x0b0a_0908);
    h.write(DEVICE_CFG_OFFSET + 0x14, 0xab, 1);
    assert_eq!(
        h.record.lock().unwrap().config_writes,
        vec![(0x14, vec![0xab])]
    );
    // Through config space: num_queues, then a status write.
    h.cfg_write(REG_PCI_CFG_BAR, 0);
    h.cfg_write(REG_PCI_CFG_OFFSET, NUM_QUEUES as u32);
    h.cfg_write(REG_PCI_CFG_LENGTH, 2);
    assert_eq!(h.cfg(REG_PCI_CFG_DATA) & 0xffff, 3);
    h.cfg_write(REG_PCI_CFG_OFFSET, DEVICE_STATUS as u32);
    h.cfg_write(REG_PCI_CFG_LENGTH, 1);
    h.cfg_write(REG_PCI_CFG_DATA, u32::from(ACKNOWLEDGE));
    assert_eq!(h.status(), ACKNOWLEDGE);
    h.cfg_write(REG_PCI_CFG_OFFSET, 1);
    h.cfg_write(REG_PCI_CFG_LENGTH, 2);
    h.cfg_write(REG_PCI_CFG_DATA, 0);
    assert_eq!(h.status(), ACKNOWLEDGE, "misaligned window ignored");
}

#[test]
fn virtio_pci_isr_is_read_to_clear_without_msix() {
    let h = harness();
    h.negotiate(OFFERED);
    h.setup_queue(0, 128, 0x10000, 0xffff);
    h.driver_ok();
    let call = h.record.lock().unwrap().calls[0].take();
    let call = call.expect("INTx mode still hands out call eventfds");
    assert_eq!(h.read(ISR_OFFSET, 1), 0);
    call.write(1).unwrap();
    assert_eq!(h.read(ISR_OFFSET, 1), 1);
    assert_eq!(h.read(ISR_OFFSET, 1), 0, "read clears");
}

#[test]
fn virtio_pci_guest_mistakes_are_ignored() {
    let h = harness();
    h.write(0x3c, 1, 4);
    h.write(DEVICE_STATUS, 0x1234, 2);
    h.write(MSIX_TABLE_OFFSET + 2, 1, 2);
    h.write(MSIX_PBA_OFFSET, 1, 8);
    h.write(0x7ff8, 1, 8);
    h.write(QUEUE_SELECT, 40, 2);
    h.write(QUEUE_ENABLE, 1, 2);
    assert_eq!(h.read(QUEUE_SIZE, 2), 0, "absent queue");
    assert_eq!(h.read(0x7ff8, 8), 0);
    assert_eq!(h.status(), 0);
}
