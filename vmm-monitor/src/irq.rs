//! Interrupt routing: which irqchip pins a KVM GSI reaches.
//!
//! KVM's in-kernel PIT raises GSI 0, but a PC's IOAPIC has the PIT on pin 2
//! (our MADT says so with an interrupt source override IRQ0 → GSI 2, as
//! every PC firmware does). So the monitor installs its own routing table:
//! - GSIs 0..16 reach the 8259 PICs (master 0..8, slave 8..16), except the
//!   cascade line 2;
//! - GSI 0 reaches IOAPIC pin 2, GSIs 1..24 reach the IOAPIC pin of the
//!   same number, and GSI 2 reaches no IOAPIC pin (pin 2 belongs to the PIT).
//!
//! [`IrqRouter`] owns that table: the legacy routes above plus one MSI
//! route per virtio-pci MSI-X vector, on GSIs it hands out from
//! [`FIRST_MSI_GSI`] upward. KVM_SET_GSI_ROUTING replaces the whole table,
//! so every change re-installs all of it, through the [`RouteInstaller`]
//! trait (the VM fd, or a recorder in tests).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;

use crate::acpi::PIT_GSI;
use crate::layout::IOAPIC_PINS;

/// ISA IRQ of the PIT, as KVM's in-kernel PIT raises it.
const PIT_IRQ: u32 = 0;
/// The master PIC's cascade input, which no device uses.
const PIC_CASCADE_IRQ: u32 = 2;
/// Inputs per 8259 PIC.
const PIC_PINS: u32 = 8;

fn irqchip_route(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip, pin },
        },
        ..Default::default()
    }
}

/// The legacy routes described in the module documentation.
pub fn legacy_routes() -> Vec<kvm_irq_routing_entry> {
    let mut routes = Vec::new();
    for gsi in 0..2 * PIC_PINS {
        if gsi == PIC_CASCADE_IRQ {
            continue;
        }
        let chip = if gsi < PIC_PINS {
            KVM_IRQCHIP_PIC_MASTER
        } else {
            KVM_IRQCHIP_PIC_SLAVE
        };
        routes.push(irqchip_route(gsi, chip, gsi % PIC_PINS));
    }
    for gsi in 0..IOAPIC_PINS {
        match gsi {
            PIT_IRQ => routes.push(irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, PIT_GSI)),
            g if g == PIT_GSI => {}
            _ => routes.push(irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi)),
        }
    }
    routes
}

/// Installs `routes` as the VM's whole GSI routing table.
pub fn set_routes(vm: &VmFd, routes: &[kvm_irq_routing_entry]) -> Result<(), kvm_ioctls::Error> {
    let table =
        KvmIrqRouting::from_entries(routes).map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
    vm.set_gsi_routing(&table)
}

/// First GSI given to MSI routes: the ones below are the IOAPIC's pins.
pub const FIRST_MSI_GSI: u32 = IOAPIC_PINS;
/// GSIs KVM accepts in a routing table (KVM_MAX_IRQ_ROUTES in Linux).
pub const MAX_GSI_ROUTES: u32 = 4096;

/// Installs a whole GSI routing table.
pub trait RouteInstaller: Send + Sync {
    /// Replaces the VM's routing table with `routes`.
    fn install_routes(&self, routes: &[kvm_irq_routing_entry]) -> Result<(), kvm_ioctls::Error>;
}

impl RouteInstaller for VmFd {
    fn install_routes(&self, routes: &[kvm_irq_routing_entry]) -> Result<(), kvm_ioctls::Error> {
        set_routes(self, routes)
    }
}

/// Errors of the interrupt router.
#[derive(Debug, thiserror::Error)]
pub enum IrqError {
    /// Every GSI KVM can route is taken.
    #[error("no free GSI for an MSI route (KVM routes at most {MAX_GSI_ROUTES})")]
    OutOfGsis,
    /// KVM refused the routing table.
    #[error("KVM refused the GSI routing table")]
    Install(#[source] kvm_ioctls::Error),
}

/// An MSI message as a PCI function's MSI-X table entry holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (the LAPIC window; destination in bits 19:12).
    pub address: u64,
    /// Message data (vector, delivery mode, trigger).
    pub data: u32,
}

