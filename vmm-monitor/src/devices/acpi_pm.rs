//! ACPI fixed hardware: the PM1 event and control blocks, the PM timer and
//! GPE block 0, as one port-I/O device (ACPI 6.5 §4.8).
//!
//! The FADT (see [`crate::acpi`]) points the guest at these ports; both use
//! the constants below, so they cannot disagree. The port range
//! [`PM_BASE`]`..`[`PM_BASE`]` + `[`PM_LEN`] is laid out as:
//!
//! ```text
//! 0x600  PM1_STS   (16 bit, write 1 to clear)
//! 0x602  PM1_EN    (16 bit)
//! 0x604  PM1_CNT   (16 bit: SCI_EN reads 1, SLP_TYP/SLP_EN put the VM to sleep)
//! 0x608  PM_TMR    (32 bit, 24 bits used, 3.579545 MHz, read only)
//! 0x620  GPE0_STS  (16 bit, write 1 to clear)
//! 0x622  GPE0_EN   (16 bit)
//! ```
//!
//! Every register may be accessed in any width: an access is split into
//! bytes, and each byte is applied to the register it falls in. Bytes
//! outside the registers read 0 and ignore writes.
//!
//! The power button is a control-method device (`\_SB.PWRB`) signalled on
//! GPE 0, not the fixed-feature button: [`AcpiPm::press_power_button`] sets
//! GPE0 status bit 0, and the DSDT's `\_GPE._E00` notifies the button.

use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::exit::{VmEvent, VmEvents};

/// First port of the ACPI PM register range.
pub const PM_BASE: u16 = 0x600;
/// Length of the port range the device claims (PM1, timer and GPE0 blocks).
pub const PM_LEN: u16 = 0x30;

/// PM1a event block: PM1_STS then PM1_EN.
pub const PM1A_EVT_BLK: u16 = PM_BASE;
/// Length of the PM1a event block in bytes.
pub const PM1_EVT_LEN: u8 = 4;
/// PM1a control block.
pub const PM1A_CNT_BLK: u16 = PM_BASE + 0x04;
/// Length of the PM1a control block in bytes.
pub const PM1_CNT_LEN: u8 = 2;
/// PM timer block.
pub const PM_TMR_BLK: u16 = PM_BASE + 0x08;
/// Length of the PM timer block in bytes.
pub const PM_TMR_LEN: u8 = 4;
/// GPE0 block: GPE0_STS then GPE0_EN, each half the block.
pub const GPE0_BLK: u16 = PM_BASE + 0x20;
/// Length of the GPE0 block in bytes.
pub const GPE0_BLK_LEN: u8 = 4;

/// The SCI's legacy IRQ (and GSI): the FADT's SCI_INT; the monitor registers
/// the SCI eventfd as an irqfd on this GSI.
pub const SCI_IRQ: u8 = 9;

/// SLP_TYP value for S5 (soft off); the DSDT's `\_S5_` package names it.
pub const S5_SLP_TYP: u8 = 5;

/// Frequency of the ACPI PM timer (ACPI 6.5 §4.8.3.3).
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The PM timer counts in 24 bits (TMR_VAL_EXT is not set in the FADT).
const PM_TIMER_MASK: u32 = 0x00ff_ffff;
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// PM1_CNT.SCI_EN: ACPI mode; always 1 because SMI_CMD is 0 (no legacy mode).
pub const PM1_CNT_SCI_EN: u16 = 1 << 0;
/// PM1_CNT.SLP_TYP field shift (bits 10..=12).
const PM1_CNT_SLP_TYP_SHIFT: u16 = 10;
/// PM1_CNT.SLP_TYP field mask, unshifted.
const PM1_CNT_SLP_TYP_MASK: u16 = 0x7;
/// PM1_CNT.SLP_EN: write-only, starts the sleep transition.
pub const PM1_CNT_SLP_EN: u16 = 1 << 13;
/// Bits of PM1_CNT the guest may set and read back: SCI_EN, BM_RLD,
/// GBL_RLS and SLP_TYP (SLP_EN always reads 0).
const PM1_CNT_RW_MASK: u16 = 0x1c07;

/// GPE0 bit of the power button (`\_GPE._E00`).
pub const GPE_POWER_BUTTON: u16 = 1 << 0;

