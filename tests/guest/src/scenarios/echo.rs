//! `echo`: reads one line typed on COM1 (polling the line status register,
//! no interrupt) and prints it back; passes once a line arrived within
//! [`WAIT_MS`]. Tests the console's input path.

use super::{Ctx, Reason, Scenario};
use crate::cpu::{self, Deadline};

/// The scenario.
pub const SCENARIO: Scenario = Scenario { name: "echo", run };

/// Receive buffer register of COM1.
const RBR: u16 = 0x3F8;
/// Line status register of COM1.
const LSR: u16 = 0x3F8 + 5;
/// LSR bit: data ready.
const LSR_DR: u8 = 1;
/// How long to wait for the whole line.
const WAIT_MS: u64 = 60_000;
/// Longest line kept.
const MAX_LINE: usize = 80;

fn run(ctx: &Ctx) -> Result<(), Reason> {
    crate::println!("VMDT {} ready=1", ctx.name);
    let deadline = Deadline::after_ms(WAIT_MS);
    let mut line = [0u8; MAX_LINE];
    let mut len = 0;
    loop {
        if !cpu::wait_until(deadline, || cpu::inb(LSR) & LSR_DR != 0) {
            crate::fail!("no complete line within {WAIT_MS} ms ({len} bytes)");
        }
        let byte = cpu::inb(RBR);
        if byte == b'\n' || byte == b'\r' {
            break;
        }
        if len < MAX_LINE {
            line[len] = if byte.is_ascii_graphic() { byte } else { b'_' };
            len += 1;
        }
    }
    let text = core::str::from_utf8(&line[..len]).unwrap_or("");
    crate::println!("VMDT {} line={text} len={len}", ctx.name);
    Ok(())
}
