//! Linux bzImage loading by the 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol").
//!
//! The protected-mode kernel is copied to [`layout::HIMEM_START`] by
//! linux-loader's `BzImage`; the real-mode setup code is not used. The zero
//! page (`struct boot_params`) is built at [`layout::ZERO_PAGE_START`] from
//! the image's own setup header, with the fields a boot loader must fill:
//! loader type, load flags, heap end, command line pointer, initrd, e820
//! map and RSDP address. The kernel is entered at its 64-bit entry point,
//! 0x200 bytes past the load address.

use std::io::SeekFrom;

use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, CAN_USE_HEAP, E820_MAX_ENTRIES_ZEROPAGE,
    LOADED_HIGH, XLF_KERNEL_64,
};
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use super::{
    check_cmdline, load_initrd, low_ram_end, write_cmdline, BootProtocol, Image, KernelEntry,
    LoadParams, LoaderError, LAYOUT_CMDLINE_MAX_LEN, SETUP_HEADER_OFFSET,
};
use crate::layout;

/// Oldest boot protocol we load: 2.06 added `cmdline_size` and is the
/// first with the fields the 64-bit entry needs.
pub const MIN_PROTOCOL: u16 = 0x0206;
/// Boot protocol 2.10 added `pref_address` and `init_size`.
const PROTOCOL_2_10: u16 = 0x020a;
/// Boot protocol 2.14 added `acpi_rsdp_addr` to the zero page.
const PROTOCOL_2_14: u16 = 0x020e;
/// Offset of the 64-bit entry point from the protected-mode kernel's start.
pub const ENTRY_64_OFFSET: u64 = 0x200;
/// `type_of_loader` for a boot loader without an assigned id.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `heap_end_ptr`: the end of the setup heap/stack (the whole 64 KiB real-mode
/// segment) minus 0x200, as boot.rst asks; the 64-bit entry ignores it.
pub const HEAP_END_PTR: u16 = 0xfe00;

/// Loads a bzImage, its initrd and command line, and writes the zero page.
pub(super) fn load<M: GuestMemoryBackend, F: Image>(
    mem: &M,
    params: LoadParams<'_, F>,
) -> Result<KernelEntry, LoaderError> {
    let hdr = read_setup_header(params.kernel)?;
    check_protocol(&hdr)?;
    let kernel_limit = usize::try_from(hdr.cmdline_size).unwrap_or(usize::MAX);
    check_cmdline(params.cmdline, kernel_limit, "the kernel's cmdline_size")?;
    check_cmdline(
        params.cmdline,
        LAYOUT_CMDLINE_MAX_LEN,
        "the layout's CMDLINE_MAX_SIZE",
    )?;

    let loaded = BzImage::load(
        mem,
        Some(layout::HIMEM_START),
        params.kernel,
        Some(layout::HIMEM_START),
    )
    .map_err(LoaderError::BzImage)?;
    let hdr = loaded.setup_header.unwrap_or(hdr);

    let ram_end = low_ram_end(params.ram_size);
    let kernel_end = kernel_reserved_end(&hdr, loaded.kernel_load.0, loaded.kernel_end);
    if kernel_end > ram_end {
        return Err(LoaderError::RamTooSmall {
            needed: kernel_end,
            available: ram_end,
        });
    }
    // initrd_addr_max is the highest address the initrd may occupy.
    let ceiling = ram_end.min(u64::from(hdr.initrd_addr_max) + 1);
    let initrd = load_initrd(mem, params.initrd, kernel_end, ceiling)?;

    write_cmdline(mem, params.cmdline)?;
    let zero_page = build_zero_page(&hdr, params.ram_size, params.rsdp, initrd)?;
    mem.write_obj(zero_page, layout::ZERO_PAGE_START)
        .map_err(|source| LoaderError::GuestMemory {
            what: "zero page",
            addr: layout::ZERO_PAGE_START.0,
            source,
        })?;

    Ok(KernelEntry {
        protocol: BootProtocol::Linux64,
        entry: GuestAddress(loaded.kernel_load.0 + ENTRY_64_OFFSET),
        initrd,
    })
}

/// Reads the setup header from its fixed offset in the image.
pub fn read_setup_header<F: Image>(kernel: &mut F) -> Result<setup_header, LoaderError> {
    let err = |source| LoaderError::ReadImage {
        what: "kernel",
        source,
    };
    let mut hdr = setup_header::default();
    kernel
        .seek(SeekFrom::Start(SETUP_HEADER_OFFSET))
        .map_err(err)?;
    kernel.read_exact(hdr.as_mut_slice()).map_err(err)?;
    Ok(hdr)
}

