//! PCI on bus 0 by configuration mechanism #1 (ports 0xCF8/0xCFC, 32-bit
//! accesses, allowed at CPL3 by the TSS I/O bitmap): scan, capability
//! lists, BARs (sized, assigned from a bump allocator in the 32-bit hole
//! when unassigned, mapped uncached and user-accessible) and MSI-X.

use core::fmt;

use crate::scenarios::Reason;
use crate::{cpu, paging, phys};

const CONFIG_ADDRESS: u16 = 0xCF8;
const CONFIG_DATA: u16 = 0xCFC;

/// Configuration space offsets (type 0 header).
const REG_ID: u8 = 0x00;
const REG_COMMAND: u8 = 0x04;
const REG_CLASS: u8 = 0x08;
const REG_HEADER: u8 = 0x0C;
const REG_BAR0: u8 = 0x10;
const REG_SUBSYSTEM: u8 = 0x2C;
const REG_CAP_PTR: u8 = 0x34;
/// Command: memory space, bus master.
const CMD_MEMORY: u32 = 1 << 1;
const CMD_BUS_MASTER: u32 = 1 << 2;
/// Command: I/O space.
const CMD_IO: u32 = 1 << 0;
/// Status (upper half of REG_COMMAND): capability list present.
const STATUS_CAP_LIST: u32 = 1 << 20;
/// Capability ID of MSI-X.
pub const CAP_MSIX: u8 = 0x11;
/// Capability ID of vendor-specific capabilities (virtio uses them).
pub const CAP_VENDOR: u8 = 0x09;

/// Where unassigned memory BARs go: the 32-bit hole below the IOAPIC.
const HOLE_START: u64 = 0xC000_0000;
const HOLE_END: u64 = 0xFEC0_0000;

/// Most functions kept by a scan.
pub const MAX_FUNCTIONS: usize = 64;

/// One PCI function on bus 0.
#[derive(Clone, Copy, Default)]
pub struct Function {
    pub dev: u8,
    pub func: u8,
    pub vendor: u16,
    pub device: u16,
    /// Class, subclass, programming interface (bits 23:16, 15:8, 7:0).
    pub class: u32,
    /// Header type without the multi-function bit.
    pub header_type: u8,
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "00:{:02x}.{}", self.dev, self.func)
    }
}

fn address(dev: u8, func: u8, offset: u8) -> u32 {
    (1 << 31) | (u32::from(dev) << 11) | (u32::from(func) << 8) | u32::from(offset & 0xFC)
}

fn read_raw(dev: u8, func: u8, offset: u8) -> u32 {
    cpu::outl(CONFIG_ADDRESS, address(dev, func, offset));
    cpu::inl(CONFIG_DATA)
}

/// The functions found by [`scan`].
pub struct Functions {
    list: [Function; MAX_FUNCTIONS],
    len: usize,
}

impl Functions {
    /// The functions, in slot/function order.
    pub fn iter(&self) -> impl Iterator<Item = &Function> {
        self.list[..self.len].iter()
    }
}

/// Scans bus 0: all 32 slots, functions 1..8 of multi-function devices.
pub fn scan() -> Functions {
    let mut found = Functions {
        list: [Function::default(); MAX_FUNCTIONS],
        len: 0,
    };
    for dev in 0..32u8 {
        for func in 0..8u8 {
            let id = read_raw(dev, func, REG_ID);
            if id & 0xFFFF == 0xFFFF {
                if func == 0 {
                    break;
                }
                continue;
            }
            let header = (read_raw(dev, func, REG_HEADER) >> 16) as u8;
            if found.len < MAX_FUNCTIONS {
                found.list[found.len] = Function {
                    dev,
                    func,
                    vendor: id as u16,
                    device: (id >> 16) as u16,
                    class: read_raw(dev, func, REG_CLASS) >> 8,
                    header_type: header & 0x7F,
                };
                found.len += 1;
            }
            if func == 0 && header & 0x80 == 0 {
                break;
            }
        }
    }
    found
}

/// A decoded base address register.
#[derive(Clone, Copy, Debug)]
pub struct Bar {
    /// Base address (memory or I/O port).
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// A 64-bit memory BAR (takes this and the next register).
    pub mem64: bool,
    /// An I/O BAR.
    pub io: bool,
}

impl Function {
    /// Reads the configuration doubleword at `offset` (aligned down).
    pub fn read32(&self, offset: u8) -> u32 {
        read_raw(self.dev, self.func, offset)
    }

