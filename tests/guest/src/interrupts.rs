//! CPL3 side of interrupt handling: the tick counter the CPL0 timer stub
//! increments, and the report of an unexpected vector (entry.rs `iretq`s
//! into [`vmdt_exception_report`] at CPL3, IF=0, IOPL=3).

use core::sync::atomic::AtomicU64;

use crate::{lapic, power, serial};

/// LAPIC timer ticks seen (incremented by the CPL0 timer stub with
/// `lock incq`; must stay a 64-bit atomic named `VMDT_TICKS`).
#[no_mangle]
pub static VMDT_TICKS: AtomicU64 = AtomicU64::new(0);

/// Reports an unexpected exception or interrupt and powers off.
#[no_mangle]
extern "C" fn vmdt_exception_report(vector: u64, rip: u64) -> ! {
    let cpu = lapic::id();
    serial::print_line_forced(format_args!(
        "VMDT FAIL exception vector={vector} rip={rip:#x} cpu={cpu}"
    ));
    power::poweroff()
}
