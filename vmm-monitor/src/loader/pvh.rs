//! PVH ELF loading (xenbits.xen.org/docs/unstable/misc/pvh.html).
//!
//! The ELF's PT_LOAD segments are copied to their `p_paddr` by
//! linux-loader's `Elf`, which also finds the `XEN_ELFNOTE_PHYS32_ENTRY`
//! note: its 32-bit address is where the kernel is entered. The boot
//! information is a `hvm_start_info` (version 1) at
//! [`layout::PVH_INFO_START`], pointing at the command line
//! ([`layout::CMDLINE_START`]), the memory map ([`layout::PVH_MEMMAP_START`]),
//! the RSDP and, when there is an initrd, a one-entry module list
//! ([`layout::PVH_MODLIST_START`]).

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{Elf, KernelLoader};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use super::{
    check_cmdline, load_initrd, low_ram_end, page_align_up, write_cmdline, BootProtocol, Image,
    KernelEntry, LoadParams, LoaderError, LAYOUT_CMDLINE_MAX_LEN,
};
use crate::layout;
use std::io::SeekFrom;

/// `hvm_start_info` version we write: 1 adds the memory map fields.
pub const START_INFO_VERSION: u32 = 1;
/// Module-list entries that fit between the module list and the memory map.
const MODLIST_MAX_ENTRIES: u64 = (layout::PVH_MEMMAP_START.0 - layout::PVH_MODLIST_START.0)
    / std::mem::size_of::<hvm_modlist_entry>() as u64;
const _: () = assert!(MODLIST_MAX_ENTRIES >= 1);
const _: () = assert!(
    layout::PVH_INFO_START.0 + std::mem::size_of::<hvm_start_info>() as u64
        <= layout::PVH_MODLIST_START.0
);
const _: () = assert!(std::mem::size_of::<hvm_memmap_table_entry>() == 24);

/// Loads a PVH ELF kernel, its initrd and command line, and writes the
/// start info, module list and memory map.
pub(super) fn load<M: GuestMemoryBackend, F: Image>(
    mem: &M,
    params: LoadParams<'_, F>,
) -> Result<KernelEntry, LoaderError> {
    check_cmdline(
        params.cmdline,
        LAYOUT_CMDLINE_MAX_LEN,
        "the layout's CMDLINE_MAX_SIZE",
    )?;
    check_segments(params.kernel)?;
    let loaded =
        Elf::load(mem, None, params.kernel, Some(layout::HIMEM_START)).map_err(LoaderError::Elf)?;
    let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
        return Err(LoaderError::NoPvhNote);
    };

    let ram_end = low_ram_end(params.ram_size);
    if loaded.kernel_end > ram_end {
        return Err(LoaderError::RamTooSmall {
            needed: loaded.kernel_end,
            available: ram_end,
        });
    }
    let floor = page_align_up(loaded.kernel_end).unwrap_or(u64::MAX);
    let initrd = load_initrd(mem, params.initrd, floor, ram_end)?;
    write_cmdline(mem, params.cmdline)?;

    let memmap = memmap_entries(params.ram_size)?;
    write_at(mem, &memmap, layout::PVH_MEMMAP_START, "PVH memory map")?;
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|(addr, size)| hvm_modlist_entry {
            paddr: addr.0,
            size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    write_at(mem, &modules, layout::PVH_MODLIST_START, "PVH module list")?;
    let info = start_info(memmap.len(), modules.len(), params.rsdp)?;
    write_at(mem, &[info], layout::PVH_INFO_START, "PVH start info")?;

    Ok(KernelEntry {
        protocol: BootProtocol::Pvh,
        entry,
        initrd,
    })
}

/// ELF program header type of a loadable segment.
const PT_LOAD: u32 = 1;
/// Offsets in the ELF64 file header.
const E_PHOFF: usize = 32;
const E_PHENTSIZE: usize = 54;
const E_PHNUM: usize = 56;
/// Size of an ELF64 file header and of a program header.
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;

/// Refuses an ELF with a loadable segment below 1 MiB, where the monitor's
/// own boot structures (start info, command line, ACPI tables) live:
/// linux-loader checks only the entry point, and such a segment would
/// silently overwrite them.
fn check_segments<F: Image>(kernel: &mut F) -> Result<(), LoaderError> {
    let result = first_low_segment(kernel);
    kernel.rewind().map_err(|source| LoaderError::ReadImage {
        what: "kernel",
        source,
    })?;
    match result {
        Some((index, addr, size)) => Err(LoaderError::SegmentBelowHighMemory { index, addr, size }),
        // A truncated or malformed header is linux-loader's to report, with
        // its own error, when it parses the same bytes.
        None => Ok(()),
    }
}

