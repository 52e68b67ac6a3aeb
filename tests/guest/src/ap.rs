//! Application processors: the real-mode start-up trampoline and the
//! per-CPU state that keeps an AP's CPL0 path short.
//!
//! The BSP (at CPL3) copies the trampoline to [`TRAMPOLINE_ADDR`], fills a
//! TSS and its GDT descriptor for every CPU index, then sends INIT-SIPI-SIPI
//! (see [`start`]). An AP goes from real mode straight to long mode (PAE,
//! CR3, EFER.LME, then PE|PG together and a far jump to the 64-bit code
//! segment), takes a CPU index with `lock xadd`, loads SS, the IDT and its
//! TSS, and `iretq`s to CPL3 on its own stack, where [`ap_main`] runs the
//! hook the BSP registered.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::entry::{self, GDT_ENTRIES, IOMAP_BYTES, IOMAP_OFFSET0, KERNEL_CS, KERNEL_DS, MAX_CPUS};
use crate::entry::{TSS_SEL0, TSS_SIZE};
use crate::entry::{USER_CS, USER_DS, USTACK_SIZE};
use crate::lapic;

/// Physical address of the trampoline page (the monitor never writes it).
pub const TRAMPOLINE_ADDR: u64 = 0x8000;
/// SIPI vector: the trampoline's page number.
const SIPI_VECTOR: u32 = (TRAMPOLINE_ADDR >> 12) as u32;

/// CR4 of an AP: PAE, OSFXSR, OSXMMEXCPT (as the BSP's).
const CR4_AP: u32 = (1 << 5) | (1 << 9) | (1 << 10);
/// CR0 of an AP: PE, MP, NE, PG (clears the CD/NW left by INIT).
const CR0_AP: u32 = (1 << 0) | (1 << 1) | (1 << 5) | (1 << 31);
/// RFLAGS at CPL3: IOPL=3, reserved bit 1, IF=0.
const RFLAGS_USER: u32 = (3 << 12) | (1 << 1);

/// Next CPU index an AP takes (the BSP is index 0).
#[no_mangle]
static VMDT_AP_NEXT: AtomicU32 = AtomicU32::new(1);

// SAFETY (global_asm): the trampoline is only executed from its copy at
// TRAMPOLINE_ADDR, by APs started by `start`; `vmdt_ap_long` relies on the
// GDT, IDT, page tables and per-CPU TSS descriptors prepared by `prepare`,
// and calls `ap_main(index)` at CPL3.
global_asm!(
    r#"
    .section .text.vmdt_ap, "ax", @progbits
    .code16
    .globl vmdt_ap_tramp_start
vmdt_ap_tramp_start:
    cli
    lgdtl %cs:vmdt_ap_tramp_gdt_ptr - vmdt_ap_tramp_start
    movl ${cr4}, %eax
    movl %eax, %cr4
    movl $vmdt_pml4, %eax
    movl %eax, %cr3
    movl ${efer}, %ecx
    movl ${lme}, %eax
    xorl %edx, %edx
    wrmsr
    movl ${cr0}, %eax
    movl %eax, %cr0
    ljmpl ${kcs}, $vmdt_ap_long
    .balign 8
vmdt_ap_tramp_gdt_ptr:
    .word {gdt_limit}
    .long vmdt_gdt
    .globl vmdt_ap_tramp_end
vmdt_ap_tramp_end:

    .code64
vmdt_ap_long:
    mov ${kds}, %eax
    mov %ax, %ss
    lidt vmdt_idt_ptr(%rip)
    mov $1, %eax
    lock xadd %eax, VMDT_AP_NEXT(%rip)
    cmp ${max_cpus}, %eax
    jae vmdt_isr_park
    mov %eax, %edi
    lea 1(%rax), %ecx
    imul ${kstack}, %ecx, %esp
    add $vmdt_kstacks, %esp
    shl $4, %eax
    add ${tss0}, %eax
    ltr %ax
    imul ${ustack}, %ecx, %ecx
    add $vmdt_ustacks, %ecx
    push ${uds}
    push %rcx
    push ${rflags}
    push ${ucs}
    push $vmdt_ap_user
    iretq
vmdt_ap_user:
    call ap_main
    ud2
    .text
"#,
    cr4 = const CR4_AP,
    cr0 = const CR0_AP,
    efer = const 0xC000_0080u32,
    lme = const 1u32 << 8,
    kcs = const KERNEL_CS,
    kds = const KERNEL_DS,
    ucs = const USER_CS,
    uds = const USER_DS,
    tss0 = const TSS_SEL0,
    rflags = const RFLAGS_USER,
    kstack = const entry::KSTACK_SIZE,
    ustack = const USTACK_SIZE,
    max_cpus = const MAX_CPUS,
    gdt_limit = const GDT_ENTRIES * 8 - 1,
    options(att_syntax)
);