/// Refuses kernels older than [`MIN_PROTOCOL`] or without a 64-bit entry.
pub fn check_protocol(hdr: &setup_header) -> Result<(), LoaderError> {
    let version = hdr.version;
    if version < MIN_PROTOCOL {
        return Err(LoaderError::ProtocolTooOld { version });
    }
    let xloadflags = hdr.xloadflags;
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LoaderError::No64BitEntry { xloadflags });
    }
    Ok(())
}

/// End of the memory the kernel uses while it decompresses itself.
///
/// Besides the loaded image (`loaded_end`), a 2.10+ kernel needs `init_size`
/// bytes at the address it runs from: its load address rounded up to
/// `kernel_alignment`, but never below `pref_address` (the kernel's
/// LOAD_PHYSICAL_ADDR, which head_64.S enforces as the minimum).
pub fn kernel_reserved_end(hdr: &setup_header, load: u64, loaded_end: u64) -> u64 {
    if hdr.version < PROTOCOL_2_10 {
        return loaded_end;
    }
    let align = u64::from(hdr.kernel_alignment);
    let run_at = if align.is_power_of_two() {
        load.checked_add(align - 1)
            .map_or(load, |a| a & !(align - 1))
    } else {
        load
    };
    let run_at = run_at.max(hdr.pref_address);
    let needed = run_at.saturating_add(u64::from(hdr.init_size));
    loaded_end.max(needed)
}

/// Builds the zero page for a kernel with setup header `hdr`, the command
/// line at [`layout::CMDLINE_START`] and the given initrd.
pub fn build_zero_page(
    hdr: &setup_header,
    ram_size: u64,
    rsdp: Option<GuestAddress>,
    initrd: Option<(GuestAddress, u64)>,
) -> Result<boot_params, LoaderError> {
    let mut zp = boot_params {
        hdr: *hdr,
        ..Default::default()
    };
    zp.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    zp.hdr.loadflags |= CAN_USE_HEAP | LOADED_HIGH;
    zp.hdr.heap_end_ptr = HEAP_END_PTR;
    zp.hdr.cmd_line_ptr = low_u32(layout::CMDLINE_START.0, "command line")?;
    zp.ext_cmd_line_ptr = 0;
    if let Some((addr, size)) = initrd {
        zp.hdr.ramdisk_image = low_u32(addr.0, "initrd")?;
        zp.hdr.ramdisk_size = low_u32(size, "initrd size")?;
    } else {
        zp.hdr.ramdisk_image = 0;
        zp.hdr.ramdisk_size = 0;
    }
    if hdr.version >= PROTOCOL_2_14 {
        zp.acpi_rsdp_addr = rsdp.map_or(0, |a| a.0);
    }

    let map = layout::memory_map(ram_size);
    if map.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(LoaderError::TooManyMemoryMapEntries {
            count: map.len(),
            max: E820_MAX_ENTRIES_ZEROPAGE,
            table: "zero page e820 table",
        });
    }
    for (slot, entry) in zp.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind as u32,
        };
    }
    // Checked against E820_MAX_ENTRIES_ZEROPAGE (128) above.
    zp.e820_entries = map.len() as u8;
    Ok(zp)
}

