//! `reboot`: resets the machine, by the ACPI reset register (default) or
//! with `method=kbd` by the i8042. Passing means the VM reset; the scenario
//! only returns (and fails) if the reset write had no effect.

use super::{Ctx, Reason, Scenario};
use crate::power;

/// The scenario.
pub const SCENARIO: Scenario = Scenario {
    name: "reboot",
    run,
};

fn run(ctx: &Ctx) -> Result<(), Reason> {
    let method = ctx.boot.arg("method").unwrap_or("acpi");
    let reset = match method {
        "acpi" => power::reset_acpi,
        "kbd" => power::reset_kbd,
        other => crate::fail!("unknown method {other}"),
    };
    crate::println!("VMDT {} method={method}", ctx.name);
    reset().map_err(Reason::from)
}
