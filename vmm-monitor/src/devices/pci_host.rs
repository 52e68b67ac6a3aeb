//! PCI configuration mechanism #1 (ports 0xCF8..=0xCFF), the root bus
//! behind it, the host bridge at 00:00.0, and the reset control register
//! at 0xCF9.
//!
//! ```text
//! 0xCF8  CONFIG_ADDRESS  32-bit: bit 31 enable, 23:16 bus, 15:11 device,
//!                        10:8 function, 7:2 register
//! 0xCF9  reset control   byte accesses only (a byte access to 0xCF8..0xCFB
//!                        other than this one is ignored)
//! 0xCFC  CONFIG_DATA     1, 2 or 4 bytes at 0xCFC..=0xCFF, into the dword
//!                        CONFIG_ADDRESS selects
//! ```
//!
//! Only bus 0 and function 0 of each slot exist; every other address, and
//! CONFIG_DATA with the enable bit clear, reads all ones and ignores writes.
//! Devices sit behind the small [`PciDevice`] trait, one per slot of a
//! [`PciRoot`], so that virtio-pci devices can be added next to the host
//! bridge.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::exit::{VmEvent, VmEvents};

/// CONFIG_ADDRESS port, and the first port of the device.
pub const PCI_CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// CONFIG_DATA port (its four bytes are 0xCFC..=0xCFF).
pub const PCI_CONFIG_DATA_PORT: u16 = 0xcfc;
/// Ports the device claims, CONFIG_ADDRESS through the end of CONFIG_DATA.
pub const PCI_CONFIG_LEN: u16 = 8;
/// [`PCI_CONFIG_ADDRESS_PORT`] as a bus address.
pub const PCI_CONFIG_IO_BASE: u64 = PCI_CONFIG_ADDRESS_PORT as u64;
/// [`PCI_CONFIG_LEN`] as a bus length.
pub const PCI_CONFIG_IO_LEN: u64 = PCI_CONFIG_LEN as u64;
/// The reset control register (the FADT's RESET_REG).
pub const RESET_CONTROL_PORT: u16 = 0xcf9;
/// What the FADT tells the guest to write to [`RESET_CONTROL_PORT`]:
/// SYS_RST | RST_CPU, a full reset.
pub const RESET_VALUE: u8 = 0x06;
/// Reset control bit that starts the reset (RST_CPU).
const RESET_CONTROL_RST_CPU: u8 = 0x04;

/// Slots on bus 0 (device numbers 0..=31).
pub const PCI_SLOTS: u8 = 32;
/// Config space of a conventional PCI function, in 32-bit registers.
pub const CONFIG_REGS: usize = 64;

const OFF_RESET_CONTROL: u64 = (RESET_CONTROL_PORT - PCI_CONFIG_ADDRESS_PORT) as u64;
const OFF_DATA: u64 = (PCI_CONFIG_DATA_PORT - PCI_CONFIG_ADDRESS_PORT) as u64;
/// CONFIG_ADDRESS bits that hold state: enable, bus, device, function,
/// register (bits 30:24 are reserved, bits 1:0 read as 0).
const ADDRESS_MASK: u32 = 0x80ff_fffc;
const ADDRESS_ENABLE: u32 = 1 << 31;
const ADDRESS_BUS_SHIFT: u32 = 16;
const ADDRESS_DEVICE_SHIFT: u32 = 11;
const ADDRESS_DEVICE_MASK: u32 = 0x1f;
const ADDRESS_FUNCTION_SHIFT: u32 = 8;
const ADDRESS_FUNCTION_MASK: u32 = 0x7;
const ADDRESS_REGISTER_SHIFT: u32 = 2;
const ADDRESS_REGISTER_MASK: u32 = 0x3f;

