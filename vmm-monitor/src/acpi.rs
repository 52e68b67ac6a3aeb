//! The guest's ACPI tables: RSDP, XSDT, FADT (with FACS), MADT and DSDT,
//! written into guest memory at [`layout::ACPI_START`].
//!
//! ```text
//! ACPI_START  RSDP (rev 2) ──► XSDT ──► FADT ──► DSDT, FACS
//!                                  └──► MADT
//! ```
//!
//! The machine is a legacy PC platform (not hardware-reduced): the FADT
//! points at the fixed-hardware ports of [`crate::devices::acpi_pm`], ACPI
//! is always enabled (SMI_CMD 0), reset goes through port 0xCF9, and the
//! power button is a control-method device on GPE 0. The DSDT describes the
//! PCI root bridge with its `_PRT`, COM1, the RTC, the i8042, the power
//! button and one processor device per vCPU, and carries `\_S5_`.
//!
//! Interrupt model (MADT): ISA IRQs are identity-mapped to IOAPIC pins
//! except IRQ 0 (PIT), which is overridden to GSI [`PIT_GSI`] as on PC
//! chipsets, and IRQ 9 (SCI), which is level-triggered active high. PCI
//! INTx lines go to IOAPIC pins 16..=23 (level, active low).

use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::acpi_pm::{
    GPE0_BLK, GPE0_BLK_LEN, PM1A_CNT_BLK, PM1A_EVT_BLK, PM1_CNT_LEN, PM1_EVT_LEN, PM_TMR_BLK,
    PM_TMR_LEN, S5_SLP_TYP, SCI_IRQ,
};
use crate::devices::i8042::{I8042_COMMAND_PORT, I8042_DATA_PORT, KBD_IRQ};
use crate::devices::pci_host::{
    PCI_CONFIG_ADDRESS_PORT, PCI_CONFIG_LEN, RESET_CONTROL_PORT, RESET_VALUE,
};
use crate::devices::rtc::{REG_CENTURY, RTC_IRQ, RTC_LEN, RTC_PORT};
use crate::layout;

/// Most vCPUs the tables describe: xAPIC IDs are 8 bits and 0xFF is the
/// broadcast ID.
pub const MAX_CPUS: usize = 0xff;
/// The GSI (IOAPIC pin) the PIT's ISA IRQ 0 is routed to; the monitor's
/// KVM interrupt routing must match.
pub const PIT_GSI: u32 = 2;
/// First IOAPIC pin given to PCI INTx lines.
pub const PCI_INTX_GSI_BASE: u32 = 16;
/// Number of IOAPIC pins PCI INTx lines are spread over (16..=23).
pub const PCI_INTX_GSI_COUNT: u32 = 8;

/// COM1, as the DSDT describes it (the UART itself lives in `devices::serial`).
const COM1_PORT: u16 = 0x3f8;
const COM1_LEN: u8 = 8;
const COM1_IRQ: u32 = 4;

const OEM_ID: [u8; 6] = *b"VMDRS ";
const OEM_TABLE_ID: [u8; 8] = *b"VMDRS-VM";
const OEM_REVISION: u32 = 1;

/// Alignment of the RSDP (ACPI 6.5 §5.2.5.1) and of every other table.
const TABLE_ALIGN: u64 = 16;
/// The FACS must be 64-byte aligned (ACPI 6.5 §5.2.10).
const FACS_ALIGN: u64 = 64;

