//! Interrupt delivery of a virtio-pci function without the monitor on the
//! data path (virtio 1.2 §4.1.5.1.2, §4.1.4.5; PCI 3.0 §6.8.2).
//!
//! Each interrupt source (source 0: configuration change; source 1 + q:
//! queue q) has a call eventfd that the device process signals. Each MSI-X
//! vector has a GSI with a KVM MSI route to the vector's table message.
//! While a source's vector may deliver, its eventfd is a KVM irqfd on the
//! vector's GSI and KVM injects the interrupt by itself.
//!
//! Masking: when a vector stops being deliverable (entry mask, function
//! mask, MSI-X disabled), the irqfds of its sources are unregistered; the
//! device keeps signalling the eventfds, whose counters hold the interrupts.
//! A guest read of the PBA drains the counters of masked sources into the
//! vector's pending bit. On unmask, a pending bit or a non-zero counter is
//! consumed, the irqfd is registered again and the eventfd is signalled
//! once, so KVM delivers the held interrupt (PCI 3.0 §6.8.2.9).
//!
//! INTx (MSI-X disabled): the ISR status is read-to-clear and filled from
//! the eventfd counters when read. The INTx line itself is never raised:
//! a driver without MSI-X must poll ISR (a documented gap).

use std::os::fd::AsRawFd;
use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::irq::{IrqError, SharedIrqRouter};

use super::msix::Msix;

/// ISR status bit: a queue interrupt (§4.1.4.5).
pub const ISR_QUEUE: u8 = 1 << 0;
/// ISR status bit: a configuration change (§4.1.4.5).
pub const ISR_CONFIG: u8 = 1 << 1;
/// Source index of configuration-change interrupts.
pub const CONFIG_SOURCE: usize = 0;

