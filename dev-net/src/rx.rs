//! Receive (tap → guest): frames read from the tap (and frames the filter
//! injected) placed in the guest's receive buffers (virtio 1.2 §5.1.6.3,
//! §5.1.6.4). With MRG_RXBUF a frame spreads over as many chains as it
//! needs and the header's `num_buffers` says how many; without it each
//! frame takes one chain. When the guest has no buffers the frame waits
//! and the tap is not read again (the kernel queues, then drops) until a
//! kick brings buffers.

use std::collections::VecDeque;

use dev_backend::{DescChain, HandleError, Metrics, QueueContext};
use log::{debug, warn};
use virtio_bindings::bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;

use crate::device::{NetDevice, RX_QUEUE};
use crate::filter::ETH_HLEN;
use crate::metrics::NetMetrics;
use crate::wire::{NUM_BUFFERS_OFFSET, VNET_HDR_LEN};

/// Bytes of the read buffer: the largest GSO frame a tap hands over
/// (64 KiB plus headers) with the vnet header, rounded up.
pub const RX_BUF_LEN: usize = 68 * 1024;
/// Frames placed between two call-eventfd checks during a burst, so that
/// the guest can refill buffers while we drain the tap.
const NOTIFY_BATCH: usize = 64;

/// The receive path's state between kicks.
///
/// # Invariants
/// - `held` chains were popped (and marked inflight) but not completed;
///   they are valid only while the ring and the memory table are those
///   they were popped from: [`RxState::forget_chains`] when the queue
///   stops.
/// - `pending` is `Some(n)` when `buf[..n]` holds a header + frame that
///   passed the checks and waits for buffers.
/// - `tap_muted` is true while tap readiness does not wake the worker
///   ([`NetDevice::listen_to_tap`]); only then may a frame be pending for
///   lack of buffers, and the tap is listened to again before it is read.
#[derive(Debug)]
pub struct RxState {
    held: VecDeque<DescChain>,
    pending: Option<usize>,
    buf: Vec<u8>,
    tap_muted: bool,
}

impl Default for RxState {
    fn default() -> Self {
        Self::new()
    }
}

/// What became of a frame.
enum Placed {
    Done,
    NoBuffers,
    TooBig,
}

impl RxState {
    /// Empty state.
    pub fn new() -> Self {
        Self {
            held: VecDeque::new(),
            pending: None,
            buf: vec![0; RX_BUF_LEN],
            tap_muted: false,
        }
    }

    /// Drops the held chains (the ring stopped). Their buffers stay
    /// inflight: a frontend that reconnects resubmits them.
    pub fn forget_chains(&mut self) {
        self.held.clear();
    }

    fn held_room(&self) -> u64 {
        self.held.iter().map(DescChain::writable_len).sum()
    }

    /// Pops one more usable chain into `held`; `false` when the ring is
    /// empty. Chains with no room for the header are completed empty.
    fn take_chain(
        &mut self,
        dev: &NetDevice,
        ctx: &mut QueueContext<'_>,
    ) -> Result<bool, HandleError> {
        while let Some(chain) = ctx.pop()? {
            if chain.writable_len() < VNET_HDR_LEN as u64 {
                NetMetrics::bump(&dev.net.rx_bad_chain);
                ctx.complete(chain.head(), 0)?;
                continue;
            }
            self.held.push_back(chain);
            return Ok(true);
        }
        Ok(false)
    }

