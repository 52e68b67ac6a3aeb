//! CPL0 boot path of the bootstrap processor, all in assembly.
//!
//! CPL0 code is emulated instruction by instruction on our development hosts
//! (about 1 µs each), so the privileged part is kept to a couple of dozen
//! instructions and everything that can be data is laid out statically in
//! the image: the Xen PVH note, the GDT (with the CPU 0 TSS descriptor), the
//! IDT, the TSSs with a shared I/O permission bitmap and the boot page tables (first GiB identity mapped
//! with 2 MiB pages, plus the IOAPIC and LAPIC pages; all user-accessible so
//! that CPL3 can extend them, see `paging`).
//!
//! PVH entry (32-bit protected mode, paging off, EBX = `hvm_start_info`):
//! load the GDT, enable PAE/SSE, CR3, EFER.LME, paging, far jump to 64-bit
//! code, load SS/IDT/TR, then `iretq` to CPL3 with IOPL=3 and IF=0. CPL3
//! zeroes `.bss` and calls [`crate::bsp_main`].
//!
//! Port I/O at CPL3 is allowed twice over: by IOPL=3 in the `iretq` frame
//! and by an all-zero I/O permission bitmap in every TSS. The hosts we
//! develop on drop the IOPL of an `iretq` to CPL3 (so `cli`/`sti` fault
//! there); the bitmap works on them. Those hosts also deliver no software
//! interrupt from CPL3 but `int3` (`int n` raises #UD), so CPL3 code
//! enables and disables interrupts, and parks its CPU, by `int3` (DPL3
//! gate) with a request in eax ([`OP_STI`], [`OP_CLI`], [`OP_PARK`]): the
//! CPL0 stub edits IF in the `iretq` frame, or halts.
//!
//! Interrupt stubs (one 16-byte stub per vector at `vmdt_isr_stubs`):
//! the timer stub counts a tick and sends EOI, the device-vector stubs
//! (`VEC_IRQ_BASE..`) count per vector and send EOI, the breakpoint stub serves
//! the `int3` requests, the spurious stub returns; every other vector is
//! unexpected and `iretq`s into [`crate::interrupts::vmdt_exception_report`]
//! at CPL3.

use core::arch::global_asm;

/// Kernel code selector (64-bit).
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data selector.
pub const KERNEL_DS: u16 = 0x10;
/// User data selector, RPL 3.
pub const USER_DS: u16 = 0x18 | 3;
/// User code selector (64-bit), RPL 3.
pub const USER_CS: u16 = 0x20 | 3;
/// Selector of CPU 0's TSS; CPU `i` uses `TSS_SEL0 + 16 * i`.
pub const TSS_SEL0: u16 = 0x28;
/// Most CPUs the guest supports (per-CPU stacks, TSSs and GDT slots).
pub const MAX_CPUS: usize = 64;
/// GDT entries (8 bytes each): five segments and a 16-byte TSS per CPU.
pub const GDT_ENTRIES: usize = 5 + 2 * MAX_CPUS;
/// Per-CPU CPL0 stack, used by interrupt frames only.
pub const KSTACK_SIZE: usize = 4096;
/// Per-CPU CPL3 stack, where all Rust code runs.
pub const USTACK_SIZE: usize = 32768;
/// Vector of the LAPIC timer (ticks counted by the CPL0 stub).
pub const VEC_TIMER: u8 = 0x40;
/// First of the device interrupt vectors (MSI-X): the CPL0 stub of vector
/// `VEC_IRQ_BASE + i` increments `VMDT_IRQ_COUNTS[i]` and sends EOI.
pub const VEC_IRQ_BASE: u8 = 0x50;
/// Number of device interrupt vectors.
pub const VEC_IRQ_COUNT: usize = 16;
/// `int3` request (in eax): return with IF set, `sti` for CPL3 code.
pub const OP_STI: u32 = 0x5654_4901;
/// `int3` request: return with IF clear, `cli` for CPL3 code.
pub const OP_CLI: u32 = 0x5654_4902;
/// `int3` request: halt this CPU for good (cli; hlt at CPL0).
pub const OP_PARK: u32 = 0x5654_4903;
/// `int3` request: execute CPUID at CPL0 for leaf esi, subleaf edi; the
/// results come back in eax, ebx, ecx, edx. At CPL0 CPUID always traps to
/// the VMM; at CPL3 our development hosts execute it natively and show the
/// host's CPU, not the one the VMM defined.
pub const OP_CPUID: u32 = 0x5654_4904;
/// LAPIC spurious interrupt vector (the stub just returns).
pub const VEC_SPURIOUS: u8 = 0xFF;
/// Size of a 64-bit TSS.
pub const TSS_SIZE: usize = 104;
/// I/O map base of CPU 0's TSS: the shared bitmap follows all TSSs.
pub const IOMAP_OFFSET0: usize = MAX_CPUS * TSS_SIZE;
/// Bytes of the I/O permission bitmap (65536 ports).
pub const IOMAP_BYTES: usize = 8192;

