//! Per-queue bookkeeping of requests handed to the I/O pool: what is in
//! flight, what has finished and waits for the queue worker to put it in
//! the used ring, and which FLUSHes wait for earlier requests.
//!
//! FLUSH ordering: every popped request gets a sequence number; a FLUSH is
//! executed only once no request popped before it on its queue is still
//! pending (each queue's `pending` set is ordered, so that is "its number is
//! the smallest pending one"). Requests popped after a FLUSH do not wait for
//! it (virtio 1.2 §5.2.6.1 orders a flush only after the writes that
//! completed before it was submitted).

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Condvar, Mutex, MutexGuard};

use dev_backend::chain::DescChain;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A request the pool has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Head of its chain.
    pub head: u16,
    /// Used length (bytes the device wrote).
    pub len: u32,
    /// Status written, `None` if the chain could carry none.
    pub status: Option<u8>,
    /// Bytes the device read from the chain.
    pub readable: u64,
}

/// A popped request, numbered in pop order.
pub struct Ticket {
    /// Its sequence number on the queue.
    pub seq: u64,
    /// Epoch of the ring it was popped from.
    pub epoch: u64,
    /// The request.
    pub chain: DescChain,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    /// Incremented each time the ring stops; finished requests of an older
    /// epoch are dropped.
    epoch: u64,
    /// Popped and not finished (running, or a deferred FLUSH).
    pending: BTreeSet<u64>,
    /// Handed to the pool and not finished.
    running: usize,
    /// FLUSHes waiting for earlier requests, in pop order.
    deferred: VecDeque<Ticket>,
    /// Finished, not yet taken by the queue worker.
    finished: Vec<Finished>,
}

/// The pool-side state of one queue.
///
/// # Invariants
/// - `running` counts exactly the tickets returned by [`admit`](Self::admit)
///   or [`take_ready_flushes`](Self::take_ready_flushes) and not yet passed
///   to [`finish`](Self::finish); [`stop`](Self::stop) returns only when it
///   is zero, so after it no job of this queue touches guest memory.
/// - `event` is readable whenever `finished` is not empty (it is written on
///   the empty → non-empty transition, under the lock).
pub struct QueueIo {
    state: Mutex<State>,
    idle: Condvar,
    event: EventFd,
}

impl QueueIo {
    /// A queue with nothing in flight.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            state: Mutex::new(State::default()),
            idle: Condvar::new(),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Locks the state; no code panics under the lock with the state half
    /// updated, so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The completion eventfd, for the queue worker's epoll.
    pub fn event_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    /// Numbers a newly popped request. Returns it to be run now, or `None`
    /// when it is a FLUSH that must wait for earlier requests (kept here).
    /// `idle_before` tells whether the queue had nothing pending.
    pub fn admit(&self, chain: DescChain, is_flush: bool) -> (Option<Ticket>, bool) {
        let mut s = self.lock();
        let seq = s.next_seq;
        s.next_seq += 1;
        let idle_before = s.pending.is_empty();
        s.pending.insert(seq);
        let ticket = Ticket {
            seq,
            epoch: s.epoch,
            chain,
        };
        if is_flush && !idle_before {
            s.deferred.push_back(ticket);
            return (None, false);
        }
        s.running += 1;
        (Some(ticket), idle_before)
    }

    /// Deferred FLUSHes that no earlier request holds back any more; they
    /// count as running from now on.
    pub fn take_ready_flushes(&self) -> Vec<Ticket> {
        let mut s = self.lock();
        let mut ready = Vec::new();
        while let Some(front) = s.deferred.front() {
            if s.pending.first() != Some(&front.seq) {
                break;
            }
            if let Some(ticket) = s.deferred.pop_front() {
                ready.push(ticket);
                s.running += 1;
            }
        }
        ready
    }

    /// Records that a running request ended. With `queue_it` its result is
    /// queued for the worker (and the eventfd written); without, the
    /// caller completes it itself. Results of an older epoch are dropped.
    /// Returns whether the result is the caller's to complete.
    pub fn finish(&self, seq: u64, epoch: u64, done: Finished, queue_it: bool) -> bool {
        let mut s = self.lock();
        s.running = s.running.saturating_sub(1);
        s.pending.remove(&seq);
        let current = epoch == s.epoch;
        let mut signal = false;
        if current && queue_it {
            signal = s.finished.is_empty();
            s.finished.push(done);
        }
        if s.running == 0 {
            self.idle.notify_all();
        }
        if signal {
            if let Err(e) = self.event.write(1) {
                log::error!("signalling a completion: {e}");
            }
        }
        current && !queue_it
    }

    /// Takes the finished requests (and, if there were any, consumes the
    /// eventfd's count: it was written, under the lock, when the first of
    /// them was queued; with nothing queued there is no syscall).
    pub fn take_finished(&self) -> Vec<Finished> {
        let finished = std::mem::take(&mut self.lock().finished);
        if !finished.is_empty() {
            // A failed read means a later take already consumed the count.
            let _ = self.event.read();
        }
        finished
    }

    /// The ring stopped: drops the results not yet in the used ring and
    /// the deferred FLUSHes (their heads stay in the inflight region, to be
    /// resubmitted when the ring restarts) and waits until no job of this
    /// queue runs any more.
    pub fn stop(&self) {
        let mut s = self.lock();
        s.epoch += 1;
        s.deferred.clear();
        s.finished.clear();
        while s.running > 0 {
            s = self.idle.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.pending.clear();
        s.finished.clear();
        drop(s);
        let _ = self.event.read();
    }

    /// Requests handed to the pool and not finished.
    pub fn running(&self) -> usize {
        self.lock().running
    }
}
