//! The counters every device process keeps, in a page it can share with
//! its monitor.
//!
//! Under the monitor, the page is a sealed memfd the device's supervisor
//! made ([`MetricsPage::create`]) and passes to each process it starts
//! (`--metrics-fd`, [`MetricsPage::map`]): the monitor reads the counters
//! whenever `vmctl device list` asks, without a message to a process that
//! may be busy, stopped in a debugger or dead, and the counts go on across
//! restarts. Standalone, a device keeps them in its own memory
//! ([`MetricsPage::private`]).
//!
//! The device can write anything into the page: the monitor only loads
//! the numbers, and its seals (no shrinking, no growing) mean the device
//! cannot make the monitor's mapping fault.

use std::ops::Deref;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::shm::{self, SharedMemory, ShmError};

/// Per-device counters (monotonic; read with [`Metrics::snapshot`]).
///
/// `repr(C)`: this is the layout of the shared page, which the monitor
/// and the devices it starts (one build) both read.
#[derive(Debug, Default)]
#[repr(C)]
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

impl MetricsSnapshot {
    /// Every error counted: requests failed, queues stopped by the guest
    /// or by the host.
    pub fn all_errors(&self) -> u64 {
        self.errors
            .saturating_add(self.guest_errors)
            .saturating_add(self.host_errors)
    }
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

/// Size of the shared page (the counters use the start of it).
pub const PAGE_SIZE: usize = 4096;

const _: () = assert!(std::mem::size_of::<Metrics>() <= PAGE_SIZE);

/// Where a device's [`Metrics`] live: its own memory, or a page shared
/// with its monitor. Dereferences to the counters.
#[derive(Debug)]
pub struct MetricsPage {
    place: Place,
}

#[derive(Debug)]
enum Place {
    Private(Box<Metrics>),
    /// A shared mapping of at least [`PAGE_SIZE`] bytes.
    Shared(SharedMemory),
}

/// A page that cannot be used.
pub type MetricsPageError = ShmError;

impl MetricsPage {
    /// Counters in this process's memory only.
    pub fn private() -> Self {
        Self {
            place: Place::Private(Box::default()),
        }
    }

    /// A new shared page, zeroed, sealed at its size; returns it and the
    /// fd to pass to the device's processes (close-on-exec: pass it
    /// explicitly).
    pub fn create(name: &str) -> Result<(Self, OwnedFd), MetricsPageError> {
        let fd = shm::create_sealed(&format!("metrics-{name}"), PAGE_SIZE)?;
        let page = Self::map_fd(&fd)?;
        Ok((page, fd))
    }

    /// Maps the shared page passed as `fd` (which the mapping outlives).
    pub fn map(fd: OwnedFd) -> Result<Self, MetricsPageError> {
        Self::map_fd(&fd)
    }

    fn map_fd(fd: &OwnedFd) -> Result<Self, MetricsPageError> {
        Ok(Self {
            place: Place::Shared(SharedMemory::map(fd, PAGE_SIZE)?),
        })
    }

    /// Whether the counters are shared with the monitor.
    pub fn is_shared(&self) -> bool {
        matches!(self.place, Place::Shared(_))
    }
}

impl Default for MetricsPage {
    fn default() -> Self {
        Self::private()
    }
}

impl Deref for MetricsPage {
    type Target = Metrics;

    fn deref(&self) -> &Metrics {
        match &self.place {
            Place::Private(metrics) => metrics,
            // SAFETY: the mapping is at least PAGE_SIZE bytes (more than a
            // Metrics), page-aligned, valid while `self` lives, and any
            // bit pattern is a valid Metrics (atomic u64s only, which is
            // how every holder of the page touches it); a fresh memfd
            // reads as zeroes.
            Place::Shared(memory) => unsafe { &*memory.as_ptr().cast::<Metrics>() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_page_shows_one_side_s_counts_to_the_other_and_outlives_a_mapping() {
        let (monitor, fd) = MetricsPage::create("disk0").unwrap();
        assert!(monitor.is_shared());
        let device = MetricsPage::map(fd.try_clone().unwrap()).unwrap();
        Metrics::add(&device.bytes_read, 512);
        Metrics::bump(&device.requests);
        Metrics::bump(&device.guest_errors);
        drop(device);
        // A successor maps the same page and counts on.
        let successor = MetricsPage::map(fd.try_clone().unwrap()).unwrap();
        Metrics::bump(&successor.requests);
        Metrics::bump(&successor.errors);
        let seen = monitor.snapshot();
        assert_eq!((seen.requests, seen.bytes_read), (2, 512));
        assert_eq!(seen.all_errors(), 2);
    }

    #[test]
    fn the_page_is_sealed_so_a_device_cannot_shrink_it_under_the_monitor() {
        let (_monitor, fd) = MetricsPage::create("net0").unwrap();
        // SAFETY: ftruncate on our own memfd.
        let shrunk = unsafe { libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), 0) };
        assert_eq!(shrunk, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EPERM)
        );
    }

    #[test]
    fn a_small_fd_is_refused_by_size() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let e = MetricsPage::map(file.into()).unwrap_err();
        assert!(e.to_string().contains("0 bytes, fewer than 4096"), "{e}");
    }

    #[test]
    fn private_counters_start_at_zero() {
        let page = MetricsPage::private();
        assert!(!page.is_shared());
        assert_eq!(page.snapshot(), MetricsSnapshot::default());
    }
}
