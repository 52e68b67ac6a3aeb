//! [`SharedDevice`]: a [`VhostUserDevice`] the PCI transport drives and the
//! device's supervisor can reach too, to hand it a restarted backend
//! ([`VhostUserDevice::reconnect`]). One lock orders the two: a guest's
//! activation or reset and a replay never interleave their requests.
//!
//! Between a backend's death and its successor's replay, requests to the
//! backend would fail. The supervisor says when a backend is down and when
//! its successor is up ([`SharedDevice::backend_down`], `backend_up`,
//! `backend_gone`); an activation or reset meanwhile waits for the
//! successor, and one that failed because its backend died under it
//! (before the supervisor knew) is made again on the successor. The guest
//! sees a slow device register write, not a device that needs a reset.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::VhostUserDevice;
use crate::virtio::{QueueSet, VirtioDevice, VirtioDeviceError};

/// Longest a guest request waits for a successor (a crash loop's longest
/// delay and a replay fit in it; a held restart waits on the device's
/// lock afterwards anyway).
const SUCCESSOR_WAIT: Duration = Duration::from_secs(30);
/// How long a failed request waits for its backend's death to be known.
const DEATH_NOTICE: Duration = Duration::from_millis(200);

/// What the supervisor said of the backend.
#[derive(Debug, Default)]
struct BackendState {
    /// Dead; a successor is coming.
    down: bool,
    /// No successor will come (the VM is ending, or restarts gave up).
    gone: bool,
    /// Successors so far.
    generation: u64,
}

#[derive(Debug, Default)]
struct Backend {
    state: Mutex<BackendState>,
    changed: Condvar,
}

impl Backend {
    fn lock(&self) -> MutexGuard<'_, BackendState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut BackendState)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// Waits (at most `limit`) while `wait` holds of the state; returns it
    /// as it was last seen.
    fn wait_while(
        &self,
        limit: Duration,
        wait: impl Fn(&BackendState) -> bool,
    ) -> MutexGuard<'_, BackendState> {
        let deadline = Instant::now() + limit;
        let mut state = self.lock();
        while wait(&state) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state
    }
}

/// A vhost-user device shared by the transport and a supervisor.
#[derive(Clone)]
pub struct SharedDevice {
    device: Arc<Mutex<VhostUserDevice>>,
    backend: Arc<Backend>,
}

impl SharedDevice {
    /// Shares `device`.
    pub fn new(device: VhostUserDevice) -> Self {
        Self {
            device: Arc::new(Mutex::new(device)),
            backend: Arc::default(),
        }
    }

    /// The device, for a replay (a poisoned lock still holds a usable
    /// device: its state is only changed by whole requests).
    pub fn lock(&self) -> MutexGuard<'_, VhostUserDevice> {
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Supervisor: the backend died; a successor is coming.
    pub fn backend_down(&self) {
        self.backend.update(|s| s.down = true);
    }

    /// Supervisor: a successor has the device's state.
    pub fn backend_up(&self) {
        self.backend.update(|s| {
            s.down = false;
            s.generation += 1;
        });
    }

    /// Supervisor: no successor will come.
    pub fn backend_gone(&self) {
        self.backend.update(|s| s.gone = true);
    }

    /// Waits while a successor is coming; returns the backend's
    /// generation.
    fn wait_up(&self) -> u64 {
        self.backend
            .wait_while(SUCCESSOR_WAIT, |s| s.down && !s.gone)
            .generation
    }

    /// After a request failed on backend `generation`: whether it died and
    /// a successor took over since (waiting for both, within limits).
    fn replaced_since(&self, generation: u64) -> bool {
        let dead_or_replaced = |s: &BackendState| s.down || s.generation != generation;
        let seen = self
            .backend
            .wait_while(DEATH_NOTICE, |s| !dead_or_replaced(s) && !s.gone);
        if !dead_or_replaced(&seen) || seen.gone {
            return false;
        }
        drop(seen);
        let up = self.backend.wait_while(SUCCESSOR_WAIT, |s| {
            (s.down || s.generation == generation) && !s.gone
        });
        !up.gone && !up.down && up.generation != generation
    }

    fn name(&self) -> String {
        self.lock().name().to_string()
    }
}

impl VirtioDevice for SharedDevice {
    fn device_type(&self) -> u32 {
        self.lock().device_type()
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        self.lock().queue_max_sizes()
    }

    fn features(&self) -> u64 {
        self.lock().features()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.lock().read_config(offset, data)
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.wait_up();
        self.lock().write_config(offset, data)
    }

    fn activate(&mut self, queues: QueueSet) -> Result<(), VirtioDeviceError> {
        let generation = self.wait_up();
        let spare = queues.try_clone();
        let result = self.lock().activate(queues);
        match (result, spare) {
            (Err(e), Ok(spare)) if self.replaced_since(generation) => {
                log::info!(
                    "{}: activation failed as its backend died ({e}); made again on its successor",
                    self.name()
                );
                self.lock().activate(spare)
            }
            (result, _) => result,
        }
    }

    fn reset(&mut self) -> Result<(), VirtioDeviceError> {
        let generation = self.wait_up();
        let result = self.lock().reset();
        match result {
            Err(e) if self.replaced_since(generation) => {
                log::info!(
                    "{}: reset failed as its backend died ({e}); made again on its successor",
                    self.name()
                );
                self.lock().reset()
            }
            result => result,
        }
    }
}