/// Length of the standard ACPI table header.
const ACPI_HEADER_LEN: u32 = 36;
/// DSDT revision 2: 64-bit AML integers.
const DSDT_REVISION: u8 = 2;
/// MADT revision of ACPI 6.5.
const MADT_REVISION: u8 = 5;
/// MADT: standard header, local APIC address, flags.
const MADT_HEADER_LEN: u32 = 44;
const MADT_LAPIC_ADDR_OFFSET: usize = 36;
const MADT_FLAGS_OFFSET: usize = 40;
/// MADT flag: the machine also has dual 8259 PICs.
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_TYPE_LOCAL_APIC: u8 = 0;
const MADT_TYPE_IO_APIC: u8 = 1;
const MADT_TYPE_ISO: u8 = 2;
const MADT_TYPE_LOCAL_APIC_NMI: u8 = 4;
const MADT_LOCAL_APIC_LEN: u8 = 8;
const MADT_IO_APIC_LEN: u8 = 12;
const MADT_ISO_LEN: u8 = 10;
const MADT_LOCAL_APIC_NMI_LEN: u8 = 6;
const MADT_LOCAL_APIC_ENABLED: u8 = 1;
/// MPS INTI flags: active high (polarity 01), edge (trigger 01 << 2).
const MPS_INTI_EDGE_HIGH: u16 = 0x0005;
/// MPS INTI flags: active high (polarity 01), level (trigger 11 << 2).
const MPS_INTI_LEVEL_HIGH: u16 = 0x000d;
/// MPS INTI flags: conforms to the bus (the NMI entry's usual value).
const MPS_INTI_CONFORMING: u16 = 0;
/// ISA bus number in interrupt source overrides.
const ISA_BUS: u8 = 0;
/// Local APIC NMI entry for every processor.
const ALL_PROCESSORS: u8 = 0xff;
/// LINT1 carries NMI on PC platforms.
const LINT1: u8 = 1;
/// IOAPIC IDs are 4 bits in KVM's IOAPIC ID register.
const IOAPIC_ID_LIMIT: usize = 0x10;

/// FADT: C2 and C3 latencies above 100 and 1000 µs mean "not supported".
const P_LVL_NOT_SUPPORTED: u16 = 0x0fff;
/// IAPC_BOOT_ARCH: LEGACY_DEVICES (ISA devices the OS cannot enumerate).
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
/// IAPC_BOOT_ARCH: an 8042 (or equivalent) is present.
const IAPC_8042: u16 = 1 << 1;
/// IAPC_BOOT_ARCH: VGA not present (there is no display device).
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;

/// `_PRT` entries cover slots 1..=31 (slot 0 is the host bridge).
const PRT_FIRST_SLOT: u32 = 1;
const PCI_SLOTS: u32 = 32;
/// INTA..INTD.
const PCI_PINS: u32 = 4;
/// `_PRT` address of "any function of this slot": slot in the high word.
const PRT_ANY_FUNCTION: u32 = 0xffff;
/// Power-button notification value (ACPI 6.5 §5.6.6).
const NOTIFY_POWER_BUTTON: u8 = 0x80;
/// The config ports and RTC ports as I/O descriptor lengths (a byte; both
/// are single-digit port counts).
const PCI_CONFIG_PORTS: u8 = PCI_CONFIG_LEN as u8;
const RTC_PORTS: u8 = RTC_LEN as u8;
/// Alignment of fixed I/O descriptors (min == max, so it does not matter).
const IO_ALIGN: u8 = 1;

/// Errors while building the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The number of vCPUs is outside what the MADT can describe.
    #[error("cannot describe {0} vCPUs in ACPI (1..={MAX_CPUS})")]
    BadCpuCount(usize),
    /// The tables do not fit the guest memory reserved for them.
    #[error("ACPI tables need {needed:#x} bytes but {max:#x} are reserved")]
    TooLarge {
        /// Bytes the tables would use from ACPI_START.
        needed: u64,
        /// Bytes reserved (layout::ACPI_MAX_SIZE).
        max: u64,
    },
    /// Writing a table into guest memory failed.
    #[error("cannot write the {table} table at {addr:#x} into guest memory")]
    Write {
        /// Signature of the table.
        table: &'static str,
        /// Guest address of the table.
        addr: u64,
        /// The guest memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Writes all ACPI tables for a guest with `num_cpus` vCPUs and returns the
/// address of the RSDP (always [`layout::ACPI_START`]).
pub fn create_acpi_tables(
    mem: &GuestMemoryMmap,
    num_cpus: usize,
) -> Result<GuestAddress, AcpiError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(AcpiError::BadCpuCount(num_cpus));
    }
    let dsdt = dsdt(num_cpus);
    let madt = madt(num_cpus);
    let facs = bytes_of(&FACS::new());

    let mut area = Area::new();
    let rsdp_addr = area.place(Rsdp::len(), TABLE_ALIGN)?;
    let dsdt_addr = area.place(dsdt.len(), TABLE_ALIGN)?;
    let facs_addr = area.place(facs.len(), FACS_ALIGN)?;
    let madt_addr = area.place(madt.len(), TABLE_ALIGN)?;
    let fadt = fadt(dsdt_addr, facs_addr);
    let fadt_addr = area.place(fadt.len(), TABLE_ALIGN)?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr.0);
    xsdt.add_entry(madt_addr.0);
    let xsdt = bytes_of(&xsdt);
    let xsdt_addr = area.place(xsdt.len(), TABLE_ALIGN)?;
    let rsdp = bytes_of(&Rsdp::new(OEM_ID, xsdt_addr.0));

    for (table, bytes, addr) in [
        ("DSDT", &dsdt, dsdt_addr),
        ("FACS", &facs, facs_addr),
        ("APIC", &madt, madt_addr),
        ("FACP", &fadt, fadt_addr),
        ("XSDT", &xsdt, xsdt_addr),
        ("RSDP", &rsdp, rsdp_addr),
    ] {
        mem.write_slice(bytes, addr)
            .map_err(|source| AcpiError::Write {
                table,
                addr: addr.0,
                source,
            })?;
    }
    Ok(rsdp_addr)
}

