//! The virtio-pci common configuration structure (virtio 1.2 §4.1.4.3):
//! feature negotiation, device status and per-queue setup.
//!
//! This module only keeps the registers and decides; what a write means
//! for the device (activate, reset, re-wire interrupts) comes back as a
//! [`CommonAction`] that the transport carries out.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};

/// "No MSI-X vector" in `config_msix_vector` and `queue_msix_vector` (§4.1.5.1.2).
pub const NO_VECTOR: u16 = 0xffff;

// Field offsets of struct virtio_pci_common_cfg (§4.1.4.3).
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;
/// The two 32-bit feature pages (bits 0..31 and 32..63).
const FEATURE_PAGES: u32 = 2;

/// A queue as the driver set it up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueState {
    /// The device's maximum size (what `queue_size` reads after reset).
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// MSI-X vector, or [`NO_VECTOR`].
    pub msix_vector: u16,
    /// The driver wrote 1 to `queue_enable`.
    pub enabled: bool,
    /// Descriptor area.
    pub desc: u64,
    /// Driver (available) area.
    pub driver: u64,
    /// Device (used) area.
    pub device: u64,
}

impl QueueState {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            msix_vector: NO_VECTOR,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// What the transport must do after a write.
#[derive(Debug, PartialEq, Eq)]
pub enum CommonAction {
    /// Nothing beyond the register change.
    None,
    /// An MSI-X vector assignment changed: re-wire the irqfds.
    VectorsChanged,
    /// The driver set DRIVER_OK with acceptable features: activate the device.
    Activate,
    /// The driver wrote 0 to `device_status`: reset the device.
    Reset,
}

/// The common configuration registers.
///
/// # Invariants
/// - `status` has FEATURES_OK only if `driver_features` is a subset of
///   `device_features` that includes VIRTIO_F_VERSION_1 (§2.2, §6.1), and
///   DRIVER_OK only with FEATURES_OK (§3.1.1).
/// - Driver features do not change once FEATURES_OK is set (§3.1.1), and a
///   queue's fields do not change once it is enabled (§4.1.4.3.2).
/// - Every vector stored is [`NO_VECTOR`] or below `num_vectors` (§4.1.5.1.2:
///   an unmappable vector reads back as NO_VECTOR).
pub struct CommonConfig {
    device_features: u64,
    driver_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    config_msix_vector: u16,
    status: u8,
    queue_select: u16,
    queues: Vec<QueueState>,
    num_vectors: usize,
}

impl CommonConfig {
    /// Registers after reset for a device offering `device_features`, with
    /// queues of `queue_max_sizes` and an MSI-X table of `num_vectors`.
    pub fn new(device_features: u64, queue_max_sizes: &[u16], num_vectors: usize) -> Self {
        Self {
            device_features,
            driver_features: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            config_msix_vector: NO_VECTOR,
            status: 0,
            queue_select: 0,
            queues: queue_max_sizes
                .iter()
                .map(|m| QueueState::new(*m))
                .collect(),
            num_vectors,
        }
    }

    /// Back to the state after device reset (§2.4): status 0, no features,
    /// queues at their defaults; the MSI-X table is the PCI function's, not reset.
    pub fn reset(&mut self) {
        let sizes: Vec<u16> = self.queues.iter().map(|q| q.max_size).collect();
        *self = Self::new(self.device_features, &sizes, self.num_vectors);
    }

    /// Features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The device status byte.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Sets DEVICE_NEEDS_RESET (§2.1.2) after the device failed.
    pub fn set_needs_reset(&mut self) {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET as u8;
    }

    /// Vector of configuration-change interrupts, or [`NO_VECTOR`].
    pub fn config_msix_vector(&self) -> u16 {
        self.config_msix_vector
    }

    /// Every queue, by index.
    pub fn queues(&self) -> &[QueueState] {
        &self.queues
    }