extern "C" {
    static vmdt_ap_tramp_start: [u8; 0];
    static vmdt_ap_tramp_end: [u8; 0];
}

/// Offset of RSP0 in a 64-bit TSS (Intel SDM vol. 3, 8.7).
const TSS_RSP0: usize = 4;
/// Offset of the I/O map base address in a 64-bit TSS.
const TSS_IOMAP_BASE: usize = 102;

/// What an AP runs at CPL3 once up, given its CPU index (0 = none set).
static HOOK: AtomicUsize = AtomicUsize::new(0);

/// Copies the trampoline and prepares the TSS (RSP0, I/O map base: the
/// bitmap shared with CPU 0) and GDT descriptor of CPU indices 1..`cpus`. Call once, before [`start`].
pub fn prepare(cpus: usize, hook: fn(usize) -> !) {
    HOOK.store(hook as usize, Ordering::SeqCst);
    let start = core::ptr::addr_of!(vmdt_ap_tramp_start) as *const u8;
    let end = core::ptr::addr_of!(vmdt_ap_tramp_end) as usize;
    let len = end - start as usize;
    // SAFETY: the trampoline page 0x8000..0x9000 is RAM, identity mapped,
    // reserved for this use, and the linker script asserts len <= 4096.
    unsafe { core::ptr::copy_nonoverlapping(start, TRAMPOLINE_ADDR as *mut u8, len) };
    let tss0 = core::ptr::addr_of_mut!(entry::vmdt_tss0) as *mut u8;
    for index in 1..cpus.min(MAX_CPUS) {
        let offset = index * TSS_SIZE;
        let iomap_base = IOMAP_OFFSET0 - offset;
        // SAFETY: TSS `index` < MAX_CPUS lies in the static TSS block; no
        // AP runs yet, so nothing else uses it. Fields may be unaligned.
        unsafe {
            let tss = tss0.add(offset);
            tss.add(TSS_RSP0)
                .cast::<u64>()
                .write_unaligned(entry::kstack_top(index));
            tss.add(TSS_IOMAP_BASE)
                .cast::<u16>()
                .write_unaligned(iomap_base as u16);
        }
        let (low, high) = tss_descriptor(
            tss0 as u64 + offset as u64,
            (iomap_base + IOMAP_BYTES) as u64,
        );
        let slot = (TSS_SEL0 as usize / 8) + 2 * index;
        // SAFETY: slot + 1 < GDT_ENTRIES; the slot belongs to a CPU that is
        // not running, so the GDT entry is not in use.
        unsafe {
            let gdt = core::ptr::addr_of_mut!(entry::vmdt_gdt) as *mut u64;
            gdt.add(slot).write_volatile(low);
            gdt.add(slot + 1).write_volatile(high);
        }
    }
    core::sync::atomic::fence(Ordering::SeqCst);
}

/// The two quadwords of an available 64-bit TSS descriptor (Intel SDM
/// vol. 3, 8.2.3) for `base` and `limit` (< 64 KiB).
fn tss_descriptor(base: u64, limit: u64) -> (u64, u64) {
    let low = (limit & 0xFFFF)
        | ((base & 0xFF_FFFF) << 16)
        | (0x89 << 40)
        | (((base >> 24) & 0xFF) << 56);
    (low, base >> 32)
}

/// Sends INIT-SIPI-SIPI to the CPU with LAPIC ID `apic_id`.
pub fn start(apic_id: u32) {
    lapic::send_ipi(apic_id, lapic::ICR_INIT | lapic::ICR_ASSERT);
    lapic::send_ipi(
        apic_id,
        lapic::ICR_STARTUP | lapic::ICR_ASSERT | SIPI_VECTOR,
    );
    lapic::send_ipi(
        apic_id,
        lapic::ICR_STARTUP | lapic::ICR_ASSERT | SIPI_VECTOR,
    );
}

/// CPL3 entry of every AP (called by `vmdt_ap_long` with its CPU index).
#[no_mangle]
extern "C" fn ap_main(index: u64) -> ! {
    let hook = HOOK.load(Ordering::SeqCst);
    if hook == 0 {
        crate::cpu::park();
    }
    // SAFETY: HOOK is only ever set from a `fn(usize) -> !` in `prepare`.
    let hook: fn(usize) -> ! = unsafe { core::mem::transmute(hook) };
    hook(index as usize)
}
