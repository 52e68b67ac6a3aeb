//! COM1 (16550 at 0x3F8) output by polling: one line per call, under a lock
//! so that lines from different CPUs never interleave.

use core::fmt::{self, Write};

use crate::cpu::{self, Deadline};
use crate::sync::SpinLock;

/// COM1 base port (transmit holding register).
const COM1: u16 = 0x3F8;
/// Line status register.
const LSR: u16 = COM1 + 5;
/// LSR bit: transmit holding register empty.
const LSR_THRE: u8 = 1 << 5;
/// Polls of LSR before writing anyway (an absent UART must not hang us).
const THRE_POLLS: u32 = 100_000;

/// How long a failure report waits for the lock before printing anyway.
const FORCED_WAIT_MS: u64 = 200;

static LOCK: SpinLock = SpinLock::new();

/// The UART as a `fmt::Write` sink (callers hold the lock).
struct Com1;

impl Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            put(byte);
        }
        Ok(())
    }
}

fn put(byte: u8) {
    for _ in 0..THRE_POLLS {
        if cpu::inb(LSR) & LSR_THRE != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    cpu::outb(COM1, byte);
}

/// Writes `args` and a '\n' as one line.
pub fn print_line(args: fmt::Arguments) {
    let _guard = LOCK.lock();
    let _ = Com1.write_fmt(args);
    put(b'\n');
}

/// Like [`print_line`], but for failure paths: takes the lock only if it
/// comes free soon (the CPU that failed may have held it).
pub fn print_line_forced(args: fmt::Arguments) {
    let _guard = LOCK.lock_bounded(Deadline::after_ms(FORCED_WAIT_MS));
    let _ = Com1.write_fmt(args);
    put(b'\n');
}

/// Prints one protocol line (format arguments as `format_args!`).
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::serial::print_line(format_args!($($arg)*)) };
}
