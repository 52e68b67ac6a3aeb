//! Kernel loading: Linux bzImage (64-bit boot protocol) and PVH ELF.
//!
//! [`load_kernel`] looks at the image's first bytes and picks the format:
//! an ELF (`\x7fELF`) must carry a PVH entry note and is loaded by
//! [`pvh`]; an image with the `HdrS` setup-header magic is a bzImage loaded
//! by [`bzimage`]; anything else is refused. Each loader also writes the
//! command line, the initrd and its boot-information structure (the zero
//! page, or `hvm_start_info`) at the fixed addresses of [`crate::layout`],
//! and returns a [`KernelEntry`] that [`crate::boot`] turns into the boot
//! vCPU's registers.
//!
//! The ACPI tables are expected in guest memory already; the loaders only
//! pass on the RSDP address.

pub mod bzimage;
pub mod pvh;

use std::io::{self, Read, Seek, SeekFrom};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, ReadVolatile};

use crate::layout;

/// Guest page size: the initrd is placed on a page boundary.
pub const PAGE_SIZE: u64 = 0x1000;

/// The four bytes every ELF file starts with.
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
/// Offset of `e_ident[EI_CLASS]` in an ELF header.
const ELF_CLASS_OFFSET: usize = 4;
/// `ELFCLASS64`: the only ELF class the PVH loader reads.
const ELF_CLASS_64: u8 = 2;
/// Offset of the setup header (`struct setup_header`) in a bzImage.
pub(crate) const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// Offset of the setup header's `header` field ("HdrS") in a bzImage.
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
/// `HdrS`, little-endian: the magic of a bzImage's setup header.
pub(crate) const BZIMAGE_MAGIC: u32 = 0x5372_6448;
/// Bytes read from the image to tell the formats apart.
const PROBE_LEN: usize = BZIMAGE_MAGIC_OFFSET + 4;

/// An image the loaders can read: kernels and initrds are `File`s in the
/// monitor and `Cursor`s in tests.
pub trait Image: Read + ReadVolatile + Seek {}
impl<T: Read + ReadVolatile + Seek> Image for T {}

/// What to load and the facts about the guest the boot structures report.
pub struct LoadParams<'a, F: Image> {
    /// The kernel image (bzImage or PVH ELF).
    pub kernel: &'a mut F,
    /// The initial ramdisk, if any; an empty one counts as none.
    pub initrd: Option<&'a mut F>,
    /// The kernel command line (without NUL; it must not contain one).
    pub cmdline: &'a str,
    /// Guest RAM in bytes, laid out by [`layout::ram_regions`].
    pub ram_size: u64,
    /// Guest-physical address of the ACPI RSDP, if ACPI tables were written.
    pub rsdp: Option<GuestAddress>,
}

/// The boot protocol a loaded kernel is entered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, RSI = zero page.
    Linux64,
}

/// Where and how to enter a loaded kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelEntry {
    /// How the boot vCPU must be set up.
    pub protocol: BootProtocol,
    /// The first instruction the boot vCPU executes.
    pub entry: GuestAddress,
    /// Where the initrd was placed and its size, if one was loaded.
    pub initrd: Option<(GuestAddress, u64)>,
}

