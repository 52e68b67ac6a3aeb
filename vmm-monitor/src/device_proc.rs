//! Device processes: starting one with the fds it needs, and noticing when
//! it dies.
//!
//! A device process (dev-block, dev-net, dev-console) is a sibling binary
//! of the monitor. It gets its vhost-user connection and its host
//! resources as inherited fds at fixed numbers from 3 up, in the order
//! given, and opens nothing by path. A waiter thread per process reaps it
//! and, unless the VM is already ending, hands its death to its
//! supervisor (`crate::supervisor`, which restarts it), or, for a process
//! without one or stopped by its sandbox, reports it as a
//! [`VmEvent::DeviceDied`] so that the VM stops with a message naming the
//! device.
//!
//! # Invariants
//! - Only the fds passed to [`DeviceProcess::spawn`] are open in the child
//!   besides stdin/stdout/stderr: every other fd of the monitor is
//!   close-on-exec.
//! - Every spawned process is reaped by its waiter thread; dropping a
//!   [`DeviceProcess`] gives the process [`EXIT_GRACE`] to end on its own
//!   (its frontend is gone by then), then kills it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::config::DeviceSandbox;
use crate::device_spawn::SpawnAs;
use crate::exit::{VmEvent, VmEvents};
use crate::launcher::Launcher;

/// The device option that says it was started in namespaces of its own.
const NAMESPACES_FLAG: &str = "--sandbox-namespaces";

/// Whether `e` from a namespaced spawn means the host does not allow this
/// process a user namespace (EPERM, EACCES, or ENOSPC for
/// `user.max_user_namespaces` 0), rather than a failure of the device.
fn namespaces_refused(e: &std::io::Error) -> bool {
    // A refused id map comes back with its path, as a PermissionDenied.
    e.kind() == std::io::ErrorKind::PermissionDenied
        || matches!(
            e.raw_os_error(),
            Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::ENOSPC) | Some(libc::EINVAL)
        )
}

/// The device launcher, once the monitor started one (vmd's monitors do,
/// before they confine themselves): device binaries are then started
/// through it, as the monitor's children.
static LAUNCHER: OnceLock<Launcher> = OnceLock::new();

/// Starts device binaries through `launcher` from now on.
pub fn use_launcher(launcher: Launcher) {
    if LAUNCHER.set(launcher).is_err() {
        log::warn!("a device launcher was already in use; the new one is dropped");
    }
}

/// Reaps `pid`, a child that failed before its exec.
fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid status pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

/// What a device process gets besides its fds (see
/// [`DeviceProcess::spawn_device`]).
#[derive(Default)]
struct Extras {
    /// The read end of its sandbox report pipe.
    report: Option<OwnedFd>,
    /// New namespaces, as this uid and gid outside them.
    namespaced: Option<(u32, u32)>,
    /// Its stdout/stderr pipe: (read end, write end).
    output: Option<(OwnedFd, OwnedFd)>,
    /// Who is told of its death instead of the VM.
    on_death: Option<OnDeath>,
    /// The level it logs at (default: the monitor's).
    level: Option<log::LevelFilter>,
}

/// Called with how a supervised device process ended ("killed by signal
/// 9"), on its waiter thread, unless its VM is stopping.
pub type OnDeath = Box<dyn FnOnce(String) + Send>;

/// How a supervised process is started ([`DeviceProcess::spawn_supervised`]).
pub struct Supervised {
    /// Told of its death instead of the VM.
    pub on_death: OnDeath,
    /// The level it logs at.
    pub level: log::LevelFilter,
}

/// First fd number a device process finds its passed fds at.
pub const FIRST_PASSED_FD: RawFd = 3;

