//! Loads a real Linux bzImage and checks what the guest would see.
//!
//! Opt-in: set `VMD_TEST_BZIMAGE` to a stock x86_64 bzImage, e.g.
//!
//! ```sh
//! VMD_TEST_BZIMAGE=$(scripts/fetch-test-kernel.sh target/test-assets) \
//!     cargo test -p vmm-monitor --test linux_boot
//! ```
//!
//! A stock kernel cannot boot in reasonable time on our development hosts
//! (their KVM emulates guest kernel mode), so the test stops at verified
//! guest memory (zero page, e820, command line, initrd) and, when
//! `/dev/kvm` exists, at the boot vCPU's registers read back from KVM.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_msr_entry, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_monitor::boot;
use vmm_monitor::layout;
use vmm_monitor::loader::{self, BootProtocol, KernelEntry, LoadParams};

const RAM: u64 = 512 << 20;
const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 rdinit=/init";
const ENV_BZIMAGE: &str = "VMD_TEST_BZIMAGE";
/// Index of MXCSR in the XSAVE area as 32-bit words (byte offset 24).
const XSAVE_MXCSR_WORD: usize = 6;

/// Offsets in the bzImage and the zero page (Documentation/arch/x86/boot.rst).
mod off {
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const HEAP_END_PTR: usize = 0x224;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    pub const E820_ENTRIES: usize = 0x1e8;
    pub const E820_TABLE: usize = 0x2d0;
    /// The setup header runs from 0x1f1 to at most here.
    pub const HEADER_END: usize = 0x268;
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Prints a skip notice straight to stderr, past the test harness's output
/// capture, so that a skipped check is never mistaken for a passed one.
fn skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {why} ***\n");
}

/// The bzImage to test, or `None` (with a loud skip line) without one.
fn test_bzimage() -> Option<PathBuf> {
    let Some(path) = std::env::var_os(ENV_BZIMAGE) else {
        skip(&format!(
            "linux_boot: {ENV_BZIMAGE} is not set; run scripts/fetch-test-kernel.sh DIR and set it to the printed path"
        ));
        return None;
    };
    let path = PathBuf::from(path);
    if !path.is_file() {
        skip(&format!(
            "linux_boot: {ENV_BZIMAGE}={} does not exist",
            path.display()
        ));
        return None;
    }
    Some(path)
}

/// A fake initrd with a recognizable, non-repeating pattern.
fn fake_initrd() -> Vec<u8> {
    let mut data = b"070701 fake initramfs for vmd-rs loader test\n".to_vec();
    data.extend((0u32..300_000).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    data
}

fn header_bytes(path: &Path) -> Vec<u8> {
    let mut f = File::open(path).unwrap();
    let mut b = vec![0u8; off::HEADER_END];
    f.read_exact(&mut b).unwrap();
    b
}

/// Loads the kernel with the fake initrd; returns memory, entry, initrd.
fn load(path: &Path) -> (GuestMemoryMmap, KernelEntry, Vec<u8>) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let initrd_bytes = fake_initrd();
    let mut initrd = tempfile_with(&initrd_bytes);
    let mut kernel = File::open(path).unwrap();
    let entry = loader::load_kernel(
        &mem,
        LoadParams {
            kernel: &mut kernel,
            initrd: Some(&mut initrd),
            cmdline: CMDLINE,
            ram_size: RAM,
            rsdp: Some(layout::ACPI_START),
        },
    )
    .unwrap();
    (mem, entry, initrd_bytes)
}

/// An unlinked temporary file holding `data`, positioned at its start.
fn tempfile_with(data: &[u8]) -> File {
    let tmp = vmm_sys_util::tempfile::TempFile::new().unwrap();
    let mut f = tmp.into_file();
    f.write_all(data).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f
}

