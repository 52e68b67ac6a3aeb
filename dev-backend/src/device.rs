//! What a device backend implements, and what it is given per kick.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_bindings::bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use crate::chain::{ChainError, DescChain};
use crate::config::ConfigNotifier;
use crate::inflight::InflightError;
use crate::memory::GuestMemoryMmap;
use crate::metrics::Metrics;
use crate::vring::Vring;

/// Bytes before the ring array in the avail ring (flags, idx).
const AVAIL_RING_HEADER: u64 = 4;
/// Bytes of one avail ring entry.
const AVAIL_ELEM_SIZE: u64 = 2;

/// Why a queue stopped; returned by [`Device::handle_queue`].
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The guest broke the virtio protocol: logged at debug level,
    /// counted, and the queue waits for a reset (NEEDS_RESET).
    #[error("guest error on queue {queue}: {what}")]
    Guest {
        /// Queue index.
        queue: u16,
        /// What the guest did.
        what: String,
    },
    /// A bad descriptor chain.
    #[error("guest error on queue {queue}")]
    Chain {
        /// Queue index.
        queue: u16,
        /// The chain problem.
        #[source]
        source: ChainError,
    },
    /// A host resource failed; the queue stops and the error is logged.
    #[error("host error on queue {queue}: {what}")]
    Host {
        /// Queue index.
        queue: u16,
        /// What failed.
        what: String,
    },
    /// The inflight region refused an update (a head it cannot track).
    #[error("inflight tracking on queue {queue}")]
    Inflight {
        /// Queue index.
        queue: u16,
        /// Cause.
        #[source]
        source: InflightError,
    },
}

impl HandleError {
    /// Whether the guest caused it (debug log) rather than the host.
    pub fn is_guest(&self) -> bool {
        matches!(self, Self::Guest { .. } | Self::Chain { .. })
    }
}

/// A virtio device served over vhost-user.
///
/// # Invariants
/// - Queue methods may run on several worker threads at once, one per
///   queue: implementations lock what they share (every method takes
///   `&self`).
/// - `handle_queue` for a queue is never called concurrently with itself.
pub trait Device: Send + Sync + 'static {
    /// Short name, used for thread names (`<name>-q<n>`) and logs.
    fn name(&self) -> &str;
    /// Number of queues.
    fn num_queues(&self) -> u16;
    /// Largest queue size.
    fn max_queue_size(&self) -> u16;
    /// Virtio feature bits the device offers (VIRTIO_F_VERSION_1 and
    /// device-specific bits). The layer adds VHOST_USER_F_PROTOCOL_FEATURES
    /// and the ring features it implements (EVENT_IDX, INDIRECT_DESC).
    fn features(&self) -> u64;
    /// Protocol features the device needs beyond the layer's defaults
    /// (e.g. CONFIG); masked by what the layer implements.
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::empty()
    }
    /// Tells the device which virtio features the driver accepted.
    fn set_acked_features(&self, _features: u64) {}
    /// The whole device configuration space (virtio 1.2 §4.1.4.6).
    fn config(&self) -> Vec<u8> {
        Vec::new()
    }
    /// A driver write to the configuration space; `false` refuses it.
    fn write_config(&self, _offset: u32, _data: &[u8]) -> bool {
        false
    }
    /// Gives the device the way to raise configuration-change
    /// notifications; called once per connection.
    fn set_config_notifier(&self, _notifier: ConfigNotifier) {}
    /// Processes queue `queue` after a kick (or after a reconnect, to run
    /// resubmitted requests).
    fn handle_queue(&self, queue: u16, ctx: &mut QueueContext<'_>) -> Result<(), HandleError>;
    /// An fd the queue's worker also waits on; when it becomes readable
    /// `handle_queue` runs (e.g. a tap fd for the rx queue). It is polled
    /// edge-triggered: `handle_queue` must consume what made it readable
    /// (read an eventfd, drain a socket), or it is not called again for it
    /// until the fd becomes readable anew or a kick comes.
    fn queue_event_fd(&self, _queue: u16) -> Option<RawFd> {
        None
    }
    /// Queue `queue`'s worker has stopped (GET_VRING_BASE, a new kick fd,
    /// RESET_DEVICE or the end of the connection): the ring must not be
    /// touched until it is started again. A device that runs requests off
    /// the worker thread waits for them here; those it has not completed
    /// stay in the inflight region, to be resubmitted.
    fn stop_queue(&self, _queue: u16) {}
    /// The device's counters.
    fn metrics(&self) -> &Metrics;
    /// The frontend went away or reset the device: drop per-driver state.
    fn reset(&self) {}
}