/// Bump allocation inside [`layout::ACPI_START`] + [`layout::ACPI_MAX_SIZE`].
struct Area {
    next: u64,
}

impl Area {
    fn new() -> Self {
        Self {
            next: layout::ACPI_START.0,
        }
    }

    fn place(&mut self, len: usize, align: u64) -> Result<GuestAddress, AcpiError> {
        let start = self.next.next_multiple_of(align);
        let end = start + len as u64;
        let needed = end - layout::ACPI_START.0;
        if needed > layout::ACPI_MAX_SIZE {
            return Err(AcpiError::TooLarge {
                needed,
                max: layout::ACPI_MAX_SIZE,
            });
        }
        self.next = end;
        Ok(GuestAddress(start))
    }
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn io_gas(port: u16, len: u8, access: AccessSize) -> GAS {
    GAS::new(AddressSpace::SystemIo, len * 8, 0, access, u64::from(port))
}

/// The FADT: fixed hardware at the ports of `devices::acpi_pm`.
fn fadt(dsdt: GuestAddress, facs: GuestAddress) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    // Both forms of each pointer, equal: every table lies below 1 MiB.
    f.firmware_ctrl = (facs.0 as u32).into();
    f.x_firmware_ctrl = facs.0.into();
    f.dsdt = (dsdt.0 as u32).into();
    f.x_dsdt = dsdt.0.into();
    f.sci_int = u16::from(SCI_IRQ).into();
    // SMI_CMD, ACPI_ENABLE and ACPI_DISABLE stay 0: always in ACPI mode.
    f.pm1a_evt_blk = u32::from(PM1A_EVT_BLK).into();
    f.pm1a_cnt_blk = u32::from(PM1A_CNT_BLK).into();
    f.pm_tmr_blk = u32::from(PM_TMR_BLK).into();
    f.gpe0_blk = u32::from(GPE0_BLK).into();
    f.pm1_evt_len = PM1_EVT_LEN;
    f.pm1_cnt_len = PM1_CNT_LEN;
    f.pm_tmr_len = PM_TMR_LEN;
    f.gpe0_blk_len = GPE0_BLK_LEN;
    f.p_lvl2_lat = P_LVL_NOT_SUPPORTED.into();
    f.p_lvl3_lat = P_LVL_NOT_SUPPORTED.into();
    f.century = REG_CENTURY;
    f.iapc_boot_arch = (IAPC_LEGACY_DEVICES | IAPC_8042 | IAPC_VGA_NOT_PRESENT).into();
    f.reset_reg = io_gas(RESET_CONTROL_PORT, 1, AccessSize::ByteAccess);
    f.reset_value = RESET_VALUE;
    f.x_pm1a_evt_blk = io_gas(PM1A_EVT_BLK, PM1_EVT_LEN, AccessSize::WordAccess);
    f.x_pm1a_cnt_blk = io_gas(PM1A_CNT_BLK, PM1_CNT_LEN, AccessSize::WordAccess);
    f.x_pm_tmr_blk = io_gas(PM_TMR_BLK, PM_TMR_LEN, AccessSize::DwordAccess);
    f.x_gpe0_blk = io_gas(GPE0_BLK, GPE0_BLK_LEN, AccessSize::ByteAccess);
    bytes_of(&f.finalize())
}

