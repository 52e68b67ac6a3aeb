//! The Xen PVH `hvm_start_info` the loader passes in EBX: copied into the
//! image first thing, since the memory test overwrites RAM (and the copy
//! no longer depends on where a loader put it).

use crate::phys;

/// `hvm_start_info.magic`.
const START_INFO_MAGIC: u32 = 0x336E_C578;
/// Offsets in `struct hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h).
const OFF_MAGIC: u64 = 0;
const OFF_VERSION: u64 = 4;
const OFF_CMDLINE: u64 = 24;
const OFF_RSDP: u64 = 32;
const OFF_MEMMAP: u64 = 40;
const OFF_MEMMAP_ENTRIES: u64 = 48;
/// Size of `struct hvm_memmap_table_entry` (addr, size, type, reserved).
const MEMMAP_ENTRY_SIZE: u64 = 24;

/// Most memory map entries kept.
pub const MAX_RANGES: usize = 128;
/// Longest command line kept (longer ones are cut).
pub const MAX_CMDLINE: usize = 1024;

/// Memory map type of usable RAM.
pub const E820_RAM: u32 = 1;

/// One memory map entry.
#[derive(Clone, Copy, Default)]
pub struct MemRange {
    /// Physical start.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// 1 RAM, 2 reserved, 3 ACPI, ...
    pub kind: u32,
}

impl MemRange {
    /// End (exclusive), saturating.
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }
}

/// What the guest keeps of the start info.
pub struct BootInfo {
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    ranges: [MemRange; MAX_RANGES],
    range_count: usize,
    /// Physical address of the RSDP (0: not given, search for it).
    pub rsdp: u64,
}

impl BootInfo {
    /// Reads the start info at `paddr` (identity mapped, in the first GiB).
    pub fn read(paddr: u64) -> Result<BootInfo, &'static str> {
        if paddr == 0 || paddr >= 1 << 30 {
            return Err("start info address outside the first GiB");
        }
        if phys::read_u32(paddr + OFF_MAGIC) != START_INFO_MAGIC {
            return Err("bad start info magic");
        }
        let version = phys::read_u32(paddr + OFF_VERSION);
        let mut info = BootInfo {
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
            ranges: [MemRange::default(); MAX_RANGES],
            range_count: 0,
            rsdp: phys::read_u64(paddr + OFF_RSDP),
        };
        let cmdline = phys::read_u64(paddr + OFF_CMDLINE);
        if cmdline != 0 {
            while info.cmdline_len < MAX_CMDLINE {
                let byte = phys::read_u8(cmdline + info.cmdline_len as u64);
                if byte == 0 {
                    break;
                }
                info.cmdline[info.cmdline_len] = byte;
                info.cmdline_len += 1;
            }
        }
        if version >= 1 {
            let memmap = phys::read_u64(paddr + OFF_MEMMAP);
            let entries = phys::read_u32(paddr + OFF_MEMMAP_ENTRIES) as usize;
            if memmap != 0 {
                for i in 0..entries.min(MAX_RANGES) {
                    let entry = memmap + i as u64 * MEMMAP_ENTRY_SIZE;
                    info.ranges[i] = MemRange {
                        addr: phys::read_u64(entry),
                        size: phys::read_u64(entry + 8),
                        kind: phys::read_u32(entry + 16),
                    };
                    info.range_count += 1;
                }
            }
        }
        Ok(info)
    }

    /// The command line (lossy: non-UTF-8 bytes end it).
    pub fn cmdline(&self) -> &str {
        let bytes = &self.cmdline[..self.cmdline_len];
        match core::str::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
        }
    }

    /// The value of `key=value` on the command line (first occurrence).
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.cmdline().split_ascii_whitespace().find_map(|word| {
            let (k, v) = word.split_once('=')?;
            (k == key).then_some(v)
        })
    }

    /// The memory map as given.
    pub fn ranges(&self) -> &[MemRange] {
        &self.ranges[..self.range_count]
    }

    /// The RAM (type 1) entries of the memory map.
    pub fn ram(&self) -> impl Iterator<Item = &MemRange> {
        self.ranges()
            .iter()
            .filter(|r| r.kind == E820_RAM && r.size != 0)
    }
}
