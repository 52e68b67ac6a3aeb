//! Transmit (guest → tap): each chain is a virtio-net header and one
//! frame (virtio 1.2 §5.1.6.2), written to the tap in one `writev`. A chain
//! that cannot be sent is dropped, counted and completed: the queue never
//! stalls on a bad frame.
//!
//! The header and the frame's first bytes are copied out of the guest
//! first and checked (the lladdr lock, the frame filter's interest); the
//! tap gets that copy, then the rest of the frame straight from guest
//! memory. The guest cannot change what was checked after the check.
//! Frames the filter wants are copied whole, since it parses them.

use dev_backend::{ChainError, DescChain, GuestIoVecs, HandleError, Metrics, QueueContext};
use log::{debug, warn};

use crate::device::{NetDevice, TX_QUEUE};
use crate::filter::ETH_HLEN;
use crate::guest_frames::PEEK_LEN;
use crate::metrics::NetMetrics;
use crate::wire::VNET_HDR_LEN;

/// Longest frame (after the vnet header) sent: a 64 KiB GSO frame plus
/// an Ethernet header and a VLAN tag (65535 + 14 + 1, vmd's bound).
pub const MAX_TX_FRAME: usize = 65550;
/// The copied start of a chain: the vnet header and [`PEEK_LEN`] bytes.
const HEAD_LEN: usize = VNET_HDR_LEN + PEEK_LEN;

/// Why a chain was not sent.
enum Drop {
    BadChain,
    Runt,
    Oversize,
}

/// Checks the chain's size; the frame length when it is sendable.
fn frame_len(chain: &DescChain) -> Result<usize, Drop> {
    let total = chain.readable_len();
    let Some(frame) = total.checked_sub(VNET_HDR_LEN as u64) else {
        return Err(Drop::BadChain);
    };
    if frame < ETH_HLEN as u64 {
        return Err(Drop::Runt);
    }
    if frame > MAX_TX_FRAME as u64 {
        return Err(Drop::Oversize);
    }
    Ok(frame as usize)
}

fn chain_error(source: ChainError) -> HandleError {
    HandleError::Chain {
        queue: TX_QUEUE,
        source,
    }
}

/// Sends every available chain; called on each transmit kick.
pub(crate) fn handle_tx(dev: &NetDevice, ctx: &mut QueueContext<'_>) -> Result<(), HandleError> {
    let mut buf = dev.tx_buf.lock().unwrap_or_else(|p| p.into_inner());
    let mut head = [0u8; HEAD_LEN];
    while let Some(chain) = ctx.pop()? {
        match frame_len(&chain) {
            Ok(len) => {
                let head_len = chain
                    .read_prefix(ctx.memory(), &mut head)
                    .map_err(chain_error)?;
                Metrics::add(&ctx.metrics().bytes_read, (VNET_HDR_LEN + len) as u64);
                send(dev, ctx, &chain, &head[..head_len], &mut buf)?;
            }
            Err(why) => {
                let counter = match why {
                    Drop::BadChain => &dev.net.tx_bad_chain,
                    Drop::Runt => &dev.net.tx_runt,
                    Drop::Oversize => &dev.net.tx_oversize,
                };
                NetMetrics::bump(counter);
                debug!(
                    "tx: dropped a chain of {} readable bytes",
                    chain.readable_len()
                );
            }
        }
        ctx.complete(chain.head(), 0)?;
    }
    Ok(())
}

/// Filters and writes one chain, whose first bytes are `head` (the vnet
/// header and at least an Ethernet header); `buf` is scratch for frames
/// the filter reads whole.
fn send(
    dev: &NetDevice,
    ctx: &QueueContext<'_>,
    chain: &DescChain,
    head: &[u8],
    buf: &mut Vec<u8>,
) -> Result<(), HandleError> {
    let start = &head[VNET_HDR_LEN..];
    if !dev.lock.allows_tx(start) {
        NetMetrics::bump(&dev.net.tx_locked);
        return Ok(());
    }
    let mut filter = dev.filter.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(filter) = filter.as_mut().filter(|f| f.wants(start)) {
        // The filter parses the whole frame: one copy of it, checked and
        // sent as copied.
        buf.resize(chain.readable_len() as usize, 0);
        let n = chain.read_prefix(ctx.memory(), buf).map_err(chain_error)?;
        buf.truncate(n);
        buf[..head.len()].copy_from_slice(head);
        if let Some(reply) = filter.on_guest_frame(&buf[VNET_HDR_LEN..]) {
            NetMetrics::bump(&dev.net.tx_answered);
            if dev.injector.push(&reply) {
                NetMetrics::bump(&dev.net.rx_injected);
            } else {
                NetMetrics::bump(&dev.net.rx_inject_dropped);
            }
            if !filter.forward_answered() {
                return Ok(());
            }
        }
        let whole = [libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        }];
        write(dev, &whole, buf.len() - VNET_HDR_LEN);
        return Ok(());
    }
    drop(filter);
    let mut iovecs = GuestIoVecs::with_prefix(head, chain.readable().len());
    iovecs
        .push_segments(ctx.memory(), chain.readable(), head.len())
        .map_err(chain_error)?;
    let frame_len = iovecs.total_len() - VNET_HDR_LEN;
    write(dev, iovecs.as_iovecs(), frame_len);
    Ok(())
}

/// Writes one header + frame of `frame_len` bytes to the tap and counts it.
fn write(dev: &NetDevice, iovecs: &[libc::iovec], frame_len: usize) {
    if dev.tap.is_gone() {
        NetMetrics::bump(&dev.net.tx_tap_gone);
        return;
    }
    match dev.tap.writev(iovecs) {
        Ok(_) => {
            NetMetrics::bump(&dev.net.tx_frames);
            NetMetrics::add(&dev.net.tx_bytes, frame_len as u64);
        }
        Err(e) if crate::tap::is_gone_error(&e) => {
            NetMetrics::bump(&dev.net.tx_tap_gone);
            if dev.tap.mark_gone() {
                warn!("the tap is gone ({e}); serving the guest without it");
            }
        }
        Err(e) => {
            NetMetrics::bump(&dev.net.tx_tap_error);
            debug!("tx: the tap refused a frame of {frame_len} bytes: {e}");
        }
    }
}
