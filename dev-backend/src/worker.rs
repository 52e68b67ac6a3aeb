//! Vring workers: one thread per started queue.
//!
//! One thread per queue (named `<dev>-q<n>`) rather than one for all: a
//! block device's queues then run in parallel on the host as they do in
//! the guest, a slow request on one queue does not hold up the others, and
//! starting or stopping a ring (SET_VRING_KICK, GET_VRING_BASE) touches
//! only its own thread. Each thread waits in epoll on the kick eventfd, an
//! exit eventfd and optionally a device fd.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use log::{debug, error};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{Device, QueueContext};
use crate::memory::AtomicMemory;
use crate::metrics::Metrics;
use crate::vring::SharedVring;

/// Event id of the kick eventfd.
const EVENT_KICK: u64 = 0;
/// Event id of the exit eventfd.
const EVENT_EXIT: u64 = 1;
/// Event id of the device's own fd.
const EVENT_DEVICE: u64 = 2;
/// Events taken per epoll_wait; three sources at most.
const MAX_EVENTS: usize = 3;

/// A running queue worker.
///
/// # Invariants
/// - While a worker exists its ring is started (vhost-user spec, "Ring
///   states"); [`Worker::stop`] returns only once the thread has finished
///   touching the ring.
#[derive(Debug)]
pub struct Worker {
    exit: EventFd,
    wake: EventFd,
    thread: Option<JoinHandle<()>>,
}

struct Run<D: Device> {
    index: u16,
    device: Arc<D>,
    vring: SharedVring,
    memory: AtomicMemory,
}

impl Worker {
    /// Starts the worker of queue `index` on `kick`. With `run_now` it
    /// processes the queue once before waiting (requests resubmitted after
    /// a reconnect get no new kick).
    pub fn spawn<D: Device>(
        index: u16,
        device: Arc<D>,
        vring: SharedVring,
        memory: AtomicMemory,
        kick: EventFd,
        run_now: bool,
    ) -> io::Result<Self> {
        let exit = EventFd::new(EFD_NONBLOCK)?;
        let wake = kick.try_clone()?;
        let exit_fd = exit.try_clone()?;
        let name = format!("{}-q{index}", device.name());
        let run = Run {
            index,
            device,
            vring,
            memory,
        };
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run.main(kick, exit_fd, run_now))?;
        Ok(Self {
            exit,
            wake,
            thread: Some(thread),
        })
    }

    /// Makes the worker look at its queue (after SET_VRING_ENABLE 1).
    pub fn wake(&self) {
        if let Err(e) = self.wake.write(1) {
            debug!("waking a queue worker: {e}");
        }
    }

    /// Stops the worker and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Err(e) = self.exit.write(1) {
            error!("signalling a queue worker to exit: {e}");
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                error!("a queue worker panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.halt();
    }
}

impl<D: Device> Run<D> {
    fn main(self, kick: EventFd, exit: EventFd, run_now: bool) {
        let epoll = match self.epoll(&kick, &exit) {
            Ok(epoll) => epoll,
            Err(e) => {
                error!("queue {}: setting up epoll: {e}", self.index);
                return;
            }
        };
        if run_now {
            self.process();
        }
        let mut events = [EpollEvent::default(); MAX_EVENTS];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error!("queue {}: epoll_wait: {e}", self.index);
                    return;
                }
            };
            let mut work = false;
            for event in &events[..n] {
                match event.data() {
                    EVENT_EXIT => return,
                    EVENT_KICK => {
                        // A failed read means no kick is pending.
                        let _ = kick.read();
                        work = true;
                    }
                    _ => work = true,
                }
            }
            if work {
                self.process();
            }
        }
    }

    fn epoll(&self, kick: &EventFd, exit: &EventFd) -> io::Result<Epoll> {
        let epoll = Epoll::new()?;
        let add = |fd: RawFd, id: u64| {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, id))
        };
        add(kick.as_raw_fd(), EVENT_KICK)?;
        add(exit.as_raw_fd(), EVENT_EXIT)?;
        if let Some(fd) = self.device.queue_event_fd(self.index) {
            // Edge-triggered: while the ring is disabled or broken
            // `handle_queue` does not run, and a still-readable fd must not
            // wake this thread again and again.
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, EVENT_DEVICE),
            )?;
        }
        Ok(epoll)
    }

    fn process(&self) {
        let mem = self.memory.memory();
        let mut vring = self.vring.lock();
        if vring.broken || !vring.enabled {
            return;
        }
        let metrics = self.device.metrics();
        let mut ctx = QueueContext::new(&mut vring, &mem, metrics);
        let result = self
            .device
            .handle_queue(self.index, &mut ctx)
            .and_then(|()| ctx.finish())
            .and_then(|()| ctx.notify());
        let Err(e) = result else {
            return;
        };
        // Whatever was completed before the failure is still signalled.
        let _ = ctx.notify();
        if e.is_guest() {
            debug!("{}: {e}; queue stopped until reset", self.device.name());
            Metrics::bump(&metrics.guest_errors);
        } else {
            error!("{}: {e}; queue stopped", self.device.name());
            Metrics::bump(&metrics.host_errors);
        }
        vring.set_broken();
    }
}
