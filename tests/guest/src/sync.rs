//! CPL3 synchronisation: a spin lock and a write-once cell.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use crate::cpu::Deadline;

/// A test-and-test-and-set spin lock without data (it guards a device).
pub struct SpinLock {
    locked: AtomicBool,
}

/// Held lock; unlocks on drop.
pub struct SpinGuard<'a>(&'a SpinLock);

impl SpinLock {
    /// An unlocked lock.
    pub const fn new() -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
        }
    }

    /// Takes the lock, spinning as long as needed.
    pub fn lock(&self) -> SpinGuard<'_> {
        loop {
            if let Some(guard) = self.try_lock() {
                return guard;
            }
            while self.locked.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> Option<SpinGuard<'_>> {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| SpinGuard(self))
    }

    /// Takes the lock, giving up at `deadline` (for the failure paths,
    /// which must print even if a dying CPU held the lock).
    pub fn lock_bounded(&self, deadline: Deadline) -> Option<SpinGuard<'_>> {
        loop {
            if let Some(guard) = self.try_lock() {
                return Some(guard);
            }
            if deadline.expired() {
                return None;
            }
            core::hint::spin_loop();
        }
    }
}

impl Drop for SpinGuard<'_> {
    fn drop(&mut self) {
        self.0.locked.store(false, Ordering::Release);
    }
}

const EMPTY: u8 = 0;
const WRITING: u8 = 1;
const READY: u8 = 2;

/// A value set once (by the BSP during start-up) and read by anyone after.
pub struct OnceCell<T> {
    state: AtomicU8,
    value: UnsafeCell<MaybeUninit<T>>,
}

// SAFETY: the value is written once, before `state` becomes READY (release),
// and only shared references are handed out after READY (acquire).
unsafe impl<T: Sync + Send> Sync for OnceCell<T> {}

impl<T> OnceCell<T> {
    /// An empty cell.
    pub const fn new() -> Self {
        OnceCell {
            state: AtomicU8::new(EMPTY),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    /// Stores `value` if the cell is empty; returns the stored value.
    pub fn set(&self, value: T) -> Option<&T> {
        if self
            .state
            .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        // SAFETY: the WRITING state gives this caller exclusive access.
        unsafe { (*self.value.get()).write(value) };
        self.state.store(READY, Ordering::Release);
        self.get()
    }

    /// The stored value, if any.
    pub fn get(&self) -> Option<&T> {
        if self.state.load(Ordering::Acquire) != READY {
            return None;
        }
        // SAFETY: READY means the value was initialised and is never
        // written again.
        Some(unsafe { (*self.value.get()).assume_init_ref() })
    }
}