/// Vendor ID of the host bridge: Intel.
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
/// Device ID of the host bridge (an Intel host bridge ID guests know).
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0d57;
/// Class code of a host bridge: base class 06 (bridge), subclass 00 (host).
pub const HOST_BRIDGE_CLASS: u32 = 0x06_0000;
/// Class code sits in bits 31:8 of config register 2, above the revision.
const CLASS_SHIFT: u32 = 8;
// Registers (32-bit indices) of a type-0 configuration header (PCI 3.0
// §6.1), shared by every PCI function the monitor emulates.
/// Config register holding the command (15:0) and status (31:16) fields.
pub const REG_COMMAND: usize = 1;
/// Config register holding the class code and revision.
pub const REG_CLASS: usize = 2;
/// Config register holding cache line size, latency, header type and BIST.
pub const REG_HEADER: usize = 3;
/// Config register of BAR0 (BAR0's low half for a 64-bit BAR).
pub const REG_BAR0: usize = 4;
/// Config register of BAR1 (BAR0's high half for a 64-bit BAR).
pub const REG_BAR0_HIGH: usize = 5;
/// Config register holding the subsystem vendor (15:0) and ID (31:16).
pub const REG_SUBSYSTEM: usize = 11;
/// Config register holding the capability list pointer (7:0).
pub const REG_CAP_POINTER: usize = 13;
/// Config register holding the interrupt line (7:0) and pin (15:8).
pub const REG_INTERRUPT: usize = 15;
/// Command register bits a host bridge lets the guest set: I/O, memory,
/// bus master.
const COMMAND_WRITABLE: u32 = 0x0007;
/// The interrupt line byte is scratch space for the guest.
const INTERRUPT_LINE_WRITABLE: u32 = 0xff;

/// A device function on the PCI bus, as its configuration space.
///
/// Accesses come as whole 32-bit registers: `reg` is the dword index
/// (0..[`CONFIG_REGS`]); a write names the byte `offset` inside the register
/// (0..=3) and carries 1, 2 or 4 bytes that fit inside it.
pub trait PciDevice: Send {
    /// Reads config register `reg`.
    fn read_config_register(&mut self, reg: usize) -> u32;
    /// Writes `data` at byte `offset` of config register `reg`.
    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]);
}

/// A device as the root bus holds it (shared with whoever serves its BARs).
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Errors while populating the root bus.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// The slot number is beyond the 32 slots of a bus.
    #[error("PCI slot {0} does not exist (slots are 0..=31)")]
    BadSlot(u8),
    /// Another device already sits in the slot.
    #[error("PCI slot {0} is already taken")]
    SlotTaken(u8),
    /// All 32 slots are taken.
    #[error("no free PCI slot on bus 0")]
    BusFull,
}

/// A type-0 configuration space with a per-register mask of the bits the
/// guest may change.
///
/// # Invariants
/// - Bits outside `writable[reg]` only change through [`ConfigSpace::set`].
pub struct ConfigSpace {
    regs: [u32; CONFIG_REGS],
    writable: [u32; CONFIG_REGS],
}

impl Default for ConfigSpace {
    fn default() -> Self {
        Self {
            regs: [0; CONFIG_REGS],
            writable: [0; CONFIG_REGS],
        }
    }
}

impl ConfigSpace {
    /// Sets register `reg` to `value` and the mask of guest-writable bits.
    /// Out-of-range registers are a monitor bug and are ignored.
    pub fn set(&mut self, reg: usize, value: u32, writable: u32) {
        if reg < CONFIG_REGS {
            self.regs[reg] = value;
            self.writable[reg] = writable;
        }
    }

    /// Register `reg`; all ones beyond the config space.
    pub fn read(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(u32::MAX)
    }

    /// A guest write of `data` at byte `offset` of register `reg`, limited
    /// to the writable bits; writes that do not fit the register are ignored.
    pub fn write(&mut self, reg: usize, offset: u64, data: &[u8]) {
        let Some((value, mask)) = merge_bytes(offset, data) else {
            log::debug!(
                "pci: config write of {} bytes at byte {offset} ignored",
                data.len()
            );
            return;
        };
        if reg < CONFIG_REGS {
            let mask = mask & self.writable[reg];
            self.regs[reg] = (self.regs[reg] & !mask) | (value & mask);
        }
    }
}

/// `data` placed at byte `offset` of a dword: (value, mask of the bytes);
/// None unless it is a 1-, 2- or 4-byte access inside the dword.
fn merge_bytes(offset: u64, data: &[u8]) -> Option<(u32, u32)> {
    let range = access_range(offset, data.len())?;
    let mut value = [0u8; 4];
    let mut mask = [0u8; 4];
    value[range.clone()].copy_from_slice(data);
    mask[range].fill(0xff);
    Some((u32::from_le_bytes(value), u32::from_le_bytes(mask)))
}

/// The bytes of a dword a `len`-byte access at `offset` covers, if it is a
/// valid config access (1, 2 or 4 bytes, inside the dword).
fn access_range(offset: u64, len: usize) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(len)?;
    (matches!(len, 1 | 2 | 4) && end <= 4).then_some(start..end)
}

