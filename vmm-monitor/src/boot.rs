//! The vCPU state each boot protocol starts a kernel with.
//!
//! Pure functions compute the registers ([`boot_regs`], [`boot_sregs`]),
//! the FPU state ([`boot_fpu`]), the boot MSRs ([`boot_msrs`]) and the LAPIC
//! LINT pins ([`set_lapic_lints`]), so they are testable without KVM; thin
//! functions apply them to a [`VcpuFd`]:
//! - [`setup_common`] on every vCPU (FPU, MSRs, LAPIC), after its CPUID is
//!   set and after the in-kernel irqchip exists;
//! - [`setup_boot_vcpu`] on vCPU 0 only: for the Linux 64-bit protocol it
//!   also writes the boot GDT, IDT and identity page tables to guest memory.
//!
//! The other vCPUs wait for INIT/SIPI in the in-kernel LAPIC.
//!
//! - PVH (xenbits.xen.org/docs/unstable/misc/pvh.html): 32-bit protected
//!   mode, paging off, flat 4 GiB code and data segments, a 32-bit TSS in
//!   TR, EBX = `hvm_start_info`.
//! - Linux 64-bit (Documentation/arch/x86/boot.rst): long mode with the
//!   first 1 GiB identity-mapped, `__BOOT_CS` = 0x10 and `__BOOT_DS` = 0x18,
//!   RSI = zero page.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs,
};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::layout;
use crate::loader::{BootProtocol, KernelEntry};

/// CR0.PE: protected mode.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0.ET: extension type (hard-wired to 1 on modern CPUs).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0.NE: native x87 error reporting.
pub const X86_CR0_NE: u64 = 1 << 5;
/// CR0.PG: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension, required for long mode.
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS with only the always-one bit 1 set (interrupts off).
pub const RFLAGS_RESERVED_ONE: u64 = 1 << 1;

/// GDT descriptor flags (access byte in bits 0..8, G/D/L/AVL in bits 12..16):
/// present, DPL 0, code, execute/read, accessed, G=1, L=1.
const GDT_CODE64: u16 = 0xa09b;
/// Present, DPL 0, code, execute/read, accessed, G=1, D=1 (32-bit).
const GDT_CODE32: u16 = 0xc09b;
/// Present, DPL 0, data, read/write, accessed, G=1, D/B=1.
const GDT_DATA: u16 = 0xc093;
/// Present, system, busy TSS (type 0xb), G=1 (Linux 64-bit boot).
const GDT_TSS_BUSY_4G: u16 = 0x808b;
/// Present, system, busy 32-bit TSS (type 0xb), byte granular (PVH).
const GDT_TSS_BUSY: u16 = 0x008b;
/// Largest 20-bit descriptor limit (4 GiB with G=1).
const LIMIT_4G: u32 = 0xf_ffff;
/// Limit of a 32-bit TSS (104 bytes), as PVH asks for TR.
const TSS32_LIMIT: u32 = 0x67;

/// The Linux 64-bit boot GDT: `__BOOT_CS` is entry 2 (0x10), `__BOOT_DS`
/// entry 3 (0x18), the TSS entry 4 (0x20).
pub const LINUX64_GDT: [u64; 5] = [
    0,
    0,
    gdt_entry(GDT_CODE64, 0, LIMIT_4G),
    gdt_entry(GDT_DATA, 0, LIMIT_4G),
    gdt_entry(GDT_TSS_BUSY_4G, 0, LIMIT_4G),
];
/// The segments PVH's hidden segment state is built from (not written to
/// guest memory: PVH kernels load their own GDT first).
pub const PVH_GDT: [u64; 4] = [
    0,
    gdt_entry(GDT_CODE32, 0, LIMIT_4G),
    gdt_entry(GDT_DATA, 0, LIMIT_4G),
    gdt_entry(GDT_TSS_BUSY, 0, TSS32_LIMIT),
];
const _: () =
    assert!(layout::BOOT_GDT_START.0 + 8 * LINUX64_GDT.len() as u64 <= layout::BOOT_IDT_START.0);

