//! A fixed pool of I/O threads (`blk-io<n>`) that run block requests off
//! the queue workers, so that one queue can have many host I/Os in flight.
//!
//! Why threads and not io_uring (or linux-aio): the images are ordinary
//! files read and written with buffered `pread`/`pwrite` (qcow2 also walks
//! and updates its tables, under its own mutex, in the same call); a thread
//! pool runs [`crate::device::BlockDevice::process`] unchanged for every
//! format and request type, needs no `O_DIRECT` (which would bypass the page
//! cache the page-cached rows of `scripts/bench-blk` rely on) and no new
//! dependency, and is what qemu-storage-daemon's default `aio=threads` does.
//! Buffered io_uring reads of uncached data are themselves punted to
//! kernel worker threads, so it would buy little here.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// One unit of work.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why the pool could not be started.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A pool of no threads would never run anything.
    #[error("an I/O pool needs at least one thread")]
    NoThreads,
    /// A thread could not be created.
    #[error("spawning I/O thread {index}")]
    Spawn {
        /// Index of the thread.
        index: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

struct Jobs {
    queue: VecDeque<Job>,
    exiting: bool,
}

struct Shared {
    jobs: Mutex<Jobs>,
    ready: Condvar,
}

impl Shared {
    /// Locks the job list; a job never runs under this lock, so a poisoned
    /// lock still holds a consistent list.
    fn lock(&self) -> MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A pool of I/O threads taking jobs first in, first out.
///
/// # Invariants
/// - Every submitted job runs exactly once, unless the pool is dropped
///   first; dropping it runs the jobs already queued, then joins every
///   thread.
/// - A panicking job is caught; its thread goes on with the next job.
pub struct IoPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl IoPool {
    /// Starts `threads` threads named `blk-io0`, `blk-io1`, ...
    pub fn new(threads: usize) -> Result<Self, PoolError> {
        if threads == 0 {
            return Err(PoolError::NoThreads);
        }
        let shared = Arc::new(Shared {
            jobs: Mutex::new(Jobs {
                queue: VecDeque::new(),
                exiting: false,
            }),
            ready: Condvar::new(),
        });
        let mut pool = Self {
            shared,
            threads: Vec::with_capacity(threads),
        };
        for index in 0..threads {
            let shared = Arc::clone(&pool.shared);
            let thread = std::thread::Builder::new()
                .name(format!("blk-io{index}"))
                .spawn(move || run(&shared))
                .map_err(|source| PoolError::Spawn { index, source })?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// Number of threads.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Queues `jobs` and wakes as many idle threads as there are jobs.
    pub fn submit(&self, jobs: Vec<Job>) {
        let n = jobs.len();
        if n == 0 {
            return;
        }
        self.shared.lock().queue.extend(jobs);
        if n >= self.threads.len() {
            self.shared.ready.notify_all();
        } else {
            for _ in 0..n {
                self.shared.ready.notify_one();
            }
        }
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        self.shared.lock().exiting = true;
        self.shared.ready.notify_all();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                log::error!("an I/O thread panicked");
            }
        }
    }
}

/// An I/O thread: takes jobs until the pool is dropped and the list empty.
fn run(shared: &Shared) {
    loop {
        let job = {
            let mut jobs = shared.lock();
            loop {
                if let Some(job) = jobs.queue.pop_front() {
                    break job;
                }
                if jobs.exiting {
                    return;
                }
                jobs = shared.ready.wait(jobs).unwrap_or_else(|p| p.into_inner());
            }
        };
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            log::error!("an I/O job panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    #[test]
    fn pool_runs_jobs_concurrently_and_survives_a_panic() {
        let pool = IoPool::new(4).unwrap();
        assert_eq!(pool.threads(), 4);
        // Four jobs that only finish once all four run at the same time.
        let barrier = Arc::new(Barrier::new(4));
        let count = Arc::new(AtomicUsize::new(0));
        let mut jobs: Vec<Job> = vec![Box::new(|| panic!("a job panics"))];
        for _ in 0..4 {
            let (barrier, count) = (Arc::clone(&barrier), Arc::clone(&count));
            jobs.push(Box::new(move || {
                barrier.wait();
                count.fetch_add(1, Ordering::SeqCst);
            }));
        }
        pool.submit(jobs);
        drop(pool);
        assert_eq!(count.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn pool_of_no_threads_is_refused() {
        assert!(matches!(IoPool::new(0), Err(PoolError::NoThreads)));
    }
}