/// Registers eventfds with KVM: ioeventfds for notifications, irqfds for
/// interrupts (the VM fd, or a recorder in tests).
pub trait EventRegistrar: Send + Sync {
    /// Makes a guest write at guest-physical `addr` (any width) signal `fd`.
    fn add_ioeventfd(&self, fd: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error>;
    /// Undoes [`Self::add_ioeventfd`].
    fn remove_ioeventfd(&self, fd: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error>;
    /// Makes a signal on `fd` inject `gsi`.
    fn add_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error>;
    /// Undoes [`Self::add_irqfd`].
    fn remove_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error>;
}

impl EventRegistrar for VmFd {
    fn add_ioeventfd(&self, fd: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error> {
        // No datamatch: length 0, so KVM matches a write of any width at addr.
        VmFd::register_ioevent(self, fd, &IoEventAddress::Mmio(addr), NoDatamatch)
    }
    fn remove_ioeventfd(&self, fd: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error> {
        VmFd::unregister_ioevent(self, fd, &IoEventAddress::Mmio(addr), NoDatamatch)
    }
    fn add_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error> {
        VmFd::register_irqfd(self, fd, gsi)
    }
    fn remove_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error> {
        VmFd::unregister_irqfd(self, fd, gsi)
    }
}

/// Why the interrupt wiring could not be built.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// A call eventfd could not be created.
    #[error("cannot create a call eventfd")]
    EventFd(#[source] std::io::Error),
    /// No GSI for a vector.
    #[error("cannot allocate a GSI for an MSI-X vector")]
    Gsi(#[source] IrqError),
}

struct Source {
    call: EventFd,
    /// GSI the call eventfd is registered on as an irqfd.
    registered: Option<u32>,
}

/// The call eventfds and irqfd registrations of one function.
///
/// # Invariants
/// - A source's eventfd is an irqfd exactly when `registered` is Some, and
///   then on the GSI of its vector, which is deliverable (module docs).
/// - A deliverable vector's GSI routes to the vector's table message.
pub struct Interrupts {
    registrar: Arc<dyn EventRegistrar>,
    router: SharedIrqRouter,
    gsis: Vec<u32>,
    sources: Vec<Source>,
}

impl Interrupts {
    /// `sources` call eventfds and one fresh GSI for each of `vectors`.
    pub fn new(
        registrar: Arc<dyn EventRegistrar>,
        router: SharedIrqRouter,
        vectors: usize,
        sources: usize,
    ) -> Result<Self, InterruptError> {
        let gsis = {
            let mut r = router.lock().unwrap_or_else(|p| p.into_inner());
            (0..vectors)
                .map(|_| r.allocate_msi_gsi())
                .collect::<Result<Vec<_>, _>>()
                .map_err(InterruptError::Gsi)?
        };
        let sources = (0..sources)
            .map(|_| {
                Ok(Source {
                    call: EventFd::new(libc::EFD_NONBLOCK).map_err(InterruptError::EventFd)?,
                    registered: None,
                })
            })
            .collect::<Result<Vec<_>, InterruptError>>()?;
        Ok(Self {
            registrar,
            router,
            gsis,
            sources,
        })
    }

    /// The GSI of `vector`.
    pub fn gsi(&self, vector: usize) -> Option<u32> {
        self.gsis.get(vector).copied()
    }

    /// A duplicate of `source`'s call eventfd, to hand to the device.
    pub fn call_fd(&self, source: usize) -> Option<std::io::Result<EventFd>> {
        self.sources.get(source).map(|s| s.call.try_clone())
    }

    /// Brings routes and irqfds in line with `vectors` (each source's MSI-X
    /// vector, None for NO_VECTOR) and the MSI-X state.
    pub fn sync(&mut self, vectors: &[Option<u16>], msix: &mut Msix) {
        self.sync_routes(msix);
        for (index, source) in self.sources.iter_mut().enumerate() {
            let vector = vectors.get(index).copied().flatten().map(usize::from);
            let want = vector
                .filter(|v| msix.deliverable(*v))
                .and_then(|v| self.gsis.get(v).copied());
            if source.registered == want {
                continue;
            }
            if let Some(gsi) = source.registered.take() {
                if let Err(e) = self.registrar.remove_irqfd(&source.call, gsi) {
                    log::error!("virtio-pci: cannot unregister the irqfd of GSI {gsi}: {e}");
                }
            }
            let (Some(gsi), Some(vector)) = (want, vector) else {
                continue;
            };
            // Interrupts held while the vector could not deliver.
            let pending = msix.take_pending(vector) | drain(&source.call);
            if let Err(e) = self.registrar.add_irqfd(&source.call, gsi) {
                log::error!("virtio-pci: cannot register an irqfd on GSI {gsi}: {e}");
                continue;
            }
            source.registered = Some(gsi);
            if pending {
                if let Err(e) = source.call.write(1) {
                    log::error!("virtio-pci: cannot deliver a held interrupt: {e}");
                }
            }
        }
    }

    /// Routes every deliverable vector's GSI to its message.
    fn sync_routes(&self, msix: &Msix) {
        let mut router = self.router.lock().unwrap_or_else(|p| p.into_inner());
        for (vector, gsi) in self.gsis.iter().enumerate() {
            let Some(message) = msix.message(vector).filter(|_| msix.deliverable(vector)) else {
                continue;
            };
            if let Err(e) = router.set_msi(*gsi, message) {
                log::error!("virtio-pci: cannot route GSI {gsi}: {e}");
            }
        }
    }

    /// Moves interrupts held in the counters of sources without an irqfd
    /// into their vectors' pending bits (before the guest reads the PBA).
    pub fn collect_pending(&mut self, vectors: &[Option<u16>], msix: &mut Msix) {
        for (source, vector) in self.sources.iter().zip(vectors) {
            if let (None, Some(v)) = (source.registered, vector) {
                if drain(&source.call) {
                    msix.set_pending(usize::from(*v));
                }
            }
        }
    }

    /// The ISR bits of interrupts signalled since the last call, for INTx
    /// (sources with an irqfd are left alone: KVM consumes those).
    pub fn collect_isr(&mut self) -> u8 {
        let mut isr = 0;
        for (index, source) in self.sources.iter().enumerate() {
            if source.registered.is_none() && drain(&source.call) {
                isr |= if index == CONFIG_SOURCE {
                    ISR_CONFIG
                } else {
                    ISR_QUEUE
                };
            }
        }
        isr
    }

    /// Forgets every interrupt signalled so far (device reset).
    pub fn drain_all(&mut self) {
        for source in &self.sources {
            drain(&source.call);
        }
    }

    /// Whether `source`'s eventfd is an irqfd now, and on which GSI.
    pub fn registered(&self, source: usize) -> Option<u32> {
        self.sources.get(source).and_then(|s| s.registered)
    }
}

/// Reads an eventfd's counter without blocking; whether it was non-zero.
pub fn drain(fd: &EventFd) -> bool {
    match fd.read() {
        Ok(count) => count > 0,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) => {
            log::error!("virtio-pci: cannot read eventfd {}: {e}", fd.as_raw_fd());
            false
        }
    }
}
