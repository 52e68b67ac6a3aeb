//! Port-I/O and MMIO buses: the monitor's dispatch for vCPU exits.
//!
//! A [`Bus`] maps non-overlapping address ranges to devices. A vCPU thread
//! that exits on a port or MMIO access looks the address up and calls the
//! device with the offset inside its range. Devices are shared between vCPU
//! threads behind a mutex; each access holds only that device's lock.
//!
//! # Invariants
//! - Ranges never overlap and never have length 0 (checked by [`Bus::insert`]).
//! - An access that no device claims reads as all ones and ignores writes,
//!   as on a real bus; the vCPU logs it at debug level.
//! - Ranges can be added and removed while vCPUs run (a guest moving a PCI
//!   BAR): the range map sits behind a read-write lock that is never held
//!   while a device's own lock is taken, so a device may move itself from
//!   inside one of its accesses without deadlocking against another vCPU.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device on a port-I/O or MMIO bus.
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device as the bus holds it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors from building a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The new range overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps a device at {other:#x}+{other_len:#x}")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
        /// Base of the range already present.
        other: u64,
        /// Length of the range already present.
        other_len: u64,
    },
    /// A zero-length range or one that wraps past the end of the address space.
    #[error("bus range {base:#x}+{len:#x} is empty or wraps")]
    BadRange {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// An address space of devices (one for port I/O, one for MMIO).
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl Clone for Bus {
    fn clone(&self) -> Self {
        Self {
            ranges: RwLock::new(self.map().clone()),
        }
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// The range map for reading (a panic under the write lock cannot leave
    /// the map half-updated: every update is a single insert or remove).
    fn map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Entry>> {
        self.ranges
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn map_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Entry>> {
        self.ranges
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        let mut ranges = self.map_mut();
        let overlapping = ranges
            .range(..end)
            .next_back()
            .filter(|(other, e)| **other + e.len > base);
        if let Some((other, e)) = overlapping {
            return Err(BusError::Overlap {
                base,
                len,
                other: *other,
                other_len: e.len,
            });
        }
        ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// Takes the device at `base` (the start of its range) off the bus and
    /// returns it with its range length; None if no range starts there.
    pub fn remove(&self, base: u64) -> Option<(SharedDevice, u64)> {
        self.map_mut()
            .remove(&base)
            .map(|entry| (entry.device, entry.len))
    }

    /// The device claiming `addr` and the offset into its range. The device
    /// is cloned out so that the map's lock is released before the device's.
    fn find(&self, addr: u64) -> Option<(u64, SharedDevice)> {
        let ranges = self.map();
        let (base, entry) = ranges.range(..=addr).next_back()?;
        (addr - base < entry.len).then(|| (addr - base, entry.device.clone()))
    }

    /// Dispatches a read; returns false (and fills `data` with ones) if no
    /// device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, device)) => {
                lock(&device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false if no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, device)) => {
                lock(&device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, carrying on if another vCPU thread panicked while holding
/// it (the device state is still the best we have, and the panic itself has
/// already stopped the VM).
pub fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn bus_access_inside_range_reaches_device_with_offset() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(dev.lock().unwrap().last_write, Some((0, vec![0x41])));
    }

    #[test]
    fn bus_access_outside_ranges_reads_ones() {
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x3f8, 8)
            .unwrap();
        let mut data = [0u8; 2];
        assert!(!bus.read(0x400, &mut data));
        assert_eq!(data, [0xff, 0xff]);
        assert!(!bus.write(0x3f7, &[1]));
    }

    #[test]
    fn bus_remove_frees_range_for_a_move() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let bus = Bus::new();
        bus.insert(dev.clone(), 0x1000, 0x100).unwrap();
        assert!(
            bus.remove(0x1010).is_none(),
            "only a range's base removes it"
        );
        let (moved, len) = bus.remove(0x1000).unwrap();
        assert_eq!(len, 0x100);
        let mut data = [0u8; 1];
        assert!(!bus.read(0x1000, &mut data));
        bus.insert(moved, 0x2000, len).unwrap();
        assert!(bus.write(0x2004, &[7]));
        assert_eq!(dev.lock().unwrap().last_write, Some((4, vec![7])));
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x1000, 0x100)
            .unwrap();
    }

    #[test]
    fn bus_insert_overlapping_range_is_refused() {
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x100, 0x10)
            .unwrap();
        for (base, len) in [(0xf8, 0x9), (0x10f, 1), (0x80, 0x200)] {
            let err = bus.insert(Arc::new(Mutex::new(Recorder::default())), base, len);
            assert!(
                matches!(err, Err(BusError::Overlap { .. })),
                "{base:#x}+{len:#x}"
            );
        }
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x110, 1)
            .unwrap();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0xff, 1)
            .unwrap();
        assert!(matches!(
            bus.insert(Arc::new(Mutex::new(Recorder::default())), u64::MAX, 2),
            Err(BusError::BadRange { .. })
        ));
    }
}