    fn selected(&self) -> Option<&QueueState> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// A guest read of `data.len()` bytes at `offset`; accesses that are not
    /// one whole field (or one half of a 64-bit field) read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let q = self.selected();
        let value: u64 = match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select.into(),
            (DEVICE_FEATURE, 4) => feature_page(self.device_features, self.device_feature_select),
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select.into(),
            (DRIVER_FEATURE, 4) => feature_page(self.driver_features, self.driver_feature_select),
            (CONFIG_MSIX_VECTOR, 2) => self.config_msix_vector.into(),
            // At most MAX_QUEUES queues: fits a u16.
            (NUM_QUEUES, 2) => self.queues.len() as u64,
            (DEVICE_STATUS, 1) => self.status.into(),
            // No config-change notification from devices yet: generation 0.
            (CONFIG_GENERATION, 1) => 0,
            (QUEUE_SELECT, 2) => self.queue_select.into(),
            // An absent queue reads size 0 (§4.1.4.3.2) and zeros elsewhere.
            (QUEUE_SIZE, 2) => q.map_or(0, |q| q.size.into()),
            (QUEUE_MSIX_VECTOR, 2) => q.map_or(NO_VECTOR.into(), |q| q.msix_vector.into()),
            (QUEUE_ENABLE, 2) => q.map_or(0, |q| q.enabled.into()),
            // Queue q notifies at q * notify_off_multiplier.
            (QUEUE_NOTIFY_OFF, 2) => q.map_or(0, |_| self.queue_select.into()),
            (QUEUE_DESC..QUEUE_ADDRESSES_END, 4 | 8) => {
                match (q, split_address(offset, data.len())) {
                    (Some(q), Some((field, high))) => {
                        half(address_field(q, field), high, data.len())
                    }
                    _ => 0,
                }
            }
            _ => {
                log::debug!(
                    "virtio-pci: common cfg {}-byte read at {offset:#x} ignored",
                    data.len()
                );
                0
            }
        };
        let bytes = value.to_le_bytes();
        data.copy_from_slice(&bytes[..data.len()]);
    }

    /// A guest write at `offset`; what the transport must do about it.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> CommonAction {
        let Some(value) = le_value(data) else {
            log::debug!("virtio-pci: common cfg {}-byte write ignored", data.len());
            return CommonAction::None;
        };
        // Truncations below are to the width the match arm checked.
        match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = value as u32,
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = value as u32,
            (DRIVER_FEATURE, 4) => self.write_driver_features(value as u32),
            (CONFIG_MSIX_VECTOR, 2) => {
                self.config_msix_vector = self.checked_vector(value as u16);
                return CommonAction::VectorsChanged;
            }
            (DEVICE_STATUS, 1) => return self.write_status(value as u8),
            (QUEUE_SELECT, 2) => self.queue_select = value as u16,
            (QUEUE_SIZE | QUEUE_MSIX_VECTOR | QUEUE_ENABLE, 2) => {
                return self.write_queue_field(offset, value as u16)
            }
            (QUEUE_DESC..QUEUE_ADDRESSES_END, 4 | 8) => {
                self.write_queue_address(offset, data.len(), value)
            }
            _ => log::debug!(
                "virtio-pci: common cfg {}-byte write at {offset:#x} ignored",
                data.len()
            ),
        }
        CommonAction::None
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK as u8 != 0 {
            log::debug!("virtio-pci: driver features written after FEATURES_OK ignored");
            return;
        }
        let shift = match self.driver_feature_select {
            page if page < FEATURE_PAGES => page * 32,
            page => {
                log::debug!("virtio-pci: driver feature page {page} does not exist");
                return;
            }
        };
        let mask = u64::from(u32::MAX) << shift;
        self.driver_features = (self.driver_features & !mask) | (u64::from(value) << shift);
    }

    fn features_acceptable(&self) -> bool {
        let version_1 = 1u64 << VIRTIO_F_VERSION_1;
        self.driver_features & !self.device_features == 0 && self.driver_features & version_1 != 0
    }

    fn write_status(&mut self, value: u8) -> CommonAction {
        if value == 0 {
            return CommonAction::Reset;
        }
        let features_ok = VIRTIO_CONFIG_S_FEATURES_OK as u8;
        let driver_ok = VIRTIO_CONFIG_S_DRIVER_OK as u8;
        let mut value = value;
        if value & !self.status & features_ok != 0 && !self.features_acceptable() {
            log::debug!(
                "virtio-pci: FEATURES_OK refused for features {:#x} (offered {:#x})",
                self.driver_features,
                self.device_features
            );
            value &= !features_ok;
        }
        if value & driver_ok != 0 && value & features_ok == 0 {
            log::debug!("virtio-pci: DRIVER_OK without FEATURES_OK ignored");
            value &= !driver_ok;
        }
        if self.status & !value != 0 {
            log::debug!(
                "virtio-pci: status {value:#x} clears bits of {:#x}; only a reset may",
                self.status
            );
            value |= self.status;
        }
        let activate = value & !self.status & driver_ok != 0;
        self.status = value;
        if activate {
            CommonAction::Activate
        } else {
            CommonAction::None
        }
    }

    fn checked_vector(&self, vector: u16) -> u16 {
        if vector == NO_VECTOR || usize::from(vector) < self.num_vectors {
            vector
        } else {
            log::debug!("virtio-pci: MSI-X vector {vector} beyond the table");
            NO_VECTOR
        }
    }

    fn selected_for_write(&mut self) -> Option<&mut QueueState> {
        let select = self.queue_select;
        match self.queues.get_mut(usize::from(select)) {
            Some(q) if !q.enabled => Some(q),
            Some(_) => {
                log::debug!("virtio-pci: queue {select} is enabled; write ignored");
                None
            }
            None => {
                log::debug!("virtio-pci: queue {select} does not exist; write ignored");
                None
            }
        }
    }

    fn write_queue_field(&mut self, offset: u64, value: u16) -> CommonAction {
        // Only a queue_msix_vector write is a vector (checking any other
        // field's value logged bogus "beyond the table" messages).
        let vector = if offset == QUEUE_MSIX_VECTOR {
            self.checked_vector(value)
        } else {
            NO_VECTOR
        };
        let Some(q) = self.selected_for_write() else {
            return CommonAction::None;
        };
        match offset {
            QUEUE_SIZE if value.is_power_of_two() && value <= q.max_size => q.size = value,
            QUEUE_SIZE => log::debug!(
                "virtio-pci: queue size {value} refused (max {})",
                q.max_size
            ),
            QUEUE_MSIX_VECTOR => {
                q.msix_vector = vector;
                return CommonAction::VectorsChanged;
            }
            // §4.1.4.3.2: the driver must not write 0 to queue_enable.
            _ if value == 1 => q.enabled = true,
            _ => log::debug!("virtio-pci: queue_enable {value} ignored"),
        }
        CommonAction::None
    }

    fn write_queue_address(&mut self, offset: u64, len: usize, value: u64) {
        let Some((field, high)) = split_address(offset, len) else {
            log::debug!("virtio-pci: misaligned queue address write at {offset:#x}");
            return;
        };
        let Some(q) = self.selected_for_write() else {
            return;
        };
        let slot = match field {
            QUEUE_DESC => &mut q.desc,
            QUEUE_DRIVER => &mut q.driver,
            _ => &mut q.device,
        };
        *slot = match (len, high) {
            (8, _) => value,
            (_, false) => (*slot & !u64::from(u32::MAX)) | value,
            (_, true) => (*slot & u64::from(u32::MAX)) | (value << 32),
        };
    }
}

