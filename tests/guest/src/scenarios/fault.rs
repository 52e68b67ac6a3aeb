//! `fault`: raises an exception on purpose (`ud2`, or with `kind=pf` a
//! page fault on an unmapped address), to test the exception report path:
//! expect `VMDT FAIL exception vector=6 ...` (or 14) and a poweroff.

use super::{Ctx, Reason, Scenario};

/// The scenario.
pub const SCENARIO: Scenario = Scenario { name: "fault", run };

/// An address no mapping covers (past the 512 GiB the guest maps).
const UNMAPPED: u64 = 0x0000_7F00_0000_0000;

fn run(ctx: &Ctx) -> Result<(), Reason> {
    let kind = ctx.boot.arg("kind").unwrap_or("ud");
    crate::println!("VMDT {} kind={kind}", ctx.name);
    match kind {
        // SAFETY: ud2 raises #UD, whose handler reports and powers off; it
        // never returns here.
        "ud" => unsafe { core::arch::asm!("ud2", options(nomem, nostack)) },
        // SAFETY: the read faults (#PF, reported as above); nothing is read.
        "pf" => unsafe {
            core::ptr::read_volatile(UNMAPPED as *const u64);
        },
        other => crate::fail!("unknown kind {other}"),
    }
    Err(Reason::from("fault did not trap"))
}
