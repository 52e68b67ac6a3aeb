//! `hello`: prints the command line and passes (boot, UART and poweroff).

use super::{Ctx, Reason, Scenario};

/// The scenario.
pub const SCENARIO: Scenario = Scenario { name: "hello", run };

fn run(ctx: &Ctx) -> Result<(), Reason> {
    crate::println!("VMDT {} cmdline={}", ctx.name, ctx.boot.cmdline());
    Ok(())
}