/// Page-table entry bits: present, writable.
const PTE_PRESENT_RW: u64 = 0x3;
/// Page-directory entry bit: 2 MiB page.
const PDE_PAGE_SIZE: u64 = 1 << 7;
/// Size of the pages of the boot identity map.
const HUGE_PAGE_SIZE: u64 = 2 << 20;
/// Entries of one page-table page.
const PT_ENTRIES: u64 = 512;

/// x87 control word after FNINIT: all exceptions masked, 64-bit precision.
pub const FPU_FCW: u16 = 0x37f;
/// MXCSR after reset: all SSE exceptions masked.
pub const FPU_MXCSR: u32 = 0x1f80;

/// MSR indexes the boot state sets (Intel SDM vol. 4).
mod msr {
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}
/// IA32_MISC_ENABLE bit 0: fast string operations (`rep movs`/`stos`).
const MISC_ENABLE_FAST_STRING: u64 = 1 << 0;
/// IA32_MTRR_DEF_TYPE: MTRRs enabled (bit 11), default type write-back (6).
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// LAPIC register offset of LVT LINT0.
const APIC_LVT_LINT0: usize = 0x350;
/// LAPIC register offset of LVT LINT1.
const APIC_LVT_LINT1: usize = 0x360;
/// Delivery-mode field of an LVT entry (bits 8..11).
const APIC_DELIVERY_MODE_MASK: u32 = 0x700;
/// Delivery mode ExtINT: LINT0 passes the PIC's interrupts through.
const APIC_MODE_EXTINT: u32 = 0x700;
/// Delivery mode NMI: LINT1 delivers NMIs.
const APIC_MODE_NMI: u32 = 0x400;

