//! Counters every device backend keeps; the device owns one [`Metrics`]
//! and the layer bumps the ring-level ones.

use std::sync::atomic::{AtomicU64, Ordering};

/// Per-device counters (monotonic; read with [`Metrics::snapshot`]).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests completed (used ring entries added).
    pub requests: AtomicU64,
    /// Bytes the device read from guest buffers.
    pub bytes_read: AtomicU64,
    /// Bytes the device wrote to guest buffers.
    pub bytes_written: AtomicU64,
    /// Requests the device completed with an error status.
    pub errors: AtomicU64,
    /// Guest protocol violations; each stopped its queue.
    pub guest_errors: AtomicU64,
    /// Host failures that stopped a queue.
    pub host_errors: AtomicU64,
    /// Call eventfd signals sent.
    pub notifications: AtomicU64,
    /// Signals skipped because the driver's used_event asked for none.
    pub notifications_suppressed: AtomicU64,
    /// Requests resubmitted from the inflight region after a reconnect.
    pub resubmitted: AtomicU64,
}

/// A copy of [`Metrics`] at one instant.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// See [`Metrics::requests`].
    pub requests: u64,
    /// See [`Metrics::bytes_read`].
    pub bytes_read: u64,
    /// See [`Metrics::bytes_written`].
    pub bytes_written: u64,
    /// See [`Metrics::errors`].
    pub errors: u64,
    /// See [`Metrics::guest_errors`].
    pub guest_errors: u64,
    /// See [`Metrics::host_errors`].
    pub host_errors: u64,
    /// See [`Metrics::notifications`].
    pub notifications: u64,
    /// See [`Metrics::notifications_suppressed`].
    pub notifications_suppressed: u64,
    /// See [`Metrics::resubmitted`].
    pub resubmitted: u64,
}

impl Metrics {
    /// Adds `n` to `counter` (relaxed: counters order nothing).
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        Self::add(counter, 1);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            requests: get(&self.requests),
            bytes_read: get(&self.bytes_read),
            bytes_written: get(&self.bytes_written),
            errors: get(&self.errors),
            guest_errors: get(&self.guest_errors),
            host_errors: get(&self.host_errors),
            notifications: get(&self.notifications),
            notifications_suppressed: get(&self.notifications_suppressed),
            resubmitted: get(&self.resubmitted),
        }
    }
}
