//! A loopback device: copies each request's readable bytes into its
//! writable buffers. It can hold requests (pop without completing) to
//! stand for a device process that dies mid-request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;

use crate::chain::DescChain;
use crate::config::ConfigNotifier;
use crate::device::{Device, HandleError, QueueContext};
use crate::metrics::Metrics;

/// Largest request the echo device copies.
const MAX_ECHO: usize = 64 * 1024;
/// Bytes of the echo device's configuration space.
const CONFIG_SIZE: usize = 8;

/// The loopback test device.
#[derive(Debug)]
pub struct EchoDevice {
    num_queues: u16,
    metrics: Metrics,
    hold: AtomicBool,
    held: Mutex<Vec<DescChain>>,
    handled: Mutex<Vec<(u16, u16)>>,
    config: Mutex<Vec<u8>>,
    notifier: Mutex<Option<ConfigNotifier>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EchoDevice {
    /// An echo device with `num_queues` queues.
    pub fn new(num_queues: u16) -> Self {
        Self {
            num_queues,
            metrics: Metrics::default(),
            hold: AtomicBool::new(false),
            held: Mutex::new(Vec::new()),
            handled: Mutex::new(Vec::new()),
            config: Mutex::new(vec![0; CONFIG_SIZE]),
            notifier: Mutex::new(None),
        }
    }

    /// From now on, pop requests but do not complete them.
    pub fn set_hold(&self, hold: bool) {
        self.hold.store(hold, Ordering::SeqCst);
    }

    /// Heads popped and held so far.
    pub fn held(&self) -> Vec<u16> {
        lock(&self.held).iter().map(DescChain::head).collect()
    }

    /// (queue, head) of every request completed, in order.
    pub fn handled(&self) -> Vec<(u16, u16)> {
        lock(&self.handled).clone()
    }

    /// Replaces the configuration space and tells the frontend.
    pub fn change_config(&self, config: &[u8]) -> Result<(), crate::config::ConfigError> {
        lock(&self.config).copy_from_slice(&config[..CONFIG_SIZE.min(config.len())]);
        match lock(&self.notifier).as_ref() {
            Some(n) => n.notify_config_changed(),
            None => Err(crate::config::ConfigError::NoChannel),
        }
    }
}

impl Device for EchoDevice {
    fn name(&self) -> &str {
        "echo"
    }

    fn num_queues(&self) -> u16 {
        self.num_queues
    }

    fn max_queue_size(&self) -> u16 {
        super::MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
    }

    fn config(&self) -> Vec<u8> {
        lock(&self.config).clone()
    }

    fn write_config(&self, offset: u32, data: &[u8]) -> bool {
        let mut config = lock(&self.config);
        let start = offset as usize;
        match config.get_mut(start..start + data.len()) {
            Some(dst) => {
                dst.copy_from_slice(data);
                true
            }
            None => false,
        }
    }

    fn set_config_notifier(&self, notifier: ConfigNotifier) {
        *lock(&self.notifier) = Some(notifier);
    }

    fn handle_queue(&self, queue: u16, ctx: &mut QueueContext<'_>) -> Result<(), HandleError> {
        while let Some(chain) = ctx.pop()? {
            if self.hold.load(Ordering::SeqCst) {
                lock(&self.held).push(chain);
                continue;
            }
            let chain_err = |source| HandleError::Chain { queue, source };
            let data = chain
                .read_to_vec(ctx.memory(), MAX_ECHO)
                .map_err(chain_err)?;
            let written = chain.write_from(ctx.memory(), &data).map_err(chain_err)?;
            Metrics::add(&self.metrics.bytes_read, data.len() as u64);
            Metrics::add(&self.metrics.bytes_written, written as u64);
            lock(&self.handled).push((queue, chain.head()));
            ctx.complete(chain.head(), written as u32)?;
        }
        Ok(())
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn reset(&self) {
        lock(&self.held).clear();
    }
}
