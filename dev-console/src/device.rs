//! The virtio-console device (virtio 1.2 §5.3) as a dev-backend
//! [`Device`]: port 0 only, no MULTIPORT, no SIZE, no EMERG_WRITE.
//!
//! - transmitq0 (queue 1): every buffer is consumed at once, its bytes
//!   appended to the ring, and completed with length 0; the guest never
//!   waits for a client or the pty.
//! - receiveq0 (queue 0): input held in [`Shared`] is copied into the
//!   buffers the guest posted. The I/O loop holds input and signals the
//!   queue's device fd; a guest kick (new buffers) runs it as well.
//!
//! SIZE is not offered: the pty's window size belongs to whoever holds
//! the slave, which may change at every attach, and a Linux hvc console
//! works without it. The configuration space is still readable (12
//! bytes: cols 0, rows 0, max_nr_ports 1, emerg_wr 0).

use std::os::fd::RawFd;
use std::sync::Arc;

use dev_backend::chain::{ChainError, DescChain};
use dev_backend::device::{Device, HandleError, QueueContext};
use dev_backend::memory::GuestMemoryMmap;
use dev_backend::metrics::{Metrics, MetricsPage};
use log::debug;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{Bytes, GuestAddress};

use crate::metrics::ConsoleMetrics;
use crate::state::{Shared, Source};

/// Virtio device id of a console (virtio 1.2 §5.3).
pub const VIRTIO_ID_CONSOLE: u32 = 3;
/// receiveq0: input to the guest.
pub const RX_QUEUE: u16 = 0;
/// transmitq0: output from the guest.
pub const TX_QUEUE: u16 = 1;
/// Port 0's two queues; without MULTIPORT there are no others.
pub const NUM_QUEUES: u16 = 2;
/// Largest queue size offered: a console moves little data, and 256 is
/// what the test frontend and the monitor use for every device.
pub const MAX_QUEUE_SIZE: u16 = 256;
/// Bytes of `struct virtio_console_config` (cols, rows, max_nr_ports,
/// emerg_wr).
pub const CONFIG_SIZE: usize = 12;
/// Bytes copied from guest memory to the ring at a time.
const COPY_CHUNK: usize = 4096;

/// The console's virtio side.
///
/// # Invariants
/// - Every transmit buffer popped is completed in the same
///   `handle_queue` call (virtio 1.2 §5.3.6.2: the device consumes
///   transmitq buffers; nothing waits on the host side).
/// - Receive buffers are popped only while input is held, so none is
///   kept from the guest without data.
#[derive(Debug)]
pub struct ConsoleDevice {
    shared: Arc<Shared>,
    metrics: MetricsPage,
}

impl ConsoleDevice {
    /// A console device feeding and fed by `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            metrics: MetricsPage::private(),
        }
    }

    /// Counts in `metrics` (the page its monitor shares) instead of its
    /// own memory.
    pub fn with_metrics(mut self, metrics: MetricsPage) -> Self {
        self.metrics = metrics;
        self
    }

    /// The shared console state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Appends a transmit chain's readable bytes to the ring; returns
    /// how many. Writable buffers in it (a driver mistake) are ignored.
    fn take_output(&self, mem: &GuestMemoryMmap, chain: &DescChain) -> Result<u64, ChainError> {
        let mut buf = [0u8; COPY_CHUNK];
        let mut total = 0u64;
        for seg in chain.readable() {
            let mut done = 0u32;
            while done < seg.len {
                let n = (seg.len - done).min(COPY_CHUNK as u32);
                // The chain walk checked that the segment lies in memory.
                let addr = GuestAddress(seg.addr.0 + u64::from(done));
                mem.read_slice(&mut buf[..n as usize], addr)
                    .map_err(ChainError::Access)?;
                self.shared.push_output(Source::Virtio, &buf[..n as usize]);
                done += n;
            }
            total += u64::from(seg.len);
        }
        if !chain.writable().is_empty() {
            debug!(
                "console: transmit chain {} has writable buffers",
                chain.head()
            );
        }
        Ok(total)
    }

    fn transmit(&self, ctx: &mut QueueContext<'_>) -> Result<(), HandleError> {
        let mut any = false;
        while let Some(chain) = ctx.pop()? {
            let n =
                self.take_output(ctx.memory(), &chain)
                    .map_err(|source| HandleError::Chain {
                        queue: TX_QUEUE,
                        source,
                    })?;
            Metrics::add(&self.metrics.bytes_read, n);
            any |= n > 0;
            ctx.complete(chain.head(), 0)?;
        }
        if any {
            self.shared.output_written();
        }
        Ok(())
    }

    fn receive(&self, ctx: &mut QueueContext<'_>) -> Result<(), HandleError> {
        self.shared.clear_rx_ready();
        // Only this worker consumes held input, so it cannot empty between
        // the check and the copy; the I/O loop may only add to it.
        while !self.shared.lock().held().is_empty() {
            let Some(chain) = ctx.pop()? else {
                // The guest kicks when it posts buffers.
                break;
            };
            let written = {
                let mut state = self.shared.lock();
                let n = chain
                    .write_from(ctx.memory(), state.held())
                    .map_err(|source| HandleError::Chain {
                        queue: RX_QUEUE,
                        source,
                    })?;
                state.consume_held(n);
                n
            };
            Metrics::add(&self.metrics.bytes_written, written as u64);
            ConsoleMetrics::add(&self.shared.metrics().virtio_in, written as u64);
            // A chain of writable buffers holds at most 2^32 - 1 bytes
            // per descriptor, but `held` is far smaller.
            ctx.complete(chain.head(), written as u32)?;
        }
        Ok(())
    }
}

impl Device for ConsoleDevice {
    fn name(&self) -> &str {
        "console"
    }

    fn num_queues(&self) -> u16 {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> u16 {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // The frontend serves config space reads from GET_CONFIG.
        VhostUserProtocolFeatures::CONFIG
    }

    fn config(&self) -> Vec<u8> {
        let mut config = vec![0u8; CONFIG_SIZE];
        // max_nr_ports (only valid with MULTIPORT, which is not offered):
        // one port, for drivers that read it anyway.
        config[4..8].copy_from_slice(&1u32.to_le_bytes());
        config
    }

    fn handle_queue(&self, queue: u16, ctx: &mut QueueContext<'_>) -> Result<(), HandleError> {
        match queue {
            RX_QUEUE => self.receive(ctx),
            TX_QUEUE => self.transmit(ctx),
            _ => Err(HandleError::Host {
                queue,
                what: "no such queue".into(),
            }),
        }
    }

    fn queue_event_fd(&self, queue: u16) -> Option<RawFd> {
        (queue == RX_QUEUE).then(|| self.shared.rx_ready_fd())
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn reset(&self) {
        let dropped = self.shared.lock().virtio_reset();
        if dropped > 0 {
            ConsoleMetrics::add(&self.shared.metrics().in_dropped, dropped as u64);
        }
    }
}