    /// Writes the configuration doubleword at `offset` (aligned down).
    pub fn write32(&self, offset: u8, value: u32) {
        cpu::outl(CONFIG_ADDRESS, address(self.dev, self.func, offset));
        cpu::outl(CONFIG_DATA, value);
    }

    /// Subsystem device ID (the device type of a transitional virtio device).
    pub fn subsystem_id(&self) -> u16 {
        (self.read32(REG_SUBSYSTEM) >> 16) as u16
    }

    /// Sets bits of the command register (status bits written as 0, so no
    /// write-1-to-clear status bit is touched).
    fn set_command(&self, set: u32, clear: u32) {
        let cmd = self.read32(REG_COMMAND) & 0xFFFF;
        self.write32(REG_COMMAND, (cmd | set) & !clear);
    }

    /// Enables memory space decoding and bus mastering (DMA, MSI-X).
    pub fn enable_memory_and_dma(&self) {
        self.set_command(CMD_MEMORY | CMD_BUS_MASTER, 0);
    }

    /// The capability list as (offset, id) pairs (bounded: 48 entries).
    pub fn capabilities(&self) -> impl Iterator<Item = (u8, u8)> + '_ {
        let mut next = if self.read32(REG_COMMAND) & STATUS_CAP_LIST != 0 {
            (self.read32(REG_CAP_PTR) & 0xFC) as u8
        } else {
            0
        };
        let mut left = 48;
        core::iter::from_fn(move || {
            if next < 0x40 || left == 0 {
                return None;
            }
            left -= 1;
            let offset = next;
            let head = self.read32(offset);
            next = ((head >> 8) & 0xFC) as u8;
            Some((offset, head as u8))
        })
    }

    /// Reads and sizes BAR `index` (0..6); None if it is not implemented
    /// or is the upper half of a 64-bit BAR. Decoding is off while sizing.
    pub fn probe_bar(&self, index: u8) -> Option<Bar> {
        if self.header_type != 0 || index >= 6 {
            return None;
        }
        let reg = REG_BAR0 + 4 * index;
        let low = self.read32(reg);
        let io = low & 1 != 0;
        let mem64 = !io && (low >> 1) & 3 == 2;
        if mem64 && index == 5 {
            return None;
        }
        let cmd = self.read32(REG_COMMAND) & 0xFFFF;
        self.set_command(0, CMD_MEMORY | CMD_IO);
        self.write32(reg, 0xFFFF_FFFF);
        let low_mask = self.read32(reg);
        self.write32(reg, low);
        if low_mask == 0 {
            self.write32(REG_COMMAND, cmd);
            return None;
        }
        let (mut addr, mut mask) = if io {
            (
                u64::from(low & !3),
                u64::from(low_mask & !3) | 0xFFFF_FFFF_FFFF_0000,
            )
        } else {
            (u64::from(low & !0xF), u64::from(low_mask & !0xF))
        };
        if mem64 {
            let high = self.read32(reg + 4);
            self.write32(reg + 4, 0xFFFF_FFFF);
            let high_mask = self.read32(reg + 4);
            self.write32(reg + 4, high);
            addr |= u64::from(high) << 32;
            mask |= u64::from(high_mask) << 32;
        } else if !io {
            mask |= 0xFFFF_FFFF_0000_0000;
        }
        self.write32(REG_COMMAND, cmd);
        let size = (!mask).wrapping_add(1);
        if mask == 0xFFFF_FFFF_0000_0000 || mask == 0 || size == 0 {
            return None;
        }
        Some(Bar {
            addr,
            size,
            mem64,
            io,
        })
    }

    /// Writes a memory BAR's base address.
    fn set_bar(&self, index: u8, bar: &Bar) {
        let reg = REG_BAR0 + 4 * index;
        let flags = self.read32(reg) & 0xF;
        self.write32(reg, (bar.addr as u32 & !0xF) | flags);
        if bar.mem64 {
            self.write32(reg + 4, (bar.addr >> 32) as u32);
        }
    }

    /// Turns memory decoding off and sets every memory BAR to 0
    /// (unassigned), so that [`Self::map_bar`] assigns them anew: the
    /// allocator path, testable where firmware has assigned BARs already.
    pub fn unassign_bars(&self) {
        self.set_command(0, CMD_MEMORY);
        let mut index = 0;
        while index < 6 {
            match self.probe_bar(index) {
                Some(mut bar) if !bar.io => {
                    bar.addr = 0;
                    self.set_bar(index, &bar);
                    index += if bar.mem64 { 2 } else { 1 };
                }
                _ => index += 1,
            }
        }
    }

    /// Memory BAR `index`, assigned in the 32-bit hole if it was
    /// unassigned (0) and mapped (uncached, user-accessible).
    pub fn map_bar(&self, index: u8) -> Result<Bar, Reason> {
        let Some(mut bar) = self.probe_bar(index) else {
            crate::fail!("{self}: BAR{index} not implemented");
        };
        if bar.io {
            crate::fail!("{self}: BAR{index} is an I/O BAR");
        }
        if bar.addr == 0 {
            bar.addr = alloc_mmio(bar.size)?;
            self.set_bar(index, &bar);
        }
        if bar.addr >= 1 << 32 {
            let boot = crate::BOOT.get().ok_or("no boot info")?;
            if let Err(e) = paging::map_mmio(boot, bar.addr, bar.size) {
                crate::fail!("{self}: BAR{index} at {:#x}: {e}", bar.addr);
            }
        } else if !phys::below_4g(bar.addr, bar.size) {
            crate::fail!("{self}: BAR{index} crosses 4 GiB");
        }
        Ok(bar)
    }
}

