//! The MC146818-style CMOS RTC and its 128 bytes of CMOS memory, at ports
//! 0x70 (index) and 0x71 (data).
//!
//! The clock shows host UTC plus an offset the guest may set: a guest write
//! to a time or date register is kept as the difference between the time it
//! asks for and the host's time, so the guest clock keeps ticking with the
//! host's from there. While the guest holds status B's SET bit the clock
//! stands still and writes edit the frozen time field by field; clearing SET
//! makes the edited time the new offset (this is how Linux and OpenBSD set
//! the clock). The day-of-week register is derived from the date and writes
//! to it are ignored.
//!
//! The device raises no interrupts (no periodic, alarm or update-ended
//! interrupt on IRQ 8): status C always reads 0. Alarm registers are plain
//! CMOS bytes.
//!
//! The memory-size bytes a BIOS would leave in CMOS are filled from the RAM
//! size at construction, for guests (and firmware) that read them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::layout;

/// Index port (write-only; bit 7 is the NMI mask, which is ignored).
pub const RTC_PORT: u16 = 0x70;
/// Ports the device claims: index and data.
pub const RTC_LEN: u16 = 2;
/// The RTC's ISA IRQ (reported in the DSDT; never raised, see module docs).
pub const RTC_IRQ: u8 = 8;

/// CMOS register holding the century, named by the FADT's CENTURY field.
pub const REG_CENTURY: u8 = 0x32;

const CMOS_SIZE: usize = 128;
/// Bits of the index register that select a CMOS byte; bit 7 masks NMI.
const INDEX_MASK: u8 = 0x7f;
const OFF_INDEX: u64 = 0;
const OFF_DATA: u64 = 1;
/// What a read of the write-only index port returns (an undriven bus).
const INDEX_READ_VALUE: u8 = 0xff;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;

/// Status A: update in progress (always 0 at a read: updates are instant).
const STATUS_A_UIP: u8 = 0x80;
/// Status A: 32.768 kHz time base (DV = 010), 1024 Hz rate (RS = 0110).
const STATUS_A_DEFAULT: u8 = 0x26;
/// Status B: SET, the guest halts updates to set the clock.
const STATUS_B_SET: u8 = 0x80;
/// Status B: DM, binary rather than BCD time registers.
const STATUS_B_BINARY: u8 = 0x04;
/// Status B: 24-hour rather than 12-hour mode.
const STATUS_B_24H: u8 = 0x02;
/// Status B after reset: 24-hour mode, BCD, no interrupts.
const STATUS_B_DEFAULT: u8 = STATUS_B_24H;
/// Status D: VRT, the battery is good.
const STATUS_D_VRT: u8 = 0x80;
/// In 12-hour mode, bit 7 of the hours register means PM.
const HOURS_PM: u8 = 0x80;

/// Base memory size in KiB (CMOS 0x15/0x16): the classic 640 KiB.
const BASE_MEMORY_KIB: u16 = 640;
const REG_BASE_MEM_LO: u8 = 0x15;
const REG_EXT_MEM_LO: u8 = 0x17;
const REG_EXT_MEM2_LO: u8 = 0x30;
const REG_MEM_ABOVE_16M_LO: u8 = 0x34;
const REG_MEM_ABOVE_4G_LO: u8 = 0x5b;
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const BLOCK_64K: u64 = 64 << 10;
/// Largest value of the 24-bit above-4-GiB counter (0x5B..=0x5D).
const MAX_24BIT: u64 = 0xff_ffff;

const SECS_PER_MIN: i64 = 60;
const SECS_PER_HOUR: i64 = 3600;
const SECS_PER_DAY: i64 = 86_400;

/// Wall-clock time for the RTC, injectable for tests.
pub trait WallClock: Send {
    /// Time since the Unix epoch (UTC).
    fn now(&self) -> Duration;
}