/// Why a device process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum DeviceProcessError {
    /// The device binary is not next to the monitor.
    #[error("cannot find the {binary} binary at {path}")]
    Missing {
        /// The binary's name.
        binary: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// fork/exec failed.
    #[error("cannot start {name}")]
    Spawn {
        /// The device's name.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// `-v` as often as a device process (whose default is warnings) needs to
/// log at `level`.
pub fn verbosity_args(level: log::LevelFilter) -> Vec<String> {
    let count = match level {
        log::LevelFilter::Off | log::LevelFilter::Error | log::LevelFilter::Warn => 0,
        log::LevelFilter::Info => 1,
        log::LevelFilter::Debug => 2,
        log::LevelFilter::Trace => 3,
    };
    vec!["-v".to_string(); count]
}

/// Path of the device binary `binary` next to the running monitor. The
/// directory is looked up once (a confined monitor may not read
/// /proc/self/exe again); a device binary's presence too.
pub fn sibling_binary(binary: &'static str) -> Result<PathBuf, DeviceProcessError> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    static LOOKED_UP: Mutex<Vec<(&'static str, bool)>> = Mutex::new(Vec::new());
    let dir = DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap_or_default();
        exe.parent().unwrap_or(Path::new(".")).to_owned()
    });
    let path = dir.join(binary);
    let mut looked_up = LOOKED_UP.lock().unwrap_or_else(|p| p.into_inner());
    let found = match looked_up.iter().find(|(name, _)| *name == binary) {
        Some(&(_, found)) => found,
        None => {
            let found = path.is_file();
            looked_up.push((binary, found));
            found
        }
    };
    if found {
        Ok(path)
    } else {
        Err(DeviceProcessError::Missing { binary, path })
    }
}

/// A running device process.
pub struct DeviceProcess {
    name: String,
    pid: u32,
    /// The pid while the process is not reaped (then it is ours to signal).
    child: Arc<Mutex<Option<libc::pid_t>>>,
}