/// The VM's GSI routing table: legacy irqchip routes and MSI routes.
///
/// # Invariants
/// - MSI GSIs are unique, at least [`FIRST_MSI_GSI`] and below
///   [`MAX_GSI_ROUTES`]; they are never reused.
/// - After a successful [`IrqRouter::install`] or [`IrqRouter::set_msi`],
///   KVM's table equals [`IrqRouter::routes`].
pub struct IrqRouter {
    installer: Arc<dyn RouteInstaller>,
    legacy: Vec<kvm_irq_routing_entry>,
    /// Allocated MSI GSIs and their message; None until first programmed
    /// (no route: an irqfd on the GSI delivers nothing).
    msi: BTreeMap<u32, Option<MsiMessage>>,
    next_gsi: u32,
}

/// The router as devices share it.
pub type SharedIrqRouter = Arc<Mutex<IrqRouter>>;

impl IrqRouter {
    /// A router with the [`legacy_routes`] and no MSI route, not yet installed.
    pub fn new(installer: Arc<dyn RouteInstaller>) -> Self {
        Self {
            installer,
            legacy: legacy_routes(),
            msi: BTreeMap::new(),
            next_gsi: FIRST_MSI_GSI,
        }
    }

    /// Hands out a fresh GSI for an MSI route (no route until [`Self::set_msi`]).
    pub fn allocate_msi_gsi(&mut self) -> Result<u32, IrqError> {
        let gsi = self.next_gsi;
        if gsi >= MAX_GSI_ROUTES {
            return Err(IrqError::OutOfGsis);
        }
        self.next_gsi += 1;
        self.msi.insert(gsi, None);
        Ok(gsi)
    }

    /// The message `gsi` routes to, if it is an allocated and programmed MSI GSI.
    pub fn msi(&self, gsi: u32) -> Option<MsiMessage> {
        self.msi.get(&gsi).copied().flatten()
    }

    /// Routes `gsi` (from [`Self::allocate_msi_gsi`]) to `message` and
    /// re-installs the table; nothing to do if it already does. A GSI that
    /// was not allocated here is a monitor bug: logged and ignored.
    pub fn set_msi(&mut self, gsi: u32, message: MsiMessage) -> Result<(), IrqError> {
        match self.msi.get_mut(&gsi) {
            Some(slot) if *slot == Some(message) => Ok(()),
            Some(slot) => {
                *slot = Some(message);
                self.install()
            }
            None => {
                log::error!("irq: GSI {gsi} is not an allocated MSI GSI");
                Ok(())
            }
        }
    }

    /// The whole table: legacy routes, then MSI routes by GSI.
    pub fn routes(&self) -> Vec<kvm_irq_routing_entry> {
        let msi = self
            .msi
            .iter()
            .filter_map(|(gsi, m)| m.map(|m| msi_route(*gsi, m)));
        self.legacy.iter().copied().chain(msi).collect()
    }

    /// Installs [`Self::routes`] in KVM.
    pub fn install(&self) -> Result<(), IrqError> {
        self.installer
            .install_routes(&self.routes())
            .map_err(IrqError::Install)
    }
}

