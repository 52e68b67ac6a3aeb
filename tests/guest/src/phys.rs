//! Reads and writes of physical memory through the identity map, unaligned
//! and volatile (firmware tables and device registers).
//!
//! Callers pass addresses that `paging` maps: everything below 4 GiB, and
//! RAM above it.

/// Reads a byte at physical `addr`.
pub fn read_u8(addr: u64) -> u8 {
    // SAFETY: identity mapped (module doc); a byte read of RAM, a firmware
    // table or a device register has no effect on Rust-owned memory.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

/// Reads a little-endian u32 at physical `addr` (possibly unaligned).
pub fn read_u32(addr: u64) -> u32 {
    // SAFETY: as for `read_u8`; read_unaligned allows any alignment.
    unsafe { core::ptr::read_unaligned(addr as *const u32) }
}

/// Reads a little-endian u64 at physical `addr` (possibly unaligned).
pub fn read_u64(addr: u64) -> u64 {
    // SAFETY: as for `read_u32`.
    unsafe { core::ptr::read_unaligned(addr as *const u64) }
}

/// Writes a byte to a device register at physical `addr`.
pub fn write_u8(addr: u64, value: u8) {
    // SAFETY: callers pass device registers (ACPI GAS in memory space),
    // which no Rust object occupies.
    unsafe { core::ptr::write_volatile(addr as *mut u8, value) };
}

/// Writes a u16 to a device register at physical `addr`.
pub fn write_u16(addr: u64, value: u16) {
    // SAFETY: as for `write_u8`.
    unsafe { core::ptr::write_volatile(addr as *mut u16, value) };
}

/// Whether `[addr, addr + len)` lies below 4 GiB, which is always mapped.
pub fn below_4g(addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some_and(|end| end <= 1 << 32)
}
