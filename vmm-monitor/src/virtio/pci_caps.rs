//! The virtio-pci function's BAR layout and its PCI configuration space
//! (virtio 1.2 §4.1.2 identity, §4.1.4 capabilities; PCI 3.0 §6.8.2 MSI-X).
//!
//! One 64-bit, non-prefetchable memory BAR (BAR0, registers 4 and 5) holds
//! every structure; BARs 1..5 are otherwise unimplemented:
//!
//! ```text
//! BAR0 offset      length            structure
//! 0x0000           0x38              common configuration (§4.1.4.3)
//! 0x1000           1                 ISR status (§4.1.4.5)
//! 0x2000           0x1000            device-specific configuration (§4.1.4.6)
//! 0x3000           4 * queues        notifications (§4.1.4.4): queue q at 0x3000 + 4q
//! 0x4000           16 * vectors      MSI-X table
//! 0x6000           8 * ⌈vectors/64⌉  MSI-X pending bit array
//! BAR size 0x8000 (32 KiB)
//! ```
//!
//! Capability list in config space (pointer at 0x34):
//!
//! ```text
//! 0x40  MSI-X            (12 bytes)
//! 0x50  COMMON_CFG       (16 bytes)
//! 0x60  NOTIFY_CFG       (20 bytes, notify_off_multiplier 4)
//! 0x74  ISR_CFG          (16 bytes)
//! 0x84  DEVICE_CFG       (16 bytes)
//! 0x94  PCI_CFG          (20 bytes: bar, offset, length writable; data at 0xA4)
//! ```

use crate::devices::pci_host::ConfigSpace;
pub use crate::devices::pci_host::{REG_BAR0, REG_BAR0_HIGH, REG_COMMAND};
use crate::devices::pci_host::{
    REG_CAP_POINTER, REG_CLASS, REG_HEADER, REG_INTERRUPT, REG_SUBSYSTEM,
};

/// PCI vendor ID of virtio devices (§4.1.2).
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Non-transitional device IDs are this plus the virtio device ID (§4.1.2.1).
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Revision of a non-transitional device: at least 1 (§4.1.2.1).
pub const VIRTIO_PCI_REVISION: u32 = 1;
/// Subsystem device ID we report (the one QEMU's virtio devices use).
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x1100;

/// Size of BAR0, a power of two.
pub const BAR_SIZE: u64 = 0x8000;
/// Common configuration structure.
pub const COMMON_OFFSET: u64 = 0x0000;
/// Bytes of the common configuration (through `queue_device`).
pub const COMMON_LEN: u64 = 0x38;
/// ISR status byte.
pub const ISR_OFFSET: u64 = 0x1000;
/// Bytes of the ISR structure.
pub const ISR_LEN: u64 = 1;
/// Device-specific configuration.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Bytes of device-specific configuration the transport forwards.
pub const DEVICE_CFG_LEN: u64 = 0x1000;
/// Notification area.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notify addresses (notify_off_multiplier):
/// room for a 32-bit write with VIRTIO_F_NOTIFICATION_DATA.
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// MSI-X table.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// MSI-X pending bit array.
pub const MSIX_PBA_OFFSET: u64 = 0x6000;
/// Bytes per MSI-X table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Most MSI-X vectors the table area holds.
pub const MAX_VECTORS: usize = ((MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET) / MSIX_ENTRY_SIZE) as usize;
/// Most queues: one vector each plus the configuration vector.
pub const MAX_QUEUES: usize = MAX_VECTORS - 1;

/// Command register: memory space decoding enabled.
pub const COMMAND_MEMORY: u32 = 1 << 1;
/// Command bits the guest may write: memory, bus master, INTx disable.
const COMMAND_WRITABLE: u32 = COMMAND_MEMORY | (1 << 2) | (1 << 10);
/// Status register: the function has a capability list.
const STATUS_CAP_LIST: u32 = 1 << 4;
/// BAR low bits: memory space, 64-bit type (0b10 << 1), not prefetchable.
const BAR_TYPE_MEM64: u32 = 0b100;
/// Cache line size byte of register 3, scratch for the guest.
const CACHE_LINE_WRITABLE: u32 = 0xff;
/// Interrupt pin 1: INTA#.
const INTERRUPT_PIN_INTA: u32 = 1;
const INTERRUPT_LINE_WRITABLE: u32 = 0xff;