/// Why a vCPU could not be given its boot state.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A KVM ioctl on the vCPU failed.
    #[error("vCPU {vcpu}: {ioctl} ({what}) failed")]
    Kvm {
        /// Index of the vCPU.
        vcpu: usize,
        /// The ioctl, e.g. "KVM_SET_SREGS".
        ioctl: &'static str,
        /// The register set it was about.
        what: &'static str,
        /// The error KVM returned.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM set only some of the boot MSRs.
    #[error("vCPU {vcpu}: KVM accepted {set} of {total} boot MSRs, refusing MSR {index:#x}")]
    MsrRefused {
        /// Index of the vCPU.
        vcpu: usize,
        /// MSRs set.
        set: usize,
        /// MSRs asked for.
        total: usize,
        /// The first MSR KVM refused.
        index: u32,
    },
    /// The MSR list could not be built.
    #[error("cannot build the list of boot MSRs")]
    MsrList(#[source] vmm_sys_util::fam::Error),
    /// Writing a boot table to guest memory failed.
    #[error("writing the {what} to guest memory at {addr:#x} failed")]
    GuestMemory {
        /// Which table.
        what: &'static str,
        /// Where.
        addr: u64,
        /// The guest memory error.
        #[source]
        source: GuestMemoryError,
    },
}

/// Encodes a GDT descriptor from its `flags` (access byte and G/D/L/AVL
/// nibble in bits 12..16, e.g. 0xa09b for 64-bit code), base and 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xff00_0000) << 32)
        | (((flags as u64) & 0xf0ff) << 40)
        | ((limit & 0xf_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The hidden segment state KVM needs for GDT entry `index` holding `entry`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = bit(55);
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = bit(47);
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// General registers for entering `entry` by its protocol.
pub fn boot_regs(entry: &KernelEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED_ONE,
        rip: entry.entry.0,
        ..Default::default()
    };
    match entry.protocol {
        BootProtocol::Pvh => regs.rbx = layout::PVH_INFO_START.0,
        BootProtocol::Linux64 => {
            regs.rsi = layout::ZERO_PAGE_START.0;
            regs.rsp = layout::BOOT_STACK_POINTER.0;
            regs.rbp = layout::BOOT_STACK_POINTER.0;
        }
    }
    regs
}

/// Special registers for `protocol`, starting from the vCPU's current
/// `base` (which keeps the APIC base and the interrupt bitmap).
pub fn boot_sregs(protocol: BootProtocol, base: &kvm_sregs) -> kvm_sregs {
    let mut sregs = *base;
    let (gdt, code, data, tss): (&[u64], u8, u8, u8) = match protocol {
        BootProtocol::Pvh => (&PVH_GDT, 1, 2, 3),
        BootProtocol::Linux64 => (&LINUX64_GDT, 2, 3, 4),
    };
    let seg = |i: u8| segment_from_gdt(gdt[usize::from(i)], i);
    sregs.cs = seg(code);
    let data = seg(data);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = seg(tss);
    sregs.cr2 = 0;
    match protocol {
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootProtocol::Linux64 => {
            sregs.gdt.base = layout::BOOT_GDT_START.0;
            sregs.gdt.limit = (8 * LINUX64_GDT.len() - 1) as u16;
            sregs.idt.base = layout::BOOT_IDT_START.0;
            sregs.idt.limit = 8 - 1;
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
            sregs.cr3 = layout::BOOT_PML4_START.0;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    sregs
}

/// The three page-table pages identity-mapping the first 1 GiB with 2 MiB
/// pages: (address, 512 entries) for the PML4, the PDPT and the PD.
pub fn identity_page_tables() -> [(GuestAddress, Vec<u64>); 3] {
    let table = |first: u64| {
        let mut t = vec![0u64; PT_ENTRIES as usize];
        t[0] = first;
        t
    };
    let pd = (0..PT_ENTRIES)
        .map(|i| (i * HUGE_PAGE_SIZE) | PDE_PAGE_SIZE | PTE_PRESENT_RW)
        .collect();
    [
        (
            layout::BOOT_PML4_START,
            table(layout::BOOT_PDPT_START.0 | PTE_PRESENT_RW),
        ),
        (
            layout::BOOT_PDPT_START,
            table(layout::BOOT_PD_START.0 | PTE_PRESENT_RW),
        ),
        (layout::BOOT_PD_START, pd),
    ]
}

/// Writes the Linux 64-bit boot GDT, the empty IDT and the identity page
/// tables to guest memory.
pub fn write_linux64_tables<M: GuestMemoryBackend>(mem: &M) -> Result<(), BootError> {
    let write = |what, addr: GuestAddress, words: &[u64]| {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        mem.write_slice(&bytes, addr)
            .map_err(|source| BootError::GuestMemory {
                what,
                addr: addr.0,
                source,
            })
    };
    write("boot GDT", layout::BOOT_GDT_START, &LINUX64_GDT)?;
    write("boot IDT", layout::BOOT_IDT_START, &[0])?;
    for (addr, table) in identity_page_tables() {
        write("boot page tables", addr, &table)?;
    }
    Ok(())
}

/// The boot FPU state: x87 and SSE in their reset configuration.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_FCW,
        mxcsr: FPU_MXCSR,
        ..Default::default()
    }
}

/// The MSRs every vCPU starts with.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(msr::IA32_SYSENTER_CS, 0),
        entry(msr::IA32_SYSENTER_ESP, 0),
        entry(msr::IA32_SYSENTER_EIP, 0),
        entry(msr::STAR, 0),
        entry(msr::CSTAR, 0),
        entry(msr::KERNEL_GS_BASE, 0),
        entry(msr::SYSCALL_MASK, 0),
        entry(msr::LSTAR, 0),
        entry(msr::IA32_TSC, 0),
        entry(msr::IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(msr::MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
}

/// Reads the 32-bit LAPIC register at `offset`.
pub fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(&lapic.regs[offset..offset + 4]) {
        *b = *r as u8;
    }
    u32::from_le_bytes(bytes)
}

/// Writes the 32-bit LAPIC register at `offset`.
fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (r, b) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *r = b as _;
    }
}

