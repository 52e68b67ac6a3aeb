//! Supervision of a device process: when it dies, a new one is started
//! with the same resources and given its predecessor's vhost-user state
//! ([`VhostUserDevice::reconnect`](crate::vhost_user::VhostUserDevice::reconnect)),
//! so that the guest sees a pause, not an error.
//!
//! The waiter thread of the dead process ([`DeviceProcess`]) calls
//! [`Supervisor::died`]; it decides ([`RestartPolicy`]), starts the
//! successor on a new socket pair, replays the state under the device's
//! lock, and returns. A process that dies soon after it was started
//! ([`RestartPolicy::quick`]) counts toward a streak: each restart in a
//! streak waits longer, and past [`RestartPolicy::max_streak`] the VM is
//! stopped with a message saying why. A process stopped by its sandbox is
//! never restarted (the waiter stops the VM): that is what a guest
//! attacking it would cause.
//!
//! # Invariants
//! - At most one process per device runs: a successor starts only after
//!   its predecessor was reaped, and one whose replay failed is killed
//!   (its death, of an older generation, is ignored).
//! - The supervisor holds the device's resources (image, backing files,
//!   tap, pty) for the VM's life; the monitor's own copies may be dropped.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::config::DeviceSandbox;
use crate::device_proc::{DeviceProcess, DeviceProcessError};
use crate::exit::{VmEvent, VmEvents};
use crate::vhost_user::{SharedDevice, VhostUserDevice};

/// When a dying device is restarted, and when the VM is stopped instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// A process that dies within this of its start "died quickly".
    pub quick: Duration,
    /// Delay before the first restart after a quick death; it doubles with
    /// each further quick death in a row. After a process that lived
    /// longer, the restart is immediate.
    pub first_delay: Duration,
    /// Longest delay.
    pub max_delay: Duration,
    /// Quick deaths in a row after which the VM is stopped.
    pub max_streak: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            quick: Duration::from_millis(250),
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(2),
            max_streak: 10,
        }
    }
}

impl RestartPolicy {
    /// The delay before restarting after `streak` quick deaths in a row
    /// (0: the last one lived long enough), or `None` to give up.
    pub fn delay(&self, streak: u32) -> Option<Duration> {
        if streak > self.max_streak {
            return None;
        }
        if streak == 0 {
            return Some(Duration::ZERO);
        }
        let factor = 1u32.checked_shl(streak - 1).unwrap_or(u32::MAX);
        Some(self.first_delay.saturating_mul(factor).min(self.max_delay))
    }
}

/// Run after each restart, once the new process has its state (e.g.
/// telling a new dev-console that a client is attached).
pub type AfterRestart = Box<dyn Fn() + Send + Sync>;

/// How to start the device's process again.
pub struct Recipe {
    /// The device's name ("disk0").
    pub name: String,
    /// The device binary.
    pub program: PathBuf,
    /// Its arguments; its vhost-user socket is always fd 3.
    pub args: Vec<String>,
    /// Its resources, passed as fds 4, 5, ... in this order.
    pub resources: Vec<OwnedFd>,
    /// What to do once a restarted process has its state.
    pub after_restart: Option<AfterRestart>,
}