/// The MADT: LAPICs, the IOAPIC, ISA overrides and the LINT1 NMI.
fn madt(num_cpus: usize) -> Vec<u8> {
    let mut madt = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    madt.write_u32(MADT_LAPIC_ADDR_OFFSET, layout::LAPIC_START.0 as u32);
    madt.write_u32(MADT_FLAGS_OFFSET, MADT_PCAT_COMPAT);
    for cpu in 0..num_cpus {
        // UID = APIC ID = vCPU index; num_cpus <= MAX_CPUS keeps it in a u8.
        let id = cpu as u8;
        madt.append_slice(&[
            MADT_TYPE_LOCAL_APIC,
            MADT_LOCAL_APIC_LEN,
            id,
            id,
            MADT_LOCAL_APIC_ENABLED,
            0,
            0,
            0,
        ]);
    }
    // An IOAPIC ID apart from every LAPIC ID when it fits KVM's 4-bit
    // register; otherwise 0 (separate namespaces on every x86-64 system bus).
    let ioapic_id = if num_cpus < IOAPIC_ID_LIMIT {
        num_cpus as u8
    } else {
        0
    };
    let mut ioapic = vec![MADT_TYPE_IO_APIC, MADT_IO_APIC_LEN, ioapic_id, 0];
    ioapic.extend_from_slice(&(layout::IOAPIC_START.0 as u32).to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    madt.append_slice(&ioapic);
    for (irq, gsi, flags) in [
        (0u8, PIT_GSI, MPS_INTI_EDGE_HIGH),
        (SCI_IRQ, u32::from(SCI_IRQ), MPS_INTI_LEVEL_HIGH),
    ] {
        let mut iso = vec![MADT_TYPE_ISO, MADT_ISO_LEN, ISA_BUS, irq];
        iso.extend_from_slice(&gsi.to_le_bytes());
        iso.extend_from_slice(&flags.to_le_bytes());
        madt.append_slice(&iso);
    }
    let mut nmi = vec![
        MADT_TYPE_LOCAL_APIC_NMI,
        MADT_LOCAL_APIC_NMI_LEN,
        ALL_PROCESSORS,
    ];
    nmi.extend_from_slice(&MPS_INTI_CONFORMING.to_le_bytes());
    nmi.push(LINT1);
    madt.append_slice(&nmi);
    madt.as_slice().to_vec()
}

/// The DSDT: `\_S5_`, `\_SB` with its devices, and `\_GPE._E00`.
fn dsdt(num_cpus: usize) -> Vec<u8> {
    let mut body = Vec::new();
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLP_TYP, &aml::ZERO, &aml::ZERO, &aml::ZERO]),
    )
    .to_aml_bytes(&mut body);

    let mut sb = Vec::new();
    pci_root(&mut sb);
    legacy_devices(&mut sb);
    aml::Device::new(
        "PWRB".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
        ],
    )
    .to_aml_bytes(&mut sb);
    for cpu in 0..num_cpus {
        let name = format!("C{cpu:03X}");
        aml::Device::new(
            name.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"ACPI0007"),
                &aml::Name::new("_UID".into(), &cpu),
            ],
        )
        .to_aml_bytes(&mut sb);
    }
    body.extend(aml::Scope::raw("\\_SB_".into(), sb));

    let button = aml::Path::new("\\_SB_.PWRB");
    aml::Scope::new(
        "\\_GPE".into(),
        vec![&aml::Method::new(
            "_E00".into(),
            0,
            false,
            vec![&aml::Notify::new(&button, &NOTIFY_POWER_BUTTON)],
        )],
    )
    .to_aml_bytes(&mut body);

    let mut dsdt = Sdt::new(
        *b"DSDT",
        ACPI_HEADER_LEN,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

/// `\_SB.PCI0`: bus 0, the config ports, the I/O and 32-bit MMIO windows
/// and the INTx routing table.
fn pci_root(sink: &mut Vec<u8>) {
    let mmio_start = layout::PCI_MMIO32_START.0 as u32;
    let mmio_end = (layout::PCI_MMIO32_START.0 + layout::PCI_MMIO32_SIZE - 1) as u32;
    let config_last = PCI_CONFIG_ADDRESS_PORT + PCI_CONFIG_LEN - 1;
    let bus = aml::AddressSpace::<u16>::new_bus_number(0, 0);
    let config_ports = aml::IO::new(
        PCI_CONFIG_ADDRESS_PORT,
        PCI_CONFIG_ADDRESS_PORT,
        IO_ALIGN,
        PCI_CONFIG_PORTS,
    );
    let io_low = aml::AddressSpace::<u16>::new_io(0, PCI_CONFIG_ADDRESS_PORT - 1, None);
    let io_high = aml::AddressSpace::<u16>::new_io(config_last + 1, u16::MAX, None);
    let mmio = aml::AddressSpace::<u32>::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        mmio_start,
        mmio_end,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&bus, &config_ports, &io_low, &io_high, &mmio]);
    // (address, pin, source, GSI) per slot and pin; source 0: GSI numbering.
    let routes: Vec<(u32, u8, u32)> = (PRT_FIRST_SLOT..PCI_SLOTS)
        .flat_map(|slot| {
            (0..PCI_PINS).map(move |pin| {
                let gsi = PCI_INTX_GSI_BASE + (slot + pin) % PCI_INTX_GSI_COUNT;
                ((slot << 16) | PRT_ANY_FUNCTION, pin as u8, gsi)
            })
        })
        .collect();
    let entries: Vec<aml::Package> = routes
        .iter()
        .map(|(addr, pin, gsi)| aml::Package::new(vec![addr, pin, &aml::ZERO, gsi]))
        .collect();
    let prt = aml::Package::new(entries.iter().map(|e| e as &dyn Aml).collect());
    aml::Device::new(
        "PCI0".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A03")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_SEG".into(), &aml::ZERO),
            &aml::Name::new("_BBN".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &crs),
            &aml::Name::new("_PRT".into(), &prt),
        ],
    )
    .to_aml_bytes(sink);
}

