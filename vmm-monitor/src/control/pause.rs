//! The vCPU pause gate: where vCPU threads park while vmd has the VM
//! paused.
//!
//! Every vCPU thread [`enter`](PauseGate::enter)s the gate once when it
//! starts (its seat leaves when the thread ends) and passes
//! [`checkpoint`](PauseGate::checkpoint) before each KVM_RUN. While the
//! gate is paused, a thread at the checkpoint parks on a condition variable.
//! [`pause`](PauseGate::pause) closes the gate, then kicks every seated
//! thread out of KVM_RUN (the caller's kick: the vCPU kick signal) until
//! all of them are parked, and only then returns.
//!
//! The gate outlives a VM: the control layer keeps one for the monitor's
//! life and hands it to each VM it builds, so a pause survives a guest
//! reboot (the rebuilt vCPUs park at their first checkpoint).
//!
//! # Invariants
//! - When [`PauseGate::pause`] returns `Ok`, every seated thread is parked,
//!   so no vCPU is in KVM_RUN: each KVM_RUN follows a checkpoint, and a
//!   thread that passed its checkpoint before the gate closed is kicked
//!   until it comes back to the next one.
//! - `parked <= seats.len()`; both change only under the lock.
//! - A parked thread leaves the checkpoint when the gate opens, or when its
//!   VM is stopping (the `stopping` test it passed) and [`PauseGate::wake`]
//!   was called after the stop flag was raised.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long `pause` waits between kicks of threads still in KVM_RUN.
const KICK_INTERVAL: Duration = Duration::from_millis(1);

/// How long `pause` waits for every vCPU to park before it gives up: a
/// vCPU busy in a device exit (a vhost-user message to a stuck backend)
/// cannot park until that returns.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a pause did not take effect.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PauseError {
    /// Some vCPUs did not reach their checkpoint in time; the gate was
    /// opened again.
    #[error("{running} of {seated} vCPU(s) did not park within {waited:?}; the VM runs on")]
    TimedOut {
        /// Threads still running.
        running: usize,
        /// Threads seated.
        seated: usize,
        /// How long we waited.
        waited: Duration,
    },
}

#[derive(Debug, Default)]
struct State {
    paused: bool,
    /// The pthread of each seated thread, by seat id.
    seats: Vec<(u64, libc::pthread_t)>,
    next_seat: u64,
    parked: usize,
}

/// The gate vCPU threads pass before each KVM_RUN (see the module doc).
#[derive(Debug, Default)]
pub struct PauseGate {
    state: Mutex<State>,
    changed: Condvar,
}

/// A thread's place at the gate; dropping it leaves.
#[must_use = "the seat leaves the gate when dropped"]
pub struct Seat<'a> {
    gate: &'a PauseGate,
    id: u64,
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.seats.retain(|(id, _)| *id != self.id);
        drop(state);
        // A pause waiting for this thread now waits for one fewer.
        self.gate.changed.notify_all();
    }
}