/// Why a kernel could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// Reading or seeking an image file failed.
    #[error("cannot read the {what} image")]
    ReadImage {
        /// Which image ("kernel" or "initrd").
        what: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The kernel is neither an ELF file nor a bzImage.
    #[error(
        "unknown kernel format: neither an ELF file nor a bzImage (no \"HdrS\" at {BZIMAGE_MAGIC_OFFSET:#x})"
    )]
    UnknownFormat,
    /// The ELF kernel is not a 64-bit ELF.
    #[error("ELF kernel has class {class}, only 64-bit ELF (ELFCLASS64) kernels are supported")]
    ElfNot64Bit {
        /// `e_ident[EI_CLASS]` of the image.
        class: u8,
    },
    /// linux-loader refused or failed to load the ELF kernel.
    #[error("loading the ELF kernel failed")]
    Elf(#[source] linux_loader::loader::Error),
    /// The ELF kernel has no PVH entry point.
    #[error("ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); only PVH ELF kernels can be booted")]
    NoPvhNote,
    /// linux-loader refused or failed to load the bzImage.
    #[error("loading the bzImage kernel failed")]
    BzImage(#[source] linux_loader::loader::Error),
    /// The bzImage speaks a boot protocol older than the one we need.
    #[error("bzImage boot protocol {major}.{minor:02} is too old: 2.06 or later is required", major = .version >> 8, minor = .version & 0xff)]
    ProtocolTooOld {
        /// The setup header's `version` field.
        version: u16,
    },
    /// The bzImage has no 64-bit entry point.
    #[error("bzImage has no 64-bit entry point (xloadflags {xloadflags:#x} lacks XLF_KERNEL_64)")]
    No64BitEntry {
        /// The setup header's `xloadflags` field.
        xloadflags: u16,
    },
    /// The command line contains a NUL byte.
    #[error("the kernel command line contains a NUL byte at offset {offset}")]
    CmdlineHasNul {
        /// Offset of the first NUL.
        offset: usize,
    },
    /// The command line is longer than the kernel or the layout allows.
    #[error("the kernel command line is {len} bytes, the limit is {max} ({limit})")]
    CmdlineTooLong {
        /// Length of the command line, without NUL.
        len: usize,
        /// Longest allowed length, without NUL.
        max: usize,
        /// Whose limit it is.
        limit: &'static str,
    },
    /// The kernel does not fit in the RAM below the MMIO hole.
    #[error(
        "the kernel needs guest RAM up to {needed:#x}, but RAM below 4 GiB ends at {available:#x}"
    )]
    RamTooSmall {
        /// End of the memory the kernel needs.
        needed: u64,
        /// End of the RAM below the MMIO hole.
        available: u64,
    },
    /// The initrd does not fit between the kernel and its upper limit.
    #[error("the initrd ({size:#x} bytes) does not fit between {floor:#x} and {ceiling:#x}")]
    InitrdDoesNotFit {
        /// Size of the initrd.
        size: u64,
        /// Lowest address it may take (end of the kernel).
        floor: u64,
        /// Address it must end below.
        ceiling: u64,
    },
    /// A boot-structure field that holds 32 bits got a larger value.
    #[error("the {what} ({addr:#x}) does not fit the 32-bit boot-structure field")]
    AboveFourGib {
        /// What the value is.
        what: &'static str,
        /// The value.
        addr: u64,
    },
    /// A PVH ELF segment would land below 1 MiB, over the boot structures.
    #[error(
        "ELF segment {index} at {addr:#x} ({size:#x} bytes) lies below 1 MiB, \
         where the monitor's boot structures are; link the kernel at 1 MiB or above"
    )]
    SegmentBelowHighMemory {
        /// Program header index.
        index: u64,
        /// Its physical load address.
        addr: u64,
        /// Its size in memory.
        size: u64,
    },
    /// The memory map has more entries than the boot structure can hold.
    #[error("the memory map has {count} entries, the {table} holds at most {max}")]
    TooManyMemoryMapEntries {
        /// Entries in the map.
        count: usize,
        /// Capacity of the table.
        max: usize,
        /// Which table.
        table: &'static str,
    },
    /// Writing to guest memory failed.
    #[error("writing the {what} to guest memory at {addr:#x} failed")]
    GuestMemory {
        /// What was being written.
        what: &'static str,
        /// Where.
        addr: u64,
        /// The guest memory error.
        #[source]
        source: GuestMemoryError,
    },
}

/// Loads the kernel (and initrd and command line) described by `params`
/// into `mem` and writes the boot information of its protocol.
///
/// The format is detected from the image: ELF → PVH, `HdrS` → bzImage.
pub fn load_kernel<M, F>(mem: &M, params: LoadParams<'_, F>) -> Result<KernelEntry, LoaderError>
where
    M: GuestMemoryBackend,
    F: Image,
{
    let probe = read_probe(params.kernel)?;
    if probe.starts_with(&ELF_MAGIC) {
        let class = probe.get(ELF_CLASS_OFFSET).copied().unwrap_or(0);
        if class != ELF_CLASS_64 {
            return Err(LoaderError::ElfNot64Bit { class });
        }
        return pvh::load(mem, params);
    }
    let magic = probe
        .get(BZIMAGE_MAGIC_OFFSET..PROBE_LEN)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes);
    if magic == Some(BZIMAGE_MAGIC) {
        return bzimage::load(mem, params);
    }
    Err(LoaderError::UnknownFormat)
}

