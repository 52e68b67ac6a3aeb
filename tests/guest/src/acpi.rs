//! The few ACPI facts this guest needs, parsed once at start-up (the memory
//! test may overwrite the tables later): the LAPIC IDs from the MADT, the
//! poweroff registers and SLP_TYPa of `\_S5` (FADT, DSDT), and the reset
//! register (FADT). Offsets are those of ACPI 6.x, section 5.2.

use crate::phys;

/// Length of the common table header.
const HEADER_LEN: u64 = 36;
/// Largest table accepted (sanity bound for a corrupt length).
const MAX_TABLE_LEN: u32 = 1 << 20;
/// Most LAPIC IDs kept from the MADT.
pub const MAX_LAPICS: usize = 256;

/// FADT offsets.
const FADT_DSDT: u64 = 40;
const FADT_PM1A_CNT_BLK: u64 = 64;
const FADT_FLAGS: u64 = 112;
const FADT_RESET_REG: u64 = 116;
const FADT_RESET_VALUE: u64 = 128;
const FADT_X_DSDT: u64 = 140;
const FADT_X_PM1A_CNT_BLK: u64 = 172;
const FADT_SLEEP_CONTROL_REG: u64 = 244;
/// FADT flag: RESET_REG_SUP.
const FLAG_RESET_REG_SUP: u32 = 1 << 10;
/// FADT flag: HW_REDUCED_ACPI.
const FLAG_HW_REDUCED: u32 = 1 << 20;

/// MADT: first interrupt controller structure.
const MADT_ENTRIES: u64 = 44;
/// MADT structure types.
const MADT_LAPIC: u8 = 0;
const MADT_X2APIC: u8 = 9;

/// GAS address space: system memory.
pub const SPACE_MEMORY: u8 = 0;
/// GAS address space: system I/O.
pub const SPACE_IO: u8 = 1;

/// A Generic Address Structure (ACPI 5.2.3.2), reduced to what we use.
#[derive(Clone, Copy)]
pub struct Gas {
    /// Address space ID.
    pub space: u8,
    /// Register address.
    pub addr: u64,
}

impl Gas {
    fn read(addr: u64) -> Option<Gas> {
        let gas = Gas {
            space: phys::read_u8(addr),
            addr: phys::read_u64(addr + 4),
        };
        (gas.addr != 0).then_some(gas)
    }

    /// Writes a byte; false if the space is unsupported or unmapped.
    pub fn write_u8(&self, value: u8) -> bool {
        match self.space {
            SPACE_IO if self.addr <= 0xFFFF => crate::cpu::outb(self.addr as u16, value),
            SPACE_MEMORY if phys::below_4g(self.addr, 1) => phys::write_u8(self.addr, value),
            _ => return false,
        }
        true
    }

    /// Writes a 16-bit word; false if the space is unsupported or unmapped.
    pub fn write_u16(&self, value: u16) -> bool {
        match self.space {
            SPACE_IO if self.addr <= 0xFFFF => crate::cpu::outw(self.addr as u16, value),
            SPACE_MEMORY if phys::below_4g(self.addr, 2) => phys::write_u16(self.addr, value),
            _ => return false,
        }
        true
    }
}

/// What the guest keeps of the ACPI tables.
pub struct Info {
    /// FADT flags has HW_REDUCED_ACPI.
    pub hw_reduced: bool,
    /// PM1a control register (X_PM1a_CNT_BLK, else PM1a_CNT_BLK as I/O).
    pub pm1a_cnt: Option<Gas>,
    /// SLEEP_CONTROL_REG (hardware-reduced ACPI).
    pub sleep_control: Option<Gas>,
    /// SLP_TYPa of `\_S5`, from the DSDT.
    pub slp_typ_s5: Option<u8>,
    /// RESET_REG and RESET_VALUE, if RESET_REG_SUP.
    pub reset: Option<(Gas, u8)>,
    lapic_ids: [u32; MAX_LAPICS],
    lapic_count: usize,
}

impl Info {
    /// APIC IDs of the enabled processors in the MADT, in table order.
    pub fn lapic_ids(&self) -> &[u32] {
        &self.lapic_ids[..self.lapic_count]
    }
}

/// Validates the table at `addr` (below 4 GiB, sane length, checksum).
fn table(addr: u64) -> Option<(u64, u32)> {
    if !phys::below_4g(addr, HEADER_LEN) {
        return None;
    }
    let len = phys::read_u32(addr + 4);
    if u64::from(len) < HEADER_LEN || len > MAX_TABLE_LEN || !phys::below_4g(addr, len.into()) {
        return None;
    }
    let sum = (0..u64::from(len)).fold(0u8, |s, i| s.wrapping_add(phys::read_u8(addr + i)));
    (sum == 0).then_some((addr, len))
}

fn signature(addr: u64) -> [u8; 4] {
    phys::read_u32(addr).to_le_bytes()
}

/// Finds the RSDP: at `hint` if given, else in the BIOS area 0xE0000..1 MiB.
fn find_rsdp(hint: u64) -> Option<u64> {
    let valid = |a: u64| {
        phys::read_u64(a) == u64::from_le_bytes(*b"RSD PTR ")
            && (0..20).fold(0u8, |s, i| s.wrapping_add(phys::read_u8(a + i))) == 0
    };
    if hint != 0 {
        return (phys::below_4g(hint, 36) && valid(hint)).then_some(hint);
    }
    (0xE0000..0x100000).step_by(16).find(|&a| valid(a))
}