/// Allocates `size` bytes (a power of two, also the alignment) for a BAR
/// in the hole: the lowest aligned range that overlaps no BAR assigned on
/// bus 0 and no memory map entry (firmware may have used the hole's top).
fn alloc_mmio(size: u64) -> Result<u64, Reason> {
    let boot = crate::BOOT.get().ok_or("no boot info")?;
    let mut addr = HOLE_START;
    'search: while addr + size <= HOLE_END {
        let overlaps = |start: u64, len: u64| start < addr + size && addr < start + len;
        for range in boot.ranges() {
            if overlaps(range.addr, range.size) {
                addr = (range.end() + size - 1) & !(size - 1);
                continue 'search;
            }
        }
        for f in scan().iter() {
            for index in 0..6 {
                if let Some(bar) = f.probe_bar(index) {
                    if !bar.io && bar.addr != 0 && overlaps(bar.addr, bar.size) {
                        addr = (bar.addr + bar.size + size - 1) & !(size - 1);
                        continue 'search;
                    }
                }
            }
        }
        return Ok(addr);
    }
    crate::fail!("no room for a {size:#x}-byte BAR below {HOLE_END:#x}")
}

/// MSI-X of one function: the capability and its (mapped) vector table.
pub struct Msix {
    func: Function,
    cap: u8,
    table: u64,
    /// Table entries.
    pub entries: u16,
}

/// Message control (upper half of the capability's first doubleword).
const MSIX_ENABLE: u32 = 1 << 31;
const MSIX_FUNCTION_MASK: u32 = 1 << 30;
/// Vector control: masked.
const MSIX_ENTRY_MASKED: u32 = 1;

impl Msix {
    /// The MSI-X capability of `func`, if it has one.
    pub fn find(func: &Function) -> Result<Option<Msix>, Reason> {
        let Some((cap, _)) = func.capabilities().find(|&(_, id)| id == CAP_MSIX) else {
            return Ok(None);
        };
        let control = func.read32(cap) >> 16;
        let table_reg = func.read32(cap + 4);
        let bar = func.map_bar((table_reg & 7) as u8)?;
        let entries = (control & 0x7FF) as u16 + 1;
        let offset = u64::from(table_reg & !7);
        if offset + u64::from(entries) * 16 > bar.size {
            crate::fail!("{func}: MSI-X table outside its BAR");
        }
        Ok(Some(Msix {
            func: *func,
            cap,
            table: bar.addr + offset,
            entries,
        }))
    }

    /// Points entry `index` at `vector` on the CPU with xAPIC ID `apic_id`
    /// (fixed delivery, edge) and unmasks it.
    pub fn set_entry(&self, index: u16, apic_id: u32, vector: u8) {
        let entry = self.table + u64::from(index) * 16;
        write32(entry + 12, MSIX_ENTRY_MASKED);
        write32(entry, 0xFEE0_0000 | (apic_id << 12));
        write32(entry + 4, 0);
        write32(entry + 8, u32::from(vector));
        write32(entry + 12, 0);
    }

    /// Enables MSI-X (function mask clear).
    pub fn enable(&self) {
        let head = self.func.read32(self.cap);
        self.func
            .write32(self.cap, (head | MSIX_ENABLE) & !MSIX_FUNCTION_MASK);
    }
}

/// A 32-bit write to device memory (an MSI-X table entry).
fn write32(addr: u64, value: u32) {
    // SAFETY: callers pass an MSI-X table inside a BAR mapped by `map_bar`
    // (uncached device memory, no Rust object), 4-byte aligned.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) };
}
