//! Split virtqueue (virtio 1.2 §2.7): descriptor table, available ring
//! (driver → device) and used ring (device → driver) in guest RAM.
//!
//! Descriptor management is left to the caller (the block driver gives
//! every request slot a fixed run of descriptors), so the queue only
//! writes descriptors, publishes chain heads and collects used entries.

use core::sync::atomic::{fence, Ordering};

use super::mmio;
use crate::bootinfo::BootInfo;
use crate::dma;

/// Descriptor flags.
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
/// Available ring flag: no interrupts wanted (polled queue).
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device wants no notifications.
const USED_F_NO_NOTIFY: u16 = 1;

/// A split virtqueue.
#[derive(Clone, Copy, Default)]
pub struct Queue {
    /// Queue index on the device.
    pub index: u16,
    /// Entries (a power of two).
    pub size: u16,
    /// Descriptor table, available ring and used ring (physical).
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Where to write `index` to notify the device.
    pub notify_addr: u64,
    /// Device vector index (into `VMDT_IRQ_COUNTS`), when interrupts are
    /// used.
    pub irq: Option<usize>,
    /// Next available ring index to publish (free-running).
    avail_idx: u16,
    /// Next used ring index to consume (free-running).
    used_idx: u16,
}

fn read16(addr: u64) -> u16 {
    // SAFETY: callers pass an address inside this queue's rings, guest RAM
    // from `dma::alloc` that no Rust object occupies; shared with the
    // device, hence volatile.
    unsafe { core::ptr::read_volatile(addr as *const u16) }
}

fn read32(addr: u64) -> u32 {
    // SAFETY: as for `read16`.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn write16(addr: u64, value: u16) {
    // SAFETY: as for `read16`.
    unsafe { core::ptr::write_volatile(addr as *mut u16, value) }
}

fn write32(addr: u64, value: u32) {
    // SAFETY: as for `read16`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

fn write64(addr: u64, value: u64) {
    // SAFETY: as for `read16`.
    unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
}

impl Queue {
    /// Allocates zeroed rings for a queue of `size` entries.
    pub fn new(boot: &BootInfo, index: u16, size: u16) -> Result<Queue, &'static str> {
        let n = u64::from(size);
        Ok(Queue {
            index,
            size,
            desc: dma::alloc(boot, 16 * n, 4096)?,
            avail: dma::alloc(boot, 6 + 2 * n, 4096)?,
            used: dma::alloc(boot, 6 + 8 * n, 4096)?,
            ..Queue::default()
        })
    }

    /// Asks the device not to interrupt (polled completion).
    pub fn suppress_interrupts(&self) {
        write16(self.avail, AVAIL_F_NO_INTERRUPT);
    }

    /// Writes descriptor `i`.
    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc + 16 * u64::from(i);
        write64(d, addr);
        write32(d + 8, len);
        write16(d + 12, flags);
        write16(d + 14, next);
    }

    /// Points descriptor `i` of every entry at the device-writable buffer
    /// of `len` bytes at `base + i * stride`.
    pub fn set_write_bufs(&self, base: u64, stride: u64, len: u32) {
        for i in 0..self.size {
            self.set_desc(i, base + u64::from(i) * stride, len, DESC_F_WRITE, 0);
        }
    }

    /// Pushes every descriptor `0..size` as a chain of its own and
    /// publishes them.
    pub fn post_all(&mut self) {
        for i in 0..self.size {
            self.push(i);
        }
        self.publish();
    }

    /// Puts chain `head` into the available ring (not yet visible to the
    /// device: see [`Self::publish`]).
    pub fn push(&mut self, head: u16) {
        let slot = self.avail_idx % self.size;
        write16(self.avail + 4 + 2 * u64::from(slot), head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Makes the pushed chains visible (avail idx) and notifies the device
    /// unless it asked not to be. Returns whether it notified.
    pub fn publish(&self) -> bool {
        // Descriptors and ring entries before the index.
        fence(Ordering::SeqCst);
        write16(self.avail + 2, self.avail_idx);
        // The index before reading the device's flags (store → load).
        fence(Ordering::SeqCst);
        if read16(self.used) & USED_F_NO_NOTIFY != 0 {
            return false;
        }
        mmio::w16(self.notify_addr, self.index);
        true
    }

    /// Whether the device has returned chains not yet taken.
    pub fn has_used(&self) -> bool {
        read16(self.used + 2) != self.used_idx
    }

    /// The next used entry (chain head id, bytes written), if any.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        if !self.has_used() {
            return None;
        }
        // The index before the entry it covers.
        fence(Ordering::SeqCst);
        let slot = self.used_idx % self.size;
        let entry = self.used + 4 + 8 * u64::from(slot);
        let id = read32(entry);
        let len = read32(entry + 4);
        self.used_idx = self.used_idx.wrapping_add(1);
        Some((id, len))
    }
}