impl PauseGate {
    /// An open gate with no seats.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (plain counters).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seats the calling thread (a vCPU thread, before its first KVM_RUN).
    pub fn enter(&self) -> Seat<'_> {
        let mut state = self.lock();
        let id = state.next_seat;
        state.next_seat += 1;
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        state.seats.push((id, me));
        Seat { gate: self, id }
    }

    /// Parks the calling (seated) thread while the gate is paused, until it
    /// opens or `stopping()` holds. Cheap when the gate is open.
    pub fn checkpoint(&self, stopping: impl Fn() -> bool) {
        let mut state = self.lock();
        if !state.paused || stopping() {
            return;
        }
        state.parked += 1;
        self.changed.notify_all();
        while state.paused && !stopping() {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.parked -= 1;
        drop(state);
        self.changed.notify_all();
    }

    /// Wakes parked threads so that they test their `stopping` condition
    /// again: call after raising a VM's stop flag.
    pub fn wake(&self) {
        // Taking the lock orders this after any checkpoint that tested the
        // stop flag before it was raised and is about to wait.
        let _state = self.lock();
        self.changed.notify_all();
    }

    /// Closes the gate and returns once every seated thread is parked,
    /// calling `kick` on the pthread of each unparked one every
    /// millisecond meanwhile; gives up (and opens the gate again) after
    /// `timeout`. Pausing a paused gate only waits for the parking.
    pub fn pause(
        &self,
        kick: impl Fn(libc::pthread_t),
        timeout: Duration,
    ) -> Result<(), PauseError> {
        let start = Instant::now();
        let mut state = self.lock();
        state.paused = true;
        loop {
            if state.parked == state.seats.len() {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                let error = PauseError::TimedOut {
                    running: state.seats.len() - state.parked,
                    seated: state.seats.len(),
                    waited: start.elapsed(),
                };
                state.paused = false;
                drop(state);
                self.changed.notify_all();
                return Err(error);
            }
            // Kick under the lock: a seated thread cannot leave (and its
            // pthread_t cannot go stale) while we hold it. Parked threads
            // get the kick too, harmlessly (a condvar wait just resumes).
            for (_, thread) in &state.seats {
                kick(*thread);
            }
            state = self
                .changed
                .wait_timeout(state, KICK_INTERVAL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Opens the gate: parked threads resume.
    pub fn unpause(&self) {
        self.lock().paused = false;
        self.changed.notify_all();
    }

    /// Whether the gate is closed.
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// (seated, parked) threads, for tests and logs.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.seats.len(), state.parked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    /// A fake vCPU: loops "running" (counting iterations) and passing the
    /// checkpoint, until `stop`. `slow` makes each iteration take 20 ms,
    /// like a vCPU that stays in KVM_RUN until kicked.
    fn spawn_vcpu(
        gate: &Arc<PauseGate>,
        stop: &Arc<AtomicBool>,
        slow: bool,
    ) -> (Arc<AtomicU64>, std::thread::JoinHandle<()>) {
        let runs = Arc::new(AtomicU64::new(0));
        let (gate, stop, counter) = (gate.clone(), stop.clone(), runs.clone());
        let thread = std::thread::spawn(move || {
            let _seat = gate.enter();
            while !stop.load(Ordering::SeqCst) {
                gate.checkpoint(|| stop.load(Ordering::SeqCst));
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(if slow { 20 } else { 1 }));
            }
        });
        (runs, thread)
    }

    fn wait_seated(gate: &PauseGate, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while gate.counts().0 != n {
            assert!(Instant::now() < deadline, "threads never seated");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn pause_returns_only_when_every_thread_is_parked_and_they_stay_parked() {
        let gate = Arc::new(PauseGate::new());
        let stop = Arc::new(AtomicBool::new(false));
        let vcpus: Vec<_> = (0..4)
            .map(|i| spawn_vcpu(&gate, &stop, i % 2 == 0))
            .collect();
        wait_seated(&gate, 4);
        gate.pause(|_| {}, PAUSE_TIMEOUT).unwrap();
        assert_eq!(gate.counts(), (4, 4));
        assert!(gate.is_paused());
        let frozen: Vec<u64> = vcpus
            .iter()
            .map(|(r, _)| r.load(Ordering::SeqCst))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let later: Vec<u64> = vcpus
            .iter()
            .map(|(r, _)| r.load(Ordering::SeqCst))
            .collect();
        assert_eq!(frozen, later, "a parked thread ran");

        gate.unpause();
        std::thread::sleep(Duration::from_millis(100));
        for ((runs, _), before) in vcpus.iter().zip(&frozen) {
            assert!(
                runs.load(Ordering::SeqCst) > *before,
                "a thread did not resume"
            );
        }
        assert_eq!(gate.counts().1, 0);
        stop.store(true, Ordering::SeqCst);
        gate.wake();
        for (_, t) in vcpus {
            t.join().unwrap();
        }
        assert_eq!(gate.counts(), (0, 0));
    }

    #[test]
    fn pause_kicks_threads_that_have_not_parked() {
        let gate = Arc::new(PauseGate::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (_, thread) = spawn_vcpu(&gate, &stop, true);
        wait_seated(&gate, 1);
        let kicks = AtomicU64::new(0);
        gate.pause(
            |_| {
                kicks.fetch_add(1, Ordering::SeqCst);
            },
            PAUSE_TIMEOUT,
        )
        .unwrap();
        assert!(kicks.load(Ordering::SeqCst) >= 1);
        stop.store(true, Ordering::SeqCst);
        gate.wake();
        thread.join().unwrap();
    }

    #[test]
    fn pause_times_out_and_reopens_when_a_thread_never_comes_back() {
        let gate = Arc::new(PauseGate::new());
        let release = Arc::new(AtomicBool::new(false));
        let (g, r) = (gate.clone(), release.clone());
        // Seated but stuck "in KVM_RUN" (never reaching its checkpoint).
        let stuck = std::thread::spawn(move || {
            let _seat = g.enter();
            while !r.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        wait_seated(&gate, 1);
        let err = gate.pause(|_| {}, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(
            err,
            PauseError::TimedOut {
                running: 1,
                seated: 1,
                ..
            }
        ));
        assert!(!gate.is_paused(), "a failed pause leaves the VM running");
        release.store(true, Ordering::SeqCst);
        stuck.join().unwrap();
    }

    #[test]
    fn stopping_releases_parked_threads_and_pause_with_no_threads_is_immediate() {
        let gate = Arc::new(PauseGate::new());
        gate.pause(|_| {}, PAUSE_TIMEOUT).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        // Threads arriving at a closed gate (a VM rebuilt while paused) park
        // at their first checkpoint.
        let (runs, thread) = spawn_vcpu(&gate, &stop, false);
        wait_seated(&gate, 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while gate.counts().1 != 1 {
            assert!(Instant::now() < deadline, "never parked");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        stop.store(true, Ordering::SeqCst);
        gate.wake();
        thread.join().unwrap();
        assert!(gate.is_paused(), "stopping a VM keeps the gate's pause");
        assert_eq!(gate.counts(), (0, 0));
    }
}