/// Reads up to [`PROBE_LEN`] bytes from the start of the kernel image.
fn read_probe<F: Image>(kernel: &mut F) -> Result<Vec<u8>, LoaderError> {
    let err = |source| LoaderError::ReadImage {
        what: "kernel",
        source,
    };
    kernel.rewind().map_err(err)?;
    let mut probe = Vec::with_capacity(PROBE_LEN);
    kernel
        .by_ref()
        .take(PROBE_LEN as u64)
        .read_to_end(&mut probe)
        .map_err(err)?;
    kernel.rewind().map_err(err)?;
    Ok(probe)
}

/// End of the RAM below the MMIO hole for a guest of `ram_size` bytes.
pub fn low_ram_end(ram_size: u64) -> u64 {
    ram_size.min(layout::MMIO_HOLE_START.0)
}

/// Checks that `cmdline` has no NUL byte and is at most `max` bytes long.
pub(crate) fn check_cmdline(
    cmdline: &str,
    max: usize,
    limit: &'static str,
) -> Result<(), LoaderError> {
    if let Some(offset) = cmdline.bytes().position(|b| b == 0) {
        return Err(LoaderError::CmdlineHasNul { offset });
    }
    if cmdline.len() > max {
        return Err(LoaderError::CmdlineTooLong {
            len: cmdline.len(),
            max,
            limit,
        });
    }
    Ok(())
}

/// Longest command line the layout has room for (without the NUL).
pub(crate) const LAYOUT_CMDLINE_MAX_LEN: usize = layout::CMDLINE_MAX_SIZE - 1;

/// Writes the (already checked) command line and its NUL at
/// [`layout::CMDLINE_START`].
pub(crate) fn write_cmdline<M: GuestMemoryBackend>(
    mem: &M,
    cmdline: &str,
) -> Result<(), LoaderError> {
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, layout::CMDLINE_START)
        .map_err(|source| LoaderError::GuestMemory {
            what: "command line",
            addr: layout::CMDLINE_START.0,
            source,
        })
}

/// Rounds `addr` up to the next page boundary (`None` on overflow).
pub(crate) fn page_align_up(addr: u64) -> Option<u64> {
    addr.checked_add(PAGE_SIZE - 1)
        .map(|a| a & !(PAGE_SIZE - 1))
}

/// Picks the highest page-aligned address for `size` bytes that ends at or
/// below `ceiling` and starts at or above `floor`.
pub fn place_initrd(size: u64, floor: u64, ceiling: u64) -> Result<GuestAddress, LoaderError> {
    let does_not_fit = LoaderError::InitrdDoesNotFit {
        size,
        floor,
        ceiling,
    };
    let Some(start) = ceiling.checked_sub(size) else {
        return Err(does_not_fit);
    };
    let start = start & !(PAGE_SIZE - 1);
    if start < floor {
        return Err(does_not_fit);
    }
    Ok(GuestAddress(start))
}

