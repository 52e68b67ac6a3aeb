//! Transmit (guest → tap): each chain is a virtio-net header and one
//! frame (virtio 1.2 §5.1.6.2); header and frame go to the tap as they
//! are, in one writev. A chain that cannot be sent is dropped, counted and
//! completed: the queue never stalls on a bad frame.

use std::io::IoSlice;

use dev_backend::{ChainError, DescChain, HandleError, Metrics, QueueContext};
use log::{debug, warn};
use vm_memory::Bytes;

use crate::device::{NetDevice, TX_QUEUE};
use crate::filter::ETH_HLEN;
use crate::metrics::NetMetrics;
use crate::wire::VNET_HDR_LEN;

/// Longest frame (after the vnet header) sent: a 64 KiB GSO frame plus
/// an Ethernet header and a VLAN tag (65535 + 14 + 1, vmd's bound).
pub const MAX_TX_FRAME: usize = 65550;

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

/// Reads header + frame into `buf` (reused between chains).
fn gather(ctx: &QueueContext<'_>, chain: &DescChain, buf: &mut Vec<u8>) -> Result<(), HandleError> {
    buf.clear();
    for seg in chain.readable() {
        let start = buf.len();
        buf.resize(start + seg.len as usize, 0);
        ctx.memory()
            .read_slice(&mut buf[start..], seg.addr)
            .map_err(|e| HandleError::Chain {
                queue: TX_QUEUE,
                source: ChainError::Access(e),
            })?;
    }
    Ok(())
}

/// Sends every available chain; called on each transmit kick.
pub(crate) fn handle_tx(dev: &NetDevice, ctx: &mut QueueContext<'_>) -> Result<(), HandleError> {
    let mut buf = dev.tx_buf.lock().unwrap_or_else(|p| p.into_inner());
    while let Some(chain) = ctx.pop()? {
        match frame_len(&chain) {
            Ok(_) => {
                gather(ctx, &chain, &mut buf)?;
                Metrics::add(&ctx.metrics().bytes_read, buf.len() as u64);
                send(dev, &buf);
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

/// Filters and writes one header + frame.
fn send(dev: &NetDevice, packet: &[u8]) {
    let frame = &packet[VNET_HDR_LEN..];
    if !dev.lock.allows_tx(frame) {
        NetMetrics::bump(&dev.net.tx_locked);
        return;
    }
    if let Some(filter) = dev
        .filter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_mut()
    {
        if let Some(reply) = filter.on_guest_frame(frame) {
            NetMetrics::bump(&dev.net.tx_answered);
            if dev.injector.push(&reply) {
                NetMetrics::bump(&dev.net.rx_injected);
            } else {
                NetMetrics::bump(&dev.net.rx_inject_dropped);
            }
            if !filter.forward_answered() {
                return;
            }
        }
    }
    if dev.tap.is_gone() {
        NetMetrics::bump(&dev.net.tx_tap_gone);
        return;
    }
    match dev.tap.write(&[IoSlice::new(packet)]) {
        Ok(_) => {
            NetMetrics::bump(&dev.net.tx_frames);
            NetMetrics::add(&dev.net.tx_bytes, frame.len() as u64);
        }
        Err(e) if crate::tap::is_gone_error(&e) => {
            NetMetrics::bump(&dev.net.tx_tap_gone);
            if dev.tap.mark_gone() {
                warn!("the tap is gone ({e}); serving the guest without it");
            }
        }
        Err(e) => {
            NetMetrics::bump(&dev.net.tx_tap_error);
            debug!("tx: the tap refused a frame of {} bytes: {e}", frame.len());
        }
    }
}
