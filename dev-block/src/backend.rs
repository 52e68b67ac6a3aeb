//! dev-block as a vhost-user backend: the glue between dev-backend's
//! [`Device`] trait and [`BlockDevice`].
//!
//! I/O model: each queue has its own worker thread (dev-backend), and a
//! request is served synchronously on it with pread/pwrite on the image. So
//! the device runs as many requests at once as the driver has queues; the
//! guest's queue depth within one queue is served in order.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use dev_backend::device::{Device, HandleError, QueueContext};
use dev_backend::metrics::Metrics;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vm_memory::ByteValued;

use crate::device::BlockDevice;

/// A block device served over vhost-user.
pub struct BlockBackend {
    device: BlockDevice,
    queue_size: u16,
    metrics: Metrics,
}

impl BlockBackend {
    /// Serves `device`, whose queues hold at most `queue_size` descriptors.
    pub fn new(device: BlockDevice, queue_size: u16) -> Arc<Self> {
        Arc::new(Self {
            device,
            queue_size,
            metrics: Metrics::default(),
        })
    }

    /// The block device.
    pub fn device(&self) -> &BlockDevice {
        &self.device
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
        while let Some(chain) = ctx.pop()? {
            let (len, status) = self.device.process(ctx.memory(), &chain);
            if status != Some(crate::device::S_OK) {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
            }
            self.metrics
                .bytes_read
                .fetch_add(chain.readable_len(), Ordering::Relaxed);
            self.metrics
                .bytes_written
                .fetch_add(u64::from(len), Ordering::Relaxed);
            ctx.complete(chain.head(), len)?;
            log::trace!("q{queue}: request {} done, {len} bytes", chain.head());
        }
        Ok(())
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
