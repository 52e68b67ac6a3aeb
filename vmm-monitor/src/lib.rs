//! The per-VM monitor of vmd-rs.
//!
//! One monitor process runs one VM. It owns the guest's RAM (a sealed memfd
//! mapped shared and registered with KVM), one thread per vCPU, the
//! in-kernel irqchip and PIT, and the platform devices that are cheap
//! enough to stay in-process (COM1, i8042, CMOS RTC, ACPI power management,
//! the PCI host bridge). Virtio devices live in their own processes.
//!
//! Map of the crate:
//! - [`layout`]: the guest-physical memory map; every fixed address.
//! - [`memory`]: guest RAM in a memfd, mapped and registered with KVM.
//! - [`loader`]: Linux bzImage and PVH ELF loading, boot parameters.
//! - [`boot`]: the boot vCPU's registers for each boot protocol.
//! - [`acpi`]: RSDP, XSDT, FADT, MADT and DSDT.
//! - [`cpuid`]: the CPUID each vCPU sees, with a consistent topology.
//! - [`irq`]: the GSI routing table (legacy pins now, MSI later).
//! - [`bus`]: port-I/O and MMIO dispatch of vCPU exits.
//! - [`device_proc`]: starting device processes with their fds, noticing their death.
//! - [`device_spawn`]: the clone into namespaces of a device's own, then exec.
//! - [`supervisor`]: restarting a dead device process and replaying its state.
//! - [`launcher`]: the process that starts devices for a confined monitor.
//! - [`nics`]: a VM's network interfaces: dev-net processes on vmd's taps.
//! - [`disks`]: a VM's disks: dev-block processes or external vhost-user backends.
//! - [`devices`]: the in-process platform devices.
//! - [`pci`]: adding virtio-pci functions to the PCI root and MMIO bus.
//! - [`virtio`]: virtio devices behind the virtio-pci transport.
//! - [`vhost_user`]: the vhost-user frontend for devices in their own process.
//! - [`vcpu`]: vCPU threads and their exit handling.
//! - [`vm`]: putting it together: build a VM from a [`config::VmConfig`] and run it.
//! - [`control`]: control mode (`--control-fd`): the VM vmd sends as fds,
//!   requests (pause, stop, log level), reboots in place, re-adoption by a
//!   restarted vmd; [`control::pause`] is the vCPU pause gate.
//! - [`vmd`]: the daemon's side: vm.conf parsing (the daemon itself to come).
//! - [`exit`]: how a VM ends, and the monitor's exit codes.

pub mod acpi;
pub mod boot;
pub mod bus;
pub mod config;
pub mod control;
pub mod cpuid;
pub mod device_proc;
pub mod device_spawn;
pub mod devices;
pub mod disks;
pub mod exit;
pub mod irq;
pub mod launcher;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod nics;
pub mod pci;
pub mod supervisor;
pub mod vcpu;
pub mod vhost_user;
pub mod virtio;
pub mod vm;
pub mod vmd;
