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
//! Besides, for `vmctl device`: every process counts in one page the
//! supervisor made ([`ipc::metrics::MetricsPage`]), so counts run on across
//! restarts and are read without asking the process; a level set for the
//! device is given to each successor; and a restart may be held
//! ([`Supervisor::restart_held`], `ipc::hold`): the new process is stopped
//! before it serves, for a debugger, and its replay waits for it however
//! long it takes.
//!
//! # Invariants
//! - At most one process per device runs: a successor starts only after
//!   its predecessor was reaped, and one whose replay failed is killed
//!   (its death, of an older generation, is ignored).
//! - A restart in progress is the only one: a death of the process it is
//!   replaying to is left to it (its replay fails, or it finds the death
//!   recorded when it ends) and starts nothing itself.
//! - The supervisor holds the device's resources (image, backing files,
//!   tap, pty) and its counters' page for the VM's life; the monitor's own
//!   copies may be dropped.

mod policy;
mod restart;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use ipc::metrics::{MetricsPage, MetricsSnapshot};

pub use policy::RestartPolicy;

use crate::config::DeviceSandbox;
use crate::device_proc::{DeviceProcess, DeviceProcessError};
use crate::exit::VmEvents;
use crate::vhost_user::{SharedDevice, VhostUserDevice};

/// Run after each restart, once the new process has its state (e.g.
/// telling a new dev-console that a client is attached).
pub type AfterRestart = Box<dyn Fn() + Send + Sync>;