/// Capability ID of MSI-X.
const CAP_ID_MSIX: u8 = 0x11;
/// Capability ID of vendor-specific capabilities (every virtio_pci_cap).
const CAP_ID_VENDOR: u8 = 0x09;
/// virtio_pci_cap cfg_type values (§4.1.4).
pub const CAP_COMMON_CFG: u8 = 1;
/// Notification structure.
pub const CAP_NOTIFY_CFG: u8 = 2;
/// ISR structure.
pub const CAP_ISR_CFG: u8 = 3;
/// Device-specific configuration.
pub const CAP_DEVICE_CFG: u8 = 4;
/// Configuration-space access window.
pub const CAP_PCI_CFG: u8 = 5;
/// Length of a virtio_pci_cap.
const VIRTIO_CAP_LEN: u8 = 16;
/// Length of virtio_pci_notify_cap and virtio_pci_cfg_cap.
const VIRTIO_CAP_LONG_LEN: u8 = 20;
/// Length of the MSI-X capability.
const MSIX_CAP_LEN: u8 = 12;

/// Config-space offset of the MSI-X capability (first in the list).
pub const MSIX_CAP_OFFSET: usize = 0x40;
const COMMON_CAP_OFFSET: usize = 0x50;
const NOTIFY_CAP_OFFSET: usize = 0x60;
const ISR_CAP_OFFSET: usize = 0x74;
const DEVICE_CAP_OFFSET: usize = 0x84;
/// Config-space offset of the PCI_CFG access capability (last in the list).
pub const PCI_CFG_CAP_OFFSET: usize = 0x94;
/// Config register holding the PCI_CFG capability's BAR byte (byte 0).
pub const REG_PCI_CFG_BAR: usize = (PCI_CFG_CAP_OFFSET + 4) / 4;
/// Config register holding the PCI_CFG capability's offset.
pub const REG_PCI_CFG_OFFSET: usize = (PCI_CFG_CAP_OFFSET + 8) / 4;
/// Config register holding the PCI_CFG capability's length.
pub const REG_PCI_CFG_LENGTH: usize = (PCI_CFG_CAP_OFFSET + 12) / 4;
/// Config register of `pci_cfg_data`.
pub const REG_PCI_CFG_DATA: usize = (PCI_CFG_CAP_OFFSET + 16) / 4;
/// Config register with the MSI-X message control in its upper half.
pub const REG_MSIX_CONTROL: usize = MSIX_CAP_OFFSET / 4;
/// Message control: MSI-X enable.
pub const MSIX_CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const MSIX_CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// BAR indicator register value of BAR0 in the table and PBA offsets.
const MSIX_BIR_BAR0: u32 = 0;

/// PCI class code of each virtio device type (base, sub, interface).
pub fn class_code(device_type: u32) -> u32 {
    use virtio_bindings::virtio_ids::{VIRTIO_ID_BLOCK, VIRTIO_ID_CONSOLE, VIRTIO_ID_NET};
    match device_type {
        VIRTIO_ID_BLOCK => 0x01_8000,   // mass storage, other
        VIRTIO_ID_NET => 0x02_0000,     // network, Ethernet
        VIRTIO_ID_CONSOLE => 0x07_8000, // simple communication, other
        _ => 0xff_0000,                 // unassigned class
    }
}

/// What identifies the function and its BAR at creation.
pub struct Identity {
    /// Virtio device ID.
    pub device_type: u32,
    /// Queues (one notify slot each).
    pub num_queues: usize,
    /// MSI-X table entries.
    pub num_vectors: usize,
    /// BAR0's initial guest-physical address (aligned to [`BAR_SIZE`]).
    pub bar_address: u64,
    /// The legacy interrupt line the DSDT's `_PRT` gives INTA of this slot.
    pub irq_line: u8,
}