impl DeviceProcess {
    /// Starts `program args...` named `name` (for messages, e.g. "disk0"),
    /// with `fds` at 3, 4, ... in the child. A waiter thread reports its
    /// death to `events` unless the VM is already stopping.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        fds: &[BorrowedFd<'_>],
        events: VmEvents,
    ) -> Result<Self, DeviceProcessError> {
        Self::start(name, program, args.to_vec(), fds, events, Extras::default())
    }

    /// [`spawn`](Self::spawn) for a device binary, sandboxed as `sandbox`
    /// says, which takes `--report-fd`: a pipe whose write end follows
    /// `fds`, where its sandbox reports a refused call; the waiter reads it
    /// once the process has ended and logs the report as the cause of
    /// death. Its stdout and stderr are a pipe too, whose lines a thread
    /// logs under its name ([`ipc::log_forward`]): it never holds the
    /// monitor's own stderr (vmd's log).
    pub fn spawn_device(
        name: &str,
        program: &Path,
        args: &[String],
        fds: &[BorrowedFd<'_>],
        events: VmEvents,
        sandbox: &DeviceSandbox,
    ) -> Result<Self, DeviceProcessError> {
        Self::spawn_supervised(name, program, args, fds, events, sandbox, None)
    }

    /// [`spawn_device`](Self::spawn_device), whose death (unless the VM is
    /// stopping) is handed to `supervised.on_death` with how it ended,
    /// instead of stopping the VM: its supervisor restarts it. It logs at
    /// `supervised.level`.
    pub fn spawn_supervised(
        name: &str,
        program: &Path,
        args: &[String],
        fds: &[BorrowedFd<'_>],
        events: VmEvents,
        sandbox: &DeviceSandbox,
        supervised: Option<Supervised>,
    ) -> Result<Self, DeviceProcessError> {
        let spawn_err = |source| DeviceProcessError::Spawn {
            name: name.to_string(),
            source,
        };
        let (read_end, write_end) = crate::device_spawn::pipe().map_err(spawn_err)?;
        let (output, output_write) = crate::device_spawn::pipe().map_err(spawn_err)?;
        let mut all: Vec<BorrowedFd<'_>> = fds.to_vec();
        all.push(write_end.as_fd());
        let mut args = args.to_vec();
        args.extend(sandbox.args());
        if sandbox.off {
            log::warn!("{name}: started WITHOUT its sandbox (vmd was asked for it by root)");
        }
        args.push("--report-fd".into());
        args.push((FIRST_PASSED_FD + fds.len() as RawFd).to_string());
        let namespaced = match sandbox.user {
            Some(ids) if !sandbox.off && crate::device_spawn::available(ids) => {
                args.push(NAMESPACES_FLAG.into());
                Some(ids)
            }
            _ => None,
        };
        let extras = Extras {
            report: Some(read_end),
            namespaced,
            output: Some((output, output_write)),
            level: supervised.as_ref().map(|s| s.level),
            on_death: supervised.map(|s| s.on_death),
        };
        Self::start(name, program, args, &all, events, extras)
    }

    /// Starts the process: plainly, or as `extras` say.
    fn start(
        name: &str,
        program: &Path,
        mut args: Vec<String>,
        fds: &[BorrowedFd<'_>],
        events: VmEvents,
        extras: Extras,
    ) -> Result<Self, DeviceProcessError> {
        let Extras {
            report,
            namespaced,
            output,
            on_death,
            level,
        } = extras;
        let stdio = output.as_ref().map(|(_, write_end)| write_end.as_fd());
        let sources: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        // The monitor's own level unless its supervisor keeps another, so
        // that the device's first lines (what it serves, with which
        // options) are logged as the monitor's are.
        args.extend(verbosity_args(level.unwrap_or_else(log::max_level)));
        let spawn_err = |source| DeviceProcessError::Spawn {
            name: name.to_string(),
            source,
        };
        let launcher = LAUNCHER.get().filter(|_| {
            program
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| crate::launcher::DEVICE_BINARIES.contains(&n))
        });
        let start_as = |namespaces: Option<(u32, u32)>, args: &[String]| {
            let result = match launcher {
                Some(launcher) => {
                    let binary = program.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    launcher.spawn(binary, args, fds, namespaces, stdio)
                }
                None => {
                    let how = SpawnAs {
                        namespaces,
                        sibling: false,
                        stdio: stdio.map(|fd| fd.as_raw_fd()),
                    };
                    crate::device_spawn::spawn(program, args, &sources, how)
                }
            };
            result.map_err(|e| {
                if let Some(pid) = e.unreaped {
                    reap(pid);
                }
                e.source
            })
        };
        let mut namespaced = namespaced;
        let namespaced_pid = match namespaced {
            Some(ids) => {
                match start_as(Some(ids), &args) {
                    Ok(pid) => Some(pid),
                    // Hosts that forbid unprivileged user namespaces
                    // (a sysctl, an LSM) refuse the clone: the device then
                    // runs without namespaces, still filtered and as the
                    // VM's uid, and says so.
                    Err(e) if namespaces_refused(&e) => {
                        log::warn!(
                            "{name}: this host refuses a user namespace ({e}); starting it \
                             without namespaces of its own"
                        );
                        args.retain(|a| a != NAMESPACES_FLAG);
                        namespaced = None;
                        None
                    }
                    Err(e) => return Err(spawn_err(e)),
                }
            }
            None => None,
        };
        let pid = match namespaced_pid {
            Some(pid) => pid,
            None if launcher.is_some() => start_as(None, &args).map_err(spawn_err)?,
            None => {
                let mut command = Command::new(program);
                command.args(&args);
                if let Some(fd) = stdio {
                    let copy = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().map_err(spawn_err);
                    command.stdout(copy(fd)?).stderr(copy(fd)?);
                    command.env_remove(ipc::logger::SYSLOG_ENV);
                }
                // SAFETY: the closure runs in the forked child before exec
                // and only calls async-signal-safe functions (dup, dup2,
                // fcntl, close) on fds the parent keeps open for the
                // duration of spawn().
                unsafe {
                    command.pre_exec(move || place_fds(&sources));
                }
                // The waiter reaps it by pid; the Child handle is not needed.
                command.spawn().map_err(spawn_err)?.id() as libc::pid_t
            }
        };
        if let Some((output, write_end)) = output {
            // The device holds the write end now; the thread sees EOF once
            // it (and anything it started) is gone.
            drop(write_end);
            let program = program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| name.to_string());
            let reader = std::fs::File::from(output);
            let started = std::thread::Builder::new()
                .name(format!("log-{name}"))
                .spawn(move || ipc::log_forward::forward(&program, pid as u32, reader));
            if let Err(e) = started {
                log::warn!("{name}: cannot start the thread that logs its output: {e}");
            }
        }
        let child = Arc::new(Mutex::new(Some(pid)));
        let waiter_child = child.clone();
        let waiter_name = name.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("wait-{name}"))
            .spawn(move || wait_for(&waiter_name, &waiter_child, &events, report, on_death));
        if let Err(source) = spawned {
            kill(&child);
            return Err(DeviceProcessError::Spawn {
                name: name.to_string(),
                source,
            });
        }
        let how = if namespaced.is_some() {
            " in its own namespaces"
        } else {
            ""
        };
        log::info!("{name}: started {} as pid {pid}{how}", program.display());
        Ok(Self {
            name: name.to_string(),
            pid: pid as u32,
            child,
        })
    }

    /// Kills the process now, without the grace a dropped one gets.
    pub fn kill(self) {
        kill(&self.child);
    }

    /// Sends the process SIGKILL now, if it is not reaped yet (its waiter
    /// then reports its death as usual).
    pub fn kill_now(&self) {
        kill(&self.child);
    }

    /// Stops the process (SIGSTOP), as a debugger would find it, and
    /// returns once it is stopped; whoever attaches continues it. Fails if
    /// it was reaped already, or dies instead.
    pub fn stop(&self) -> std::io::Result<()> {
        let guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let Some(pid) = *guard else {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        };
        // SAFETY: kill(2) on our own unreaped child, under the lock the
        // waiter reaps it under, so the pid is still this process's.
        if unsafe { libc::kill(pid, libc::SIGSTOP) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        drop(guard);
        // The signal is delivered when the process next leaves the kernel:
        // wait until it has stopped (if it dies instead, its waiter reaps
        // it and this fails).
        wait_without_reaping(pid, libc::WSTOPPED)
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A handle that sets the process's log level while it still runs.
    pub fn level_handle(&self) -> LevelHandle {
        LevelHandle {
            name: self.name.clone(),
            target: LevelTarget::Process(Arc::downgrade(&self.child)),
        }
    }
}

/// Sets a device process's log level (`ipc::logger::send_level`) as long
/// as the process has not been reaped, so a reused pid is never signalled.
/// Holding one keeps nothing alive.
#[derive(Clone)]
pub struct LevelHandle {
    name: String,
    target: LevelTarget,
}

/// Whose level a [`LevelHandle`] sets.
#[derive(Clone)]
enum LevelTarget {
    /// One process, while it is not reaped.
    Process(Weak<Mutex<Option<libc::pid_t>>>),
    /// Whichever process of a supervised device runs.
    Supervised(Weak<crate::supervisor::Supervisor>),
}

impl std::fmt::Debug for LevelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LevelHandle")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl LevelHandle {
    /// A handle to the running process of a supervised device.
    pub fn supervised(supervisor: &Arc<crate::supervisor::Supervisor>) -> Self {
        Self {
            name: supervisor.name().to_string(),
            target: LevelTarget::Supervised(Arc::downgrade(supervisor)),
        }
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `level`; `Ok(false)` if the process is gone already. The
    /// process must have installed its logger (dev-block has, once it
    /// answers vhost-user messages): before that SIGUSR1 would kill it.
    pub fn set_level(&self, level: log::LevelFilter) -> std::io::Result<bool> {
        let child = match &self.target {
            LevelTarget::Process(child) => child.upgrade(),
            LevelTarget::Supervised(supervisor) => {
                return match supervisor.upgrade() {
                    Some(supervisor) => supervisor.set_level(level),
                    None => Ok(false),
                }
            }
        };
        let Some(child) = child else {
            return Ok(false);
        };
        let guard = child.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(pid) => ipc::logger::send_level(*pid as u32, level).map(|()| true),
            None => Ok(false),
        }
    }
}

