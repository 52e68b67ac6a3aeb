//! Ending the VM: ACPI S5 poweroff (full or hardware-reduced ACPI), then
//! QEMU's isa-debug-exit port as a fallback; resets by the ACPI reset
//! register or the i8042.

use crate::acpi::Info;
use crate::cpu::{self, Deadline};
use crate::sync::OnceCell;

/// The ACPI facts parsed at start-up (None until then, or without ACPI).
pub static ACPI: OnceCell<Info> = OnceCell::new();

/// PM1_CNT: SLP_TYP field shift.
const PM1_SLP_TYP_SHIFT: u16 = 10;
/// PM1_CNT: SLP_EN.
const PM1_SLP_EN: u16 = 1 << 13;
/// SLEEP_CONTROL_REG: SLP_TYPx field shift (3 bits).
const SLEEP_SLP_TYP_SHIFT: u8 = 2;
/// SLEEP_CONTROL_REG: SLP_EN.
const SLEEP_SLP_EN: u8 = 1 << 5;
/// QEMU isa-debug-exit (`-device isa-debug-exit,iobase=0xf4`).
const DEBUG_EXIT_PORT: u16 = 0xF4;
/// i8042 command port.
const I8042_CMD: u16 = 0x64;
/// i8042 command: pulse the reset line.
const I8042_RESET: u8 = 0xFE;
/// How long a poweroff or reset write may take to end the VM.
const GRACE_MS: u64 = 500;

/// Powers the machine off; never returns (parks if nothing worked).
pub fn poweroff() -> ! {
    cpu::cli();
    if let Some(acpi) = ACPI.get() {
        if let Some(typ) = acpi.slp_typ_s5 {
            let written = if acpi.hw_reduced {
                acpi.sleep_control.is_some_and(|reg| {
                    reg.write_u8(((typ & 7) << SLEEP_SLP_TYP_SHIFT) | SLEEP_SLP_EN)
                })
            } else {
                acpi.pm1a_cnt.is_some_and(|reg| {
                    reg.write_u16((u16::from(typ) << PM1_SLP_TYP_SHIFT) | PM1_SLP_EN)
                })
            };
            if written {
                grace();
            }
        }
    }
    debug_exit_and_park()
}

/// Writes QEMU's isa-debug-exit port, then parks (the last resort).
pub fn debug_exit_and_park() -> ! {
    cpu::outb(DEBUG_EXIT_PORT, 0);
    cpu::park()
}

/// Resets by the FADT's RESET_REG; returns only if that did not work
/// (no register, or the write did not end the VM).
pub fn reset_acpi() -> Result<(), &'static str> {
    let (reg, value) = ACPI
        .get()
        .and_then(|a| a.reset)
        .ok_or("no ACPI reset register")?;
    if !reg.write_u8(value) {
        return Err("ACPI reset register not writable");
    }
    grace();
    Err("ACPI reset returned")
}

/// Resets by the i8042's reset line; returns only if that did not work.
pub fn reset_kbd() -> Result<(), &'static str> {
    cpu::outb(I8042_CMD, I8042_RESET);
    grace();
    Err("i8042 reset returned")
}

/// Waits a little for a write that ends the VM to take effect.
fn grace() {
    let deadline = Deadline::after_ms(GRACE_MS);
    cpu::wait_until(deadline, || false);
}