    /// Places `buf[..len]` in the guest's buffers.
    fn place(
        &mut self,
        dev: &NetDevice,
        ctx: &mut QueueContext<'_>,
        len: usize,
    ) -> Result<Placed, HandleError> {
        let mergeable = dev.acked(VIRTIO_NET_F_MRG_RXBUF);
        if self.held.is_empty() && !self.take_chain(dev, ctx)? {
            return Ok(Placed::NoBuffers);
        }
        if !mergeable {
            if self.held[0].writable_len() < len as u64 {
                // The chain stays for the next frame.
                return Ok(Placed::TooBig);
            }
            self.buf[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
            return self.write_chains(dev, ctx, len, 1);
        }
        while self.held_room() < len as u64 {
            if !self.take_chain(dev, ctx)? {
                return Ok(Placed::NoBuffers);
            }
        }
        let mut room = 0u64;
        let count = self
            .held
            .iter()
            .take_while(|c| {
                let before = room;
                room += c.writable_len();
                before < len as u64
            })
            .count();
        let num = u16::try_from(count).unwrap_or(u16::MAX);
        self.buf[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&num.to_le_bytes());
        self.write_chains(dev, ctx, len, count)
    }

    /// Writes `buf[..len]` over the first `count` held chains, which have
    /// room for it, and completes them in order.
    fn write_chains(
        &mut self,
        dev: &NetDevice,
        ctx: &mut QueueContext<'_>,
        len: usize,
        count: usize,
    ) -> Result<Placed, HandleError> {
        let mut done = 0usize;
        for chain in self.held.drain(..count) {
            let written = chain
                .write_from(ctx.memory(), &self.buf[done..len])
                .map_err(|source| HandleError::Chain {
                    queue: RX_QUEUE,
                    source,
                })?;
            done += written;
            Metrics::add(&ctx.metrics().bytes_written, written as u64);
            ctx.complete(chain.head(), written as u32)?;
        }
        NetMetrics::bump(&dev.net.rx_frames);
        NetMetrics::add(&dev.net.rx_bytes, (len - VNET_HDR_LEN) as u64);
        Ok(Placed::Done)
    }

    /// The next frame into `buf`: an injected one first, then the tap's.
    /// `None` when there is nothing to read.
    fn next_frame(&mut self, dev: &NetDevice) -> Option<usize> {
        if let Some(frame) = dev.injector.pop() {
            self.buf[..frame.len()].copy_from_slice(&frame);
            return Some(frame.len());
        }
        if dev.tap.is_gone() {
            return None;
        }
        if self.tap_muted {
            dev.listen_to_tap(true);
            self.tap_muted = false;
        }
        match dev.tap.read(&mut self.buf) {
            // A tap never reads 0 bytes; a test socket whose peer closed does.
            Ok(0) => {
                if dev.tap.mark_gone() {
                    warn!("the tap is gone (end of file); serving the guest without it");
                }
                None
            }
            Ok(n) => Some(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) if crate::tap::is_gone_error(&e) => {
                if dev.tap.mark_gone() {
                    warn!("the tap is gone ({e}); serving the guest without it");
                }
                None
            }
            Err(e) => {
                NetMetrics::bump(&dev.net.rx_tap_error);
                debug!("rx: reading the tap: {e}");
                None
            }
        }
    }
}

/// Moves frames to the guest until the tap is empty or the guest has no
/// buffers; called on kicks, tap readiness and injections.
pub(crate) fn handle_rx(dev: &NetDevice, ctx: &mut QueueContext<'_>) -> Result<(), HandleError> {
    dev.rearm_rx_events();
    let mut rx = dev.rx.lock().unwrap_or_else(|p| p.into_inner());
    let mut placed = 0usize;
    loop {
        let len = match rx.pending.take() {
            Some(len) => len,
            None => match rx.next_frame(dev) {
                Some(len) => len,
                None => {
                    // The tap is empty: its readiness, not a kick, brings
                    // us back while the guest has buffers posted.
                    ctx.stay_quiet();
                    return Ok(());
                }
            },
        };
        if len < VNET_HDR_LEN + ETH_HLEN {
            NetMetrics::bump(&dev.net.rx_runt);
            continue;
        }
        if !dev.lock.allows_rx(&rx.buf[VNET_HDR_LEN..len]) {
            NetMetrics::bump(&dev.net.rx_locked);
            continue;
        }
        match rx.place(dev, ctx, len)? {
            Placed::Done => {
                placed += 1;
                if placed % NOTIFY_BATCH == 0 {
                    ctx.notify()?;
                }
            }
            Placed::NoBuffers => {
                rx.pending = Some(len);
                if !rx.tap_muted {
                    dev.listen_to_tap(false);
                    rx.tap_muted = true;
                }
                return Ok(());
            }
            Placed::TooBig => {
                NetMetrics::bump(&dev.net.rx_too_big);
                debug!("rx: a frame of {len} bytes fits no receive buffer");
            }
        }
    }
}
