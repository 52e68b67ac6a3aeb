//! Counters of a block device, bumped on every request and every early
//! return, reported to the monitor (a sandboxed device writes no files).

use std::sync::atomic::{AtomicU64, Ordering};

/// What a block device has done since it started.
#[derive(Debug, Default)]
pub struct BlockMetrics {
    /// Completed reads.
    pub reads: AtomicU64,
    /// Completed writes.
    pub writes: AtomicU64,
    /// Bytes read for the guest.
    pub read_bytes: AtomicU64,
    /// Bytes written for the guest.
    pub write_bytes: AtomicU64,
    /// Flushes.
    pub flushes: AtomicU64,
    /// DISCARD and WRITE_ZEROES requests.
    pub discards: AtomicU64,
    /// Requests completed with IOERR because the host side failed.
    pub io_errors: AtomicU64,
    /// Requests completed with IOERR because the driver got them wrong.
    pub bad_requests: AtomicU64,
    /// Requests of a type we do not implement (UNSUPP).
    pub unsupported: AtomicU64,
    /// Chains that could not be answered at all (no status byte, bad addresses).
    pub dropped_chains: AtomicU64,
}

impl BlockMetrics {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
