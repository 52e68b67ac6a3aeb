//! vmd-rs test guest: a freestanding PVH ELF that exercises the machine a
//! monitor builds and reports over COM1.
//!
//! Only a few dozen hand-written instructions run at CPL0 (`entry`, `ap`):
//! on our development hosts CPL0 code is emulated at about 1 µs per
//! instruction, while CPL3 runs natively. All Rust code runs at CPL3 with
//! IOPL=3 (port I/O, cli/sti) on a user-accessible identity map.
//!
//! Start-up on the BSP ([`bsp_main`]): copy the PVH start info
//! (`bootinfo`), complete the identity map (`paging`), parse ACPI (`acpi`),
//! then run the scenario named by `test=` on the command line
//! (`scenarios`), print its verdict and power off (`power`).
//!
//! Output protocol (one '\n'-terminated line each): `VMDT BEGIN <name>`,
//! data lines `VMDT <name> key=value ...`, then `VMDT PASS <name>` or
//! `VMDT FAIL <name> <reason>`. Any unexpected exception or interrupt prints
//! `VMDT FAIL exception vector=<n> rip=<hex> cpu=<apic id>` and powers off.

#![no_std]
#![no_main]

mod acpi;
mod ap;
mod bootinfo;
mod cpu;
mod dma;
mod entry;
mod interrupts;
mod lapic;
mod net;
mod paging;
mod pci;
mod phys;
mod power;
mod rt;
mod scenarios;
mod serial;
mod sync;
mod virtio;

use bootinfo::BootInfo;
use sync::OnceCell;

/// The start info as copied at start-up.
static BOOT: OnceCell<BootInfo> = OnceCell::new();

/// CPL3 entry of the BSP, called by entry.rs with the physical address of
/// `hvm_start_info` (EBX at the PVH entry).
#[no_mangle]
extern "C" fn bsp_main(start_info: u32) -> ! {
    let boot = match BootInfo::read(start_info.into()) {
        Ok(info) => info,
        Err(reason) => fail_early(reason),
    };
    let Some(boot) = BOOT.set(boot) else {
        fail_early("start info set twice")
    };
    if let Err(reason) = paging::init(boot) {
        fail_early(reason);
    }
    // Without ACPI, scenarios that need it fail and poweroff falls back to
    // the debug exit port.
    if let Ok(info) = acpi::parse(boot.rsdp) {
        power::ACPI.set(info);
    }
    scenarios::run(boot)
}

/// Fails before a scenario could be chosen.
fn fail_early(reason: &str) -> ! {
    println!("VMDT FAIL boot {reason}");
    power::poweroff()
}
