//! Local APIC in xAPIC mode, by MMIO at 0xFEE00000 (mapped user-accessible
//! and uncached by the boot page tables, so CPL3 code drives it).

/// Physical (= virtual) base of the xAPIC registers.
const BASE: usize = 0xFEE0_0000;

/// LAPIC ID register (ID in bits 31:24).
const REG_ID: usize = 0x20;
/// Spurious interrupt vector register.
const REG_SVR: usize = 0xF0;
/// Interrupt command register, low half (writing it sends).
const REG_ICR_LOW: usize = 0x300;
/// Interrupt command register, high half (destination in bits 31:24).
const REG_ICR_HIGH: usize = 0x310;
/// LVT timer.
const REG_LVT_TIMER: usize = 0x320;
/// LVT LINT0 (ExtINT from the PIC after reset on the BSP).
const REG_LVT_LINT0: usize = 0x350;
/// LVT LINT1 (NMI).
const REG_LVT_LINT1: usize = 0x360;
/// Timer initial count.
const REG_TIMER_INIT: usize = 0x380;
/// Timer current count.
const REG_TIMER_CUR: usize = 0x390;
/// Timer divide configuration.
const REG_TIMER_DIV: usize = 0x3E0;

/// SVR: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;
/// LVT: masked.
const LVT_MASKED: u32 = 1 << 16;
/// LVT timer: periodic mode.
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// Divide configuration value for "divide by 1".
const DIV_BY_1: u32 = 0b1011;

/// ICR delivery mode INIT.
pub const ICR_INIT: u32 = 5 << 8;
/// ICR delivery mode start-up (SIPI); the vector is the page number.
pub const ICR_STARTUP: u32 = 6 << 8;
/// ICR level: assert.
pub const ICR_ASSERT: u32 = 1 << 14;
/// ICR delivery status: send pending.
const ICR_PENDING: u32 = 1 << 12;

fn read(reg: usize) -> u32 {
    // SAFETY: BASE..BASE+4K is the LAPIC page, identity mapped (UC, user)
    // by the boot page tables; registers are 32-bit and 16-byte aligned.
    unsafe { core::ptr::read_volatile((BASE + reg) as *const u32) }
}

fn write(reg: usize, value: u32) {
    // SAFETY: as for `read`.
    unsafe { core::ptr::write_volatile((BASE + reg) as *mut u32, value) };
}

/// This CPU's LAPIC ID.
pub fn id() -> u32 {
    read(REG_ID) >> 24
}

/// Sends an IPI (`icr_low`: vector, delivery mode, level) to `apic_id` and
/// waits (bounded) until the LAPIC has accepted it.
pub fn send_ipi(apic_id: u32, icr_low: u32) {
    write(REG_ICR_HIGH, apic_id << 24);
    write(REG_ICR_LOW, icr_low);
    for _ in 0..1_000_000 {
        if read(REG_ICR_LOW) & ICR_PENDING == 0 {
            break;
        }
        core::hint::spin_loop();
    }
}

/// Software-enables the LAPIC with `spurious` as spurious vector and masks
/// LINT0/LINT1, so that the (unprogrammed) PIC cannot interrupt us.
pub fn enable(spurious: u8) {
    write(REG_LVT_LINT0, LVT_MASKED);
    write(REG_LVT_LINT1, LVT_MASKED);
    write(REG_SVR, SVR_ENABLE | u32::from(spurious));
}

/// Starts the timer in periodic mode: `vector` every `count` bus cycles.
pub fn timer_periodic(vector: u8, count: u32) {
    write(REG_TIMER_DIV, DIV_BY_1);
    write(REG_LVT_TIMER, LVT_TIMER_PERIODIC | u32::from(vector));
    write(REG_TIMER_INIT, count);
}

/// Stops and masks the timer.
pub fn timer_stop() {
    write(REG_LVT_TIMER, LVT_MASKED);
    write(REG_TIMER_INIT, 0);
}

/// Current count of the timer (to tell a stuck timer from a slow one).
pub fn timer_current() -> u32 {
    read(REG_TIMER_CUR)
}
