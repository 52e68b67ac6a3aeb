//! dev-block as a vhost-user backend: the glue between dev-backend's
//! [`Device`] trait and [`BlockDevice`].
//!
//! I/O model: each queue has its own worker thread (dev-backend). On a kick
//! it pops every available request and serves on the spot those that
//! cannot wait for the host disk: reads of data in the host page cache
//! (`preadv2(RWF_NOWAIT)` succeeds), writes, DISCARD / WRITE_ZEROES, GET_ID
//! and refused requests. Reads that would wait and FLUSHes go to a shared
//! pool of I/O threads ([`IoPool`], `--io-threads`), which run them with
//! synchronous `pread` / `fdatasync`, so one queue keeps up to the pool's
//! size of host reads in flight. A finished request is queued on its
//! queue's [`QueueIo`] and the queue's completion eventfd (its
//! [`Device::queue_event_fd`]) wakes the worker, which puts it in the used
//! ring (in completion order) and notifies the guest.
//!
//! Why not everything on the pool: a hand-off costs two thread wake-ups
//! and a context switch or two, several times a page-cached 4 KiB read; and
//! buffered writes gain nothing from threads (they go to the page cache,
//! and ext4 serializes writers of one file on its inode lock) — measured in
//! docs/benchmarks.md, handing every request to the pool cut the page-cached
//! rows to 0.4x IOPS at 2.7–3.5x CPU per I/O. A pool request popped alone
//! while its queue has nothing else in flight also runs on the worker: at
//! queue depth 1 a hand-off would only add latency.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use dev_backend::device::{Device, HandleError, QueueContext};
use dev_backend::memory::GuestMemoryMmap;
use dev_backend::metrics::{Metrics, MetricsPage};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vm_memory::ByteValued;

use crate::device::{BlockDevice, Dispatch};
use crate::pool::{IoPool, Job, PoolError};
use crate::queue_io::{Finished, QueueIo, Ticket};