/// A queue as the device sees it during one `handle_queue` call.
///
/// # Invariants
/// - Every head returned by [`pop`](Self::pop) is marked in the inflight
///   region (when there is one) until [`complete`](Self::complete) adds it
///   to the used ring (vhost-user spec, "Inflight I/O tracking").
/// - The call eventfd is signalled only when virtio-queue's
///   `needs_notification` says so (virtio 1.2 §2.7.10, used_event).
/// - While the device drains the ring, the driver is asked not to notify
///   (VRING_USED_F_NO_NOTIFY, or avail_event with EVENT_IDX): one kick
///   wakes the worker, and whatever the driver adds meanwhile is seen by
///   the next [`pop`](Self::pop). Notifications are on again whenever
///   `pop` finds the ring empty, and when the call ends (the worker calls
///   [`finish`](Self::finish)) unless the device said it will come back
///   without a kick ([`stay_quiet`](Self::stay_quiet)), so a kick the
///   device needs is never lost.
pub struct QueueContext<'a> {
    vring: &'a mut Vring,
    mem: &'a GuestMemoryMmap,
    metrics: &'a Metrics,
    notified_used: u16,
    /// The driver was asked not to notify.
    quiet: bool,
    /// Leave the driver's notifications off when the call ends.
    stay_quiet: bool,
}

impl<'a> QueueContext<'a> {
    pub(crate) fn new(
        vring: &'a mut Vring,
        mem: &'a GuestMemoryMmap,
        metrics: &'a Metrics,
    ) -> Self {
        let notified_used = vring.queue.next_used();
        Self {
            vring,
            mem,
            metrics,
            notified_used,
            quiet: false,
            stay_quiet: false,
        }
    }

    /// Turns driver notifications back on if [`pop`](Self::pop) turned them
    /// off and did not reach the end of the ring (the device stopped
    /// early), unless the device asked to [`stay_quiet`](Self::stay_quiet).
    pub(crate) fn finish(&mut self) -> Result<(), HandleError> {
        if self.quiet && !self.stay_quiet {
            self.quiet = false;
            self.vring
                .queue
                .enable_notification(self.mem)
                .map_err(|e| self.guest(format!("enabling notifications: {e}")))?;
        }
        Ok(())
    }

    /// Leaves driver notifications off after this call if `pop` turned
    /// them off: for a queue whose device stopped early with buffers still
    /// available and comes back on an event of its own (a receive queue
    /// waiting for its tap), as QEMU's virtio-net does. A kick then costs
    /// the guest a VM exit for nothing; once the device runs out of
    /// buffers, `pop` finds the ring empty and turns them on again.
    pub fn stay_quiet(&mut self) {
        self.stay_quiet = true;
    }

    /// The queue index.
    pub fn index(&self) -> u16 {
        self.vring.index
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        self.mem
    }

    /// The device's counters.
    pub fn metrics(&self) -> &Metrics {
        self.metrics
    }

    fn guest(&self, what: String) -> HandleError {
        HandleError::Guest {
            queue: self.vring.index,
            what,
        }
    }

    fn walk(&self, head: u16) -> Result<DescChain, HandleError> {
        let q = &self.vring.queue;
        DescChain::walk(self.mem, GuestAddress(q.desc_table()), q.size(), head).map_err(|source| {
            HandleError::Chain {
                queue: self.vring.index,
                source,
            }
        })
    }