/// The host bridge at 00:00.0: identity registers only, no BARs.
pub struct HostBridge {
    config: ConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBridge {
    /// The host bridge's config space.
    pub fn new() -> Self {
        let mut config = ConfigSpace::default();
        let id = (u32::from(HOST_BRIDGE_DEVICE_ID) << 16) | u32::from(HOST_BRIDGE_VENDOR_ID);
        config.set(0, id, 0);
        config.set(REG_COMMAND, 0, COMMAND_WRITABLE);
        config.set(REG_CLASS, HOST_BRIDGE_CLASS << CLASS_SHIFT, 0);
        // Register 3: header type 0, single function; the rest stays 0.
        config.set(REG_INTERRUPT, 0, INTERRUPT_LINE_WRITABLE);
        Self { config }
    }
}

impl PciDevice for HostBridge {
    fn read_config_register(&mut self, reg: usize) -> u32 {
        self.config.read(reg)
    }

    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) {
        self.config.write(reg, offset, data);
    }
}

/// Bus 0 and the devices on it, by slot; function 0 only.
pub struct PciRoot {
    slots: BTreeMap<u8, SharedPciDevice>,
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciRoot {
    /// A bus with the host bridge in slot 0.
    pub fn new() -> Self {
        let mut slots: BTreeMap<u8, SharedPciDevice> = BTreeMap::new();
        slots.insert(0, Arc::new(Mutex::new(HostBridge::new())));
        Self { slots }
    }

    /// Puts `device` in `slot`.
    pub fn add_device(&mut self, slot: u8, device: SharedPciDevice) -> Result<(), PciError> {
        if slot >= PCI_SLOTS {
            return Err(PciError::BadSlot(slot));
        }
        if self.slots.contains_key(&slot) {
            return Err(PciError::SlotTaken(slot));
        }
        self.slots.insert(slot, device);
        Ok(())
    }

    /// The lowest free slot.
    pub fn next_free_slot(&self) -> Result<u8, PciError> {
        (0..PCI_SLOTS)
            .find(|s| !self.slots.contains_key(s))
            .ok_or(PciError::BusFull)
    }

    fn device(&self, bus: u32, slot: u32, function: u32) -> Option<&SharedPciDevice> {
        if bus != 0 || function != 0 {
            return None;
        }
        self.slots.get(&u8::try_from(slot).ok()?)
    }

    /// Reads config register `reg` of bus/slot/function; all ones if absent.
    pub fn read(&self, bus: u32, slot: u32, function: u32, reg: usize) -> u32 {
        match self.device(bus, slot, function) {
            Some(dev) => lock(dev).read_config_register(reg),
            None => u32::MAX,
        }
    }

    /// Writes config register `reg` of bus/slot/function; ignored if absent.
    pub fn write(&self, bus: u32, slot: u32, function: u32, reg: usize, offset: u64, data: &[u8]) {
        if let Some(dev) = self.device(bus, slot, function) {
            lock(dev).write_config_register(reg, offset, data);
        }
    }
}

fn lock(dev: &SharedPciDevice) -> std::sync::MutexGuard<'_, dyn PciDevice + 'static> {
    // A panic under the lock has already stopped the VM; keep serving.
    dev.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The port-I/O device at 0xCF8..0xD00: config mechanism #1 and reset control.
///
/// # Invariants
/// - `address` only holds bits of [`ADDRESS_MASK`].
pub struct PciConfigIo {
    root: PciRoot,
    address: u32,
    reset_control: u8,
    events: VmEvents,
}

impl PciConfigIo {
    /// Config ports over a bus with just the host bridge.
    pub fn new(events: VmEvents) -> Self {
        Self::with_root(PciRoot::new(), events)
    }

    /// Config ports over `root`, reporting resets through `events`.
    pub fn with_root(root: PciRoot, events: VmEvents) -> Self {
        Self {
            root,
            address: 0,
            reset_control: 0,
            events,
        }
    }

    /// The root bus, to add devices before the VM runs.
    pub fn root_mut(&mut self) -> &mut PciRoot {
        &mut self.root
    }

    /// (bus, slot, function, register) CONFIG_ADDRESS selects, if enabled.
    fn target(&self) -> Option<(u32, u32, u32, usize)> {
        if self.address & ADDRESS_ENABLE == 0 {
            return None;
        }
        let a = self.address;
        Some((
            (a >> ADDRESS_BUS_SHIFT) & 0xff,
            (a >> ADDRESS_DEVICE_SHIFT) & ADDRESS_DEVICE_MASK,
            (a >> ADDRESS_FUNCTION_SHIFT) & ADDRESS_FUNCTION_MASK,
            ((a >> ADDRESS_REGISTER_SHIFT) & ADDRESS_REGISTER_MASK) as usize,
        ))
    }

    fn read_data(&self, byte: u64, data: &mut [u8]) {
        let value = match self.target() {
            Some((bus, slot, function, reg)) => self.root.read(bus, slot, function, reg),
            None => u32::MAX,
        };
        match access_range(byte, data.len()) {
            Some(range) => data.copy_from_slice(&value.to_le_bytes()[range]),
            None => {
                log::debug!(
                    "pci: {}-byte CONFIG_DATA read at byte {byte} ignored",
                    data.len()
                );
                data.fill(0xff);
            }
        }
    }

    fn write_data(&self, byte: u64, data: &[u8]) {
        match self.target() {
            Some((bus, slot, function, reg)) => {
                self.root.write(bus, slot, function, reg, byte, data)
            }
            None => log::debug!("pci: CONFIG_DATA write with CONFIG_ADDRESS disabled ignored"),
        }
    }

    fn write_reset_control(&mut self, value: u8) {
        self.reset_control = value;
        if value & RESET_CONTROL_RST_CPU != 0 {
            log::info!("pci: guest wrote {value:#04x} to the reset control register, rebooting");
            self.events.send(VmEvent::Reboot);
        }
    }
}

impl crate::bus::BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.address.to_le_bytes()),
            (OFF_RESET_CONTROL, 1) => data[0] = self.reset_control,
            (OFF_DATA.., _) => self.read_data(offset - OFF_DATA, data),
            _ => {
                log::debug!("pci: {}-byte read at offset {offset} ignored", data.len());
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, [b0, b1, b2, b3]) => {
                self.address = u32::from_le_bytes([*b0, *b1, *b2, *b3]) & ADDRESS_MASK;
            }
            (OFF_RESET_CONTROL, [value]) => self.write_reset_control(*value),
            (OFF_DATA.., _) => self.write_data(offset - OFF_DATA, data),
            _ => log::debug!("pci: {}-byte write at offset {offset} ignored", data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;

    fn device() -> (PciConfigIo, crossbeam_channel::Receiver<VmEvent>) {
        let (events, rx) = VmEvents::new();
        (PciConfigIo::new(events), rx)
    }

    fn address(slot: u32, function: u32, reg: u32) -> u32 {
        ADDRESS_ENABLE
            | (slot << ADDRESS_DEVICE_SHIFT)
            | (function << ADDRESS_FUNCTION_SHIFT)
            | (reg << 2)
    }

    fn select(pci: &mut PciConfigIo, addr: u32) {
        pci.write(0, &addr.to_le_bytes());
    }

    fn read(pci: &mut PciConfigIo, byte: u64, len: usize) -> u32 {
        let mut d = [0u8; 4];
        pci.read(OFF_DATA + byte, &mut d[..len]);
        u32::from_le_bytes(d)
    }

    /// A device whose registers are all guest-writable, to check byte lanes.
    struct Scratch(ConfigSpace);

    impl PciDevice for Scratch {
        fn read_config_register(&mut self, reg: usize) -> u32 {
            self.0.read(reg)
        }
        fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) {
            self.0.write(reg, offset, data);
        }
    }