/// A zero-page field that holds the low 32 bits of an address; our layout
/// keeps all of them below 4 GiB, which this checks.
fn low_u32(value: u64, what: &'static str) -> Result<u32, LoaderError> {
    u32::try_from(value).map_err(|_| LoaderError::AboveFourGib { what, addr: value })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layout::MemoryKind;
    use crate::loader::tests::{params, test_mem, TEST_RAM};
    use crate::loader::{load_kernel, PAGE_SIZE};
    use linux_loader::loader::bootparam::XLF_CAN_BE_LOADED_ABOVE_4G;
    use std::io::Cursor;

    /// Setup sectors of the synthetic images.
    const SETUP_SECTS: u8 = 4;
    /// Protected-mode payload of the synthetic images.
    const PAYLOAD: &[u8] = b"synthetic protected-mode kernel";

    /// A setup header as a 2.15 x86_64 kernel has it.
    pub(crate) fn test_header() -> setup_header {
        setup_header {
            setup_sects: SETUP_SECTS,
            boot_flag: 0xaa55,
            header: crate::loader::BZIMAGE_MAGIC,
            version: 0x020f,
            loadflags: LOADED_HIGH,
            code32_start: 0x10_0000,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable_kernel: 1,
            xloadflags: XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G,
            cmdline_size: 0x7ff,
            pref_address: 0x100_0000,
            init_size: 0x20_0000,
            ..Default::default()
        }
    }

    /// A bzImage: boot sector + setup sectors (header at 0x1f1), then payload.
    pub(crate) fn synthetic_bzimage(hdr: &setup_header) -> Vec<u8> {
        let setup_len = (usize::from(hdr.setup_sects) + 1) * 512;
        let mut image = vec![0u8; setup_len];
        let off = SETUP_HEADER_OFFSET as usize;
        image[off..off + hdr.as_slice().len()].copy_from_slice(hdr.as_slice());
        image.extend_from_slice(PAYLOAD);
        image
    }

    fn load_with(
        hdr: &setup_header,
        initrd: Option<Vec<u8>>,
        cmdline: &str,
    ) -> (vm_memory::GuestMemoryMmap, Result<KernelEntry, LoaderError>) {
        let mem = test_mem();
        let mut k = Cursor::new(synthetic_bzimage(hdr));
        let mut i = initrd.map(Cursor::new);
        let r = load_kernel(&mem, params(&mut k, i.as_mut(), cmdline));
        (mem, r)
    }

    fn zero_page(mem: &vm_memory::GuestMemoryMmap) -> boot_params {
        mem.read_obj(layout::ZERO_PAGE_START).unwrap()
    }

    #[test]
    fn bzimage_load_valid_image_enters_at_64bit_entry() {
        let (mem, r) = load_with(&test_header(), None, "console=ttyS0");
        let entry = r.unwrap();
        assert_eq!(entry.protocol, BootProtocol::Linux64);
        assert_eq!(entry.entry.0, layout::HIMEM_START.0 + 0x200);
        let mut payload = vec![0u8; PAYLOAD.len()];
        mem.read_slice(&mut payload, layout::HIMEM_START).unwrap();
        assert_eq!(payload, PAYLOAD);
    }

    #[test]
    fn bzimage_zero_page_has_loader_fields() {
        let (mem, r) = load_with(&test_header(), None, "console=ttyS0");
        r.unwrap();
        let zp = zero_page(&mem);
        let h = zp.hdr;
        assert_eq!({ h.header }, crate::loader::BZIMAGE_MAGIC);
        assert_eq!({ h.version }, 0x020f);
        assert_eq!({ h.type_of_loader }, 0xff);
        assert_eq!(
            { h.loadflags } & (CAN_USE_HEAP | LOADED_HIGH),
            CAN_USE_HEAP | LOADED_HIGH
        );
        assert_eq!({ h.heap_end_ptr }, 0xfe00);
        assert_eq!({ h.cmd_line_ptr } as u64, layout::CMDLINE_START.0);
        assert_eq!({ h.code32_start } as u64, layout::HIMEM_START.0);
        assert_eq!({ h.ramdisk_image }, 0);
        assert_eq!({ h.ramdisk_size }, 0);
        assert_eq!({ zp.acpi_rsdp_addr }, layout::ACPI_START.0);
    }

    #[test]
    fn bzimage_zero_page_old_protocol_has_no_rsdp() {
        let hdr = setup_header {
            version: 0x020d,
            ..test_header()
        };
        let zp = build_zero_page(&hdr, TEST_RAM, Some(layout::ACPI_START), None).unwrap();
        assert_eq!({ zp.acpi_rsdp_addr }, 0);
    }

    #[test]
    fn bzimage_e820_matches_layout() {
        let ram = (3u64 << 30) + (256 << 20);
        let zp = build_zero_page(&test_header(), ram, None, None).unwrap();
        let map = layout::memory_map(ram);
        assert_eq!(usize::from(zp.e820_entries), map.len());
        for (e, m) in zp.e820_table.iter().zip(&map) {
            assert_eq!(
                ({ e.addr }, { e.size }, { e.r#type }),
                (m.addr, m.size, m.kind as u32)
            );
        }
        let e0 = zp.e820_table[0];
        assert_eq!(({ e0.addr }, { e0.size }), (0, layout::EBDA_START.0));
        assert_eq!({ e0.r#type }, MemoryKind::Ram as u32);
        let last = zp.e820_table[map.len() - 1];
        assert_eq!({ last.addr }, layout::RAM_HIGH_START.0);
        assert_eq!({ last.size }, 256 << 20);
    }

    #[test]
    fn bzimage_cmdline_written_with_nul() {
        let cmdline = "console=ttyS0 root=/dev/vda";
        let (mem, r) = load_with(&test_header(), None, cmdline);
        r.unwrap();
        let mut buf = vec![0xaau8; cmdline.len() + 1];
        mem.read_slice(&mut buf, layout::CMDLINE_START).unwrap();
        assert_eq!(&buf[..cmdline.len()], cmdline.as_bytes());
        assert_eq!(buf[cmdline.len()], 0);
    }

    #[test]
    fn bzimage_cmdline_longer_than_cmdline_size_is_error() {
        let hdr = setup_header {
            cmdline_size: 16,
            ..test_header()
        };
        let (_, r) = load_with(&hdr, None, &"x".repeat(17));
        let err = r.unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::CmdlineTooLong {
                    len: 17,
                    max: 16,
                    ..
                }
            ),
            "{err}"
        );
        let (_, r) = load_with(&hdr, None, &"x".repeat(16));
        r.unwrap();
    }

    #[test]
    fn bzimage_cmdline_longer_than_layout_is_error() {
        let hdr = setup_header {
            cmdline_size: u32::MAX,
            ..test_header()
        };
        let (_, r) = load_with(&hdr, None, &"x".repeat(layout::CMDLINE_MAX_SIZE));
        let err = r.unwrap_err();
        assert!(matches!(err, LoaderError::CmdlineTooLong { .. }), "{err}");
    }

    #[test]
    fn bzimage_initrd_placed_high_aligned_above_kernel() {
        let initrd: Vec<u8> = (0..0x3456u32).map(|i| i as u8).collect();
        let (mem, r) = load_with(&test_header(), Some(initrd.clone()), "");
        let (addr, size) = r.unwrap().initrd.unwrap();
        assert_eq!(size, initrd.len() as u64);
        assert_eq!(addr.0 % PAGE_SIZE, 0);
        assert!(addr.0 + size <= TEST_RAM);
        assert!(TEST_RAM - (addr.0 + size) < PAGE_SIZE);
        // Above pref_address + init_size (16 MiB + 2 MiB).
        assert!(addr.0 >= 0x120_0000);
        let zp = zero_page(&mem);
        assert_eq!(
            ({ zp.hdr.ramdisk_image } as u64, { zp.hdr.ramdisk_size }
                as u64),
            (addr.0, size)
        );
        let mut back = vec![0u8; initrd.len()];
        mem.read_slice(&mut back, addr).unwrap();
        assert_eq!(back, initrd);
    }

    #[test]
    fn bzimage_initrd_respects_initrd_addr_max() {
        let hdr = setup_header {
            initrd_addr_max: 0x1ff_ffff,
            ..test_header()
        };
        let (_, r) = load_with(&hdr, Some(vec![1; 0x1000]), "");
        let (addr, size) = r.unwrap().initrd.unwrap();
        assert_eq!(addr.0 + size, 0x200_0000);
    }

    #[test]
    fn bzimage_initrd_too_big_is_error() {
        let (_, r) = load_with(&test_header(), Some(vec![1; 48 << 20]), "");
        let err = r.unwrap_err();
        assert!(matches!(err, LoaderError::InitrdDoesNotFit { .. }), "{err}");
    }

    #[test]
    fn bzimage_init_size_beyond_ram_is_error() {
        let hdr = setup_header {
            init_size: TEST_RAM as u32,
            ..test_header()
        };
        let (_, r) = load_with(&hdr, None, "");
        assert!(matches!(r.unwrap_err(), LoaderError::RamTooSmall { .. }));
    }

    #[test]
    fn bzimage_protocol_2_05_is_rejected() {
        let hdr = setup_header {
            version: 0x0205,
            ..test_header()
        };
        let (_, r) = load_with(&hdr, None, "");
        let err = r.unwrap_err();
        assert!(matches!(
            err,
            LoaderError::ProtocolTooOld { version: 0x0205 }
        ));
        assert!(err.to_string().contains("2.05"), "{err}");
    }

    #[test]
    fn bzimage_without_xlf_kernel_64_is_rejected() {
        let hdr = setup_header {
            xloadflags: 0,
            ..test_header()
        };
        let (_, r) = load_with(&hdr, None, "");
        assert!(matches!(
            r.unwrap_err(),
            LoaderError::No64BitEntry { xloadflags: 0 }
        ));
    }

    #[test]
    fn bzimage_not_loaded_high_is_bzimage_error() {
        let hdr = setup_header {
            loadflags: 0,
            ..test_header()
        };
        let (_, r) = load_with(&hdr, None, "");
        assert!(matches!(r.unwrap_err(), LoaderError::BzImage(_)));
    }

    #[test]
    fn kernel_reserved_end_old_protocol_is_loaded_end() {
        let hdr = setup_header {
            version: 0x0209,
            ..test_header()
        };
        assert_eq!(kernel_reserved_end(&hdr, 0x10_0000, 0x20_0000), 0x20_0000);
    }

    #[test]
    fn kernel_reserved_end_counts_init_size_from_pref_address() {
        let hdr = test_header();
        assert_eq!(kernel_reserved_end(&hdr, 0x10_0000, 0x20_0000), 0x120_0000);
    }
}