/// The first PT_LOAD segment below 1 MiB: (index, address, size); `None`
/// if there is none or the headers cannot be read.
fn first_low_segment<F: Image>(kernel: &mut F) -> Option<(u64, u64, u64)> {
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(v)
    };
    let mut ehdr = [0u8; EHDR_SIZE];
    kernel.rewind().ok()?;
    kernel.read_exact(&mut ehdr).ok()?;
    if usize::from(u16_at(&ehdr, E_PHENTSIZE)) != PHDR_SIZE {
        return None;
    }
    let phoff = u64_at(&ehdr, E_PHOFF);
    (0..u64::from(u16_at(&ehdr, E_PHNUM))).find_map(|index| {
        let mut phdr = [0u8; PHDR_SIZE];
        let at = phoff.checked_add(index * PHDR_SIZE as u64)?;
        kernel.seek(SeekFrom::Start(at)).ok()?;
        kernel.read_exact(&mut phdr).ok()?;
        let kind = u32::from_le_bytes([phdr[0], phdr[1], phdr[2], phdr[3]]);
        let (paddr, memsz) = (u64_at(&phdr, 24), u64_at(&phdr, 40));
        (kind == PT_LOAD && memsz > 0 && paddr < layout::HIMEM_START.0)
            .then_some((index, paddr, memsz))
    })
}

/// The PVH memory map of a guest with `ram_size` bytes, from
/// [`layout::memory_map`].
pub fn memmap_entries(ram_size: u64) -> Result<Vec<hvm_memmap_table_entry>, LoaderError> {
    let map = layout::memory_map(ram_size);
    if map.len() > layout::PVH_MEMMAP_MAX_ENTRIES {
        return Err(LoaderError::TooManyMemoryMapEntries {
            count: map.len(),
            max: layout::PVH_MEMMAP_MAX_ENTRIES,
            table: "PVH memory map",
        });
    }
    Ok(map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        })
        .collect())
}

/// The `hvm_start_info` pointing at the fixed areas of the layout.
pub fn start_info(
    memmap_entries: usize,
    modules: usize,
    rsdp: Option<GuestAddress>,
) -> Result<hvm_start_info, LoaderError> {
    let count = |n: usize, what| {
        u32::try_from(n).map_err(|_| LoaderError::AboveFourGib {
            what,
            addr: n as u64,
        })
    };
    Ok(hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: START_INFO_VERSION,
        flags: 0,
        nr_modules: count(modules, "module count")?,
        modlist_paddr: if modules > 0 {
            layout::PVH_MODLIST_START.0
        } else {
            0
        },
        cmdline_paddr: layout::CMDLINE_START.0,
        rsdp_paddr: rsdp.map_or(0, |a| a.0),
        memmap_paddr: layout::PVH_MEMMAP_START.0,
        memmap_entries: count(memmap_entries, "memory map entry count")?,
        reserved: 0,
    })
}