/// How long a held process may take to reach its hold point.
const HOLD_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// A socket pair could not be made.
    #[error("{name}: cannot make its {what} socket pair")]
    Socket {
        /// The device.
        name: String,
        /// Which one.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The counters' page could not be made.
    #[error("{name}: cannot make its counters' page")]
    Metrics {
        /// The device.
        name: String,
        /// Why.
        #[source]
        source: ipc::metrics::MetricsPageError,
    },
    /// The process could not be started.
    #[error(transparent)]
    Process(#[from] DeviceProcessError),
    /// The first connection failed.
    #[error(transparent)]
    Connect(#[from] crate::vhost_user::Error),
    /// A process to hold did not reach its hold point, or could not be
    /// stopped there.
    #[error("{name}: cannot hold pid {pid}")]
    Hold {
        /// The device.
        name: String,
        /// The process.
        pid: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The process being given its state died meanwhile.
    #[error("{name}: pid {pid} {how} while it was given its state")]
    DiedInReplay {
        /// The device.
        name: String,
        /// The process.
        pid: u32,
        /// How it ended.
        how: String,
    },
}

/// Told whether a held restart got its process stopped (its pid) or not.
type HoldReport = Sender<Result<u32, String>>;

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
    /// A restart is starting a process and giving it its state.
    restarting: bool,
    /// The process being restarted died: how (see the invariants).
    died_in_replay: Option<String>,
    /// The next restart holds its process, and reports here.
    hold_next: Option<HoldReport>,
    /// The process is held stopped, its replay waiting for it.
    held: bool,
    /// The level set for this device (`None`: the monitor's).
    level: Option<log::LevelFilter>,
}

/// One supervised device process.
pub struct Supervisor {
    recipe: Recipe,
    sandbox: DeviceSandbox,
    events: VmEvents,
    policy: RestartPolicy,
    device: OnceLock<SharedDevice>,
    metrics: MetricsPage,
    metrics_fd: OwnedFd,
    current: Mutex<Current>,
    me: Weak<Supervisor>,
}

/// What `vmctl device list` shows of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceReport {
    /// Its process, if one is started.
    pub pid: Option<u32>,
    /// What it does.
    pub state: ipc::control::DeviceState,
    /// Restarts so far.
    pub restarts: u64,
    /// Its counters, over all its processes.
    pub metrics: MetricsSnapshot,
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
        let (metrics, metrics_fd) =
            MetricsPage::create(&recipe.name).map_err(|source| SupervisorError::Metrics {
                name: recipe.name.clone(),
                source,
            })?;
        let supervisor = Arc::new_cyclic(|me| Self {
            recipe,
            sandbox: sandbox.clone(),
            events,
            policy,
            device: OnceLock::new(),
            metrics,
            metrics_fd,
            current: Mutex::new(Current {
                process: None,
                generation: 0,
                started: Instant::now(),
                streak: 0,
                restarts: 0,
                asked: false,
                restarting: false,
                died_in_replay: None,
                hold_next: None,
                held: false,
                level: None,
            }),
            me: me.clone(),
        });
        let (process, socket, _) = supervisor.spawn(0, false)?;
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

    /// The pid of the current process, if one is started.
    pub fn pid(&self) -> Option<u32> {
        self.lock().process.as_ref().map(DeviceProcess::pid)
    }

    /// How many times the device was restarted.
    pub fn restarts(&self) -> u64 {
        self.lock().restarts
    }

    /// The device as `vmctl device list` shows it.
    pub fn report(&self) -> DeviceReport {
        use ipc::control::DeviceState;
        let current = self.lock();
        let state = if current.held {
            DeviceState::Held
        } else if current.restarting || current.process.is_none() {
            DeviceState::Restarting
        } else {
            DeviceState::Running
        };
        DeviceReport {
            pid: current.process.as_ref().map(DeviceProcess::pid),
            state,
            restarts: current.restarts,
            metrics: self.metrics.snapshot(),
        }
    }

    /// Kills the current process (as an operator's restart: its death is
    /// handled as any other); returns its pid, `None` if none is started
    /// or if the device is never restarted ([`RestartPolicy::restarts`]).
    pub fn restart_now(&self) -> Option<u32> {
        if !self.policy.restarts() {
            return None;
        }
        let mut current = self.lock();
        let pid = current.process.as_ref()?.pid();
        current.asked = true;
        if let Some(process) = current.process.as_ref() {
            process.kill_now();
        }
        Some(pid)
    }

    /// [`restart_now`](Self::restart_now), the new process held stopped
    /// before it serves; returns its pid once it is stopped (at most
    /// `timeout` later), or why not.
    pub fn restart_held(&self, timeout: Duration) -> Result<u32, String> {
        if !self.policy.restarts() {
            return Err(Self::never_restarted(self.name()));
        }
        let (report, held) = crossbeam_channel::bounded(1);
        {
            let mut current = self.lock();
            if current.hold_next.is_some() {
                return Err(format!("{} is being held already", self.name()));
            }
            let Some(process) = current.process.as_ref() else {
                return Err(format!("{} is being restarted already", self.name()));
            };
            process.kill_now();
            current.asked = true;
            current.hold_next = Some(report);
        }
        match held.recv_timeout(timeout) {
            Ok(result) => result,
            Err(_) => Err(format!(
                "{}: no process was held within {timeout:?}",
                self.name()
            )),
        }
    }

    /// Why a device whose VM says `restarts 0` is not restarted on request.
    pub fn never_restarted(name: &str) -> String {
        format!("{name} is never restarted: this VM's vm.conf says restarts 0")
    }

    /// Whether the device is restarted when it dies.
    pub fn is_restarted(&self) -> bool {
        self.policy.restarts()
    }

    /// Sets the device's log level, for the current process and its
    /// successors (`Ok(false)`: no process is started now).
    pub fn set_level(&self, level: log::LevelFilter) -> std::io::Result<bool> {
        let handle = {
            let mut current = self.lock();
            current.level = Some(level);
            current.process.as_ref().map(DeviceProcess::level_handle)
        };
        match handle {
            Some(handle) => handle.set_level(level),
            None => Ok(false),
        }
    }

    /// The VM is ending: a process held or being given its state is
    /// killed, so that its replay ends now (the others end as their
    /// sockets close).
    pub fn vm_ending(&self) {
        if let Some(device) = self.device.get() {
            device.backend_gone();
        }
        let current = self.lock();
        if current.restarting {
            if let Some(process) = current.process.as_ref() {
                process.kill_now();
            }
        }
    }
}
