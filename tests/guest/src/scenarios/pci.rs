//! `pci`: lists the functions on bus 0, their capabilities and BARs.

use super::{Ctx, Reason, Scenario};
use crate::pci;

/// The scenario.
pub const SCENARIO: Scenario = Scenario { name: "pci", run };

fn run(ctx: &Ctx) -> Result<(), Reason> {
    let mut count = 0;
    for f in pci::scan().iter() {
        count += 1;
        let mut caps = [0u8; 16];
        let mut n = 0;
        for (_, id) in f.capabilities().take(caps.len()) {
            caps[n] = id;
            n += 1;
        }
        crate::println!(
            "VMDT {} dev={f} vendor={:04x} device={:04x} class={:06x} header={} caps={:02x?}",
            ctx.name,
            f.vendor,
            f.device,
            f.class,
            f.header_type,
            &caps[..n]
        );
        let mut index = 0;
        while index < 6 {
            let Some(bar) = f.probe_bar(index) else {
                index += 1;
                continue;
            };
            let kind = match (bar.io, bar.mem64) {
                (true, _) => "io",
                (false, true) => "mem64",
                (false, false) => "mem32",
            };
            crate::println!(
                "VMDT {} dev={f} bar={index} addr={:#x} size={:#x} kind={kind}",
                ctx.name,
                bar.addr,
                bar.size
            );
            index += if bar.mem64 { 2 } else { 1 };
        }
    }
    crate::println!("VMDT {} functions={count}", ctx.name);
    if count == 0 {
        crate::fail!("no PCI function on bus 0");
    }
    Ok(())
}
