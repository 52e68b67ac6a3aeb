//! virtio over PCI (virtio 1.2 §4.1), modern interface only: the device's
//! vendor capabilities locate the common configuration, notification, ISR
//! and device-specific structures in its BARs.

use super::mmio::{r16, r32, r8, w16, w32, w64, w8};
use super::{F_VERSION_1, STATUS_FAILED, STATUS_FEATURES_OK, VENDOR};
use crate::cpu::{self, Deadline};
use crate::pci::{self, Function, Msix, CAP_VENDOR};
use crate::scenarios::Reason;

/// `cfg_type` of the virtio PCI capabilities.
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;

/// Common configuration layout (offsets).
const DEVICE_FEATURE_SELECT: u64 = 0;
const DEVICE_FEATURE: u64 = 4;
const DRIVER_FEATURE_SELECT: u64 = 8;
const DRIVER_FEATURE: u64 = 12;
const CONFIG_MSIX_VECTOR: u64 = 16;
const NUM_QUEUES: u64 = 18;
const DEVICE_STATUS: u64 = 20;
const CONFIG_GENERATION: u64 = 21;
const QUEUE_SELECT: u64 = 22;
const QUEUE_SIZE: u64 = 24;
const QUEUE_MSIX_VECTOR: u64 = 26;
const QUEUE_ENABLE: u64 = 28;
const QUEUE_NOTIFY_OFF: u64 = 30;
const QUEUE_DESC: u64 = 32;
const QUEUE_DRIVER: u64 = 40;
const QUEUE_DEVICE: u64 = 48;
/// Bytes of the common configuration this driver uses.
const COMMON_LEN: u32 = 56;

/// MSI-X vector number meaning "no vector".
pub const NO_VECTOR: u16 = 0xFFFF;

/// One located virtio structure.
#[derive(Clone, Copy, Default)]
struct Region {
    addr: u64,
    len: u32,
}

/// A modern virtio PCI device, its structures mapped.
pub struct Transport {
    /// The PCI function.
    pub func: Function,
    common: u64,
    notify: u64,
    notify_mult: u32,
    device: Region,
    /// MSI-X table, when the device has one.
    pub msix: Option<Msix>,
}

/// The first virtio device of `device_type` on bus 0 (modern ID
/// 0x1040 + type, or a transitional ID 0x1000..=0x103f with the type as
/// subsystem ID; either way the modern capabilities are required).
/// `pci=reassign` on the command line unassigns its memory BARs first, so
/// that they are assigned by `pci` (as on a monitor without firmware).
pub fn find(device_type: u16) -> Result<Transport, Reason> {
    for func in pci::scan().iter() {
        if func.vendor != VENDOR {
            continue;
        }
        let ty = match func.device {
            0x1040..=0x107F => func.device - 0x1040,
            0x1000..=0x103F => func.subsystem_id(),
            _ => continue,
        };
        if ty == device_type {
            if crate::BOOT.get().and_then(|b| b.arg("pci")) == Some("reassign") {
                func.unassign_bars();
            }
            return Transport::new(func);
        }
    }
    crate::fail!("no virtio device of type {device_type} on bus 0")
}

impl Transport {
    fn new(func: &Function) -> Result<Transport, Reason> {
        let mut found = [None::<Region>; 5];
        let mut notify_mult = 0;
        for (cap, id) in func.capabilities() {
            if id != CAP_VENDOR {
                continue;
            }
            let head = func.read32(cap);
            let cap_len = (head >> 16) as u8;
            let cfg_type = (head >> 24) as u8;
            if !(CFG_COMMON..=CFG_DEVICE).contains(&cfg_type) || cap_len < 16 {
                continue;
            }
            if found[usize::from(cfg_type)].is_some() {
                continue; // the first of each type is the preferred one
            }
            let bar_index = func.read32(cap + 4) as u8;
            if bar_index > 5 {
                continue;
            }
            let offset = func.read32(cap + 8);
            let len = func.read32(cap + 12);
            let bar = func.map_bar(bar_index)?;
            if u64::from(offset) + u64::from(len) > bar.size {
                crate::fail!("{func}: virtio cfg_type {cfg_type} outside BAR{bar_index}");
            }
            if cfg_type == CFG_NOTIFY {
                if cap_len < 20 {
                    crate::fail!("{func}: notify capability too short");
                }
                notify_mult = func.read32(cap + 16);
            }
            found[usize::from(cfg_type)] = Some(Region {
                addr: bar.addr + u64::from(offset),
                len,
            });
        }
        let need = |ty: u8, what: &str| -> Result<Region, Reason> {
            found[usize::from(ty)]
                .ok_or_else(|| Reason::new(format_args!("{func}: no virtio {what} capability")))
        };
        let common = need(CFG_COMMON, "common")?;
        if common.len < COMMON_LEN {
            crate::fail!("{func}: common configuration of {} bytes", common.len);
        }
        let notify = need(CFG_NOTIFY, "notify")?;
        // Required by the spec; unused (completions by MSI-X or polling).
        need(CFG_ISR, "ISR")?;
        let device = need(CFG_DEVICE, "device")?;
        let msix = Msix::find(func)?;
        func.enable_memory_and_dma();
        Ok(Transport {
            func: *func,
            common: common.addr,
            notify: notify.addr,
            notify_mult,
            device,
            msix,
        })
    }

    /// Device status.
    pub fn status(&self) -> u8 {
        r8(self.common + DEVICE_STATUS)
    }