/// Register offsets from [`PM_BASE`].
const OFF_PM1_STS: u64 = 0x00;
const OFF_PM1_EN: u64 = 0x02;
const OFF_PM1_CNT: u64 = 0x04;
const OFF_PM_TMR: u64 = 0x08;
const OFF_GPE0_STS: u64 = 0x20;
const OFF_GPE0_EN: u64 = 0x22;

/// Errors the host side of the device reports.
#[derive(Debug, thiserror::Error)]
pub enum AcpiPmError {
    /// Signalling the SCI eventfd failed.
    #[error("cannot signal the ACPI SCI eventfd")]
    Sci(#[source] std::io::Error),
}

/// A monotonic clock for the PM timer: time elapsed since some fixed start.
pub type MonotonicClock = Box<dyn Fn() -> Duration + Send>;

/// The ACPI PM1/timer/GPE0 register block.
///
/// # Invariants
/// - PM1_CNT always reads with SCI_EN set and SLP_EN clear.
/// - The SCI eventfd is written exactly when an enabled status bit goes
///   from "none pending" to "some pending" (`(sts & en) != 0`): the irqfd
///   delivers an edge, so a level that stays high is not re-signalled.
pub struct AcpiPm {
    pm1_sts: u16,
    pm1_en: u16,
    pm1_cnt: u16,
    gpe0_sts: u16,
    gpe0_en: u16,
    sci: EventFd,
    events: VmEvents,
    clock: MonotonicClock,
}

impl AcpiPm {
    /// A PM block signalling its SCI through `sci` and reporting S5 through
    /// `events`, with the PM timer running from now.
    pub fn new(sci: EventFd, events: VmEvents) -> Self {
        let start = Instant::now();
        Self::with_clock(sci, events, Box::new(move || start.elapsed()))
    }

    /// Like [`AcpiPm::new`] with the PM timer driven by `clock`.
    pub fn with_clock(sci: EventFd, events: VmEvents, clock: MonotonicClock) -> Self {
        Self {
            pm1_sts: 0,
            pm1_en: 0,
            pm1_cnt: PM1_CNT_SCI_EN,
            gpe0_sts: 0,
            gpe0_en: 0,
            sci,
            events,
            clock,
        }
    }

    /// Presses the power button: sets the GPE0 status bit and, if the guest
    /// enabled it, raises the SCI.
    pub fn press_power_button(&mut self) -> Result<(), AcpiPmError> {
        let was_pending = self.sci_pending();
        self.gpe0_sts |= GPE_POWER_BUTTON;
        self.signal_if_newly_pending(was_pending)
    }

    fn sci_pending(&self) -> bool {
        (self.pm1_sts & self.pm1_en) != 0 || (self.gpe0_sts & self.gpe0_en) != 0
    }

    fn signal_if_newly_pending(&self, was_pending: bool) -> Result<(), AcpiPmError> {
        if !was_pending && self.sci_pending() {
            self.sci.write(1).map_err(AcpiPmError::Sci)?;
        }
        Ok(())
    }

    fn pm_timer(&self) -> u32 {
        let ticks = (self.clock)().as_nanos() * u128::from(PM_TIMER_HZ) / NANOS_PER_SEC;
        // Truncation is the point: the counter wraps in 24 bits.
        (ticks as u32) & PM_TIMER_MASK
    }

    /// The 16- or 32-bit register holding `offset`, its value, and the
    /// offset of its first byte; None outside every register.
    fn register_at(&self, offset: u64) -> Option<(u64, u32)> {
        let base = if offset >= OFF_PM_TMR && offset < OFF_PM_TMR + u64::from(PM_TMR_LEN) {
            OFF_PM_TMR
        } else {
            offset & !1
        };
        let value = match base {
            OFF_PM1_STS => u32::from(self.pm1_sts),
            OFF_PM1_EN => u32::from(self.pm1_en),
            OFF_PM1_CNT => u32::from(self.pm1_cnt | PM1_CNT_SCI_EN),
            OFF_PM_TMR => self.pm_timer(),
            OFF_GPE0_STS => u32::from(self.gpe0_sts),
            OFF_GPE0_EN => u32::from(self.gpe0_en),
            _ => return None,
        };
        Some((base, value))
    }

    fn read_byte(&self, offset: u64) -> u8 {
        match self.register_at(offset) {
            Some((base, value)) => (value >> (8 * (offset - base))) as u8,
            None => 0,
        }
    }

