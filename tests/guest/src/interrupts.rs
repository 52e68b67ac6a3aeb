//! CPL3 side of interrupt handling: the tick counter the CPL0 timer stub
//! increments, and the report of an unexpected vector (entry.rs `iretq`s
//! into [`vmdt_exception_report`] at CPL3, IF=0, IOPL=3).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::{lapic, power, serial};

/// LAPIC timer ticks seen (incremented by the CPL0 timer stub with
/// `lock incq`; must stay a 64-bit atomic named `VMDT_TICKS`).
#[no_mangle]
pub static VMDT_TICKS: AtomicU64 = AtomicU64::new(0);

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