/// End of the three 64-bit queue address fields.
const QUEUE_ADDRESSES_END: u64 = QUEUE_DEVICE + 8;

/// The 64-bit field an access at `offset` hits and whether it is the high
/// half; None unless it is the whole field (8 bytes) or one aligned half.
fn split_address(offset: u64, len: usize) -> Option<(u64, bool)> {
    let field = QUEUE_DESC + (offset - QUEUE_DESC) / 8 * 8;
    match (offset - field, len) {
        (0, 4 | 8) => Some((field, false)),
        (4, 4) => Some((field, true)),
        _ => None,
    }
}

fn address_field(q: &QueueState, field: u64) -> u64 {
    match field {
        QUEUE_DESC => q.desc,
        QUEUE_DRIVER => q.driver,
        _ => q.device,
    }
}

fn half(value: u64, high: bool, len: usize) -> u64 {
    match (len, high) {
        (8, _) => value,
        (_, false) => value & u64::from(u32::MAX),
        (_, true) => value >> 32,
    }
}

fn feature_page(features: u64, select: u32) -> u64 {
    if select < FEATURE_PAGES {
        (features >> (select * 32)) & u64::from(u32::MAX)
    } else {
        0
    }
}

/// A little-endian access of 1, 2, 4 or 8 bytes as a number.
fn le_value(data: &[u8]) -> Option<u64> {
    if !matches!(data.len(), 1 | 2 | 4 | 8) {
        return None;
    }
    let mut bytes = [0u8; 8];
    bytes[..data.len()].copy_from_slice(data);
    Some(u64::from_le_bytes(bytes))
}
