//! virtio 1.x (modern) over PCI, driven at CPL3: the PCI transport
//! (`transport`), split virtqueues (`queue`), the initialisation steps
//! the drivers share (`setup`), the block device (`blk`) and
//! the console (`console`, port 0 only) and the network device (`net`).
//!
//! Everything is in guest RAM or in BARs identity mapped by `paging`/`pci`,
//! so guest-physical addresses are used directly as pointers.

pub mod blk;
pub mod console;
pub mod net;
pub mod queue;
pub mod setup;
pub mod transport;

/// PCI vendor ID of virtio devices.
pub const VENDOR: u16 = 0x1AF4;
/// Device type of a network device.
pub const TYPE_NET: u16 = 1;
/// Device type of a block device.
pub const TYPE_BLOCK: u16 = 2;
/// Device type of a console.
pub const TYPE_CONSOLE: u16 = 3;

/// Device status bits.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 64;
pub const STATUS_FAILED: u8 = 128;

/// Feature bit: the device complies with virtio 1.x.
pub const F_VERSION_1: u64 = 1 << 32;

/// Volatile MMIO accessors for device registers (common, notify, device
/// configuration) inside BARs mapped by `pci::Function::map_bar`.
pub mod mmio {
    /// Reads a byte.
    pub fn r8(addr: u64) -> u8 {
        // SAFETY: callers pass an address inside a mapped virtio structure
        // (uncached device memory, no Rust object).
        unsafe { core::ptr::read_volatile(addr as *const u8) }
    }
    /// Reads a naturally aligned u16.
    pub fn r16(addr: u64) -> u16 {
        // SAFETY: as for `r8`; registers are naturally aligned.
        unsafe { core::ptr::read_volatile(addr as *const u16) }
    }
    /// Reads a naturally aligned u32.
    pub fn r32(addr: u64) -> u32 {
        // SAFETY: as for `r16`.
        unsafe { core::ptr::read_volatile(addr as *const u32) }
    }
    /// Writes a byte.
    pub fn w8(addr: u64, value: u8) {
        // SAFETY: as for `r8`.
        unsafe { core::ptr::write_volatile(addr as *mut u8, value) }
    }
    /// Writes a naturally aligned u16.
    pub fn w16(addr: u64, value: u16) {
        // SAFETY: as for `r16`.
        unsafe { core::ptr::write_volatile(addr as *mut u16, value) }
    }
    /// Writes a naturally aligned u32.
    pub fn w32(addr: u64, value: u32) {
        // SAFETY: as for `r16`.
        unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
    }
    /// Writes a u64 register as two 32-bit halves, low first.
    pub fn w64(addr: u64, value: u64) {
        w32(addr, value as u32);
        w32(addr + 4, (value >> 32) as u32);
    }
}
