//! `demo`: what `scripts/demo` shows, one device after the other: the
//! disk (the `blk-rw` scenario: write and verify it all), the network (the
//! `net` scenario: DHCP on a local interface, then pings to the host
//! side), and the virtio console (a line on hvc0 next to COM1's).

use super::{blk_rw, net, Ctx, Reason, Scenario};
use crate::virtio::console::Console;

/// The scenario.
pub const SCENARIO: Scenario = Scenario { name: "demo", run };

fn run(ctx: &Ctx) -> Result<(), Reason> {
    crate::println!("VMDT {} step=disk", ctx.name);
    (blk_rw::SCENARIO.run)(ctx)?;
    crate::println!("VMDT {} step=net", ctx.name);
    (net::SCENARIO.run)(ctx)?;
    crate::println!("VMDT {} step=console", ctx.name);
    let mut console = Console::open(ctx.boot)?;
    console.write_line(format_args!("VMDT {} hvc=hello from hvc0", ctx.name))?;
    Ok(())
}
