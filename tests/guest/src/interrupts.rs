//! CPL3 side of interrupt handling: the tick counter the CPL0 timer stub
//! increments, the per-vector counters of the device vectors, and the report of an unexpected vector (entry.rs `iretq`s
//! into [`vmdt_exception_report`] at CPL3, IF=0, IOPL=3).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::entry::VEC_IRQ_COUNT;
use crate::{lapic, power, serial};

/// LAPIC timer ticks seen (incremented by the CPL0 timer stub with
/// `lock incq`; must stay a 64-bit atomic named `VMDT_TICKS`).
#[no_mangle]
pub static VMDT_TICKS: AtomicU64 = AtomicU64::new(0);

/// Interrupts seen per device vector: entry `i` counts vector
/// `VEC_IRQ_BASE + i` (incremented by the CPL0 counting stub with
/// `lock incq`, which then sends EOI; must stay 64-bit atomics named
/// `VMDT_IRQ_COUNTS`). CPL3 drivers wait for a count to change.
#[no_mangle]
pub static VMDT_IRQ_COUNTS: [AtomicU64; VEC_IRQ_COUNT] =
    [const { AtomicU64::new(0) }; VEC_IRQ_COUNT];

/// Interrupts counted so far on device vector `VEC_IRQ_BASE + index`.
pub fn irq_count(index: usize) -> u64 {
    VMDT_IRQ_COUNTS[index].load(Ordering::SeqCst)
}

/// Reports so far; past a few (a fault in the report or poweroff path
/// itself) the CPU just tries the debug exit port and parks.
static REPORTS: AtomicU32 = AtomicU32::new(0);
/// Reports printed at most.
const MAX_REPORTS: u32 = 4;

/// Reports an unexpected exception or interrupt and powers off.
#[no_mangle]
extern "C" fn vmdt_exception_report(vector: u64, rip: u64) -> ! {
    if REPORTS.fetch_add(1, Ordering::SeqCst) >= MAX_REPORTS {
        power::debug_exit_and_park();
    }
    let cpu = lapic::id();
    serial::print_line_forced(format_args!(
        "VMDT FAIL exception vector={vector} rip={rip:#x} cpu={cpu}"
    ));
    power::poweroff()
}
