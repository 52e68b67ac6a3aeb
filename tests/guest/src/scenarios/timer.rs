//! `timer`: the LAPIC timer in periodic mode interrupts the BSP at CPL3
//! (sti with IOPL=3); the CPL0 stub counts ticks. Passes after
//! [`TICKS_WANTED`] ticks within [`WAIT_MS`].

use core::sync::atomic::Ordering;

use super::{Ctx, Reason, Scenario};
use crate::cpu::{self, Deadline};
use crate::entry::{VEC_SPURIOUS, VEC_TIMER};
use crate::interrupts::VMDT_TICKS;
use crate::lapic;

/// The scenario.
pub const SCENARIO: Scenario = Scenario { name: "timer", run };

/// Ticks to wait for.
const TICKS_WANTED: u64 = 10;
/// Timer period in LAPIC bus cycles at divide-by-1: KVM's LAPIC bus runs
/// at 1 GHz by default, so 1 ms (well above KVM's 200 µs minimum period).
const PERIOD_CYCLES: u32 = 1_000_000;
/// Bound of the wait (generous: timing here is noisy).
const WAIT_MS: u64 = 5_000;
/// 8259 PIC data ports (interrupt mask registers).
const PIC1_DATA: u16 = 0x21;
const PIC2_DATA: u16 = 0xA1;

fn run(ctx: &Ctx) -> Result<(), Reason> {
    // The PICs are not programmed (vector base 0): mask them entirely.
    cpu::outb(PIC1_DATA, 0xFF);
    cpu::outb(PIC2_DATA, 0xFF);
    lapic::enable(VEC_SPURIOUS);
    let start = VMDT_TICKS.load(Ordering::SeqCst);
    lapic::timer_periodic(VEC_TIMER, PERIOD_CYCLES);
    let began = cpu::rdtsc();
    cpu::sti();
    let arrived = cpu::wait_until(Deadline::after_ms(WAIT_MS), || {
        VMDT_TICKS.load(Ordering::SeqCst) - start >= TICKS_WANTED
    });
    cpu::cli();
    let cycles = cpu::rdtsc() - began;
    let current = lapic::timer_current();
    lapic::timer_stop();
    let ticks = VMDT_TICKS.load(Ordering::SeqCst) - start;
    crate::println!(
        "VMDT {} ticks={ticks} tsc_ms={}",
        ctx.name,
        cycles / cpu::tsc_per_ms()
    );
    if !arrived {
        crate::fail!("only {ticks} of {TICKS_WANTED} ticks (timer count {current})");
    }
    Ok(())
}
