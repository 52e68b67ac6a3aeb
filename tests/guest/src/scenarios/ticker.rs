//! `ticker`: prints a numbered line every `ms=N` milliseconds (default
//! 100) by the TSC, `count=N` times (default: forever). A long-running
//! guest whose output shows at once whether its vCPU runs (pause tests).

use super::{Ctx, Reason, Scenario};
use crate::cpu::{self, Deadline};

/// The scenario.
pub const SCENARIO: Scenario = Scenario {
    name: "ticker",
    run,
};

/// Period when the command line gives none.
const DEFAULT_MS: u64 = 100;

fn run(ctx: &Ctx) -> Result<(), Reason> {
    let period = match ctx.boot.arg("ms").map(str::parse::<u64>) {
        None => DEFAULT_MS,
        Some(Ok(ms)) if ms > 0 => ms,
        Some(_) => crate::fail!("ms= takes a positive number"),
    };
    let count = ctx.number("count", u64::MAX)?;
    for n in 0..count {
        crate::println!("VMDT {} n={n}", ctx.name);
        cpu::wait_until(Deadline::after_ms(period), || false);
    }
    Ok(())
}