/// Wires the LAPIC's LINT0 to ExtINT (the PIC) and LINT1 to NMI, as a PC's
/// firmware does (virtual wire mode).
pub fn set_lapic_lints(lapic: &mut kvm_lapic_state) {
    for (offset, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        let lvt = lapic_reg(lapic, offset);
        set_lapic_reg(lapic, offset, (lvt & !APIC_DELIVERY_MODE_MASK) | mode);
    }
}

/// Gives vCPU `index` the state every vCPU starts with: FPU, boot MSRs and
/// LAPIC LINT pins. Call it after KVM_SET_CPUID2 and after the in-kernel
/// irqchip is created.
pub fn setup_common(vcpu: &VcpuFd, index: usize) -> Result<(), BootError> {
    let kvm = |ioctl, what| {
        move |source| BootError::Kvm {
            vcpu: index,
            ioctl,
            what,
            source,
        }
    };
    vcpu.set_fpu(&boot_fpu())
        .map_err(kvm("KVM_SET_FPU", "FPU"))?;

    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(BootError::MsrList)?;
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(kvm("KVM_SET_MSRS", "boot MSRs"))?;
    if set != entries.len() {
        return Err(BootError::MsrRefused {
            vcpu: index,
            set,
            total: entries.len(),
            index: entries.get(set).map_or(0, |e| e.index),
        });
    }

    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC", "LAPIC"))?;
    set_lapic_lints(&mut lapic);
    vcpu.set_lapic(&lapic)
        .map_err(kvm("KVM_SET_LAPIC", "LAPIC"))
}