    /// The next request: first those resubmitted from the inflight region,
    /// then new ones from the avail ring. `None` when the ring is empty
    /// (notifications are re-enabled then).
    pub fn pop(&mut self) -> Result<Option<DescChain>, HandleError> {
        if let Some(head) = self.vring.resubmit.pop_front() {
            Metrics::bump(&self.metrics.resubmitted);
            return self.walk(head).map(Some);
        }
        if !self.quiet {
            self.vring
                .queue
                .disable_notification(self.mem)
                .map_err(|e| self.guest(format!("disabling notifications: {e}")))?;
            self.quiet = true;
        }
        loop {
            if let Some(head) = self.next_avail_head()? {
                let chain = self.walk(head)?;
                if let Some(inflight) = self.vring.inflight.as_mut() {
                    inflight
                        .mark(head)
                        .map_err(|source| HandleError::Inflight {
                            queue: self.vring.index,
                            source,
                        })?;
                }
                return Ok(Some(chain));
            }
            let more = self
                .vring
                .queue
                .enable_notification(self.mem)
                .map_err(|e| self.guest(format!("enabling notifications: {e}")))?;
            self.quiet = false;
            if !more {
                return Ok(None);
            }
            // Entries came meanwhile: take them quietly again.
            self.vring
                .queue
                .disable_notification(self.mem)
                .map_err(|e| self.guest(format!("disabling notifications: {e}")))?;
            self.quiet = true;
        }
    }

    fn next_avail_head(&mut self) -> Result<Option<u16>, HandleError> {
        let q = &self.vring.queue;
        let avail = q
            .avail_idx(self.mem, Ordering::Acquire)
            .map_err(|e| self.guest(format!("reading avail idx: {e}")))?
            .0;
        let next = q.next_avail();
        let pending = avail.wrapping_sub(next);
        if pending == 0 {
            return Ok(None);
        }
        if pending > q.size() {
            return Err(self.guest(format!("avail idx {avail} is {pending} ahead of {next}")));
        }
        let slot = u64::from(next % q.size());
        let addr = GuestAddress(q.avail_ring() + AVAIL_RING_HEADER + slot * AVAIL_ELEM_SIZE);
        let head = u16::from_le(
            self.mem
                .load(addr, Ordering::Acquire)
                .map_err(|e| self.guest(format!("reading avail ring: {e}")))?,
        );
        self.vring.queue.set_next_avail(next.wrapping_add(1));
        Ok(Some(head))
    }

    /// Completes request `head` with `len` bytes written to its buffers.
    pub fn complete(&mut self, head: u16, len: u32) -> Result<(), HandleError> {
        let queue = self.vring.index;
        let inflight_err = |source| HandleError::Inflight { queue, source };
        if let Some(inflight) = self.vring.inflight.as_mut() {
            inflight.begin_complete(head).map_err(inflight_err)?;
        }
        self.vring
            .queue
            .add_used(self.mem, head, len)
            .map_err(|e| self.guest(format!("adding used entry {head}: {e}")))?;
        let used = self.vring.queue.next_used();
        if let Some(inflight) = self.vring.inflight.as_mut() {
            inflight.finish_complete(head, used).map_err(inflight_err)?;
        }
        Metrics::bump(&self.metrics.requests);
        Ok(())
    }

    /// Signals the call eventfd if the driver wants a notification for the
    /// entries completed since the last signal. The worker also calls it
    /// after `handle_queue` returns.
    pub fn notify(&mut self) -> Result<(), HandleError> {
        let used = self.vring.queue.next_used();
        if used == self.notified_used {
            return Ok(());
        }
        self.notified_used = used;
        let needed = if self.vring.queue.event_idx_enabled() {
            self.vring
                .queue
                .needs_notification(self.mem)
                .map_err(|e| self.guest(format!("reading used_event: {e}")))?
        } else {
            // virtio-queue ignores the flag (virtio 1.2 §2.7.7.2: the
            // device SHOULD NOT notify while it is set). The used idx
            // store goes before the flags load, as virtio-queue fences.
            std::sync::atomic::fence(Ordering::SeqCst);
            let flags: u16 = self
                .mem
                .load(
                    GuestAddress(self.vring.queue.avail_ring()),
                    Ordering::Acquire,
                )
                .map_err(|e| self.guest(format!("reading avail flags: {e}")))?;
            u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0
        };
        if !needed {
            Metrics::bump(&self.metrics.notifications_suppressed);
            return Ok(());
        }
        if let Some(call) = &self.vring.call {
            call.write(1).map_err(|e| HandleError::Host {
                queue: self.vring.index,
                what: format!("signalling the call fd: {e}"),
            })?;
            Metrics::bump(&self.metrics.notifications);
        } else {
            // Signalled when the call fd arrives (SET_VRING_CALL).
            self.vring.missed_call = true;
        }
        Ok(())
    }
}
