//! Counters of the console, bumped on every byte moved and every drop.
//! Read with [`ConsoleMetrics::snapshot`]; logged when the process ends
//! (a sandboxed device writes no files; reporting them to the monitor
//! comes with the metrics channel).

use std::sync::atomic::{AtomicU64, Ordering};

/// What the console has done since it started.
#[derive(Debug, Default)]
pub struct ConsoleMetrics {
    /// Output bytes the guest wrote to the virtio port (into the ring).
    pub virtio_out: AtomicU64,
    /// Output bytes the guest wrote to COM1 (into the ring).
    pub com_out: AtomicU64,
    /// Output bytes written to the pty for the attached client.
    pub pty_out: AtomicU64,
    /// Output bytes the attached client missed: the ring overwrote them
    /// before the pty took them.
    pub out_dropped: AtomicU64,
    /// Input bytes put into the guest's virtio receive buffers.
    pub virtio_in: AtomicU64,
    /// Input bytes sent to the monitor for COM1.
    pub com_in: AtomicU64,
    /// Input bytes dropped: the virtio hold buffer was full, or there was
    /// nowhere to send them.
    pub in_dropped: AtomicU64,
    /// Malformed side-channel packets (logged and dropped).
    pub bad_packets: AtomicU64,
}

/// A copy of [`ConsoleMetrics`] at one instant.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleSnapshot {
    /// See [`ConsoleMetrics::virtio_out`].
    pub virtio_out: u64,
    /// See [`ConsoleMetrics::com_out`].
    pub com_out: u64,
    /// See [`ConsoleMetrics::pty_out`].
    pub pty_out: u64,
    /// See [`ConsoleMetrics::out_dropped`].
    pub out_dropped: u64,
    /// See [`ConsoleMetrics::virtio_in`].
    pub virtio_in: u64,
    /// See [`ConsoleMetrics::com_in`].
    pub com_in: u64,
    /// See [`ConsoleMetrics::in_dropped`].
    pub in_dropped: u64,
    /// See [`ConsoleMetrics::bad_packets`].
    pub bad_packets: u64,
}

impl ConsoleMetrics {
    /// Adds `n` to `counter` (relaxed: counters order nothing).
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> ConsoleSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConsoleSnapshot {
            virtio_out: get(&self.virtio_out),
            com_out: get(&self.com_out),
            pty_out: get(&self.pty_out),
            out_dropped: get(&self.out_dropped),
            virtio_in: get(&self.virtio_in),
            com_in: get(&self.com_in),
            in_dropped: get(&self.in_dropped),
            bad_packets: get(&self.bad_packets),
        }
    }
}

impl std::fmt::Display for ConsoleSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "out: virtio {} com1 {} pty {} dropped {}; in: virtio {} com1 {} dropped {}; bad packets {}",
            self.virtio_out,
            self.com_out,
            self.pty_out,
            self.out_dropped,
            self.virtio_in,
            self.com_in,
            self.in_dropped,
            self.bad_packets
        )
    }
}