fn msi_route(gsi: u32, message: MsiMessage) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            msi: kvm_irq_routing_msi {
                // Truncations intended: the address's two halves.
                address_lo: message.address as u32,
                address_hi: (message.address >> 32) as u32,
                data: message.data,
                ..Default::default()
            },
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps every table installed.
    #[derive(Default)]
    pub(crate) struct RecordingInstaller(pub Mutex<Vec<Vec<kvm_irq_routing_entry>>>);

    impl RouteInstaller for RecordingInstaller {
        fn install_routes(
            &self,
            routes: &[kvm_irq_routing_entry],
        ) -> Result<(), kvm_ioctls::Error> {
            self.0.lock().unwrap().push(routes.to_vec());
            Ok(())
        }
    }

    fn msi_of(routes: &[kvm_irq_routing_entry], gsi: u32) -> Option<(u32, u32, u32)> {
        routes
            .iter()
            .find(|r| r.gsi == gsi && r.type_ == KVM_IRQ_ROUTING_MSI)
            // SAFETY: the filter keeps only MSI routes, whose live member is `msi`.
            .map(|r| unsafe { (r.u.msi.address_lo, r.u.msi.address_hi, r.u.msi.data) })
    }

    #[test]
    fn irq_router_allocates_from_24_and_installs_msi_routes() {
        let installer = Arc::new(RecordingInstaller::default());
        let mut router = IrqRouter::new(installer.clone());
        router.install().unwrap();
        assert_eq!(installer.0.lock().unwrap()[0].len(), legacy_routes().len());
        let a = router.allocate_msi_gsi().unwrap();
        let b = router.allocate_msi_gsi().unwrap();
        assert_eq!((a, b), (24, 25));
        let m = MsiMessage {
            address: 0x1_fee0_1000,
            data: 0x41,
        };
        router.set_msi(b, m).unwrap();
        router.set_msi(b, m).unwrap();
        let tables = installer.0.lock().unwrap();
        assert_eq!(tables.len(), 2, "an unchanged message is not re-installed");
        assert_eq!(msi_of(&tables[1], b), Some((0xfee0_1000, 1, 0x41)));
        assert_eq!(msi_of(&tables[1], a), None);
        assert_eq!(tables[1].len(), legacy_routes().len() + 1);
    }

    #[test]
    fn irq_router_runs_out_of_gsis_at_kvm_limit() {
        let mut router = IrqRouter::new(Arc::new(RecordingInstaller::default()));
        for _ in FIRST_MSI_GSI..MAX_GSI_ROUTES {
            router.allocate_msi_gsi().unwrap();
        }
        assert!(matches!(
            router.allocate_msi_gsi(),
            Err(IrqError::OutOfGsis)
        ));
    }

    fn pins(routes: &[kvm_irq_routing_entry], gsi: u32) -> Vec<(u32, u32)> {
        routes
            .iter()
            .filter(|r| r.gsi == gsi)
            // SAFETY: every route built here is of type IRQCHIP, so `irqchip` is the live member.
            .map(|r| unsafe { (r.u.irqchip.irqchip, r.u.irqchip.pin) })
            .collect()
    }

    #[test]
    fn legacy_routes_send_pit_to_ioapic_pin_2() {
        let routes = legacy_routes();
        assert_eq!(
            pins(&routes, 0),
            vec![(KVM_IRQCHIP_PIC_MASTER, 0), (KVM_IRQCHIP_IOAPIC, 2)]
        );
        assert_eq!(
            pins(&routes, 2),
            vec![],
            "GSI 2 is neither PIC cascade nor IOAPIC pin 2"
        );
    }

    #[test]
    fn legacy_routes_keep_isa_and_pci_pins_identity() {
        let routes = legacy_routes();
        assert_eq!(
            pins(&routes, 4),
            vec![(KVM_IRQCHIP_PIC_MASTER, 4), (KVM_IRQCHIP_IOAPIC, 4)]
        );
        assert_eq!(
            pins(&routes, 9),
            vec![(KVM_IRQCHIP_PIC_SLAVE, 1), (KVM_IRQCHIP_IOAPIC, 9)]
        );
        assert_eq!(pins(&routes, 16), vec![(KVM_IRQCHIP_IOAPIC, 16)]);
        assert_eq!(pins(&routes, 23), vec![(KVM_IRQCHIP_IOAPIC, 23)]);
        assert_eq!(routes.len(), 15 + 23);
    }
}