/// Copies the initrd into guest memory, placed by [`place_initrd`].
/// Returns its address and size, or `None` for no (or an empty) initrd.
pub(crate) fn load_initrd<M: GuestMemoryBackend, F: Image>(
    mem: &M,
    initrd: Option<&mut F>,
    floor: u64,
    ceiling: u64,
) -> Result<Option<(GuestAddress, u64)>, LoaderError> {
    let Some(initrd) = initrd else {
        return Ok(None);
    };
    let err = |source| LoaderError::ReadImage {
        what: "initrd",
        source,
    };
    let size = initrd.seek(SeekFrom::End(0)).map_err(err)?;
    if size == 0 {
        return Ok(None);
    }
    initrd.rewind().map_err(err)?;
    let addr = place_initrd(size, floor, ceiling)?;
    let len = usize::try_from(size).map_err(|_| LoaderError::InitrdDoesNotFit {
        size,
        floor,
        ceiling,
    })?;
    mem.read_exact_volatile_from(addr, initrd, len)
        .map_err(|source| LoaderError::GuestMemory {
            what: "initrd",
            addr: addr.0,
            source,
        })?;
    Ok(Some((addr, size)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;
    use vm_memory::GuestMemoryMmap;

    /// RAM of the test guests.
    pub(crate) const TEST_RAM: u64 = 64 << 20;

    pub(crate) fn test_mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), TEST_RAM as usize)]).unwrap()
    }

    pub(crate) fn params<'a>(
        kernel: &'a mut Cursor<Vec<u8>>,
        initrd: Option<&'a mut Cursor<Vec<u8>>>,
        cmdline: &'a str,
    ) -> LoadParams<'a, Cursor<Vec<u8>>> {
        LoadParams {
            kernel,
            initrd,
            cmdline,
            ram_size: TEST_RAM,
            rsdp: Some(layout::ACPI_START),
        }
    }

    #[test]
    fn load_kernel_garbage_is_unknown_format() {
        let mem = test_mem();
        let mut k = Cursor::new(vec![0x5a; 4096]);
        let err = load_kernel(&mem, params(&mut k, None, "")).unwrap_err();
        assert!(matches!(err, LoaderError::UnknownFormat), "{err}");
    }

    #[test]
    fn load_kernel_short_file_is_unknown_format() {
        let mem = test_mem();
        let mut k = Cursor::new(b"MZ".to_vec());
        let err = load_kernel(&mem, params(&mut k, None, "")).unwrap_err();
        assert!(matches!(err, LoaderError::UnknownFormat), "{err}");
    }

    #[test]
    fn load_kernel_elf32_is_rejected() {
        let mem = test_mem();
        let mut image = vec![0u8; 64];
        image[..4].copy_from_slice(&ELF_MAGIC);
        image[ELF_CLASS_OFFSET] = 1;
        let mut k = Cursor::new(image);
        let err = load_kernel(&mem, params(&mut k, None, "")).unwrap_err();
        assert!(
            matches!(err, LoaderError::ElfNot64Bit { class: 1 }),
            "{err}"
        );
    }

    #[test]
    fn place_initrd_fits_is_highest_page_aligned() {
        let addr = place_initrd(0x1801, 0x10_0000, 0x80_0000).unwrap();
        assert_eq!(addr.0, 0x80_0000 - 0x2000);
        assert_eq!(addr.0 % PAGE_SIZE, 0);
        assert!(addr.0 + 0x1801 <= 0x80_0000);
    }

    #[test]
    fn place_initrd_unaligned_ceiling_ends_below_it() {
        let addr = place_initrd(0x1000, 0, 0x5800).unwrap();
        assert_eq!(addr.0, 0x4000);
    }

    #[test]
    fn place_initrd_too_big_is_error() {
        assert_eq!(
            place_initrd(0x10_0000, 0x70_0000, 0x80_0000).unwrap().0,
            0x70_0000
        );
        let err = place_initrd(0x10_0000, 0x70_1000, 0x80_0000).unwrap_err();
        assert!(matches!(err, LoaderError::InitrdDoesNotFit { .. }), "{err}");
        let err = place_initrd(0x100_0000, 0, 0x80_0000).unwrap_err();
        assert!(matches!(err, LoaderError::InitrdDoesNotFit { .. }), "{err}");
    }

    #[test]
    fn check_cmdline_nul_is_error() {
        let err = check_cmdline("a\0b", 10, "test").unwrap_err();
        assert!(matches!(err, LoaderError::CmdlineHasNul { offset: 1 }));
    }

    #[test]
    fn low_ram_end_large_guest_stops_at_hole() {
        assert_eq!(low_ram_end(5 << 30), layout::MMIO_HOLE_START.0);
        assert_eq!(low_ram_end(512 << 20), 512 << 20);
    }
}