/// Gives the boot vCPU (index 0) the registers of `entry`'s protocol,
/// writing the Linux 64-bit boot tables to `mem` first when needed.
pub fn setup_boot_vcpu<M: GuestMemoryBackend>(
    vcpu: &VcpuFd,
    mem: &M,
    entry: &KernelEntry,
) -> Result<(), BootError> {
    let kvm = |ioctl, what| {
        move |source| BootError::Kvm {
            vcpu: 0,
            ioctl,
            what,
            source,
        }
    };
    if entry.protocol == BootProtocol::Linux64 {
        write_linux64_tables(mem)?;
    }
    let base = vcpu
        .get_sregs()
        .map_err(kvm("KVM_GET_SREGS", "special registers"))?;
    vcpu.set_sregs(&boot_sregs(entry.protocol, &base))
        .map_err(kvm("KVM_SET_SREGS", "special registers"))?;
    vcpu.set_regs(&boot_regs(entry))
        .map_err(kvm("KVM_SET_REGS", "general registers"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn entry(protocol: BootProtocol, at: u64) -> KernelEntry {
        KernelEntry {
            protocol,
            entry: GuestAddress(at),
            initrd: None,
        }
    }

    /// A base as KVM reports it after vCPU creation (what must survive).
    fn reset_sregs() -> kvm_sregs {
        kvm_sregs {
            apic_base: 0xfee0_0900,
            cr0: 0x6000_0010,
            ..Default::default()
        }
    }

    #[test]
    fn gdt_entry_known_descriptors_encode_as_documented() {
        assert_eq!(gdt_entry(GDT_CODE64, 0, LIMIT_4G), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(GDT_DATA, 0, LIMIT_4G), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(GDT_CODE32, 0, LIMIT_4G), 0x00cf_9b00_0000_ffff);
        assert_eq!(
            gdt_entry(GDT_TSS_BUSY, 0, TSS32_LIMIT),
            0x0000_8b00_0000_0067
        );
        assert_eq!(gdt_entry(GDT_DATA, 0x1234_5678, 0), 0x12c0_9334_5678_0000);
    }

    #[test]
    fn segment_from_gdt_code64_is_long_mode_flat() {
        let cs = segment_from_gdt(LINUX64_GDT[2], 2);
        assert_eq!((cs.selector, cs.base, cs.limit), (0x10, 0, 0xffff_ffff));
        assert_eq!((cs.type_, cs.s, cs.present, cs.dpl), (0xb, 1, 1, 0));
        assert_eq!((cs.l, cs.db, cs.g, cs.unusable), (1, 0, 1, 0));
    }

    #[test]
    fn segment_from_gdt_null_is_unusable() {
        let s = segment_from_gdt(0, 0);
        assert_eq!((s.present, s.unusable), (0, 1));
    }

    #[test]
    fn boot_sregs_linux64_is_long_mode_with_boot_tables() {
        let s = boot_sregs(BootProtocol::Linux64, &reset_sregs());
        assert_eq!(
            s.cr0 & (X86_CR0_PE | X86_CR0_PG | X86_CR0_ET),
            X86_CR0_PE | X86_CR0_PG | X86_CR0_ET
        );
        assert_eq!(s.cr0 & 0x6000_0000, 0, "caches enabled: CD and NW clear");
        assert_eq!(s.cr4, X86_CR4_PAE);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, layout::BOOT_PML4_START.0);
        assert_eq!((s.gdt.base, s.gdt.limit), (layout::BOOT_GDT_START.0, 39));
        assert_eq!((s.idt.base, s.idt.limit), (layout::BOOT_IDT_START.0, 7));
        assert_eq!((s.cs.selector, s.cs.l, s.cs.db), (0x10, 1, 0));
        for d in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!(
                (d.selector, d.type_, d.s, d.present, d.db),
                (0x18, 0x3, 1, 1, 1)
            );
        }
        assert_eq!(
            (s.tr.selector, s.tr.type_, s.tr.s, s.tr.present),
            (0x20, 0xb, 0, 1)
        );
        assert_eq!(s.apic_base, 0xfee0_0900);
    }

    #[test]
    fn boot_sregs_pvh_is_flat_protected_mode_without_paging() {
        let s = boot_sregs(BootProtocol::Pvh, &reset_sregs());
        assert_eq!(s.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!((s.cr3, s.cr4, s.efer), (0, 0, 0));
        let cs = s.cs;
        assert_eq!(
            (cs.base, cs.limit, cs.type_, cs.s),
            (0, 0xffff_ffff, 0xb, 1)
        );
        assert_eq!((cs.db, cs.l, cs.g, cs.present), (1, 0, 1, 1));
        for d in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!(
                (d.base, d.limit, d.type_, d.db, d.g),
                (0, 0xffff_ffff, 0x3, 1, 1)
            );
        }
        let tr = s.tr;
        assert_eq!(
            (tr.base, tr.limit, tr.type_, tr.s, tr.present),
            (0, 0x67, 0xb, 0, 1)
        );
        assert_eq!(s.apic_base, 0xfee0_0900);
    }

    #[test]
    fn boot_regs_linux64_points_rsi_at_zero_page() {
        let r = boot_regs(&entry(BootProtocol::Linux64, 0x10_0200));
        assert_eq!(
            (r.rip, r.rsi, r.rflags),
            (0x10_0200, layout::ZERO_PAGE_START.0, 0x2)
        );
        assert_eq!(
            (r.rsp, r.rbp),
            (layout::BOOT_STACK_POINTER.0, layout::BOOT_STACK_POINTER.0)
        );
        assert_eq!(r.rsp % 16, 0);
    }

    #[test]
    fn boot_regs_pvh_points_ebx_at_start_info() {
        let r = boot_regs(&entry(BootProtocol::Pvh, 0x10_0010));
        assert_eq!(
            (r.rip, r.rbx, r.rflags),
            (0x10_0010, layout::PVH_INFO_START.0, 0x2)
        );
    }

    #[test]
    fn identity_page_tables_map_first_gib_with_2m_pages() {
        let [(pml4_at, pml4), (pdpt_at, pdpt), (pd_at, pd)] = identity_page_tables();
        assert_eq!(
            (pml4_at, pdpt_at, pd_at),
            (
                layout::BOOT_PML4_START,
                layout::BOOT_PDPT_START,
                layout::BOOT_PD_START
            )
        );
        assert_eq!(pml4[0], layout::BOOT_PDPT_START.0 | 0x3);
        assert_eq!(pdpt[0], layout::BOOT_PD_START.0 | 0x3);
        assert!(pml4[1..].iter().chain(&pdpt[1..]).all(|&e| e == 0));
        assert_eq!(pd.len(), 512);
        assert_eq!(pd[0], 0x83);
        assert_eq!(pd[1], 0x20_0083);
        assert_eq!(pd[511], 0x3fe0_0083);
    }

    #[test]
    fn write_linux64_tables_lands_at_layout_addresses() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_linux64_tables(&mem).unwrap();
        let gdt2: u64 = mem
            .read_obj(GuestAddress(layout::BOOT_GDT_START.0 + 16))
            .unwrap();
        assert_eq!(gdt2, LINUX64_GDT[2]);
        let tss: u64 = mem
            .read_obj(GuestAddress(layout::BOOT_GDT_START.0 + 32))
            .unwrap();
        assert_eq!(tss, LINUX64_GDT[4]);
        let idt: u64 = mem.read_obj(layout::BOOT_IDT_START).unwrap();
        assert_eq!(idt, 0);
        let pd5: u64 = mem
            .read_obj(GuestAddress(layout::BOOT_PD_START.0 + 5 * 8))
            .unwrap();
        assert_eq!(pd5, (5 << 21) | 0x83);
        let pml4: u64 = mem.read_obj(layout::BOOT_PML4_START).unwrap();
        assert_eq!(pml4, layout::BOOT_PDPT_START.0 | 0x3);
    }

    #[test]
    fn boot_fpu_has_reset_control_words() {
        let f = boot_fpu();
        assert_eq!((f.fcw, f.mxcsr), (0x37f, 0x1f80));
    }

    #[test]
    fn boot_msrs_set_fast_strings_and_writeback_mtrr() {
        let msrs = boot_msrs();
        let get = |i| msrs.iter().find(|e| e.index == i).map(|e| e.data);
        assert_eq!(get(msr::IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(msr::MTRR_DEF_TYPE), Some(0x806));
        for i in [
            msr::IA32_SYSENTER_CS,
            msr::IA32_SYSENTER_ESP,
            msr::IA32_SYSENTER_EIP,
            msr::STAR,
            msr::LSTAR,
            msr::CSTAR,
            msr::SYSCALL_MASK,
            msr::KERNEL_GS_BASE,
            msr::IA32_TSC,
        ] {
            assert_eq!(get(i), Some(0), "MSR {i:#x}");
        }
        let mut idx: Vec<u32> = msrs.iter().map(|e| e.index).collect();
        idx.sort_unstable();
        idx.dedup();
        assert_eq!(idx.len(), msrs.len());
    }

    #[test]
    fn set_lapic_lints_sets_delivery_modes_keeping_other_bits() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_reg(&mut lapic, APIC_LVT_LINT0, 0x0001_0000);
        set_lapic_reg(&mut lapic, APIC_LVT_LINT1, 0x0001_0200);
        set_lapic_reg(&mut lapic, 0x340, 0xdead_beef);
        set_lapic_lints(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT_LINT0), 0x0001_0700);
        assert_eq!(lapic_reg(&lapic, APIC_LVT_LINT1), 0x0001_0400);
        assert_eq!(lapic_reg(&lapic, 0x340), 0xdead_beef);
    }
}