/// Why the backend could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The I/O pool did not start.
    #[error("starting the I/O threads")]
    Pool(#[from] PoolError),
    /// A completion eventfd could not be created.
    #[error("creating a completion eventfd")]
    EventFd(#[source] std::io::Error),
}

/// A block device served over vhost-user.
///
/// # Invariants
/// - `queues[i]` is the pool-side state of queue `i`; only queue `i`'s
///   worker admits requests to it, and [`Device::stop_queue`] /
///   [`Device::reset`] (called with the worker stopped) wait until none of
///   its requests runs in the pool any more.
pub struct BlockBackend {
    device: Arc<BlockDevice>,
    queue_size: u16,
    metrics: MetricsPage,
    queues: Vec<Arc<QueueIo>>,
    pool: IoPool,
}

impl BlockBackend {
    /// Serves `device`, whose queues hold at most `queue_size` descriptors,
    /// with `io_threads` I/O threads, counting in `metrics`.
    pub fn new(
        device: BlockDevice,
        queue_size: u16,
        io_threads: usize,
        metrics: MetricsPage,
    ) -> Result<Arc<Self>, BackendError> {
        let queues = (0..device.num_queues())
            .map(|_| QueueIo::new().map(Arc::new))
            .collect::<Result<_, _>>()
            .map_err(BackendError::EventFd)?;
        Ok(Arc::new(Self {
            device: Arc::new(device),
            queue_size,
            metrics,
            queues,
            pool: IoPool::new(io_threads)?,
        }))
    }

    /// The block device.
    pub fn device(&self) -> &BlockDevice {
        &self.device
    }

    /// Number of I/O threads.
    pub fn io_threads(&self) -> usize {
        self.pool.threads()
    }

    fn queue_io(&self, queue: u16) -> Result<&Arc<QueueIo>, HandleError> {
        self.queues
            .get(usize::from(queue))
            .ok_or_else(|| HandleError::Host {
                queue,
                what: "no such queue".into(),
            })
    }

    fn count(&self, done: &Finished) {
        if done.status != Some(crate::device::S_OK) {
            self.metrics.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics
            .bytes_read
            .fetch_add(done.readable, Ordering::Relaxed);
        self.metrics
            .bytes_written
            .fetch_add(u64::from(done.len), Ordering::Relaxed);
    }

    fn complete(
        &self,
        queue: u16,
        ctx: &mut QueueContext<'_>,
        done: &Finished,
    ) -> Result<(), HandleError> {
        self.count(done);
        ctx.complete(done.head, done.len)?;
        log::trace!("q{queue}: request {} done, {} bytes", done.head, done.len);
        Ok(())
    }

    /// A pool job running `ticket` against `mem` and reporting to `io`.
    fn job(&self, io: &Arc<QueueIo>, mem: &Arc<GuestMemoryMmap>, ticket: Ticket) -> Job {
        let (device, io, mem) = (Arc::clone(&self.device), Arc::clone(io), Arc::clone(mem));
        Box::new(move || {
            let done = run(&device, &mem, &ticket);
            // Guest memory is no longer touched once `finish` is called.
            io.finish(ticket.seq, ticket.epoch, done, true);
        })
    }
}

/// Runs one request.
fn run(device: &BlockDevice, mem: &GuestMemoryMmap, ticket: &Ticket) -> Finished {
    let (len, status) = device.process(mem, &ticket.chain);
    Finished {
        head: ticket.chain.head(),
        len,
        status,
        readable: ticket.chain.readable_len(),
    }
}

impl Device for BlockBackend {
    fn name(&self) -> &str {
        "blk"
    }

    fn num_queues(&self) -> u16 {
        self.device.num_queues()
    }

    fn max_queue_size(&self) -> u16 {
        self.queue_size
    }

    fn features(&self) -> u64 {
        self.device.features()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // The frontend reads capacity, queue count and limits from the config.
        VhostUserProtocolFeatures::CONFIG
    }

    fn config(&self) -> Vec<u8> {
        self.device.config().as_slice().to_vec()
    }

    fn handle_queue(&self, queue: u16, ctx: &mut QueueContext<'_>) -> Result<(), HandleError> {
        let io = self.queue_io(queue)?;
        // Results first: they may release deferred FLUSHes.
        for done in io.take_finished() {
            self.complete(queue, ctx, &done)?;
        }
        let mut batch = io.take_ready_flushes();
        let mut idle = false;
        // Admitted requests count as running until they finish, so they are
        // run even if the loop fails part way (the error is returned after).
        let popped = loop {
            let chain = match ctx.pop() {
                Ok(Some(chain)) => chain,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            let is_flush = match self.device.try_process(ctx.memory(), &chain) {
                Dispatch::Done((len, status)) => {
                    let done = Finished {
                        head: chain.head(),
                        len,
                        status,
                        readable: chain.readable_len(),
                    };
                    if let Err(e) = self.complete(queue, ctx, &done) {
                        break Err(e);
                    }
                    continue;
                }
                Dispatch::Flush => true,
                Dispatch::Pool => false,
            };
            let (ticket, idle_before) = io.admit(chain, is_flush);
            idle = batch.is_empty() && idle_before;
            batch.extend(ticket);
        };
        if popped.is_err() {
            idle = false;
        }
        if let ([ticket], true) = (batch.as_slice(), idle) {
            // Alone on an idle queue: run it here, without a hand-off.
            let done = run(&self.device, ctx.memory(), ticket);
            if io.finish(ticket.seq, ticket.epoch, done, false) {
                self.complete(queue, ctx, &done)?;
            }
            // A FLUSH popped behind it may be free now.
            let flushes = io.take_ready_flushes();
            if flushes.is_empty() {
                return Ok(());
            }
            batch = flushes;
        }
        if batch.is_empty() {
            return popped;
        }
        // One clone of the memory map per batch: it holds the regions'
        // mappings (reference counted) alive while the jobs run, even if the
        // frontend replaces the memory table meanwhile.
        let mem = Arc::new(ctx.memory().clone());
        let jobs = batch
            .into_iter()
            .map(|ticket| self.job(io, &mem, ticket))
            .collect();
        self.pool.submit(jobs);
        popped
    }

    fn queue_event_fd(&self, queue: u16) -> Option<RawFd> {
        self.queues.get(usize::from(queue)).map(|io| io.event_fd())
    }

    fn stop_queue(&self, queue: u16) {
        if let Some(io) = self.queues.get(usize::from(queue)) {
            io.stop();
        }
    }

    fn reset(&self) {
        for io in &self.queues {
            io.stop();
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