/// The config space of a virtio-pci function: identity, BAR0, the
/// capability list. Memory decoding starts enabled, as firmware would
/// leave a device it placed (direct-boot guests run no firmware).
pub fn build_config_space(id: &Identity) -> ConfigSpace {
    let mut space = ConfigSpace::default();
    // The device ID fits: device types are below 0x40 (VIRTIO_ID_* < 64).
    let device_id = VIRTIO_PCI_DEVICE_ID_BASE.wrapping_add(id.device_type as u16);
    space.set(
        0,
        (u32::from(device_id) << 16) | u32::from(VIRTIO_PCI_VENDOR_ID),
        0,
    );
    space.set(
        REG_COMMAND,
        (STATUS_CAP_LIST << 16) | COMMAND_MEMORY,
        COMMAND_WRITABLE,
    );
    space.set(
        REG_CLASS,
        (class_code(id.device_type) << 8) | VIRTIO_PCI_REVISION,
        0,
    );
    space.set(REG_HEADER, 0, CACHE_LINE_WRITABLE);
    // Truncation intended: the BAR's two halves.
    let low = (id.bar_address as u32 & !(BAR_SIZE as u32 - 1)) | BAR_TYPE_MEM64;
    space.set(REG_BAR0, low, !(BAR_SIZE as u32 - 1));
    space.set(REG_BAR0_HIGH, (id.bar_address >> 32) as u32, u32::MAX);
    space.set(
        REG_SUBSYSTEM,
        (u32::from(VIRTIO_PCI_SUBSYSTEM_ID) << 16) | u32::from(VIRTIO_PCI_VENDOR_ID),
        0,
    );
    space.set(REG_CAP_POINTER, MSIX_CAP_OFFSET as u32, 0);
    space.set(
        REG_INTERRUPT,
        (INTERRUPT_PIN_INTA << 8) | u32::from(id.irq_line),
        INTERRUPT_LINE_WRITABLE,
    );
    write_caps(&mut space, id);
    space
}

/// One virtio_pci_cap (§4.1.4) as bytes; `extra` follows the common part.
fn virtio_cap(next: usize, cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let len = if extra.is_empty() {
        VIRTIO_CAP_LEN
    } else {
        VIRTIO_CAP_LONG_LEN
    };
    // Offsets and lengths are below BAR_SIZE, next below 0x100: no truncation.
    let mut cap = vec![CAP_ID_VENDOR, next as u8, len, cfg_type, 0, 0, 0, 0];
    cap.extend_from_slice(&(offset as u32).to_le_bytes());
    cap.extend_from_slice(&(length as u32).to_le_bytes());
    cap.extend_from_slice(extra);
    cap
}

