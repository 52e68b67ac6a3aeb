//! Thin wrappers over what CPL3 code may do: port I/O (allowed by the TSS
//! I/O bitmap and IOPL=3), interrupt enable/disable and parking through
//! `int3` requests (entry.rs), rdtsc, cpuid.

use core::arch::asm;

use crate::entry::{OP_CLI, OP_CPUID, OP_PARK, OP_STI};

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O is allowed at CPL3 with IOPL=3; the ports this guest
    // writes are devices it drives, and the write touches no Rust memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes a 16-bit word to an I/O port.
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes a 32-bit doubleword to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a 32-bit doubleword from an I/O port.
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `inb`.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`; reads touch no Rust memory.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Enables interrupts on this CPU, by an `int3` request (a plain `sti`
/// needs an IOPL our development hosts do not keep at CPL3).
pub fn sti() {
    // SAFETY: handlers for every vector are installed (see entry.rs); the
    // request only sets IF in the frame the stub returns through.
    unsafe { asm!("int3", in("eax") OP_STI, options(nomem, nostack)) };
}

/// Disables interrupts on this CPU, by an `int3` request.
pub fn cli() {
    // SAFETY: the request only clears IF in the frame it returns through.
    unsafe { asm!("int3", in("eax") OP_CLI, options(nomem, nostack)) };
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc is allowed at CPL3 (CR4.TSD is clear).
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// CPUID of `leaf`/`subleaf` as the VMM defines it: (eax, ebx, ecx, edx).
///
/// Executed at CPL0 by an `int3` request ([`OP_CPUID`]): there CPUID always
/// traps to the VMM, while at CPL3 our development hosts run it natively
/// and return the host CPU's values.
pub fn cpuid(leaf: u32, subleaf: u32) -> (u32, u32, u32, u32) {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: the request runs CPUID at CPL0 and returns; it touches no
    // memory. rbx is reserved by LLVM, so it is saved and restored around
    // the request.
    unsafe {
        asm!(
            "mov {tmp:r}, rbx",
            "int3",
            "xchg {tmp:r}, rbx",
            tmp = out(reg) b,
            inout("eax") OP_CPUID => a,
            in("esi") leaf,
            in("edi") subleaf,
            out("ecx") c,
            out("edx") d,
            options(nomem)
        )
    };
    (a, b, c, d)
}

/// TSC ticks per millisecond: from CPUID (hypervisor leaf 0x40000010 or
/// leaf 0x15/0x16) when offered, else an assumed 3 GHz.
pub fn tsc_per_ms() -> u64 {
    let (max_hv, ..) = cpuid(0x4000_0000, 0);
    if max_hv >= 0x4000_0010 {
        let (khz, ..) = cpuid(0x4000_0010, 0);
        if khz != 0 {
            return u64::from(khz);
        }
    }
    let (max_std, ..) = cpuid(0, 0);
    if max_std >= 0x15 {
        let (den, num, crystal_hz, _) = cpuid(0x15, 0);
        if den != 0 && num != 0 && crystal_hz != 0 {
            return u64::from(crystal_hz) * u64::from(num) / u64::from(den) / 1000;
        }
    }
    if max_std >= 0x16 {
        let (base_mhz, ..) = cpuid(0x16, 0);
        if base_mhz != 0 {
            return u64::from(base_mhz) * 1000;
        }
    }
    3_000_000
}

/// A deadline on the TSC; waits are bounded so a broken machine fails a
/// scenario instead of hanging it.
#[derive(Clone, Copy)]
pub struct Deadline(u64);

impl Deadline {
    /// A deadline `ms` milliseconds (by [`tsc_per_ms`]) from now.
    pub fn after_ms(ms: u64) -> Self {
        Deadline(rdtsc().saturating_add(ms.saturating_mul(tsc_per_ms())))
    }

    /// Whether the deadline has passed.
    pub fn expired(self) -> bool {
        rdtsc() >= self.0
    }
}

/// Spins until `done()` or the deadline; returns whether `done()` held.
pub fn wait_until(deadline: Deadline, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if deadline.expired() {
            return done();
        }
        core::hint::spin_loop();
    }
}

/// Halts this CPU for good by an `int3` request (cli; hlt at CPL0): a
/// halted vCPU costs the host nothing, a spinning one starves others.
pub fn park() -> ! {
    // SAFETY: the park request never returns; nothing is left to clean up.
    unsafe { asm!("int3", in("eax") OP_PARK, options(noreturn)) };
}