/// COM1, the RTC and the i8042 keyboard controller.
fn legacy_devices(sink: &mut Vec<u8>) {
    legacy_device(sink, "COM1", "PNP0501", &[(COM1_PORT, COM1_LEN)], COM1_IRQ);
    legacy_device(
        sink,
        "RTC_",
        "PNP0B00",
        &[(RTC_PORT, RTC_PORTS)],
        u32::from(RTC_IRQ),
    );
    legacy_device(
        sink,
        "KBD_",
        "PNP0303",
        &[(I8042_DATA_PORT, 1), (I8042_COMMAND_PORT, 1)],
        u32::from(KBD_IRQ),
    );
}

/// A fixed ISA device: `_HID`, `_UID` 0 and a `_CRS` of I/O ranges and one
/// edge-triggered, active-high IRQ.
fn legacy_device(sink: &mut Vec<u8>, name: &str, hid: &str, ports: &[(u16, u8)], irq: u32) {
    let io: Vec<aml::IO> = ports
        .iter()
        .map(|(port, len)| aml::IO::new(*port, *port, IO_ALIGN, *len))
        .collect();
    let interrupt = aml::Interrupt::new(true, true, false, false, irq);
    let mut resources: Vec<&dyn Aml> = io.iter().map(|d| d as &dyn Aml).collect();
    resources.push(&interrupt);
    let crs = aml::ResourceTemplate::new(resources);
    aml::Device::new(
        name.into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new(hid)),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(sink);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestMemory;

    fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// Reads the table at `addr`, checking its signature, length and checksum.
    fn table(mem: &GuestMemory, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
        let header = read(mem, addr, ACPI_HEADER_LEN as usize);
        assert_eq!(&header[..4], sig);
        let len = u32_at(&header, 4) as usize;
        let t = read(mem, addr, len);
        assert_eq!(sum(&t), 0, "{} checksum", String::from_utf8_lossy(sig));
        assert!(addr + len as u64 <= layout::ACPI_START.0 + layout::ACPI_MAX_SIZE);
        t
    }

    struct Tables {
        fadt: Vec<u8>,
        madt: Vec<u8>,
        dsdt: Vec<u8>,
        facs_addr: u64,
    }

    fn build(num_cpus: usize) -> (GuestMemory, Tables) {
        let mem = memory();
        let rsdp_addr = create_acpi_tables(&mem, num_cpus).unwrap();
        assert_eq!(rsdp_addr, layout::ACPI_START);
        assert_eq!(rsdp_addr.0 % TABLE_ALIGN, 0);
        let rsdp = read(&mem, rsdp_addr.0, 36);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(rsdp[15], 2, "RSDP revision");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(&rsdp), 0);
        assert_eq!(u32_at(&rsdp, 20), 36);
        let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
        assert_eq!(xsdt.len(), 36 + 2 * 8);
        let fadt = table(&mem, u64_at(&xsdt, 36), b"FACP");
        let madt = table(&mem, u64_at(&xsdt, 44), b"APIC");
        let dsdt = table(&mem, u64_at(&fadt, 140), b"DSDT");
        let facs_addr = u64_at(&fadt, 132);
        let tables = Tables {
            fadt,
            madt,
            dsdt,
            facs_addr,
        };
        (mem, tables)
    }

    /// (type, length) of each MADT entry.
    fn madt_entries(madt: &[u8]) -> Vec<&[u8]> {
        let mut entries = Vec::new();
        let mut off = MADT_HEADER_LEN as usize;
        while off < madt.len() {
            let len = madt[off + 1] as usize;
            assert!(len >= 2);
            entries.push(&madt[off..off + len]);
            off += len;
        }
        assert_eq!(off, madt.len());
        entries
    }

    #[test]
    fn acpi_tables_one_cpu_link_and_checksum() {
        let (mem, t) = build(1);
        assert_eq!(t.fadt.len(), 276);
        assert_eq!(t.fadt[8], 6, "FADT major revision");
        assert_eq!(t.facs_addr % FACS_ALIGN, 0);
        assert_eq!(u32_at(&t.fadt, 36) as u64, t.facs_addr);
        assert_eq!(u32_at(&t.fadt, 40) as u64, u64_at(&t.fadt, 140));
        let facs = read(&mem, t.facs_addr, 8);
        assert_eq!(&facs[..4], b"FACS");
        assert_eq!(u32_at(&facs, 4), 64);
    }

    #[test]
    fn acpi_fadt_fields_at_spec_offsets() {
        let (_, t) = build(2);
        let f = &t.fadt;
        assert_eq!(u16_at(f, 46), 9, "SCI_INT");
        assert_eq!(u32_at(f, 48), 0, "SMI_CMD");
        assert_eq!(u32_at(f, 56), 0x600, "PM1a_EVT_BLK");
        assert_eq!(u32_at(f, 64), 0x604, "PM1a_CNT_BLK");
        assert_eq!(u32_at(f, 76), 0x608, "PM_TMR_BLK");
        assert_eq!(u32_at(f, 80), 0x620, "GPE0_BLK");
        assert_eq!(
            &f[88..93],
            &[4, 2, 0, 4, 4],
            "PM1_EVT/PM1_CNT/PM2/TMR/GPE0 lengths"
        );
        assert_eq!(f[108], REG_CENTURY, "CENTURY");
        assert_eq!(u16_at(f, 109) & 0x3, 0x3, "IAPC_BOOT_ARCH legacy + 8042");
        let flags = u32_at(f, 112);
        for bit in [4, 5, 10] {
            assert_ne!(flags & (1 << bit), 0, "flag bit {bit}");
        }
        assert_eq!(flags & (1 << 20), 0, "not HW_REDUCED");
        assert_eq!(flags & (1 << 8), 0, "24-bit PM timer");
        // RESET_REG: system I/O, 8 bits, byte access, 0xCF9; RESET_VALUE 6.
        assert_eq!(&f[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64_at(f, 120), 0xcf9);
        assert_eq!(f[128], 6);
        // X_ blocks: system I/O with widths matching the legacy lengths.
        for (off, port, bits) in [
            (148, 0x600, 32),
            (172, 0x604, 16),
            (208, 0x608, 32),
            (220, 0x620, 32),
        ] {
            assert_eq!(f[off], 1, "X_ block at {off} is system I/O");
            assert_eq!(f[off + 1], bits, "X_ block at {off} width");
            assert_eq!(u64_at(f, off + 4), port);
        }
    }

    #[test]
    fn acpi_madt_entries_for_1_8_64_cpus() {
        for n in [1usize, 8, 64] {
            let (_, t) = build(n);
            assert_eq!(u32_at(&t.madt, 36) as u64, layout::LAPIC_START.0);
            assert_eq!(u32_at(&t.madt, 40), MADT_PCAT_COMPAT);
            let entries = madt_entries(&t.madt);
            let of = |ty: u8| entries.iter().filter(|e| e[0] == ty).collect::<Vec<_>>();
            let lapics = of(MADT_TYPE_LOCAL_APIC);
            assert_eq!(lapics.len(), n);
            for (i, e) in lapics.iter().enumerate() {
                assert_eq!(e[..4], [0, 8, i as u8, i as u8]);
                assert_eq!(u32_at(e, 4), 1, "enabled");
            }
            let ioapics = of(MADT_TYPE_IO_APIC);
            assert_eq!(ioapics.len(), 1);
            assert_eq!(u32_at(ioapics[0], 4) as u64, layout::IOAPIC_START.0);
            assert_eq!(u32_at(ioapics[0], 8), 0);
            let id = ioapics[0][2] as usize;
            assert!(id >= n || id == 0);
            let isos = of(MADT_TYPE_ISO);
            assert_eq!(isos.len(), 2);
            assert_eq!(
                (isos[0][3], u32_at(isos[0], 4), u16_at(isos[0], 8)),
                (0, 2, 0x5)
            );
            assert_eq!(
                (isos[1][3], u32_at(isos[1], 4), u16_at(isos[1], 8)),
                (9, 9, 0xd)
            );
            let nmis = of(MADT_TYPE_LOCAL_APIC_NMI);
            assert_eq!(nmis.len(), 1);
            assert_eq!((nmis[0][2], nmis[0][5]), (0xff, 1));
            assert_eq!(entries.len(), n + 4);
        }
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn acpi_dsdt_s5_package_first_element_is_slp_typ() {
        let (_, t) = build(1);
        assert_eq!(t.dsdt[8], DSDT_REVISION);
        let at = find(&t.dsdt, b"_S5_").unwrap();
        assert_eq!(t.dsdt[at - 1], 0x08, "NameOp");
        let pkg = &t.dsdt[at + 4..];
        assert_eq!(pkg[0], 0x12, "PackageOp");
        // pkg[1] is a one-byte PkgLength, pkg[2] the element count.
        assert_eq!(pkg[2], 4);
        assert_eq!(&pkg[3..5], &[0x0a, S5_SLP_TYP], "BytePrefix 5");
    }

    #[test]
    fn acpi_dsdt_names_devices_and_gpe_method() {
        let (_, t) = build(3);
        for name in [
            &b"_SB_"[..],
            b"PCI0",
            b"_PRT",
            b"_CRS",
            b"COM1",
            b"RTC_",
            b"KBD_",
            b"PWRB",
            b"_GPE",
            b"_E00",
            b"C000",
            b"C002",
            b"ACPI0007",
        ] {
            assert!(
                find(&t.dsdt, name).is_some(),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        assert!(find(&t.dsdt, b"C003").is_none());
        // Notify(\_SB.PWRB, 0x80): NotifyOp, root, DualNamePrefix, names, BytePrefix 0x80.
        assert!(find(&t.dsdt, b"\x86\\\x2e_SB_PWRB\x0a\x80").is_some());
    }

    #[test]
    fn acpi_dsdt_prt_routes_slot_pins_to_gsis_16_to_23() {
        let (_, t) = build(1);
        // Slot 1 INTA → GSI 17: Package(4){0x0001FFFF, Zero, Zero, 17}.
        assert!(find(&t.dsdt, b"\x12\x0b\x04\x0c\xff\xff\x01\x00\x00\x00\x0a\x11").is_some());
        // Slot 31 INTD → 16 + (31 + 3) % 8 = 18.
        assert!(find(&t.dsdt, b"\x0c\xff\xff\x1f\x00\x0a\x03\x00\x0a\x12").is_some());
    }

    #[test]
    fn acpi_tables_for_max_cpus_fit_reserved_area() {
        for n in [64, MAX_CPUS] {
            let (_, t) = build(n);
            assert_eq!(madt_entries(&t.madt).len(), n + 4);
            let name = format!("C{:03X}", n - 1);
            assert!(find(&t.dsdt, name.as_bytes()).is_some());
        }
    }

    #[test]
    fn acpi_bad_cpu_count_is_refused() {
        let mem = memory();
        for n in [0, MAX_CPUS + 1] {
            assert!(matches!(
                create_acpi_tables(&mem, n),
                Err(AcpiError::BadCpuCount(_))
            ));
        }
    }

    #[test]
    fn acpi_memory_without_acpi_area_is_a_write_error() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        assert!(matches!(
            create_acpi_tables(&mem, 1),
            Err(AcpiError::Write { .. })
        ));
    }
}