fn write_caps(space: &mut ConfigSpace, id: &Identity) {
    let notify_len = (id.num_queues.max(1) as u64) * u64::from(NOTIFY_MULTIPLIER);
    // Message control holds table size - 1 in bits 10:0 (at most 2047).
    let table_size = (id.num_vectors.saturating_sub(1) as u32) & 0x7ff;
    let mut msix = vec![CAP_ID_MSIX, COMMON_CAP_OFFSET as u8];
    msix.extend_from_slice(&(table_size as u16).to_le_bytes());
    msix.extend_from_slice(&(MSIX_TABLE_OFFSET as u32 | MSIX_BIR_BAR0).to_le_bytes());
    msix.extend_from_slice(&(MSIX_PBA_OFFSET as u32 | MSIX_BIR_BAR0).to_le_bytes());
    debug_assert_eq!(msix.len(), usize::from(MSIX_CAP_LEN));
    let caps: [(usize, Vec<u8>); 6] = [
        (MSIX_CAP_OFFSET, msix),
        (
            COMMON_CAP_OFFSET,
            virtio_cap(
                NOTIFY_CAP_OFFSET,
                CAP_COMMON_CFG,
                COMMON_OFFSET,
                COMMON_LEN,
                &[],
            ),
        ),
        (
            NOTIFY_CAP_OFFSET,
            virtio_cap(
                ISR_CAP_OFFSET,
                CAP_NOTIFY_CFG,
                NOTIFY_OFFSET,
                notify_len,
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
        ),
        (
            ISR_CAP_OFFSET,
            virtio_cap(DEVICE_CAP_OFFSET, CAP_ISR_CFG, ISR_OFFSET, ISR_LEN, &[]),
        ),
        (
            DEVICE_CAP_OFFSET,
            virtio_cap(
                PCI_CFG_CAP_OFFSET,
                CAP_DEVICE_CFG,
                DEVICE_CFG_OFFSET,
                DEVICE_CFG_LEN,
                &[],
            ),
        ),
        // Last capability: next pointer 0. bar/offset/length start at 0.
        (
            PCI_CFG_CAP_OFFSET,
            virtio_cap(0, CAP_PCI_CFG, 0, 0, &[0; 4]),
        ),
    ];
    for (start, bytes) in caps {
        for (i, chunk) in bytes.chunks(4).enumerate() {
            let mut dword = [0u8; 4];
            dword[..chunk.len()].copy_from_slice(chunk);
            space.set(start / 4 + i, u32::from_le_bytes(dword), 0);
        }
    }
    let control_writable = u32::from(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK) << 16;
    space.set(
        REG_MSIX_CONTROL,
        space.read(REG_MSIX_CONTROL),
        control_writable,
    );
    let bar_byte = space.read(REG_PCI_CFG_BAR);
    space.set(REG_PCI_CFG_BAR, bar_byte, 0xff);
    space.set(REG_PCI_CFG_OFFSET, 0, u32::MAX);
    space.set(REG_PCI_CFG_LENGTH, 0, u32::MAX);
    space.set(REG_PCI_CFG_DATA, 0, u32::MAX);
}

/// BAR0's guest-physical address as the two BAR registers hold it.
pub fn bar0_address(space: &ConfigSpace) -> u64 {
    let low = space.read(REG_BAR0) & !(BAR_SIZE as u32 - 1);
    (u64::from(space.read(REG_BAR0_HIGH)) << 32) | u64::from(low)
}

/// Where an access inside BAR0 lands.
pub enum BarRegion {
    /// Common configuration, at this offset into it.
    Common(u64),
    /// The ISR status byte.
    Isr,
    /// Device-specific configuration, at this offset into it.
    DeviceCfg(u64),
    /// The notify slot of this queue.
    Notify(usize),
    /// MSI-X table, at this offset into it.
    Table(u64),
    /// MSI-X pending bit array, at this offset into it.
    Pba(u64),
}

impl BarRegion {
    /// The region a `len`-byte access at `offset` falls in entirely, for a
    /// function with `queues` queues and `vectors` MSI-X vectors.
    pub fn of(offset: u64, len: u64, queues: usize, vectors: usize) -> Option<Self> {
        let end = offset.checked_add(len)?;
        let inside = |start: u64, size: u64| {
            (offset >= start && end <= start + size).then(|| offset - start)
        };
        let notify_len = queues as u64 * u64::from(NOTIFY_MULTIPLIER);
        let table_len = vectors as u64 * MSIX_ENTRY_SIZE;
        let pba_len = (vectors as u64).div_ceil(64) * 8;
        if let Some(o) = inside(COMMON_OFFSET, COMMON_LEN) {
            Some(Self::Common(o))
        } else if inside(ISR_OFFSET, ISR_LEN).is_some() {
            Some(Self::Isr)
        } else if let Some(o) = inside(DEVICE_CFG_OFFSET, DEVICE_CFG_LEN) {
            Some(Self::DeviceCfg(o))
        } else if let Some(o) = inside(NOTIFY_OFFSET, notify_len) {
            // Bounded by notify_len: the queue exists.
            Some(Self::Notify((o / u64::from(NOTIFY_MULTIPLIER)) as usize))
        } else if let Some(o) = inside(MSIX_TABLE_OFFSET, table_len) {
            Some(Self::Table(o))
        } else {
            inside(MSIX_PBA_OFFSET, pba_len).map(Self::Pba)
        }
    }
}

// The areas of the layout must not overlap and must fit the BAR.
const _: () = assert!(COMMON_OFFSET + COMMON_LEN <= ISR_OFFSET);
const _: () = assert!(ISR_OFFSET + ISR_LEN <= DEVICE_CFG_OFFSET);
const _: () = assert!(DEVICE_CFG_OFFSET + DEVICE_CFG_LEN <= NOTIFY_OFFSET);
const _: () =
    assert!(NOTIFY_OFFSET + MAX_QUEUES as u64 * NOTIFY_MULTIPLIER as u64 <= MSIX_TABLE_OFFSET);
const _: () = assert!(MSIX_PBA_OFFSET + (MAX_VECTORS as u64).div_ceil(64) * 8 <= BAR_SIZE);
const _: () = assert!(BAR_SIZE.is_power_of_two());
const _: () = assert!(PCI_CFG_CAP_OFFSET + VIRTIO_CAP_LONG_LEN as usize <= 0x100);
