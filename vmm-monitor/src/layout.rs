//! The guest-physical memory map of the x86_64 machine the monitor builds.
//!
//! Every fixed guest address lives here, so that loaders, ACPI, the vCPU
//! setup and the devices agree on one map:
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BDA (left zero)
//! 0x0000_0500  boot GDT (Linux 64-bit boot only)
//! 0x0000_0530  boot IDT (empty; Linux 64-bit boot only)
//! 0x0000_0600  boot stack, growing down from 0x5ff0 (Linux 64-bit boot only)
//! 0x0000_6000  PVH hvm_start_info, module list, memory map
//! 0x0000_7000  Linux zero page (struct boot_params)
//! 0x0000_8000  free for the guest (never written by the monitor)
//! 0x0000_9000  boot page tables PML4/PDPT/PD (Linux 64-bit boot only)
//! 0x0002_0000  kernel command line (up to CMDLINE_MAX_SIZE)
//! 0x0009_fc00  EBDA start; end of low RAM in the e820 map
//! 0x000e_0000  ACPI tables (RSDP first), inside the BIOS area Linux scans
//! 0x0010_0000  kernel (1 MiB)
//!              ... RAM up to min(ram, 3 GiB)
//! 0xc000_0000  32-bit PCI MMIO hole (3 GiB .. 4 GiB)
//! 0xfec0_0000  IOAPIC
//! 0xfee0_0000  LAPIC
//! 0x1_0000_0000  RAM above 4 GiB: whatever did not fit below the hole
//! ```

use vm_memory::GuestAddress;

/// Start of the boot GDT used for the Linux 64-bit entry.
pub const BOOT_GDT_START: GuestAddress = GuestAddress(0x500);
/// Start of the (empty) boot IDT used for the Linux 64-bit entry, after the
/// five 8-byte entries of the boot GDT (null, null, code, data, TSS).
pub const BOOT_IDT_START: GuestAddress = GuestAddress(0x530);
/// Initial stack pointer of the Linux 64-bit entry: the stack grows down
/// through 0x600..0x5ff0, which nothing else uses (16-byte aligned).
pub const BOOT_STACK_POINTER: GuestAddress = GuestAddress(0x5ff0);

/// PVH `hvm_start_info`; its address is passed to the guest in EBX.
pub const PVH_INFO_START: GuestAddress = GuestAddress(0x6000);
/// PVH module list (`hvm_modlist_entry` array), right after the start info.
pub const PVH_MODLIST_START: GuestAddress = GuestAddress(0x6040);
/// PVH memory map (`hvm_memmap_table_entry` array).
pub const PVH_MEMMAP_START: GuestAddress = GuestAddress(0x6100);
/// Most entries the PVH memory map area may hold (0x6100..0x7000, 24 bytes each).
pub const PVH_MEMMAP_MAX_ENTRIES: usize = (0x7000 - 0x6100) / 24;

/// Linux zero page (`struct boot_params`); its address is passed in RSI.
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);

/// First page the monitor promises never to write in any boot mode below
/// 1 MiB, so that a guest may put its AP start-up trampoline there (the
/// SIPI vector is this address >> 12).
pub const GUEST_FREE_LOW_PAGE: GuestAddress = GuestAddress(0x8000);

/// Linux 64-bit boot identity page tables: PML4, then PDPT, then PD.
pub const BOOT_PML4_START: GuestAddress = GuestAddress(0x9000);
/// Page directory pointer table of the boot identity map.
pub const BOOT_PDPT_START: GuestAddress = GuestAddress(0xa000);
/// Page directory of the boot identity map (2 MiB pages, first 1 GiB).
pub const BOOT_PD_START: GuestAddress = GuestAddress(0xb000);

/// Kernel command line.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x20000);
/// Room reserved for the command line, NUL terminator included.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;

/// End of the RAM reported below the EBDA (e820 entry 0 is [0, EBDA_START)).
pub const EBDA_START: GuestAddress = GuestAddress(0x9fc00);

/// ACPI tables: the RSDP sits here (16-byte aligned, inside 0xE0000..0xFFFFF
/// where a guest that is not told the RSDP address searches for it).
pub const ACPI_START: GuestAddress = GuestAddress(0xe0000);
/// Room for all ACPI tables.
pub const ACPI_MAX_SIZE: u64 = 0x20000;

/// Where kernels are loaded: 1 MiB ("high memory" in the Linux boot protocol).
pub const HIMEM_START: GuestAddress = GuestAddress(0x10_0000);

/// Start of the 32-bit MMIO hole: RAM stops here and continues at 4 GiB.
pub const MMIO_HOLE_START: GuestAddress = GuestAddress(0xc000_0000);
/// Size of the 32-bit MMIO hole (3 GiB .. 4 GiB).
pub const MMIO_HOLE_SIZE: u64 = 1 << 30;
/// First address above the 32-bit MMIO hole.
pub const RAM_HIGH_START: GuestAddress = GuestAddress(1 << 32);