    /// Sets device status bits (ORed into the current status).
    pub fn add_status(&self, bits: u8) {
        w8(self.common + DEVICE_STATUS, self.status() | bits);
    }

    /// Marks the driver as failed (status FAILED).
    pub fn fail(&self) {
        self.add_status(STATUS_FAILED);
    }

    /// Resets the device and waits (bounded) for status to read 0.
    pub fn reset(&self) -> Result<(), Reason> {
        w8(self.common + DEVICE_STATUS, 0);
        if !cpu::wait_until(Deadline::after_ms(1000), || self.status() == 0) {
            crate::fail!("{}: reset not completed", self.func);
        }
        Ok(())
    }

    /// All 64 device feature bits.
    pub fn device_features(&self) -> u64 {
        let mut features = 0;
        for select in 0..2u32 {
            w32(self.common + DEVICE_FEATURE_SELECT, select);
            features |= u64::from(r32(self.common + DEVICE_FEATURE)) << (32 * select);
        }
        features
    }

    /// Negotiates `wanted & offered` (VERSION_1 required): writes the
    /// driver features, sets FEATURES_OK and checks it stuck. Returns the
    /// negotiated set.
    pub fn negotiate(&self, wanted: u64) -> Result<u64, Reason> {
        let offered = self.device_features();
        if offered & F_VERSION_1 == 0 {
            self.fail();
            crate::fail!("{}: VIRTIO_F_VERSION_1 not offered", self.func);
        }
        let features = offered & (wanted | F_VERSION_1);
        for select in 0..2u32 {
            w32(self.common + DRIVER_FEATURE_SELECT, select);
            w32(
                self.common + DRIVER_FEATURE,
                (features >> (32 * select)) as u32,
            );
        }
        self.add_status(STATUS_FEATURES_OK);
        if self.status() & STATUS_FEATURES_OK == 0 {
            self.fail();
            crate::fail!("{}: FEATURES_OK refused for {features:#x}", self.func);
        }
        Ok(features)
    }

    /// Queues the device offers.
    pub fn num_queues(&self) -> u16 {
        r16(self.common + NUM_QUEUES)
    }

    /// Sets the configuration-change MSI-X vector; returns what the device
    /// kept (NO_VECTOR if it refused).
    pub fn set_config_vector(&self, vector: u16) -> u16 {
        w16(self.common + CONFIG_MSIX_VECTOR, vector);
        r16(self.common + CONFIG_MSIX_VECTOR)
    }

    /// Selects queue `index`; returns its maximum size (0: unavailable).
    pub fn select_queue(&self, index: u16) -> u16 {
        w16(self.common + QUEUE_SELECT, index);
        r16(self.common + QUEUE_SIZE)
    }

    /// Configures the selected queue: size, ring addresses, MSI-X vector
    /// (returns the vector the device kept) — then [`Self::enable_queue`].
    pub fn setup_queue(&self, size: u16, desc: u64, avail: u64, used: u64, vector: u16) -> u16 {
        w16(self.common + QUEUE_SIZE, size);
        w64(self.common + QUEUE_DESC, desc);
        w64(self.common + QUEUE_DRIVER, avail);
        w64(self.common + QUEUE_DEVICE, used);
        w16(self.common + QUEUE_MSIX_VECTOR, vector);
        r16(self.common + QUEUE_MSIX_VECTOR)
    }

    /// Enables the selected queue.
    pub fn enable_queue(&self) {
        w16(self.common + QUEUE_ENABLE, 1);
    }

    /// Notify address of the selected queue.
    pub fn queue_notify_addr(&self) -> u64 {
        let off = r16(self.common + QUEUE_NOTIFY_OFF);
        self.notify + u64::from(off) * u64::from(self.notify_mult)
    }

    /// Configuration generation counter.
    fn generation(&self) -> u8 {
        r8(self.common + CONFIG_GENERATION)
    }

    /// Runs `read` until the configuration generation is the same before
    /// and after (bounded), so multi-part fields are consistent.
    fn stable<T>(&self, mut read: impl FnMut() -> T) -> T {
        let mut value = read();
        for _ in 0..100 {
            let before = self.generation();
            value = read();
            if self.generation() == before {
                break;
            }
        }
        value
    }

    /// Address of device configuration field `offset` of `width` bytes,
    /// or None past the structure (such fields read as 0).
    fn field(&self, offset: u32, width: u32) -> Option<u64> {
        (offset + width <= self.device.len).then(|| self.device.addr + u64::from(offset))
    }

    /// An 8-bit device configuration field (by an 8-bit access).
    pub fn config_u8(&self, offset: u32) -> u8 {
        self.field(offset, 1).map_or(0, r8)
    }

    /// A 16-bit device configuration field (by a 16-bit access).
    pub fn config_u16(&self, offset: u32) -> u16 {
        self.field(offset, 2).map_or(0, r16)
    }

    /// A 32-bit device configuration field (by a 32-bit access).
    pub fn config_u32(&self, offset: u32) -> u32 {
        self.field(offset, 4).map_or(0, r32)
    }

    /// A 64-bit device configuration field (two 32-bit accesses, retried
    /// until the generation is stable).
    pub fn config_u64(&self, offset: u32) -> u64 {
        let Some(addr) = self.field(offset, 8) else {
            return 0;
        };
        self.stable(|| u64::from(r32(addr)) | (u64::from(r32(addr + 4)) << 32))
    }
}