/// The host's real-time clock.
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> Duration {
        // A host clock before 1970 is a host misconfiguration; show 1970.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A broken-down UTC date and time, fields possibly out of range while the
/// guest edits a frozen clock (normalised by [`DateTime::to_unix`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl DateTime {
    fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(SECS_PER_DAY);
        let rem = secs.rem_euclid(SECS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        Self {
            year,
            month,
            day,
            hour: (rem / SECS_PER_HOUR) as u8,
            minute: (rem % SECS_PER_HOUR / SECS_PER_MIN) as u8,
            second: (rem % SECS_PER_MIN) as u8,
        }
    }

    fn to_unix(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * SECS_PER_DAY
            + i64::from(self.hour) * SECS_PER_HOUR
            + i64::from(self.minute) * SECS_PER_MIN
            + i64::from(self.second)
    }

    /// Day of the week, 1 = Sunday (the RTC's convention).
    fn weekday(self) -> u8 {
        // Day 0 of the Unix epoch, 1970-01-01, was a Thursday (4 with Sunday = 0).
        (days_from_civil(self.year, self.month, self.day) + 4).rem_euclid(7) as u8 + 1
    }
}

/// (year, month, day) of `days` since 1970-01-01, proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    // Count from 0000-03-01 so that the leap day ends each 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a date; out-of-range days roll over.
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> Option<u8> {
    let (hi, lo) = (v >> 4, v & 0xf);
    (hi <= 9 && lo <= 9).then_some(hi * 10 + lo)
}

/// The CMOS RTC.
///
/// # Invariants
/// - `frozen` is `Some` exactly while status B's SET bit is set.
/// - Guest time is host time + `offset_secs` whenever `frozen` is `None`.
pub struct Rtc {
    index: u8,
    cmos: [u8; CMOS_SIZE],
    offset_secs: i64,
    frozen: Option<DateTime>,
    clock: Box<dyn WallClock>,
}

impl Rtc {
    /// An RTC on the host clock for a guest with `ram_size` bytes of RAM.
    pub fn new(ram_size: u64) -> Self {
        Self::with_clock(ram_size, Box::new(SystemClock))
    }

    /// An RTC reading time from `clock`.
    pub fn with_clock(ram_size: u64, clock: Box<dyn WallClock>) -> Self {
        let mut cmos = [0u8; CMOS_SIZE];
        cmos[usize::from(REG_STATUS_A)] = STATUS_A_DEFAULT;
        cmos[usize::from(REG_STATUS_B)] = STATUS_B_DEFAULT;
        cmos[usize::from(REG_STATUS_D)] = STATUS_D_VRT;
        let mut rtc = Self {
            index: 0,
            cmos,
            offset_secs: 0,
            frozen: None,
            clock,
        };
        rtc.set_memory_size(ram_size);
        rtc
    }

    fn set_memory_size(&mut self, ram_size: u64) {
        let below_4g = ram_size.min(layout::MMIO_HOLE_START.0);
        let above_4g = ram_size - below_4g;
        let ext_kib = (below_4g.saturating_sub(MIB) / KIB).min(u64::from(u16::MAX));
        let above_16m = (below_4g.saturating_sub(16 * MIB) / BLOCK_64K).min(u64::from(u16::MAX));
        let high_blocks = (above_4g / BLOCK_64K).min(MAX_24BIT);
        self.put_le(REG_BASE_MEM_LO, u64::from(BASE_MEMORY_KIB), 2);
        self.put_le(REG_EXT_MEM_LO, ext_kib, 2);
        self.put_le(REG_EXT_MEM2_LO, ext_kib, 2);
        self.put_le(REG_MEM_ABOVE_16M_LO, above_16m, 2);
        self.put_le(REG_MEM_ABOVE_4G_LO, high_blocks, 3);
    }

    fn put_le(&mut self, reg: u8, value: u64, bytes: usize) {
        let start = usize::from(reg);
        self.cmos[start..start + bytes].copy_from_slice(&value.to_le_bytes()[..bytes]);
    }

    fn host_secs(&self) -> i64 {
        i64::try_from(self.clock.now().as_secs()).unwrap_or(i64::MAX)
    }

    fn now(&self) -> DateTime {
        self.frozen.unwrap_or_else(|| {
            DateTime::from_unix(self.host_secs().saturating_add(self.offset_secs))
        })
    }

    fn status_b(&self) -> u8 {
        self.cmos[usize::from(REG_STATUS_B)]
    }