/// A supervisor could not start its device.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The socket pair for vhost-user could not be made.
    #[error("{name}: cannot make its vhost-user socket pair")]
    Socket {
        /// The device.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The process could not be started.
    #[error(transparent)]
    Process(#[from] DeviceProcessError),
    /// The first connection failed.
    #[error(transparent)]
    Connect(#[from] crate::vhost_user::Error),
}

/// What changes as processes come and go.
struct Current {
    process: Option<DeviceProcess>,
    /// Which process this is (a death of another one is stale).
    generation: u64,
    started: Instant,
    /// Quick deaths in a row.
    streak: u32,
    /// Restarts so far.
    restarts: u64,
    /// The running process was killed on purpose ([`Supervisor::restart_now`]):
    /// its death is no crash.
    asked: bool,
}

/// One supervised device process.
pub struct Supervisor {
    recipe: Recipe,
    sandbox: DeviceSandbox,
    events: VmEvents,
    policy: RestartPolicy,
    device: OnceLock<SharedDevice>,
    current: Mutex<Current>,
    me: Weak<Supervisor>,
}

impl Supervisor {
    /// Starts the device's first process and negotiates with it (a virtio
    /// device of type `device_type` with `queues` queues); returns the
    /// supervisor and the device for the transport.
    pub fn start(
        recipe: Recipe,
        sandbox: &DeviceSandbox,
        events: VmEvents,
        policy: RestartPolicy,
        device_type: u32,
        queues: u16,
    ) -> Result<(Arc<Self>, SharedDevice), SupervisorError> {
        let supervisor = Arc::new_cyclic(|me| Self {
            recipe,
            sandbox: sandbox.clone(),
            events,
            policy,
            device: OnceLock::new(),
            current: Mutex::new(Current {
                process: None,
                generation: 0,
                started: Instant::now(),
                streak: 0,
                restarts: 0,
                asked: false,
            }),
            me: me.clone(),
        });
        let (process, socket) = supervisor.spawn(0)?;
        let name = &supervisor.recipe.name;
        let connected = VhostUserDevice::connect(name, socket, device_type, queues)?;
        let device = SharedDevice::new(connected);
        // The first process is in place before anything can restart it.
        let _ = supervisor.device.set(device.clone());
        supervisor.lock().process = Some(process);
        Ok((supervisor, device))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.recipe.name
    }

    /// The pid of the running process, if one runs.
    pub fn pid(&self) -> Option<u32> {
        self.lock().process.as_ref().map(DeviceProcess::pid)
    }

    /// How many times the device was restarted.
    pub fn restarts(&self) -> u64 {
        self.lock().restarts
    }

    /// Kills the running process (as an operator's restart: its death is
    /// handled as any other); returns its pid, `None` if none runs.
    pub fn restart_now(&self) -> Option<u32> {
        let mut current = self.lock();
        let pid = current.process.as_ref()?.pid();
        current.asked = true;
        if let Some(process) = current.process.as_ref() {
            process.kill_now();
        }
        Some(pid)
    }

    /// Sets the running process's log level (`Ok(false)`: none runs).
    pub fn set_level(&self, level: log::LevelFilter) -> std::io::Result<bool> {
        let handle = self
            .lock()
            .process
            .as_ref()
            .map(DeviceProcess::level_handle);
        match handle {
            Some(handle) => handle.set_level(level),
            None => Ok(false),
        }
    }

    /// Starts process number `generation` on a new socket pair; returns it
    /// and the monitor's end.
    fn spawn(&self, generation: u64) -> Result<(DeviceProcess, UnixStream), SupervisorError> {
        let name = &self.recipe.name;
        let (ours, theirs) = UnixStream::pair().map_err(|source| SupervisorError::Socket {
            name: name.clone(),
            source,
        })?;
        let mut fds: Vec<BorrowedFd<'_>> = vec![theirs.as_fd()];
        fds.extend(self.recipe.resources.iter().map(AsFd::as_fd));
        let me = self.me.clone();
        let on_death = Box::new(move |how: String| {
            if let Some(supervisor) = me.upgrade() {
                supervisor.died(generation, how);
            }
        });
        let process = DeviceProcess::spawn_supervised(
            name,
            &self.recipe.program,
            &self.recipe.args,
            &fds,
            self.events.clone(),
            &self.sandbox,
            Some(on_death),
        )?;
        Ok((process, ours))
    }

    /// Process `generation` ended `how`: restart it (see the module), on
    /// the dead process's waiter thread.
    fn died(&self, generation: u64, how: String) {
        let name = &self.recipe.name;
        // Not connected yet: the first start is failing, and says so.
        let Some(device) = self.device.get() else {
            return;
        };
        let (mut generation, mut how) = (generation, how);
        loop {
            let (delay, streak, old) = {
                let mut current = self.lock();
                if current.generation != generation || self.events.is_stopping() {
                    return;
                }
                let old = current.process.take().map(|p| p.pid());
                // A restart asked for is no crash: it neither counts toward
                // nor breaks a streak.
                let asked = std::mem::take(&mut current.asked);
                if !asked {
                    if current.started.elapsed() < self.policy.quick {
                        current.streak += 1;
                    } else {
                        current.streak = 0;
                    }
                }
                (self.policy.delay(current.streak), current.streak, old)
            };
            let old = old.map_or_else(String::new, |pid| format!(" (pid {pid})"));
            let Some(delay) = delay else {
                let quick = self.policy.quick;
                log::error!(
                    "{name}{old} {how}: it died within {quick:?} of starting {streak} times in \
                     a row; not restarting it"
                );
                self.events.send(VmEvent::DeviceDied {
                    device: name.clone(),
                    how: format!(
                        "{how}, after dying within {quick:?} of starting {streak} times in a row"
                    ),
                });
                return;
            };
            if delay.is_zero() {
                log::warn!("{name}{old} {how}; restarting it");
            } else {
                log::warn!("{name}{old} {how}; restarting it in {delay:?}");
            }
            std::thread::sleep(delay);
            if self.events.is_stopping() {
                return;
            }
            generation += 1;
            match self.restart(generation, device) {
                Ok(pid) => {
                    let restarts = self.lock().restarts;
                    log::info!("{name}: restarted as pid {pid} (restart {restarts})");
                    return;
                }
                // The attempt counts as a process of its own that died at
                // once; its real death, if any, is of a generation past.
                Err(e) => {
                    how = format!("could not be restarted: {}", ipc::error_chain(&e));
                    generation += 1;
                    self.lock().generation = generation;
                }
            }
        }
    }

    /// Starts process `generation` and replays the device's state to it.
    fn restart(&self, generation: u64, device: &SharedDevice) -> Result<u32, SupervisorError> {
        {
            let mut current = self.lock();
            current.generation = generation;
            current.started = Instant::now();
        }
        let (process, socket) = self.spawn(generation)?;
        if let Err(e) = device.lock().reconnect(socket) {
            // Not a process of this device: its death restarts nothing.
            self.lock().generation = generation + 1;
            process.kill();
            return Err(e.into());
        }
        let pid = process.pid();
        {
            let mut current = self.lock();
            current.process = Some(process);
            current.restarts += 1;
        }
        if let Some(after) = &self.recipe.after_restart {
            after();
        }
        Ok(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_immediate_after_a_long_life_and_back_off_in_a_crash_loop() {
        let policy = RestartPolicy::default();
        assert_eq!(policy.delay(0), Some(Duration::ZERO));
        let delays: Vec<Duration> = (1..=policy.max_streak)
            .map(|streak| policy.delay(streak).unwrap())
            .collect();
        assert_eq!(delays[0], policy.first_delay);
        assert_eq!(delays[1], policy.first_delay * 2);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert_eq!(*delays.last().unwrap(), policy.max_delay);
        assert_eq!(
            policy.delay(policy.max_streak + 1),
            None,
            "then it gives up"
        );
        // A long streak never overflows the doubling.
        let patient = RestartPolicy {
            max_streak: 100,
            ..policy
        };
        assert_eq!(patient.delay(64), Some(patient.max_delay));
    }
}
