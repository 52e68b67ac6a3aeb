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
//! Later issues add MSI routes (virtio-pci MSI-X vectors) to the same table.

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQ_ROUTING_IRQCHIP,
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

#[cfg(test)]
mod tests {
    use super::*;

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