/// CR4: PAE, OSFXSR and OSXMMEXCPT (Rust code at CPL3 uses SSE).
const CR4_BOOT: u32 = (1 << 5) | (1 << 9) | (1 << 10);
/// CR0: PE, MP, NE and PG (CD/NW clear, so caches are on).
const CR0_BOOT: u32 = (1 << 0) | (1 << 1) | (1 << 5) | (1 << 31);
/// IA32_EFER.
const MSR_EFER: u32 = 0xC000_0080;
/// EFER.LME (long mode enable).
const EFER_LME: u32 = 1 << 8;
/// RFLAGS at CPL3: IOPL=3 (in/out, cli/sti allowed), reserved bit 1, IF=0.
const RFLAGS_USER: u32 = (3 << 12) | (1 << 1);
/// xAPIC EOI register address.
const LAPIC_EOI: u32 = 0xFEE0_00B0;

// SAFETY (global_asm): this is the machine's entry point and interrupt
// plumbing; nothing in Rust calls into it directly. The Rust symbols it
// names (`bsp_main`, `vmdt_exception_report`, `VMDT_TICKS`,
// `VMDT_IRQ_COUNTS`) have the
// signatures and types the comments at their definitions state.
global_asm!(
    r#"
    /* ---- Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) ---- */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .long vmdt_pvh_entry

    /* ---- BSP entry: 32-bit protected mode, paging off, EBX = start info ---- */
    .section .text.vmdt_entry, "ax", @progbits
    .code32
    .globl vmdt_pvh_entry
vmdt_pvh_entry:
    lgdt vmdt_gdt_ptr
    mov ${cr4}, %eax
    mov %eax, %cr4
    mov $vmdt_pml4, %eax
    mov %eax, %cr3
    mov ${efer}, %ecx
    mov ${lme}, %eax
    xor %edx, %edx
    wrmsr
    mov ${cr0}, %eax
    mov %eax, %cr0
    ljmp ${kcs}, $vmdt_bsp_long

    .code64
vmdt_bsp_long:
    mov ${kds}, %eax
    mov %ax, %ss
    lidt vmdt_idt_ptr(%rip)
    mov ${tss0}, %eax
    ltr %ax
    mov $vmdt_kstacks + {kstack}, %esp
    mov %ebx, %edi
    push ${rflags}
    popfq
    push ${uds}
    push $vmdt_ustacks + {ustack}
    push ${rflags}
    push ${ucs}
    push $vmdt_bsp_user
    iretq

    /* CPL3 from here on: native speed. Zero .bss, then enter Rust. */
vmdt_bsp_user:
    mov %edi, %ebx
    cld
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    mov %ebx, %edi
    call bsp_main
    ud2

    /* An unexpected vector lands here at CPL3, on a stack carved below
       the CPL0 frame: rdi = vector, rsi = interrupted rip. */
vmdt_exception_user:
    call vmdt_exception_report
    ud2

    /* ---- CPL0 interrupt handlers ---- */
vmdt_isr_timer:
    push %rax
    lock incq VMDT_TICKS(%rip)
    mov ${eoi}, %eax
    movl $0, (%rax)
    pop %rax
    iretq

    /* Device vectors: the stub pushes rax and loads the vector's index. */
vmdt_isr_count:
    lock incq VMDT_IRQ_COUNTS(,%rax,8)
    mov ${eoi}, %eax
    movl $0, (%rax)
    pop %rax
    iretq

    /* int3 from CPL3 with a request in eax (see cpu.rs). */
vmdt_isr_breakpoint:
    cmp ${op_sti}, %eax
    je 2f
    cmp ${op_cli}, %eax
    je 3f
    cmp ${op_park}, %eax
    je vmdt_isr_park
    cmp ${op_cpuid}, %eax
    je 4f
    push $3
    jmp vmdt_isr_report
2:  orq $0x200, 16(%rsp)
    iretq
3:  andq $~0x200, 16(%rsp)
    iretq
4:  mov %esi, %eax
    mov %edi, %ecx
    cpuid
    iretq

    .globl vmdt_isr_park
vmdt_isr_park:
    cli
1:  hlt
    jmp 1b

vmdt_isr_report:
    pop %rdi
    mov (%rsp), %rsi
    movq $vmdt_exception_user, (%rsp)
    movq ${ucs}, 8(%rsp)
    movq ${rflags}, 16(%rsp)
    lea -512(%rsp), %rax
    and $-16, %rax
    mov %rax, 24(%rsp)
    movq ${uds}, 32(%rsp)
    iretq

    /* ---- 256 stubs of 16 bytes; vector v at vmdt_isr_stubs + 16 * v ---- */
    .macro vmdt_stub vec
    .balign 16
    .if (\vec) == {vtimer}
    jmp vmdt_isr_timer
    .elseif (\vec) == 3
    jmp vmdt_isr_breakpoint
    .elseif (\vec) == {vspurious}
    iretq
    .elseif ((\vec) >= {virq}) && ((\vec) < {virq} + {nirq})
    push %rax
    mov $((\vec) - {virq}), %eax
    jmp vmdt_isr_count
    .else
    .if ((\vec) == 8) || (((\vec) >= 10) && ((\vec) <= 14)) || ((\vec) == 17) || ((\vec) == 21) || ((\vec) == 29) || ((\vec) == 30)
    add $8, %rsp
    .endif
    push $(\vec)
    jmp vmdt_isr_report
    .endif
    .endm

    .section .text.vmdt_isr, "ax", @progbits
    .balign 4096
    .globl vmdt_isr_stubs
vmdt_isr_stubs:
    .irp hi, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .irp lo, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    vmdt_stub (\hi*16+\lo)
    .endr
    .endr
    .balign 16
    .globl vmdt_isr_stubs_end
vmdt_isr_stubs_end:

    /* ---- IDT: interrupt gates to the stubs; only the park gate is DPL3 ---- */
    .macro vmdt_gate vec
    .word VMDT_ISR_LO + (\vec) * 16
    .word {kcs}
    .byte 0
    .if (\vec) == 3
    .byte 0xEE
    .else
    .byte 0x8E
    .endif
    .word VMDT_ISR_HI
    .long 0
    .long 0
    .endm

    .section .data.vmdt_idt, "aw", @progbits
    .balign 16
vmdt_idt:
    .irp hi, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .irp lo, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    vmdt_gate (\hi*16+\lo)
    .endr
    .endr
    .balign 8
    .globl vmdt_idt_ptr
vmdt_idt_ptr:
    .word 256 * 16 - 1
    .quad vmdt_idt

    /* ---- GDT: null, kernel code/data, user data/code, one TSS per CPU ---- */
    .section .data.vmdt_gdt, "aw", @progbits
    .balign 16
    .globl vmdt_gdt
vmdt_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
    .quad 0x00CFF2000000FFFF
    .quad 0x00AFFA000000FFFF
    .word {iomap0} + {iomap_bytes}
    .word VMDT_TSS0_LO
    .byte VMDT_TSS0_B2
    .byte 0x89
    .byte 0
    .byte VMDT_TSS0_B3
    .long 0
    .long 0
    .fill 2 * ({max_cpus} - 1), 8, 0
vmdt_gdt_end:
    .balign 8
    .globl vmdt_gdt_ptr
vmdt_gdt_ptr:
    .word vmdt_gdt_end - vmdt_gdt - 1
    .quad vmdt_gdt

    /* ---- TSSs: CPU 0's set up here, the others by ap::prepare; all share
       one all-zero I/O permission bitmap after them (every port allowed at
       CPL3 even where the IOPL of an iretq frame is not honoured) ---- */
    .section .data.vmdt_tss, "aw", @progbits
    .balign 16
    .globl vmdt_tss0
vmdt_tss0:
    .long 0
    .quad vmdt_kstacks + {kstack}
    .fill 88, 1, 0
    .word 0
    .word {iomap0}
    .fill ({max_cpus} - 1) * {tss_size}, 1, 0
    .globl vmdt_iomap
vmdt_iomap:
    .fill {iomap_bytes}, 1, 0
    .byte 0xFF

    /* ---- Boot page tables (P|W|U; 2 MiB pages with PS) ---- */
    .section .data.vmdt_pagetables, "aw", @progbits
    .balign 4096
    .globl vmdt_pml4
vmdt_pml4:
    .quad vmdt_pdpt + 7
    .fill 511, 8, 0
    .globl vmdt_pdpt
vmdt_pdpt:
    .quad vmdt_pd0 + 7
    .quad 0
    .quad 0
    .quad vmdt_pd3 + 7
    .fill 508, 8, 0
    /* First GiB, write-back. */
vmdt_pd0:
    .irp a, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .irp b, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .quad (((\a*16+\b)) << 21) | 0x87
    .endr
    .endr
    /* Fourth GiB: only IOAPIC (0xFEC00000) and LAPIC (0xFEE00000), UC. */
    .globl vmdt_pd3
vmdt_pd3:
    .fill 502, 8, 0
    .quad 0xFEC0009F
    .quad 0xFEE0009F
    .fill 8, 8, 0

    /* ---- Stacks (not zeroed: in use while .bss is cleared) ---- */
    .section .vmdt_stacks, "aw", @nobits
    .balign 4096
    .globl vmdt_kstacks
vmdt_kstacks:
    .skip {kstack} * {max_cpus}
    .globl vmdt_ustacks
vmdt_ustacks:
    .skip {ustack} * {max_cpus}

    .text
"#,
    cr4 = const CR4_BOOT,
    cr0 = const CR0_BOOT,
    efer = const MSR_EFER,
    lme = const EFER_LME,
    kcs = const KERNEL_CS,
    kds = const KERNEL_DS,
    ucs = const USER_CS,
    uds = const USER_DS,
    tss0 = const TSS_SEL0,
    rflags = const RFLAGS_USER,
    eoi = const LAPIC_EOI,
    kstack = const KSTACK_SIZE,
    ustack = const USTACK_SIZE,
    max_cpus = const MAX_CPUS,
    vtimer = const VEC_TIMER,
    vspurious = const VEC_SPURIOUS,
    virq = const VEC_IRQ_BASE,
    nirq = const VEC_IRQ_COUNT,
    op_sti = const OP_STI,
    op_cli = const OP_CLI,
    op_park = const OP_PARK,
    op_cpuid = const OP_CPUID,
    tss_size = const TSS_SIZE,
    iomap0 = const IOMAP_OFFSET0,
    iomap_bytes = const IOMAP_BYTES,
    options(att_syntax)
);