/// How long a device process whose VM is gone may take to finish on its
/// own (its vhost-user socket has closed: it flushes what it holds, e.g.
/// the console's last lines, and exits) before it is killed.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_millis(300);

impl Drop for DeviceProcess {
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + EXIT_GRACE;
        while std::time::Instant::now() < deadline {
            if self
                .child
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none()
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        kill(&self.child);
    }
}

/// Kills the child if the waiter has not reaped it yet.
fn kill(child: &Mutex<Option<libc::pid_t>>) {
    if let Some(pid) = *child.lock().unwrap_or_else(|p| p.into_inner()) {
        // SAFETY: kill(2) on our own unreaped child (its pid cannot have
        // been reused while it is a zombie at worst).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Reaps the child and reports its death (with its sandbox's report, if
/// it wrote one).
fn wait_for(
    name: &str,
    child: &Mutex<Option<libc::pid_t>>,
    events: &VmEvents,
    report: Option<OwnedFd>,
    on_death: Option<OnDeath>,
) {
    let pid = match *child.lock().unwrap_or_else(|p| p.into_inner()) {
        Some(pid) => pid,
        None => return,
    };
    // Wait for the end without reaping (so the pid stays ours), then take
    // it out and reap it under the lock, so that kill() never signals a
    // pid the kernel may have given to another process. (Should the wait
    // fail, waitpid below says so.)
    let _ = wait_without_reaping(pid, libc::WEXITED);
    let mut status = 0;
    let ret = {
        let mut guard = child.lock().unwrap_or_else(|p| p.into_inner());
        guard.take();
        // SAFETY: waitpid on our own child with a valid status pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) }
    };
    if ret < 0 {
        log::warn!(
            "{name}: cannot wait for pid {pid}: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let mut how = describe(std::process::ExitStatus::from_raw(status));
    let mut trapped = false;
    if let Some(line) = report.as_ref().and_then(sandbox_profiles::read_report) {
        log::error!("{name}: pid {pid} stopped by its sandbox: {line}");
        how = format!("stopped by its sandbox ({line})");
        trapped = true;
    }
    if events.is_stopping() {
        log::debug!("{name}: pid {pid} {how}");
    } else if let (Some(on_death), false) = (on_death, trapped) {
        // A device stopped by its sandbox is not restarted: that is what a
        // guest attacking it would cause, again and again.
        on_death(how);
    } else {
        events.send(VmEvent::DeviceDied {
            device: name.to_string(),
            how,
        });
    }
}

/// Waits until child `pid` is in a state of `states` (WEXITED, WSTOPPED),
/// leaving it waitable (WNOWAIT); retried when interrupted.
fn wait_without_reaping(pid: libc::pid_t, states: libc::c_int) -> std::io::Result<()> {
    // SAFETY: siginfo_t is plain data that waitid fills.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waitid on our own child with a valid siginfo pointer.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                states | libc::WNOWAIT,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// "exited with status N" or "killed by signal N".
fn describe(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "ended".to_string(),
    }
}

/// In the child: moves `sources` to 3, 4, ... and clears close-on-exec on
/// them. Sources are first duplicated above the target range, so that a
/// source already sitting on a target number is not clobbered.
fn place_fds(sources: &[RawFd]) -> std::io::Result<()> {
    let high = FIRST_PASSED_FD + sources.len() as RawFd;
    let mut temps = Vec::with_capacity(sources.len());
    for &fd in sources {
        // SAFETY: F_DUPFD_CLOEXEC on an fd the parent keeps open.
        let t = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, high) };
        if t < 0 {
            return Err(std::io::Error::last_os_error());
        }
        temps.push(t);
    }
    for (i, &t) in temps.iter().enumerate() {
        // SAFETY: dup2 onto a small fd number in the child; the new fd has
        // close-on-exec clear, which is what passing it means.
        if unsafe { libc::dup2(t, FIRST_PASSED_FD + i as RawFd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // Nothing else crosses into the device: not even an fd the monitor
    // inherited without close-on-exec. (Marked close-on-exec rather than
    // closed, so that std's exec-error pipe still works.)
    // SAFETY: close_range on numbers above the placed fds; async-signal-safe.
    unsafe {
        libc::close_range(
            high as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
        )
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn spawn_passes_fds_at_3_and_up_and_reports_death() {
        let (events, rx) = VmEvents::new();
        let a = std::fs::File::open("/dev/null").unwrap();
        let b = std::fs::File::open("/proc/self/stat").unwrap();
        // The child checks that fds 3 and 4 are the ones passed, and exits 7.
        let script = "[ \"$(readlink /proc/self/fd/3)\" = /dev/null ] && \
                      [ -e /proc/self/fd/4 ] && [ ! -e /proc/self/fd/5 ] && exit 7; exit 1";
        let proc = DeviceProcess::spawn(
            "test0",
            Path::new("/bin/sh"),
            &["-c".into(), script.into()],
            &[a.as_fd(), b.as_fd()],
            events,
        )
        .unwrap();
        let event = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(
            event,
            VmEvent::DeviceDied {
                device: "test0".into(),
                how: "exited with status 7".into()
            }
        );
        drop(proc);
    }

    /// A device its sandbox stopped: the report it left on the report fd
    /// (here written by a script standing in for the SIGSYS reporter)
    /// becomes the cause of death the VM is stopped with.
    #[test]
    fn spawn_device_reads_the_sandbox_report_into_the_cause_of_death() {
        let (events, rx) = VmEvents::new();
        let a = std::fs::File::open("/dev/null").unwrap();
        let line = "sandbox: profile dev_net: thread net-q0 made syscall socket (41), \
                    which its profile does not allow";
        // The report fd follows the one passed fd: 4.
        let script = format!("echo '{line}' >&4; exit 159");
        let sandbox = DeviceSandbox {
            user: Some((1234, 1234)),
            off: false,
        };
        let proc = DeviceProcess::spawn_device(
            "net0",
            Path::new("/bin/sh"),
            &["-c".into(), script],
            &[a.as_fd()],
            events,
            &sandbox,
        )
        .unwrap();
        let event = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(
            event,
            VmEvent::DeviceDied {
                device: "net0".into(),
                how: format!("stopped by its sandbox ({line})")
            }
        );
        drop(proc);
    }

    #[test]
    fn a_refused_user_namespace_is_told_from_a_failed_device() {
        for errno in [libc::EPERM, libc::EACCES, libc::ENOSPC, libc::EINVAL] {
            assert!(namespaces_refused(&std::io::Error::from_raw_os_error(
                errno
            )));
        }
        let map = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "/proc/1/uid_map");
        assert!(namespaces_refused(&map));
        assert!(!namespaces_refused(&std::io::Error::from_raw_os_error(
            libc::ENOENT
        )));
        assert!(!namespaces_refused(&std::io::Error::from_raw_os_error(
            libc::EMFILE
        )));
    }

    #[test]
    fn dropping_a_running_process_kills_it_quietly_when_stopping() {
        let (events, rx) = VmEvents::new();
        let stopper = events.stop_handle();
        let proc = DeviceProcess::spawn(
            "sleeper",
            Path::new("/bin/sleep"),
            &["60".into()],
            &[],
            events,
        )
        .unwrap();
        stopper.request_stop();
        let pid = proc.pid();
        drop(proc);
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            !Path::new(&format!("/proc/{pid}/cmdline")).exists() || {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                stat.contains(") Z ") || stat.is_empty()
            }
        );
        assert!(rx.try_recv().is_err(), "no event while the VM is stopping");
    }

    #[test]
    fn missing_sibling_binary_is_named() {
        let err = sibling_binary("no-such-device-binary").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("cannot find the no-such-device-binary binary at "));
    }
}