    fn encode(&self, v: u8) -> u8 {
        if self.status_b() & STATUS_B_BINARY != 0 {
            v
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> Option<u8> {
        if self.status_b() & STATUS_B_BINARY != 0 {
            Some(v)
        } else {
            from_bcd(v)
        }
    }

    fn encode_hours(&self, hour: u8) -> u8 {
        if self.status_b() & STATUS_B_24H != 0 {
            return self.encode(hour);
        }
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | if hour >= 12 { HOURS_PM } else { 0 }
    }

    fn decode_hours(&self, v: u8) -> Option<u8> {
        if self.status_b() & STATUS_B_24H != 0 {
            return self.decode(v).filter(|h| *h < 24);
        }
        let h12 = self
            .decode(v & !HOURS_PM)
            .filter(|h| (1..=12).contains(h))?;
        Some(h12 % 12 + if v & HOURS_PM != 0 { 12 } else { 0 })
    }

    fn read_register(&mut self, reg: u8) -> u8 {
        let t = self.now();
        let year_in_century = t.year.rem_euclid(100) as u8;
        let century = t.year.div_euclid(100).clamp(0, 99) as u8;
        match reg {
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS => self.encode_hours(t.hour),
            REG_WEEKDAY => self.encode(t.weekday()),
            REG_DAY => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode(year_in_century),
            REG_CENTURY => self.encode(century),
            REG_STATUS_A => self.cmos[usize::from(reg)] & !STATUS_A_UIP,
            // No interrupt source is ever flagged (see module docs).
            REG_STATUS_C => 0,
            REG_STATUS_D => STATUS_D_VRT,
            _ => self.cmos[usize::from(reg)],
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        match reg {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY | REG_MONTH | REG_YEAR
            | REG_CENTURY => self.write_time(reg, value),
            REG_WEEKDAY => log::debug!("rtc: write {value:#x} to day of week ignored"),
            REG_STATUS_A => self.cmos[usize::from(reg)] = value & !STATUS_A_UIP,
            REG_STATUS_B => self.write_status_b(value),
            REG_STATUS_C | REG_STATUS_D => {
                log::debug!("rtc: write {value:#x} to read-only status {reg:#x} ignored")
            }
            _ => self.cmos[usize::from(reg)] = value,
        }
    }

    fn write_status_b(&mut self, value: u8) {
        let was_set = self.status_b() & STATUS_B_SET != 0;
        let set = value & STATUS_B_SET != 0;
        if set && !was_set {
            self.frozen = Some(self.now());
        } else if !set && was_set {
            if let Some(t) = self.frozen.take() {
                self.offset_secs = t.to_unix().saturating_sub(self.host_secs());
            }
        }
        self.cmos[usize::from(REG_STATUS_B)] = value;
    }

    /// A guest write to a time field: edits the frozen time, or moves the
    /// offset at once when the clock runs.
    fn write_time(&mut self, reg: u8, value: u8) {
        let decoded = if reg == REG_HOURS {
            self.decode_hours(value)
        } else {
            self.decode(value)
        };
        let limit = match reg {
            REG_SECONDS | REG_MINUTES => 59,
            REG_HOURS => 23,
            REG_DAY => 31,
            REG_MONTH => 12,
            _ => 99,
        };
        let min = if matches!(reg, REG_DAY | REG_MONTH) {
            1
        } else {
            0
        };
        let Some(v) = decoded.filter(|v| (min..=limit).contains(v)) else {
            log::debug!("rtc: invalid value {value:#x} for register {reg:#x} ignored");
            return;
        };
        let mut t = self.now();
        match reg {
            REG_SECONDS => t.second = v,
            REG_MINUTES => t.minute = v,
            REG_HOURS => t.hour = v,
            REG_DAY => t.day = v,
            REG_MONTH => t.month = v,
            REG_YEAR => t.year = t.year.div_euclid(100) * 100 + i64::from(v),
            _ => t.year = i64::from(v) * 100 + t.year.rem_euclid(100),
        }
        if self.frozen.is_some() {
            self.frozen = Some(t);
        } else {
            self.offset_secs = t.to_unix().saturating_sub(self.host_secs());
        }
    }
}

impl crate::bus::BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            log::debug!("rtc: {}-byte read at offset {offset} ignored", data.len());
            data.fill(0xff);
            return;
        }
        data[0] = match offset {
            OFF_INDEX => INDEX_READ_VALUE,
            OFF_DATA => self.read_register(self.index),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else {
            log::debug!("rtc: {}-byte write at offset {offset} ignored", data.len());
            return;
        };
        match offset {
            OFF_INDEX => self.index = value & INDEX_MASK,
            OFF_DATA => self.write_register(self.index, *value),
            _ => log::debug!("rtc: write at offset {offset} ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::bus::BusDevice;

    /// 2024-02-29 23:59:58 UTC, a Thursday.
    const T0: u64 = 1_709_251_198;

    struct FakeClock(Arc<AtomicU64>);

    impl WallClock for FakeClock {
        fn now(&self) -> Duration {
            Duration::from_secs(self.0.load(Ordering::SeqCst))
        }
    }

    fn rtc_at(secs: u64, ram: u64) -> (Rtc, Arc<AtomicU64>) {
        let t = Arc::new(AtomicU64::new(secs));
        (Rtc::with_clock(ram, Box::new(FakeClock(t.clone()))), t)
    }

    fn get(rtc: &mut Rtc, reg: u8) -> u8 {
        rtc.write(OFF_INDEX, &[reg]);
        let mut d = [0u8];
        rtc.read(OFF_DATA, &mut d);
        d[0]
    }

    fn put(rtc: &mut Rtc, reg: u8, v: u8) {
        rtc.write(OFF_INDEX, &[reg]);
        rtc.write(OFF_DATA, &[v]);
    }

    #[test]
    fn rtc_default_mode_reads_bcd_24h_time() {
        let (mut rtc, _) = rtc_at(T0, 1 << 30);
        let regs: Vec<u8> = [0, 2, 4, 6, 7, 8, 9, REG_CENTURY]
            .iter()
            .map(|r| get(&mut rtc, *r))
            .collect();
        assert_eq!(regs, [0x58, 0x59, 0x23, 0x05, 0x29, 0x02, 0x24, 0x20]);
    }

    #[test]
    fn rtc_binary_12h_mode_reads_binary_with_pm_bit() {
        let (mut rtc, _) = rtc_at(T0, 1 << 30);
        put(&mut rtc, REG_STATUS_B, STATUS_B_BINARY);
        assert_eq!(get(&mut rtc, REG_HOURS), 11 | HOURS_PM);
        assert_eq!(get(&mut rtc, REG_SECONDS), 58);
        assert_eq!(get(&mut rtc, REG_YEAR), 24);
    }

    #[test]
    fn rtc_12h_mode_midnight_reads_12_am() {
        let (mut rtc, t) = rtc_at(T0, 1 << 30);
        t.store(T0 + 2, Ordering::SeqCst); // 2024-03-01 00:00:00
        put(&mut rtc, REG_STATUS_B, 0);
        assert_eq!(get(&mut rtc, REG_HOURS), 0x12);
        assert_eq!(get(&mut rtc, REG_MONTH), 0x03);
        assert_eq!(get(&mut rtc, REG_DAY), 0x01);
    }

    #[test]
    fn rtc_status_registers_read_defaults() {
        let (mut rtc, _) = rtc_at(T0, 1 << 30);
        assert_eq!(get(&mut rtc, REG_STATUS_A), STATUS_A_DEFAULT);
        assert_eq!(get(&mut rtc, REG_STATUS_B), STATUS_B_24H);
        assert_eq!(get(&mut rtc, REG_STATUS_C), 0);
        assert_eq!(get(&mut rtc, REG_STATUS_D), STATUS_D_VRT);
        put(&mut rtc, REG_STATUS_A, 0xff);
        assert_eq!(get(&mut rtc, REG_STATUS_A) & STATUS_A_UIP, 0);
    }

    #[test]
    fn rtc_index_nmi_bit_is_ignored() {
        let (mut rtc, _) = rtc_at(T0, 1 << 30);
        assert_eq!(get(&mut rtc, 0x80 | REG_SECONDS), 0x58);
        let mut d = [0u8];
        rtc.read(OFF_INDEX, &mut d);
        assert_eq!(d, [INDEX_READ_VALUE]);
    }

    #[test]
    fn rtc_time_write_keeps_offset_as_host_time_moves() {
        let (mut rtc, t) = rtc_at(T0, 1 << 30);
        put(&mut rtc, REG_MINUTES, 0x10);
        assert_eq!(get(&mut rtc, REG_MINUTES), 0x10);
        t.store(T0 + 120, Ordering::SeqCst);
        assert_eq!(get(&mut rtc, REG_MINUTES), 0x12);
    }

    #[test]
    fn rtc_set_bit_freezes_then_commits_whole_date() {
        let (mut rtc, t) = rtc_at(T0, 1 << 30);
        put(&mut rtc, REG_STATUS_B, STATUS_B_SET | STATUS_B_24H);
        // 2031-12-31 (month written first would roll Feb 31 without freezing).
        for (reg, v) in [(REG_MONTH, 0x02), (REG_DAY, 0x31), (REG_MONTH, 0x12)] {
            put(&mut rtc, reg, v);
        }
        put(&mut rtc, REG_YEAR, 0x31);
        put(&mut rtc, REG_HOURS, 0x08);
        t.store(T0 + 1000, Ordering::SeqCst);
        assert_eq!(get(&mut rtc, REG_SECONDS), 0x58, "frozen while SET");
        put(&mut rtc, REG_STATUS_B, STATUS_B_24H);
        t.store(T0 + 1005, Ordering::SeqCst);
        let date: Vec<u8> = [REG_YEAR, REG_MONTH, REG_DAY, REG_HOURS, REG_SECONDS]
            .iter()
            .map(|r| get(&mut rtc, *r))
            .collect();
        assert_eq!(date, [0x31, 0x12, 0x31, 0x09, 0x03]);
    }

    #[test]
    fn rtc_invalid_bcd_write_is_ignored() {
        let (mut rtc, _) = rtc_at(T0, 1 << 30);
        put(&mut rtc, REG_MINUTES, 0x7a);
        put(&mut rtc, REG_MONTH, 0x13);
        put(&mut rtc, REG_WEEKDAY, 0x01);
        assert_eq!(get(&mut rtc, REG_MINUTES), 0x59);
        assert_eq!(get(&mut rtc, REG_MONTH), 0x02);
        assert_eq!(get(&mut rtc, REG_WEEKDAY), 0x05);
    }

    #[test]
    fn rtc_cmos_memory_reads_back_writes() {
        let (mut rtc, _) = rtc_at(T0, 1 << 30);
        put(&mut rtc, 0x40, 0xab);
        assert_eq!(get(&mut rtc, 0x40), 0xab);
        let mut d = [0u8; 2];
        rtc.read(OFF_DATA, &mut d);
        assert_eq!(d, [0xff, 0xff]);
    }

    #[test]
    fn rtc_small_guest_reports_memory_sizes() {
        let (mut rtc, _) = rtc_at(T0, 32 << 20);
        let word = |rtc: &mut Rtc, lo: u8| u16::from_le_bytes([get(rtc, lo), get(rtc, lo + 1)]);
        assert_eq!(word(&mut rtc, REG_BASE_MEM_LO), 640);
        assert_eq!(word(&mut rtc, REG_EXT_MEM_LO), 31 * 1024);
        assert_eq!(word(&mut rtc, REG_EXT_MEM2_LO), 31 * 1024);
        assert_eq!(word(&mut rtc, REG_MEM_ABOVE_16M_LO), 256);
        assert_eq!(get(&mut rtc, REG_MEM_ABOVE_4G_LO), 0);
    }

    #[test]
    fn rtc_large_guest_caps_and_counts_high_memory() {
        let (mut rtc, _) = rtc_at(T0, 5 << 30);
        let word = |rtc: &mut Rtc, lo: u8| u16::from_le_bytes([get(rtc, lo), get(rtc, lo + 1)]);
        assert_eq!(word(&mut rtc, REG_EXT_MEM_LO), 0xffff);
        assert_eq!(word(&mut rtc, REG_MEM_ABOVE_16M_LO), 0xbf00);
        let high: Vec<u8> = (0..3)
            .map(|i| get(&mut rtc, REG_MEM_ABOVE_4G_LO + i))
            .collect();
        // 2 GiB above 4 GiB = 0x8000 blocks of 64 KiB.
        assert_eq!(high, [0x00, 0x80, 0x00]);
    }

    #[test]
    fn rtc_civil_conversion_round_trips_across_eras() {
        for days in [-719_468, -1, 0, 59, 60, 11_016, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
