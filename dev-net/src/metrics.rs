//! Counters of a network device, bumped on every frame and every drop;
//! reported to the monitor (a sandboxed device writes no files).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a network device has done since it started. "tx" is guest → tap,
/// "rx" is tap → guest.
#[derive(Debug, Default)]
pub struct NetMetrics {
    /// Frames written to the tap.
    pub tx_frames: AtomicU64,
    /// Bytes written to the tap (Ethernet frames, no vnet header).
    pub tx_bytes: AtomicU64,
    /// Frames placed in guest buffers (tap frames and injected ones).
    pub rx_frames: AtomicU64,
    /// Bytes placed in guest buffers (no vnet header).
    pub rx_bytes: AtomicU64,
    /// tx chains shorter than the vnet header, or not readable.
    pub tx_bad_chain: AtomicU64,
    /// tx frames shorter than an Ethernet header.
    pub tx_runt: AtomicU64,
    /// tx frames longer than [`crate::tx::MAX_TX_FRAME`].
    pub tx_oversize: AtomicU64,
    /// tx frames from another source MAC on a locked interface.
    pub tx_locked: AtomicU64,
    /// tx frames the tap refused (full, or an unexpected error).
    pub tx_tap_error: AtomicU64,
    /// tx frames dropped because the tap is gone.
    pub tx_tap_gone: AtomicU64,
    /// tx frames the frame filter answered (DHCP).
    pub tx_answered: AtomicU64,
    /// rx frames shorter than vnet header + Ethernet header.
    pub rx_runt: AtomicU64,
    /// rx unicast frames to another MAC on a locked interface.
    pub rx_locked: AtomicU64,
    /// rx frames that fit no guest buffer (no MRG_RXBUF, small chain).
    pub rx_too_big: AtomicU64,
    /// rx chains with too little writable room even for the vnet header;
    /// completed empty.
    pub rx_bad_chain: AtomicU64,
    /// Frames the filter injected (after its checks).
    pub rx_injected: AtomicU64,
    /// Injected frames dropped (bad size, or the inject queue full).
    pub rx_inject_dropped: AtomicU64,
    /// Unexpected tap read errors.
    pub rx_tap_error: AtomicU64,
}

impl NetMetrics {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

impl fmt::Display for NetMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = Self::get;
        write!(
            f,
            "tx {} frames {} bytes (dropped: {} bad chains, {} runts, {} oversize, {} locked, \
             {} tap errors, {} tap gone; {} answered), rx {} frames {} bytes (dropped: {} runts, \
             {} locked, {} too big, {} bad chains; {} injected, {} inject dropped, {} tap errors)",
            g(&self.tx_frames),
            g(&self.tx_bytes),
            g(&self.tx_bad_chain),
            g(&self.tx_runt),
            g(&self.tx_oversize),
            g(&self.tx_locked),
            g(&self.tx_tap_error),
            g(&self.tx_tap_gone),
            g(&self.tx_answered),
            g(&self.rx_frames),
            g(&self.rx_bytes),
            g(&self.rx_runt),
            g(&self.rx_locked),
            g(&self.rx_too_big),
            g(&self.rx_bad_chain),
            g(&self.rx_injected),
            g(&self.rx_inject_dropped),
            g(&self.rx_tap_error),
        )
    }
}
