//! Device initialisation steps shared by the drivers (virtio 1.2 §3.1.1):
//! find and reset, feature negotiation, queue setup, DRIVER_OK; and the
//! transmit side of the polled one-buffer-per-descriptor drivers
//! ([`TxBufs`]).

use super::queue::Queue;
use super::transport::{self, Transport, NO_VECTOR};
use super::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_NEEDS_RESET};
use crate::bootinfo::BootInfo;
use crate::cpu;
use crate::dma;
use crate::scenarios::Reason;

/// Finds the first virtio device of `device_type` on bus 0 and resets it.
pub fn open(device_type: u16) -> Result<Transport, Reason> {
    let t = transport::find(device_type)?;
    t.reset()?;
    Ok(t)
}

/// Passes `result` (of initialising the reset device `t`) on, marking the
/// device FAILED if it is an error.
pub fn or_fail<T>(t: &Transport, result: Result<T, Reason>) -> Result<T, Reason> {
    if result.is_err() {
        t.fail();
    }
    result
}

/// ACKNOWLEDGE, DRIVER, then negotiates `wanted` (see
/// [`Transport::negotiate`]). Returns the features offered and negotiated.
pub fn negotiate(t: &Transport, wanted: u64) -> Result<(u64, u64), Reason> {
    t.add_status(STATUS_ACKNOWLEDGE);
    t.add_status(STATUS_DRIVER);
    let offered = t.device_features();
    let features = t.negotiate(wanted)?;
    Ok((offered, features))
}

/// Sets up queue `index` with at most `max_size` entries (a power of two,
/// halved down to what the device offers) and MSI-X `vector`; with
/// [`NO_VECTOR`] the queue is polled (interrupts suppressed).
pub fn queue(
    t: &Transport,
    boot: &BootInfo,
    index: u16,
    max_size: u16,
    vector: u16,
) -> Result<Queue, Reason> {
    let func = t.func;
    let max = t.select_queue(index);
    if max == 0 {
        crate::fail!("{func}: queue {index} unavailable");
    }
    let mut size = max_size;
    while size > max {
        size /= 2;
    }
    let mut queue = Queue::new(boot, index, size)?;
    let kept = t.setup_queue(size, queue.desc, queue.avail, queue.used, vector);
    if kept != vector {
        if vector == NO_VECTOR {
            crate::fail!("{func}: queue {index} took MSI-X vector {kept:#x}, none set");
        }
        crate::fail!("{func}: queue {index} MSI-X vector {vector} refused ({kept:#x})");
    }
    queue.notify_addr = t.queue_notify_addr();
    if vector == NO_VECTOR {
        queue.suppress_interrupts();
    }
    t.enable_queue();
    Ok(queue)
}

/// Fails unless the device offers at least `need` queues.
pub fn need_queues(t: &Transport, need: u16, what: &str) -> Result<(), Reason> {
    if t.num_queues() < need {
        crate::fail!("{}: {} queues, {what} {need}", t.func, t.num_queues());
    }
    Ok(())
}

/// Sets DRIVER_OK and checks that the device took it (no NEEDS_RESET).
pub fn driver_ok(t: &Transport) -> Result<(), Reason> {
    t.add_status(STATUS_DRIVER_OK);
    let status = t.status();
    if status & STATUS_DRIVER_OK == 0 || status & STATUS_NEEDS_RESET != 0 {
        crate::fail!("{}: status {status:#x} after DRIVER_OK", t.func);
    }
    Ok(())
}

/// Allocates one buffer of `stride` bytes per entry of `queue` (buffer `i`
/// at `base + i * stride`), returning `base`.
pub fn alloc_bufs(boot: &BootInfo, queue: &Queue, stride: u64) -> Result<u64, Reason> {
    Ok(dma::alloc(boot, u64::from(queue.size) * stride, 4096)?)
}