/// Writes `items` back to back from `addr`.
fn write_at<M: GuestMemoryBackend, T: ByteValued>(
    mem: &M,
    items: &[T],
    addr: GuestAddress,
    what: &'static str,
) -> Result<(), LoaderError> {
    let bytes: Vec<u8> = items.iter().flat_map(|i| i.as_slice().to_vec()).collect();
    mem.write_slice(&bytes, addr)
        .map_err(|source| LoaderError::GuestMemory {
            what,
            addr: addr.0,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::MemoryKind;
    use crate::loader::tests::{params, test_mem, TEST_RAM};
    use crate::loader::{load_kernel, PAGE_SIZE};
    use std::io::Cursor;
    use vm_memory::GuestMemoryMmap;

    const LOAD_ADDR: u64 = 0x10_0000;
    const PVH_ENTRY: u32 = 0x10_0010;
    const CODE: &[u8] = b"\xf4tiny pvh kernel code";
    /// `XEN_ELFNOTE_PHYS32_ENTRY`.
    const NOTE_PHYS32_ENTRY: u32 = 18;

    fn put16(b: &mut [u8], off: usize, v: u16) {
        b[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn put32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put64(b: &mut [u8], off: usize, v: u64) {
        b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// A minimal ELF64: one PT_LOAD with `CODE` at 1 MiB and one PT_NOTE
    /// holding a note of type `note_type` named "Xen" whose descriptor is the
    /// PVH entry.
    fn tiny_elf(note_type: u32) -> Vec<u8> {
        const EHDR: usize = 64;
        const PHDR: usize = 56;
        let note_off = EHDR + 2 * PHDR;
        let mut note = vec![0u8; 12];
        put32(&mut note, 0, 4);
        put32(&mut note, 4, 4);
        put32(&mut note, 8, note_type);
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&PVH_ENTRY.to_le_bytes());
        let code_off = note_off + note.len();

        let mut b = vec![0u8; code_off];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // ELFCLASS64
        b[5] = 1; // little-endian
        b[6] = 1; // EV_CURRENT
        put16(&mut b, 16, 2); // ET_EXEC
        put16(&mut b, 18, 0x3e); // EM_X86_64
        put32(&mut b, 20, 1);
        put64(&mut b, 24, LOAD_ADDR);
        put64(&mut b, 32, EHDR as u64);
        put16(&mut b, 52, EHDR as u16);
        put16(&mut b, 54, PHDR as u16);
        put16(&mut b, 56, 2);
        // PT_LOAD
        let p = EHDR;
        put32(&mut b, p, 1);
        put32(&mut b, p + 4, 5);
        put64(&mut b, p + 8, code_off as u64);
        put64(&mut b, p + 16, LOAD_ADDR);
        put64(&mut b, p + 24, LOAD_ADDR);
        put64(&mut b, p + 32, CODE.len() as u64);
        put64(&mut b, p + 40, 0x3000);
        put64(&mut b, p + 48, 0x1000);
        // PT_NOTE
        let p = EHDR + PHDR;
        put32(&mut b, p, 4);
        put32(&mut b, p + 4, 4);
        put64(&mut b, p + 8, note_off as u64);
        put64(&mut b, p + 32, note.len() as u64);
        put64(&mut b, p + 40, note.len() as u64);
        put64(&mut b, p + 48, 4);
        b[note_off..].copy_from_slice(&note);
        b.extend_from_slice(CODE);
        b
    }

    fn load_elf(
        image: Vec<u8>,
        initrd: Option<Vec<u8>>,
        cmdline: &str,
    ) -> (GuestMemoryMmap, Result<KernelEntry, LoaderError>) {
        let mem = test_mem();
        let mut k = Cursor::new(image);
        let mut i = initrd.map(Cursor::new);
        let r = load_kernel(&mem, params(&mut k, i.as_mut(), cmdline));
        (mem, r)
    }

    #[test]
    fn pvh_segment_below_1m_is_rejected_before_loading() {
        let mut elf = tiny_elf(NOTE_PHYS32_ENTRY);
        put64(&mut elf, 64 + 24, 0xe_0000); // PT_LOAD p_paddr: the ACPI area
        let (mem, r) = load_elf(elf, None, "quiet");
        assert!(
            matches!(
                r,
                Err(LoaderError::SegmentBelowHighMemory {
                    index: 0,
                    addr: 0xe_0000,
                    ..
                })
            ),
            "{r:?}"
        );
        let mut untouched = [0u8; 4];
        mem.read_slice(&mut untouched, GuestAddress(0xe_0000))
            .unwrap();
        assert_eq!(untouched, [0; 4], "nothing was written");
    }

    #[test]
    fn pvh_load_tiny_elf_enters_at_note_entry() {
        let (mem, r) = load_elf(tiny_elf(NOTE_PHYS32_ENTRY), None, "quiet");
        let entry = r.unwrap();
        assert_eq!(entry.protocol, BootProtocol::Pvh);
        assert_eq!(entry.entry.0, u64::from(PVH_ENTRY));
        let mut code = vec![0u8; CODE.len()];
        mem.read_slice(&mut code, GuestAddress(LOAD_ADDR)).unwrap();
        assert_eq!(code, CODE);
    }

    #[test]
    fn pvh_start_info_fields_without_initrd() {
        let (mem, r) = load_elf(tiny_elf(NOTE_PHYS32_ENTRY), None, "quiet");
        r.unwrap();
        let info: hvm_start_info = mem.read_obj(layout::PVH_INFO_START).unwrap();
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.version, 1);
        assert_eq!(info.nr_modules, 0);
        assert_eq!(info.modlist_paddr, 0);
        assert_eq!(info.cmdline_paddr, layout::CMDLINE_START.0);
        assert_eq!(info.rsdp_paddr, layout::ACPI_START.0);
        assert_eq!(info.memmap_paddr, layout::PVH_MEMMAP_START.0);
        assert_eq!(
            info.memmap_entries as usize,
            layout::memory_map(TEST_RAM).len()
        );
        let mut cmdline = [0u8; 6];
        mem.read_slice(&mut cmdline, layout::CMDLINE_START).unwrap();
        assert_eq!(&cmdline, b"quiet\0");
    }

    #[test]
    fn pvh_memmap_matches_layout() {
        let (mem, r) = load_elf(tiny_elf(NOTE_PHYS32_ENTRY), None, "");
        r.unwrap();
        let map = layout::memory_map(TEST_RAM);
        for (i, m) in map.iter().enumerate() {
            let addr = GuestAddress(layout::PVH_MEMMAP_START.0 + 24 * i as u64);
            let e: hvm_memmap_table_entry = mem.read_obj(addr).unwrap();
            assert_eq!((e.addr, e.size, e.type_), (m.addr, m.size, m.kind as u32));
        }
        let ram: u64 = map
            .iter()
            .filter(|m| m.kind == MemoryKind::Ram)
            .map(|m| m.size)
            .sum();
        assert_eq!(ram, layout::EBDA_START.0 + TEST_RAM - layout::HIMEM_START.0);
    }

    #[test]
    fn pvh_initrd_is_module_0_high_and_aligned() {
        let initrd: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let (mem, r) = load_elf(tiny_elf(NOTE_PHYS32_ENTRY), Some(initrd.clone()), "");
        let (addr, size) = r.unwrap().initrd.unwrap();
        assert_eq!(addr.0 % PAGE_SIZE, 0);
        assert!(addr.0 >= LOAD_ADDR + 0x3000);
        assert!(addr.0 + size <= TEST_RAM && TEST_RAM - (addr.0 + size) < PAGE_SIZE);
        let info: hvm_start_info = mem.read_obj(layout::PVH_INFO_START).unwrap();
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, layout::PVH_MODLIST_START.0);
        let m: hvm_modlist_entry = mem.read_obj(layout::PVH_MODLIST_START).unwrap();
        assert_eq!((m.paddr, m.size, m.cmdline_paddr), (addr.0, 5000, 0));
        let mut back = vec![0u8; initrd.len()];
        mem.read_slice(&mut back, addr).unwrap();
        assert_eq!(back, initrd);
    }

    #[test]
    fn pvh_initrd_too_big_is_error() {
        let (_, r) = load_elf(tiny_elf(NOTE_PHYS32_ENTRY), Some(vec![0; 63 << 20]), "");
        assert!(matches!(
            r.unwrap_err(),
            LoaderError::InitrdDoesNotFit { .. }
        ));
    }

    #[test]
    fn pvh_elf_without_pvh_note_is_rejected() {
        let (_, r) = load_elf(tiny_elf(1), None, "");
        let err = r.unwrap_err();
        assert!(matches!(err, LoaderError::NoPvhNote), "{err}");
        assert!(err.to_string().contains("PVH"));
    }

    #[test]
    fn pvh_truncated_elf_is_elf_error() {
        let mut image = tiny_elf(NOTE_PHYS32_ENTRY);
        image.truncate(80);
        let (_, r) = load_elf(image, None, "");
        assert!(matches!(r.unwrap_err(), LoaderError::Elf(_)));
    }

    #[test]
    fn pvh_cmdline_too_long_is_error() {
        let long = "y".repeat(layout::CMDLINE_MAX_SIZE);
        let (_, r) = load_elf(tiny_elf(NOTE_PHYS32_ENTRY), None, &long);
        assert!(matches!(r.unwrap_err(), LoaderError::CmdlineTooLong { .. }));
    }

    #[test]
    fn start_info_without_rsdp_has_zero_rsdp() {
        let info = start_info(4, 0, None).unwrap();
        assert_eq!(info.rsdp_paddr, 0);
        assert_eq!(info.memmap_entries, 4);
    }
}