    fn with_scratch(slot: u8) -> PciConfigIo {
        let (mut pci, _) = device();
        let mut space = ConfigSpace::default();
        for reg in 0..CONFIG_REGS {
            space.set(reg, 0, u32::MAX);
        }
        pci.root_mut()
            .add_device(slot, Arc::new(Mutex::new(Scratch(space))))
            .unwrap();
        pci
    }

    #[test]
    fn pci_host_bridge_reads_identity() {
        let (mut pci, _) = device();
        select(&mut pci, address(0, 0, 0));
        assert_eq!(read(&mut pci, 0, 4), 0x0d57_8086);
        assert_eq!(read(&mut pci, 0, 2), 0x8086);
        assert_eq!(read(&mut pci, 2, 2), 0x0d57);
        assert_eq!(read(&mut pci, 3, 1), 0x0d);
        select(&mut pci, address(0, 0, REG_CLASS as u32));
        assert_eq!(read(&mut pci, 0, 4) >> CLASS_SHIFT, HOST_BRIDGE_CLASS);
        select(&mut pci, address(0, 0, 3));
        assert_eq!(read(&mut pci, 2, 1), 0, "header type 0");
    }

    #[test]
    fn pci_config_address_reads_back_masked() {
        let (mut pci, _) = device();
        select(&mut pci, 0xffff_ffff);
        let mut d = [0u8; 4];
        pci.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), ADDRESS_MASK);
    }

    #[test]
    fn pci_config_data_writes_of_every_size_hit_their_bytes() {
        let mut pci = with_scratch(3);
        select(&mut pci, address(3, 0, 4));
        pci.write(OFF_DATA, &0x1122_3344u32.to_le_bytes());
        assert_eq!(read(&mut pci, 0, 4), 0x1122_3344);
        pci.write(OFF_DATA + 2, &0xaabbu16.to_le_bytes());
        assert_eq!(read(&mut pci, 0, 4), 0xaabb_3344);
        pci.write(OFF_DATA + 1, &[0xcc]);
        assert_eq!(read(&mut pci, 0, 4), 0xaabb_cc44);
        assert_eq!(read(&mut pci, 1, 1), 0xcc);
        assert_eq!(read(&mut pci, 2, 2), 0xaabb);
    }

    #[test]
    fn pci_misaligned_data_access_is_ignored() {
        let mut pci = with_scratch(3);
        select(&mut pci, address(3, 0, 4));
        pci.write(OFF_DATA, &0x1122_3344u32.to_le_bytes());
        pci.write(OFF_DATA + 3, &[1, 2]);
        pci.write(OFF_DATA + 1, &[1, 2, 3]);
        assert_eq!(read(&mut pci, 0, 4), 0x1122_3344);
        assert_eq!(read(&mut pci, 3, 2), 0xffff);
    }

    #[test]
    fn pci_disabled_address_reads_ones_and_ignores_writes() {
        let mut pci = with_scratch(3);
        select(&mut pci, address(3, 0, 4) & !ADDRESS_ENABLE);
        pci.write(OFF_DATA, &[0x55; 4]);
        assert_eq!(read(&mut pci, 0, 4), u32::MAX);
        select(&mut pci, address(3, 0, 4));
        assert_eq!(read(&mut pci, 0, 4), 0);
    }

    #[test]
    fn pci_absent_slot_function_or_bus_reads_ones() {
        let (mut pci, _) = device();
        select(&mut pci, address(5, 0, 0));
        assert_eq!(read(&mut pci, 0, 4), u32::MAX);
        select(&mut pci, address(0, 1, 0));
        assert_eq!(read(&mut pci, 0, 2), 0xffff);
        select(&mut pci, address(0, 0, 0) | (1 << ADDRESS_BUS_SHIFT));
        assert_eq!(read(&mut pci, 0, 1), 0xff);
    }

    #[test]
    fn pci_host_bridge_identity_is_read_only() {
        let (mut pci, _) = device();
        select(&mut pci, address(0, 0, 0));
        pci.write(OFF_DATA, &[0; 4]);
        assert_eq!(read(&mut pci, 0, 4), 0x0d57_8086);
        select(&mut pci, address(0, 0, REG_COMMAND as u32));
        pci.write(OFF_DATA, &[0xff, 0xff]);
        assert_eq!(read(&mut pci, 0, 4), COMMAND_WRITABLE);
    }

    #[test]
    fn pci_reset_control_with_rst_cpu_sends_reboot() {
        let (mut pci, rx) = device();
        pci.write(OFF_RESET_CONTROL, &[0x02]);
        assert!(rx.try_recv().is_err());
        let mut d = [0u8];
        pci.read(OFF_RESET_CONTROL, &mut d);
        assert_eq!(d, [0x02]);
        pci.write(OFF_RESET_CONTROL, &[RESET_VALUE]);
        assert_eq!(rx.try_recv(), Ok(VmEvent::Reboot));
        pci.write(OFF_RESET_CONTROL, &[0x04]);
        assert_eq!(rx.try_recv(), Ok(VmEvent::Reboot));
    }

    #[test]
    fn pci_partial_config_address_access_is_ignored() {
        let (mut pci, rx) = device();
        select(&mut pci, address(0, 0, 0));
        pci.write(0, &[0xff]);
        pci.write(2, &[0xff, 0xff]);
        let mut d = [0u8; 2];
        pci.read(0, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        assert_eq!(read(&mut pci, 0, 4), 0x0d57_8086);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn pci_root_add_device_rejects_taken_and_bad_slots() {
        let mut root = PciRoot::new();
        assert_eq!(root.next_free_slot().unwrap(), 1);
        let dev = || -> SharedPciDevice { Arc::new(Mutex::new(HostBridge::new())) };
        assert!(matches!(
            root.add_device(0, dev()),
            Err(PciError::SlotTaken(0))
        ));
        assert!(matches!(
            root.add_device(32, dev()),
            Err(PciError::BadSlot(32))
        ));
        for slot in 1..PCI_SLOTS {
            root.add_device(slot, dev()).unwrap();
        }
        assert!(matches!(root.next_free_slot(), Err(PciError::BusFull)));
    }
}