extern "C" {
    /// The GDT laid out above (`GDT_ENTRIES` quadwords).
    pub static mut vmdt_gdt: [u64; GDT_ENTRIES];
    /// Page-directory-pointer table of the identity map (first 512 GiB).
    pub static mut vmdt_pdpt: [u64; 512];
    /// TSS of CPU 0, followed by those of CPUs 1.. (`TSS_SIZE` each).
    pub static mut vmdt_tss0: [u8; 0];
    /// Base of the per-CPU kernel stacks (`KSTACK_SIZE` each).
    pub static vmdt_kstacks: [u8; 0];
    /// First byte of the image (1 MiB).
    pub static __image_start: [u8; 0];
    /// First byte after the image, stacks and `.bss` included.
    pub static __image_end: [u8; 0];
}

/// The guest image's physical range `[start, end)`, everything the guest
/// itself uses above 1 MiB (code, data, page tables, stacks).
pub fn image_range() -> (u64, u64) {
    let start = core::ptr::addr_of!(__image_start) as u64;
    let end = core::ptr::addr_of!(__image_end) as u64;
    (start, end)
}

/// Top of CPU `index`'s kernel (CPL0) stack, for its TSS RSP0.
pub fn kstack_top(index: usize) -> u64 {
    let base = core::ptr::addr_of!(vmdt_kstacks) as u64;
    base + ((index + 1) * KSTACK_SIZE) as u64
}
