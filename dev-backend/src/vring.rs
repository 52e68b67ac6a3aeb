//! The state of one vring as the frontend configured it.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use log::debug;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::inflight::{InflightError, QueueInflight};
use crate::memory::GuestMemoryMmap;

/// Why a ring could not start.
#[derive(Debug, thiserror::Error)]
pub enum VringError {
    /// Size or addresses do not describe a ring inside guest memory.
    #[error("queue {index} is not valid (size, alignment or addresses)")]
    Invalid {
        /// Queue index.
        index: u16,
    },
    /// A ring index could not be read.
    #[error("queue {index}: reading the used ring")]
    UsedRing {
        /// Queue index.
        index: u16,
        /// Cause.
        #[source]
        source: virtio_queue::Error,
    },
    /// The inflight area is smaller than the queue or unusable.
    #[error("queue {index}: inflight area")]
    Inflight {
        /// Queue index.
        index: u16,
        /// Cause.
        #[source]
        source: InflightError,
    },
}

/// One vring.
///
/// # Invariants
/// - vhost-user spec, "Ring states": a ring is stopped until its kick fd
///   arrives ([`start`](Self::start)) and stopped again by GET_VRING_BASE;
///   only a started, enabled, not broken ring is processed.
/// - After `start`, `queue.next_used()` equals the used ring's idx and,
///   with an inflight area, `queue.next_avail()` is that idx plus the
///   number of inflight heads (spec, "Inflight I/O tracking": those heads
///   are exactly the fetched-but-unused ones), which overrides the
///   SET_VRING_BASE value a frontend restores after a crash.
#[derive(Debug)]
pub struct Vring {
    pub(crate) index: u16,
    pub(crate) queue: Queue,
    pub(crate) base: u16,
    pub(crate) call: Option<EventFd>,
    pub(crate) err: Option<EventFd>,
    pub(crate) enabled: bool,
    pub(crate) broken: bool,
    /// A notification was due while there was no call fd yet.
    pub(crate) missed_call: bool,
    pub(crate) inflight: Option<QueueInflight>,
    pub(crate) resubmit: VecDeque<u16>,
}

/// A vring shared by the control thread and its worker.
#[derive(Debug, Clone)]
pub struct SharedVring(Arc<Mutex<Vring>>);

impl SharedVring {
    /// A stopped ring of at most `max_size` entries.
    pub fn new(index: u16, max_size: u16) -> Result<Self, virtio_queue::Error> {
        Ok(Self(Arc::new(Mutex::new(Vring {
            index,
            queue: Queue::new(max_size)?,
            base: 0,
            call: None,
            err: None,
            enabled: false,
            broken: false,
            missed_call: false,
            inflight: None,
            resubmit: VecDeque::new(),
        }))))
    }

    /// Locks the ring; a worker that panicked leaves consistent state
    /// behind (each field is written whole), so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, Vring> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Vring {
    /// Sets the three ring addresses (guest addresses); misaligned ones
    /// are refused (virtio 1.2 §2.7: 16, 2 and 4 byte alignment).
    pub fn set_addresses(
        &mut self,
        desc: GuestAddress,
        avail: GuestAddress,
        used: GuestAddress,
    ) -> Result<(), virtio_queue::Error> {
        self.queue.try_set_desc_table_address(desc)?;
        self.queue.try_set_avail_ring_address(avail)?;
        self.queue.try_set_used_ring_address(used)
    }

    /// Starts the ring: validates it and sets the ring indices, recovering
    /// inflight requests (see the type's invariants).
    pub fn start(&mut self, mem: &GuestMemoryMmap, event_idx: bool) -> Result<(), VringError> {
        let index = self.index;
        self.broken = false;
        self.resubmit.clear();
        self.queue.set_event_idx(event_idx);
        self.queue.set_ready(true);
        if !self.queue.is_valid(mem) {
            self.queue.set_ready(false);
            return Err(VringError::Invalid { index });
        }
        let used = self
            .queue
            .used_idx(mem, Ordering::Acquire)
            .map_err(|source| VringError::UsedRing { index, source })?
            .0;
        self.queue.set_next_used(used);
        self.queue.set_next_avail(self.base);
        let size = self.queue.size();
        let Some(inflight) = self.inflight.as_mut() else {
            return Ok(());
        };
        if inflight.desc_num() < size {
            return Err(VringError::Inflight {
                index,
                source: InflightError::Corrupt("area smaller than the queue"),
            });
        }
        let recovery = inflight
            .recover(used)
            .map_err(|source| VringError::Inflight { index, source })?;
        if !recovery.fresh {
            let pending = recovery.resubmit.len() as u16;
            if self.base != used.wrapping_add(pending) {
                debug!(
                    "queue {index}: base {} replaced by used {used} + {pending} inflight",
                    self.base
                );
            }
            self.queue.set_next_avail(used.wrapping_add(pending));
            self.resubmit = recovery.resubmit.into();
            // A predecessor may have died between putting completions in
            // the used ring and signalling them: signal once (a spurious
            // interrupt costs the driver a look at its used ring).
            match &self.call {
                Some(call) => {
                    if let Err(e) = call.write(1) {
                        debug!("queue {index}: signalling the call fd after a reconnect: {e}");
                    }
                }
                None => self.missed_call = true,
            }
        }
        Ok(())
    }

    /// Stops the ring (GET_VRING_BASE) and returns the next avail index.
    pub fn stop(&mut self) -> u16 {
        self.queue.set_ready(false);
        self.resubmit.clear();
        self.queue.next_avail()
    }

    /// Signals the error eventfd (the frontend sets NEEDS_RESET) and stops
    /// processing until the ring is restarted.
    pub fn set_broken(&mut self) {
        self.broken = true;
        if let Some(err) = &self.err {
            if let Err(e) = err.write(1) {
                debug!("queue {}: signalling the error fd: {e}", self.index);
            }
        }
    }
}