/// Parses RSDP → XSDT (or RSDT) → FADT, DSDT, MADT.
pub fn parse(rsdp_hint: u64) -> Result<Info, &'static str> {
    let rsdp = find_rsdp(rsdp_hint).ok_or("no valid RSDP")?;
    let revision = phys::read_u8(rsdp + 15);
    let xsdt = if revision >= 2 {
        phys::read_u64(rsdp + 24)
    } else {
        0
    };
    let (root, entry_size) = if xsdt != 0 {
        (xsdt, 8)
    } else {
        (u64::from(phys::read_u32(rsdp + 16)), 4)
    };
    let (root, root_len) = table(root).ok_or("bad XSDT/RSDT")?;
    let mut info = Info {
        hw_reduced: false,
        pm1a_cnt: None,
        sleep_control: None,
        slp_typ_s5: None,
        reset: None,
        lapic_ids: [0; MAX_LAPICS],
        lapic_count: 0,
    };
    let mut entry = root + HEADER_LEN;
    while entry + entry_size <= root + u64::from(root_len) {
        let addr = if entry_size == 8 {
            phys::read_u64(entry)
        } else {
            phys::read_u32(entry).into()
        };
        entry += entry_size;
        let Some((addr, len)) = table(addr) else {
            continue;
        };
        match &signature(addr) {
            b"FACP" => parse_fadt(&mut info, addr, len),
            b"APIC" => parse_madt(&mut info, addr, len),
            _ => {}
        }
    }
    Ok(info)
}

fn parse_fadt(info: &mut Info, fadt: u64, len: u32) {
    let len = u64::from(len);
    let has = |off: u64, size: u64| off + size <= len;
    let flags = if has(FADT_FLAGS, 4) {
        phys::read_u32(fadt + FADT_FLAGS)
    } else {
        0
    };
    info.hw_reduced = flags & FLAG_HW_REDUCED != 0;
    if has(FADT_X_PM1A_CNT_BLK, 12) {
        info.pm1a_cnt = Gas::read(fadt + FADT_X_PM1A_CNT_BLK);
    }
    if info.pm1a_cnt.is_none() && has(FADT_PM1A_CNT_BLK, 4) {
        let port = phys::read_u32(fadt + FADT_PM1A_CNT_BLK);
        info.pm1a_cnt = (port != 0).then_some(Gas {
            space: SPACE_IO,
            addr: port.into(),
        });
    }
    if has(FADT_SLEEP_CONTROL_REG, 12) {
        info.sleep_control = Gas::read(fadt + FADT_SLEEP_CONTROL_REG);
    }
    if flags & FLAG_RESET_REG_SUP != 0 && has(FADT_RESET_VALUE, 1) {
        if let Some(reg) = Gas::read(fadt + FADT_RESET_REG) {
            info.reset = Some((reg, phys::read_u8(fadt + FADT_RESET_VALUE)));
        }
    }
    let x_dsdt = if has(FADT_X_DSDT, 8) {
        phys::read_u64(fadt + FADT_X_DSDT)
    } else {
        0
    };
    let dsdt = if x_dsdt != 0 {
        x_dsdt
    } else {
        phys::read_u32(fadt + FADT_DSDT).into()
    };
    if let Some((dsdt, dsdt_len)) = table(dsdt) {
        info.slp_typ_s5 = find_s5(dsdt + HEADER_LEN, u64::from(dsdt_len) - HEADER_LEN);
    }
}

/// Finds `_S5_` followed by a PackageOp in the AML and returns the first
/// package element (SLP_TYPa).
fn find_s5(aml: u64, len: u64) -> Option<u8> {
    let byte = |i: u64| (i < len).then(|| phys::read_u8(aml + i));
    let name = u32::from_le_bytes(*b"_S5_");
    for i in 0..len.saturating_sub(5) {
        if phys::read_u32(aml + i) != name || byte(i + 4)? != 0x12 {
            continue;
        }
        // PkgLength: bits 7:6 of the lead byte count the bytes that follow.
        let lead = byte(i + 5)?;
        let mut p = i + 6 + u64::from(lead >> 6);
        p += 1; // NumElements
        return match byte(p)? {
            0x00 => Some(0),            // ZeroOp
            0x01 => Some(1),            // OneOp
            0x0A => byte(p + 1),        // BytePrefix
            0x0B | 0x0C => byte(p + 1), // WordPrefix, DWordPrefix: low byte
            _ => None,
        };
    }
    None
}

fn parse_madt(info: &mut Info, madt: u64, len: u32) {
    let end = madt + u64::from(len);
    let mut p = madt + MADT_ENTRIES;
    while p + 2 <= end {
        let kind = phys::read_u8(p);
        let size = u64::from(phys::read_u8(p + 1));
        if size < 2 || p + size > end {
            break;
        }
        let (id, flags) = match kind {
            MADT_LAPIC if size >= 8 => (u32::from(phys::read_u8(p + 3)), phys::read_u32(p + 4)),
            MADT_X2APIC if size >= 16 => (phys::read_u32(p + 4), phys::read_u32(p + 8)),
            _ => (0, 0),
        };
        if flags & 1 != 0 && info.lapic_count < MAX_LAPICS {
            info.lapic_ids[info.lapic_count] = id;
            info.lapic_count += 1;
        }
        p += size;
    }
}