/// Window of the hole given to 32-bit PCI BARs (below the IOAPIC).
pub const PCI_MMIO32_START: GuestAddress = MMIO_HOLE_START;
/// Size of the 32-bit PCI BAR window.
pub const PCI_MMIO32_SIZE: u64 = IOAPIC_START.0 - PCI_MMIO32_START.0;

/// IOAPIC MMIO base (fixed by the in-kernel irqchip).
pub const IOAPIC_START: GuestAddress = GuestAddress(0xfec0_0000);
/// LAPIC MMIO base (architectural default).
pub const LAPIC_START: GuestAddress = GuestAddress(0xfee0_0000);

/// Address KVM uses for its TSS (three pages inside the MMIO hole, below the IOAPIC).
pub const KVM_TSS_ADDRESS: u64 = 0xfeff_d000;
/// Address KVM uses for its identity map page (one page just below the TSS).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfeff_c000;

/// Number of legacy IOAPIC pins routed by the in-kernel irqchip.
pub const IOAPIC_PINS: u32 = 24;

/// The RAM regions of a guest with `ram_size` bytes: one region if it fits
/// below the MMIO hole, otherwise the part below the hole and the rest
/// starting at 4 GiB.
pub fn ram_regions(ram_size: u64) -> Vec<(GuestAddress, u64)> {
    if ram_size <= MMIO_HOLE_START.0 {
        vec![(GuestAddress(0), ram_size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START.0),
            (RAM_HIGH_START, ram_size - MMIO_HOLE_START.0),
        ]
    }
}

/// Kind of an entry in the guest's memory map (the e820 type codes, which
/// PVH's `hvm_memmap_table_entry` uses too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MemoryKind {
    /// Usable RAM.
    Ram = 1,
    /// Reserved: the guest must not use it.
    Reserved = 2,
    /// ACPI tables, reclaimable after the guest has read them.
    Acpi = 3,
}

/// One entry of the guest memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// First guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: MemoryKind,
}

/// The memory map both boot protocols report (e820 for bzImage, the PVH
/// memory map for ELF kernels), sorted by address:
/// low RAM below the EBDA, the ACPI area, RAM from 1 MiB, and RAM above 4 GiB.
pub fn memory_map(ram_size: u64) -> Vec<MemoryMapEntry> {
    let mut map = vec![
        MemoryMapEntry {
            addr: 0,
            size: EBDA_START.0,
            kind: MemoryKind::Ram,
        },
        MemoryMapEntry {
            addr: ACPI_START.0,
            size: ACPI_MAX_SIZE,
            kind: MemoryKind::Acpi,
        },
    ];
    for (start, size) in ram_regions(ram_size) {
        let start = start.0.max(HIMEM_START.0);
        let end = if start == HIMEM_START.0 {
            size
        } else {
            start + size
        };
        if end > start {
            map.push(MemoryMapEntry {
                addr: start,
                size: end - start,
                kind: MemoryKind::Ram,
            });
        }
    }
    map
}

// The fixed areas must not overlap: checked when the crate is built.
const _: () =
    assert!(PVH_MEMMAP_START.0 + (PVH_MEMMAP_MAX_ENTRIES as u64) * 24 <= ZERO_PAGE_START.0);
const _: () = assert!(ZERO_PAGE_START.0 + 0x1000 <= GUEST_FREE_LOW_PAGE.0);
const _: () = assert!(GUEST_FREE_LOW_PAGE.0 + 0x1000 <= BOOT_PML4_START.0);
const _: () = assert!(BOOT_PD_START.0 + 0x1000 <= CMDLINE_START.0);
const _: () = assert!(CMDLINE_START.0 + CMDLINE_MAX_SIZE as u64 <= EBDA_START.0);
const _: () = assert!(ACPI_START.0 + ACPI_MAX_SIZE <= HIMEM_START.0);
const _: () = assert!(KVM_TSS_ADDRESS + 3 * 0x1000 <= 1 << 32);
const _: () = assert!(KVM_IDENTITY_MAP_ADDRESS + 0x1000 <= KVM_TSS_ADDRESS);
const _: () = assert!(LAPIC_START.0 + 0x1000 <= KVM_IDENTITY_MAP_ADDRESS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_regions_small_guest_is_one_region() {
        assert_eq!(ram_regions(512 << 20), vec![(GuestAddress(0), 512 << 20)]);
    }

    #[test]
    fn ram_regions_large_guest_skips_mmio_hole() {
        let r = ram_regions(5 << 30);
        assert_eq!(
            r,
            vec![(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 2 << 30)]
        );
    }

    #[test]
    fn memory_map_counts_every_ram_byte_above_1m() {
        let ram = (3 << 30) + (64 << 20);
        let map = memory_map(ram);
        let high: u64 = map
            .iter()
            .filter(|e| e.kind == MemoryKind::Ram && e.addr >= HIMEM_START.0)
            .map(|e| e.size)
            .sum();
        assert_eq!(high, ram - HIMEM_START.0);
        assert!(map.windows(2).all(|w| w[0].addr + w[0].size <= w[1].addr));
        assert!(map
            .iter()
            .all(|e| e.addr + e.size <= MMIO_HOLE_START.0 || e.addr >= RAM_HIGH_START.0));
    }
}