/// The transmit queue of a polled driver: buffer `i` (of `stride` bytes)
/// always uses descriptor `i`; the buffers the device holds are a bit set
/// (so at most 64).
#[derive(Default)]
pub struct TxBufs {
    pub queue: Queue,
    bufs: u64,
    stride: u64,
    /// Buffers the device holds (bit `i`: buffer `i`).
    busy: u64,
    /// Queue name in failure messages.
    name: &'static str,
    /// Bound of the waits, in ms and TSC ticks per ms (cached: CPUID is an
    /// `int3` request).
    wait_ms: u64,
    tsc_ms: u64,
}

impl TxBufs {
    /// Buffers of `stride` bytes for `queue` (at most 64 entries).
    pub fn new(
        boot: &BootInfo,
        queue: Queue,
        stride: u64,
        name: &'static str,
        wait_ms: u64,
    ) -> Result<TxBufs, Reason> {
        Ok(TxBufs {
            bufs: alloc_bufs(boot, &queue, stride)?,
            queue,
            stride,
            busy: 0,
            name,
            wait_ms,
            tsc_ms: cpu::tsc_per_ms(),
        })
    }

    fn deadline(&self) -> u64 {
        cpu::rdtsc().saturating_add(self.wait_ms.saturating_mul(self.tsc_ms))
    }

    /// Takes the buffers the device has returned.
    pub fn reap(&mut self) -> Result<(), Reason> {
        while let Some((id, _)) = self.queue.pop_used() {
            if id >= u32::from(self.queue.size) || self.busy & (1 << id) == 0 {
                crate::fail!("{}: used id {id} was not in flight", self.name);
            }
            self.busy &= !(1 << id);
        }
        Ok(())
    }

    /// The lowest free buffer, if any (without reaping).
    pub fn free(&self) -> Option<u16> {
        let mask = if self.queue.size >= 64 {
            u64::MAX
        } else {
            (1u64 << self.queue.size) - 1
        };
        let free = !self.busy & mask;
        (free != 0).then(|| free.trailing_zeros() as u16)
    }

    /// Buffers the device holds.
    pub fn in_flight(&self) -> u32 {
        self.busy.count_ones()
    }

    /// Reaps, then waits (bounded) for a free buffer: its index and
    /// address (`stride` bytes the device does not hold).
    pub fn acquire(&mut self, t: &Transport) -> Result<(u16, u64), Reason> {
        self.reap()?;
        let slot = match self.free() {
            Some(slot) => slot,
            None => {
                let deadline = self.deadline();
                loop {
                    self.reap()?;
                    if let Some(slot) = self.free() {
                        break slot;
                    }
                    if cpu::rdtsc() >= deadline {
                        crate::fail!(
                            "{}: no buffer returned in {} ms ({} in flight, status {:#x})",
                            self.name,
                            self.wait_ms,
                            self.in_flight(),
                            t.status()
                        );
                    }
                    core::hint::spin_loop();
                }
            }
        };
        Ok((slot, self.bufs + u64::from(slot) * self.stride))
    }

    /// Hands the first `len` bytes of buffer `slot` (from
    /// [`Self::acquire`]) to the device and notifies it.
    pub fn submit(&mut self, slot: u16, len: u32) {
        let addr = self.bufs + u64::from(slot) * self.stride;
        self.queue.set_desc(slot, addr, len, 0, 0);
        self.queue.push(slot);
        self.busy |= 1 << slot;
        self.queue.publish();
    }

    /// Waits (bounded) until the device has returned every buffer.
    pub fn flush(&mut self, t: &Transport) -> Result<(), Reason> {
        self.reap()?;
        if self.busy == 0 {
            return Ok(());
        }
        let deadline = self.deadline();
        loop {
            self.reap()?;
            if self.busy == 0 {
                return Ok(());
            }
            if cpu::rdtsc() >= deadline {
                crate::fail!(
                    "{}: {} buffers not returned in {} ms (status {:#x})",
                    self.name,
                    self.in_flight(),
                    self.wait_ms,
                    t.status()
                );
            }
            core::hint::spin_loop();
        }
    }
}
