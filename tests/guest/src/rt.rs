//! Freestanding runtime: the memory functions the compiler emits calls to
//! (there is no libc), and the panic handler.

use core::arch::asm;

/// Copies `n` bytes from `src` to `dst`.
///
/// # Safety
/// The C contract: both ranges valid for `n` bytes, not overlapping.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges; rep movsb copies exactly n
    // bytes forwards (DF is clear in all code of this guest).
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags))
    };
    dst
}

/// Copies `n` bytes from `src` to `dst`; the ranges may overlap.
///
/// # Safety
/// The C contract: both ranges valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: a forward copy is correct when dst is below src or the
        // ranges do not overlap; the caller guarantees validity.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: copy backwards (DF set, restored) from the last byte; the
    // caller guarantees both ranges, n >= 1 here since dst > src.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
             options(nostack))
    };
    dst
}

/// Fills `n` bytes at `dst` with `c`.
///
/// # Safety
/// The C contract: the range is valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range; rep stosb writes n bytes.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8,
             options(nostack, preserves_flags))
    };
    dst
}

/// Compares `n` bytes.
///
/// # Safety
/// The C contract: both ranges valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: i < n; the caller guarantees both ranges.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// Compares `n` bytes for equality (zero if equal).
///
/// # Safety
/// The C contract: both ranges valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let name = crate::scenarios::current();
    match info.location() {
        Some(loc) => crate::serial::print_line_forced(format_args!(
            "VMDT FAIL {name} panic at {}:{}: {}",
            loc.file(),
            loc.line(),
            info.message()
        )),
        None => crate::serial::print_line_forced(format_args!(
            "VMDT FAIL {name} panic: {}",
            info.message()
        )),
    }
    crate::power::poweroff()
}