#[test]
fn linux_bzimage_loads_with_zero_page_initrd_and_registers() {
    let Some(path) = test_bzimage() else {
        return;
    };
    let img = header_bytes(&path);
    let version = u16_at(&img, off::VERSION);
    assert!(version >= 0x0206, "protocol {version:#x}");
    assert_ne!(u16_at(&img, off::XLOADFLAGS) & 1, 0, "XLF_KERNEL_64");

    let (mem, entry, initrd_bytes) = load(&path);
    assert_eq!(entry.protocol, BootProtocol::Linux64);
    assert_eq!(entry.entry.0, layout::HIMEM_START.0 + 0x200);

    // The protected-mode kernel sits at 1 MiB.
    let setup_sects = match img[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let mut file = File::open(&path).unwrap();
    file.seek(SeekFrom::Start(((setup_sects + 1) * 512) as u64))
        .unwrap();
    let mut head = vec![0u8; 4096];
    file.read_exact(&mut head).unwrap();
    let mut loaded = vec![0u8; 4096];
    mem.read_slice(&mut loaded, layout::HIMEM_START).unwrap();
    assert_eq!(loaded, head, "kernel bytes at 1 MiB");

    // Zero page: the image's header plus the loader's fields.
    let mut zp = vec![0u8; 4096];
    mem.read_slice(&mut zp, layout::ZERO_PAGE_START).unwrap();
    assert_eq!(&zp[0x202..0x206], b"HdrS");
    assert_eq!(u16_at(&zp, off::VERSION), version);
    for (name, o) in [
        ("initrd_addr_max", off::INITRD_ADDR_MAX),
        ("cmdline_size", off::CMDLINE_SIZE),
        ("init_size", off::INIT_SIZE),
    ] {
        assert_eq!(u32_at(&zp, o), u32_at(&img, o), "{name}");
    }
    assert_eq!(u16_at(&zp, off::XLOADFLAGS), u16_at(&img, off::XLOADFLAGS));
    assert_eq!(zp[off::TYPE_OF_LOADER], 0xff);
    assert_eq!(
        zp[off::LOADFLAGS] & 0x81,
        0x81,
        "LOADED_HIGH | CAN_USE_HEAP"
    );
    assert_eq!(u16_at(&zp, off::HEAP_END_PTR), 0xfe00);
    assert_eq!(
        u64::from(u32_at(&zp, off::CMD_LINE_PTR)),
        layout::CMDLINE_START.0
    );
    if version >= 0x020e {
        assert_eq!(u64_at(&zp, off::ACPI_RSDP_ADDR), layout::ACPI_START.0);
    }

    // e820 = the layout's memory map.
    let map = layout::memory_map(RAM);
    assert_eq!(usize::from(zp[off::E820_ENTRIES]), map.len());
    for (i, m) in map.iter().enumerate() {
        let e = off::E820_TABLE + 20 * i;
        assert_eq!(
            (u64_at(&zp, e), u64_at(&zp, e + 8), u32_at(&zp, e + 16)),
            (m.addr, m.size, m.kind as u32),
            "e820 entry {i}"
        );
    }

    // Command line: bytes and NUL, within the kernel's limit.
    assert!(CMDLINE.len() <= u32_at(&img, off::CMDLINE_SIZE) as usize);
    let mut cmdline = vec![0u8; CMDLINE.len() + 1];
    mem.read_slice(&mut cmdline, layout::CMDLINE_START).unwrap();
    assert_eq!(&cmdline[..CMDLINE.len()], CMDLINE.as_bytes());
    assert_eq!(cmdline[CMDLINE.len()], 0);

    // Initrd: page aligned, high, below initrd_addr_max, clear of the
    // kernel's decompression area, bytes intact.
    let (addr, size) = entry.initrd.unwrap();
    assert_eq!(size, initrd_bytes.len() as u64);
    assert_eq!(u64::from(u32_at(&zp, off::RAMDISK_IMAGE)), addr.0);
    assert_eq!(u64::from(u32_at(&zp, off::RAMDISK_SIZE)), size);
    assert_eq!(addr.0 % 4096, 0);
    assert!(addr.0 + size - 1 <= u64::from(u32_at(&img, off::INITRD_ADDR_MAX)));
    assert!(
        addr.0 + size <= RAM && RAM - (addr.0 + size) < 4096,
        "placed high"
    );
    if version >= 0x020a {
        let kernel_end = u64_at(&img, off::PREF_ADDRESS).max(layout::HIMEM_START.0)
            + u64::from(u32_at(&img, off::INIT_SIZE));
        assert!(
            addr.0 >= kernel_end,
            "initrd {addr:?} below kernel end {kernel_end:#x}"
        );
    }
    let mut back = vec![0u8; initrd_bytes.len()];
    mem.read_slice(&mut back, addr).unwrap();
    assert!(back == initrd_bytes, "initrd bytes differ");

    // The boot vCPU, as KVM sees it.
    let Some((_kvm, _vm, vcpu)) = kvm_vcpu() else {
        return;
    };
    boot::setup_common(&vcpu, 0).unwrap();
    boot::setup_boot_vcpu(&vcpu, &mem, &entry).unwrap();
    let regs = vcpu.get_regs().unwrap();
    assert_eq!(regs.rip, layout::HIMEM_START.0 + 0x200);
    assert_eq!(regs.rsi, layout::ZERO_PAGE_START.0);
    assert_eq!(regs.rflags & 0x202, 0x2, "interrupts off");
    let sregs = vcpu.get_sregs().unwrap();
    assert_eq!(sregs.efer & 0x500, 0x500, "EFER.LME and LMA");
    assert_eq!(sregs.cr0 & 0x8000_0001, 0x8000_0001, "CR0.PG and PE");
    assert_eq!(sregs.cr4 & 0x20, 0x20, "CR4.PAE");
    assert_eq!(sregs.cr3, layout::BOOT_PML4_START.0);
    assert_eq!((sregs.cs.selector, sregs.cs.l, sregs.cs.db), (0x10, 1, 0));
    assert_eq!(sregs.ds.selector, 0x18);
    assert_eq!(sregs.gdt.base, layout::BOOT_GDT_START.0);
    let pde1: u64 = mem
        .read_obj(GuestAddress(layout::BOOT_PD_START.0 + 8))
        .unwrap();
    assert_eq!(pde1, 0x20_0083);
    check_common_state(&vcpu);
}

#[test]
fn pvh_boot_state_reads_back_from_kvm() {
    let Some((_kvm, _vm, vcpu)) = kvm_vcpu() else {
        return;
    };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    let entry = KernelEntry {
        protocol: BootProtocol::Pvh,
        entry: GuestAddress(0x10_0123),
        initrd: None,
    };
    boot::setup_common(&vcpu, 0).unwrap();
    boot::setup_boot_vcpu(&vcpu, &mem, &entry).unwrap();
    let regs = vcpu.get_regs().unwrap();
    assert_eq!((regs.rip, regs.rbx), (0x10_0123, layout::PVH_INFO_START.0));
    let s = vcpu.get_sregs().unwrap();
    assert_eq!(s.cr0 & 0x8000_0001, 0x1, "protected mode, paging off");
    assert_eq!(s.efer & 0x500, 0);
    assert_eq!(
        (s.cs.db, s.cs.l, s.cs.limit, s.cs.base),
        (1, 0, 0xffff_ffff, 0)
    );
    assert_eq!((s.tr.type_, s.tr.limit), (0xb, 0x67));
    check_common_state(&vcpu);
    // Nothing was written to guest memory for PVH.
    let gdt: u64 = mem.read_obj(layout::BOOT_GDT_START).unwrap();
    assert_eq!(gdt, 0);
}

/// FPU, MSRs and LAPIC set by `setup_common`.
fn check_common_state(vcpu: &VcpuFd) {
    assert_eq!(vcpu.get_fpu().unwrap().fcw, 0x37f);
    // KVM_GET_FPU does not report MXCSR on every host kernel; the XSAVE
    // area does (legacy region, byte 24).
    let xsave = vcpu.get_xsave().unwrap();
    assert_eq!(xsave.region[XSAVE_MXCSR_WORD], 0x1f80, "MXCSR");
    let mut msrs = Msrs::from_entries(&[
        kvm_msr_entry {
            index: 0x1a0, // IA32_MISC_ENABLE
            ..Default::default()
        },
        kvm_msr_entry {
            index: 0x2ff, // IA32_MTRR_DEF_TYPE
            ..Default::default()
        },
    ])
    .unwrap();
    assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), 2);
    let got = msrs.as_slice();
    assert_eq!(got[0].data & 1, 1, "fast strings");
    assert_eq!(got[1].data, 0x806, "MTRRs on, write-back");
    let lapic = vcpu.get_lapic().unwrap();
    assert_eq!(
        boot::lapic_reg(&lapic, 0x350) & 0x700,
        0x700,
        "LINT0 ExtINT"
    );
    assert_eq!(boot::lapic_reg(&lapic, 0x360) & 0x700, 0x400, "LINT1 NMI");
}

/// A VM with an in-kernel irqchip and one vCPU with the host's supported
/// CPUID, or `None` (with a loud skip line) without /dev/kvm.
fn kvm_vcpu() -> Option<(Kvm, VmFd, VcpuFd)> {
    if !Path::new("/dev/kvm").exists() {
        skip("linux_boot: /dev/kvm does not exist, vCPU state not checked");
        return None;
    }
    let kvm = Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .unwrap();
    vm.create_irq_chip().unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    vcpu.set_cpuid2(&cpuid).unwrap();
    Some((kvm, vm, vcpu))
}