    /// Applies one written byte to the 16-bit register it falls in.
    fn write_byte(&mut self, offset: u64, byte: u8) {
        let shift = 8 * (offset & 1);
        let bits = u16::from(byte) << shift;
        let lane = 0xffu16 << shift;
        match offset & !1 {
            OFF_PM1_STS => self.pm1_sts &= !bits,
            OFF_PM1_EN => self.pm1_en = (self.pm1_en & !lane) | bits,
            OFF_PM1_CNT => {
                let cnt = (self.pm1_cnt & !lane) | bits;
                self.pm1_cnt = (cnt & PM1_CNT_RW_MASK) | PM1_CNT_SCI_EN;
                if cnt & PM1_CNT_SLP_EN != 0 {
                    self.sleep(cnt);
                }
            }
            OFF_GPE0_STS => self.gpe0_sts &= !bits,
            OFF_GPE0_EN => self.gpe0_en = (self.gpe0_en & !lane) | bits,
            other => {
                log::debug!("acpi-pm: write to read-only or absent register at offset {other:#x}")
            }
        }
    }

    /// The guest set SLP_EN with the sleep type in `cnt`.
    fn sleep(&mut self, cnt: u16) {
        let slp_typ = (cnt >> PM1_CNT_SLP_TYP_SHIFT) & PM1_CNT_SLP_TYP_MASK;
        if slp_typ == u16::from(S5_SLP_TYP) {
            log::info!("acpi-pm: guest entered S5, powering off");
            self.events.send(VmEvent::Poweroff);
        } else {
            log::warn!("acpi-pm: guest asked for unsupported sleep type {slp_typ}, ignored");
        }
    }
}

impl crate::bus::BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.read_byte(offset + i as u64);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let was_pending = self.sci_pending();
        for (i, byte) in data.iter().enumerate() {
            self.write_byte(offset + i as u64, *byte);
        }
        if let Err(AcpiPmError::Sci(e)) = self.signal_if_newly_pending(was_pending) {
            // A host failure the guest cannot cause; the access itself is done.
            log::error!("acpi-pm: cannot signal the SCI eventfd: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::bus::BusDevice;

    fn device() -> (AcpiPm, crossbeam_channel::Receiver<VmEvent>, Arc<AtomicU64>) {
        let (events, rx) = VmEvents::new();
        let sci = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let nanos = Arc::new(AtomicU64::new(0));
        let n = nanos.clone();
        let pm = AcpiPm::with_clock(
            sci,
            events,
            Box::new(move || Duration::from_nanos(n.load(Ordering::SeqCst))),
        );
        (pm, rx, nanos)
    }

    fn read16(pm: &mut AcpiPm, port: u16) -> u16 {
        let mut d = [0u8; 2];
        pm.read(u64::from(port - PM_BASE), &mut d);
        u16::from_le_bytes(d)
    }

    fn write16(pm: &mut AcpiPm, port: u16, v: u16) {
        pm.write(u64::from(port - PM_BASE), &v.to_le_bytes());
    }

    fn sci_count(pm: &AcpiPm) -> u64 {
        pm.sci.read().unwrap_or(0)
    }

    #[test]
    fn acpi_pm_pm1_cnt_read_has_sci_en_set() {
        let (mut pm, _, _) = device();
        assert_eq!(read16(&mut pm, PM1A_CNT_BLK) & PM1_CNT_SCI_EN, 1);
        write16(&mut pm, PM1A_CNT_BLK, 0);
        assert_eq!(read16(&mut pm, PM1A_CNT_BLK) & PM1_CNT_SCI_EN, 1);
    }

    #[test]
    fn acpi_pm_pm1_cnt_slp_en_with_s5_sends_poweroff() {
        let (mut pm, rx, _) = device();
        let v = PM1_CNT_SLP_EN | (u16::from(S5_SLP_TYP) << PM1_CNT_SLP_TYP_SHIFT);
        write16(&mut pm, PM1A_CNT_BLK, v);
        assert_eq!(rx.try_recv(), Ok(VmEvent::Poweroff));
        assert_eq!(read16(&mut pm, PM1A_CNT_BLK) & PM1_CNT_SLP_EN, 0);
    }

    #[test]
    fn acpi_pm_pm1_cnt_byte_writes_with_s5_send_poweroff() {
        let (mut pm, rx, _) = device();
        let v = PM1_CNT_SLP_EN | (u16::from(S5_SLP_TYP) << PM1_CNT_SLP_TYP_SHIFT);
        let off = u64::from(PM1A_CNT_BLK - PM_BASE);
        pm.write(off, &[v as u8]);
        assert!(rx.try_recv().is_err());
        pm.write(off + 1, &[(v >> 8) as u8]);
        assert_eq!(rx.try_recv(), Ok(VmEvent::Poweroff));
    }

    #[test]
    fn acpi_pm_pm1_cnt_other_sleep_type_is_ignored() {
        let (mut pm, rx, _) = device();
        write16(
            &mut pm,
            PM1A_CNT_BLK,
            PM1_CNT_SLP_EN | (3 << PM1_CNT_SLP_TYP_SHIFT),
        );
        assert!(rx.try_recv().is_err());
        // SLP_TYP without SLP_EN does nothing either.
        write16(
            &mut pm,
            PM1A_CNT_BLK,
            u16::from(S5_SLP_TYP) << PM1_CNT_SLP_TYP_SHIFT,
        );
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn acpi_pm_pm1_sts_write_one_clears_only_those_bits() {
        let (mut pm, _, _) = device();
        pm.pm1_sts = 0x8101;
        write16(&mut pm, PM1A_EVT_BLK, 0x0100);
        assert_eq!(read16(&mut pm, PM1A_EVT_BLK), 0x8001);
        write16(&mut pm, PM1A_EVT_BLK + 2, 0x0120);
        assert_eq!(read16(&mut pm, PM1A_EVT_BLK + 2), 0x0120);
    }

    #[test]
    fn acpi_pm_pm_timer_counts_at_3_58_mhz_and_wraps_at_24_bits() {
        let (mut pm, _, nanos) = device();
        let off = u64::from(PM_TMR_BLK - PM_BASE);
        let mut d = [0u8; 4];
        nanos.store(1_000_000_000, Ordering::SeqCst);
        pm.read(off, &mut d);
        assert_eq!(u32::from_le_bytes(d), 3_579_545);
        // 5 s = 17_897_725 ticks, beyond 2^24.
        nanos.store(5_000_000_000, Ordering::SeqCst);
        pm.read(off, &mut d);
        assert_eq!(u32::from_le_bytes(d), 17_897_725 & PM_TIMER_MASK);
        let mut b = [0u8; 1];
        pm.read(off + 3, &mut b);
        assert_eq!(b, [0]);
    }

    #[test]
    fn acpi_pm_pm_timer_write_is_ignored() {
        let (mut pm, _, nanos) = device();
        nanos.store(1_000_000, Ordering::SeqCst);
        let off = u64::from(PM_TMR_BLK - PM_BASE);
        pm.write(off, &[0xff; 4]);
        let mut d = [0u8; 4];
        pm.read(off, &mut d);
        assert_eq!(u32::from_le_bytes(d), 3579);
    }

    #[test]
    fn acpi_pm_power_button_without_enable_sets_status_only() {
        let (mut pm, _, _) = device();
        pm.press_power_button().unwrap();
        assert_eq!(read16(&mut pm, GPE0_BLK), GPE_POWER_BUTTON);
        assert_eq!(sci_count(&pm), 0);
        // Enabling with the status pending raises the SCI.
        write16(&mut pm, GPE0_BLK + 2, GPE_POWER_BUTTON);
        assert_eq!(sci_count(&pm), 1);
    }

    #[test]
    fn acpi_pm_power_button_with_enable_raises_sci_once() {
        let (mut pm, _, _) = device();
        write16(&mut pm, GPE0_BLK + 2, GPE_POWER_BUTTON);
        assert_eq!(read16(&mut pm, GPE0_BLK + 2), GPE_POWER_BUTTON);
        pm.press_power_button().unwrap();
        pm.press_power_button().unwrap();
        assert_eq!(sci_count(&pm), 1);
        write16(&mut pm, GPE0_BLK, GPE_POWER_BUTTON);
        assert_eq!(read16(&mut pm, GPE0_BLK), 0);
        pm.press_power_button().unwrap();
        assert_eq!(sci_count(&pm), 1);
    }

    #[test]
    fn acpi_pm_absent_register_reads_zero_and_ignores_writes() {
        let (mut pm, rx, _) = device();
        pm.write(0x10, &[0xff, 0xff, 0xff, 0xff]);
        let mut d = [0xaau8; 4];
        pm.read(0x10, &mut d);
        assert_eq!(d, [0; 4]);
        pm.read(0x2e, &mut d[..2]);
        assert_eq!(d[..2], [0, 0]);
        assert!(rx.try_recv().is_err());
    }
}
