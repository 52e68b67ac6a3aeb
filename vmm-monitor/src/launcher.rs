//! The device launcher: a small process of the monitor's that starts its
//! device processes, so that the monitor itself never needs the calls
//! that starting one takes (clone into new namespaces, exec) and can run
//! under its own narrow seccomp profile and landlock domain. A process's
//! seccomp filters and landlock domain pass to the processes it starts:
//! the launcher has no landlock domain (a landlocked process may not
//! mount, and a device builds its empty root) and only a denylist filter
//! (`launcher`: what neither it nor any device ever needs), so a device
//! is bound by its own profile.
//!
//! The monitor starts it first thing ([`Launcher::start`]: its own binary
//! again, `--launcher-fd 3`), before it confines itself. Each request
//! names a device binary (one of [`DEVICE_BINARIES`], looked up beside
//! the launcher's own binary: a monitor taken over cannot have anything
//! else executed), its arguments and fds, and whether to use namespaces.
//! The launcher starts it with `CLONE_PARENT` (`device_spawn`), so the
//! device is the monitor's child, whose waiter reaps it as before, and
//! answers with its pid.
//!
//! # Invariants
//! - The launcher dies with the monitor (`PR_SET_PDEATHSIG`), and ends
//!   when its connection closes.
//! - It executes nothing but the device binaries beside it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipc::Channel;
use serde::{Deserialize, Serialize};

use crate::device_spawn::{SpawnAs, SpawnError};

/// The binaries the launcher starts, beside its own.
pub const DEVICE_BINARIES: [&str; 3] = ["dev-block", "dev-net", "dev-console"];

/// The fd the launcher finds its connection at.
const LAUNCHER_FD: RawFd = 3;

/// A request to the launcher (its fds travel with it).
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    /// The file name of one of [`DEVICE_BINARIES`].
    binary: String,
    /// Its arguments.
    args: Vec<String>,
    /// New namespaces, as this uid and gid outside them.
    namespaces: Option<(u32, u32)>,
    /// The last fd is its stdout and stderr, not a passed fd.
    stdio: bool,
}

/// The launcher's answer.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    /// Started with this pid.
    Started(i32),
    /// Not started.
    Failed {
        /// What failed.
        message: String,
        /// The OS error number, if there was one.
        errno: Option<i32>,
        /// Whether the kind was "permission denied" (a refused id map).
        permission_denied: bool,
        /// A process that was created and must be reaped.
        unreaped: Option<i32>,
    },
}

/// The monitor's connection to its launcher.
pub struct Launcher {
    channel: Mutex<Channel>,
    pid: u32,
}

impl Launcher {
    /// Starts the launcher: this binary again with `--launcher-fd 3`.
    pub fn start() -> std::io::Result<Self> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe()?;
        let (ours, theirs) = Channel::pair()?;
        let theirs = theirs.into_inner();
        let source = theirs.as_raw_fd();
        let mut command = std::process::Command::new(&exe);
        command
            .args(["--launcher-fd", &LAUNCHER_FD.to_string()])
            .args(crate::device_proc::verbosity_args(log::max_level()));
        // stdio is the monitor's own (vmd's: no terminal); Stdio::null()
        // would open /dev/null, which the monitor's root does not hold.
        // SAFETY: the closure runs in the forked child before exec and
        // calls only dup2 and fcntl on an fd the parent keeps open until
        // spawn returns.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(source, LAUNCHER_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", exe.display())))?;
        drop(theirs);
        log::debug!("device launcher started as pid {}", child.id());
        Ok(Self {
            channel: Mutex::new(ours),
            pid: child.id(),
        })
    }

    /// The launcher's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Has the launcher start `binary` (a file name of
    /// [`DEVICE_BINARIES`]) with `args` and `fds` at 3, 4, ... as the
    /// monitor's child, with `stdio` as its stdout and stderr; returns its
    /// pid.
    pub fn spawn(
        &self,
        binary: &str,
        args: &[String],
        fds: &[BorrowedFd<'_>],
        namespaces: Option<(u32, u32)>,
        stdio: Option<BorrowedFd<'_>>,
    ) -> Result<libc::pid_t, SpawnError> {
        let request = Request {
            binary: binary.to_string(),
            args: args.to_vec(),
            namespaces,
            stdio: stdio.is_some(),
        };
        let fds: Vec<BorrowedFd<'_>> = fds.iter().copied().chain(stdio).collect();
        let broken = |e: ipc::IpcError| {
            SpawnError::from(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                format!("the device launcher: {}", ipc::error_chain(&e)),
            ))
        };
        let mut channel = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        channel.send(&request, &fds).map_err(broken)?;
        let (reply, _) = channel.recv::<Reply>().map_err(broken)?;
        match reply {
            Reply::Started(pid) => Ok(pid),
            Reply::Failed {
                message,
                errno,
                permission_denied,
                unreaped,
            } => {
                let source = match (errno, permission_denied) {
                    (Some(errno), _) => std::io::Error::from_raw_os_error(errno),
                    (None, true) => {
                        std::io::Error::new(std::io::ErrorKind::PermissionDenied, message)
                    }
                    (None, false) => std::io::Error::other(message),
                };
                Err(SpawnError { source, unreaped })
            }
        }
    }
}

/// The launcher's side: serves requests on `fd` until it closes; returns
/// the exit code.
pub fn serve(fd: RawFd) -> i32 {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // The monitor may have died before the line above: then our parent
    // is someone else already.
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } == 1 {
        return 0;
    }
    let stream = match crate::control::take_socket(fd) {
        Ok(stream) => stream,
        Err(e) => {
            log::error!("device launcher: {}", ipc::error_chain(&e));
            return crate::exit::EXIT_HOST_ERROR;
        }
    };
    // Its filter passes to every device it starts, beneath the device's
    // own: a denylist of what neither needs (sandbox-profiles' launcher).
    if let Err(e) = sandbox_profiles::enter_launcher() {
        log::error!("device launcher: {}", ipc::error_chain(&e));
        return crate::exit::EXIT_HOST_ERROR;
    }
    let dir = match std::env::current_exe() {
        Ok(exe) => exe.parent().map(Path::to_owned).unwrap_or_default(),
        Err(e) => {
            log::error!("device launcher: cannot find its own binary: {e}");
            return crate::exit::EXIT_HOST_ERROR;
        }
    };
    let mut channel = Channel::new(stream);
    loop {
        let (request, fds) = match channel.recv::<Request>() {
            Ok(message) => message,
            Err(ipc::IpcError::Closed) => return 0,
            Err(e) => {
                log::error!("device launcher: {}", ipc::error_chain(&e));
                return crate::exit::EXIT_HOST_ERROR;
            }
        };
        let reply = start(&dir, &request, &fds);
        drop(fds);
        if let Err(e) = channel.send(&reply, &[]) {
            log::error!("device launcher: cannot answer: {}", ipc::error_chain(&e));
            return crate::exit::EXIT_HOST_ERROR;
        }
    }
}

/// Carries out one request.
fn start(dir: &Path, request: &Request, fds: &[OwnedFd]) -> Reply {
    let failed = |message: String, error: Option<&std::io::Error>, unreaped| Reply::Failed {
        message,
        errno: error.and_then(std::io::Error::raw_os_error),
        permission_denied: error.is_some_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied),
        unreaped,
    };
    if !DEVICE_BINARIES.contains(&request.binary.as_str()) {
        return failed(
            format!("{:?} is not a device binary", request.binary),
            None,
            None,
        );
    }
    let program: PathBuf = dir.join(&request.binary);
    let mut raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_fd().as_raw_fd()).collect();
    let stdio = if request.stdio { raw.pop() } else { None };
    if request.stdio && stdio.is_none() {
        return failed("a stdio fd was announced but not passed".into(), None, None);
    }
    let how = SpawnAs {
        namespaces: request.namespaces,
        sibling: true,
        stdio,
    };
    match crate::device_spawn::spawn(&program, &request.args, &raw, how) {
        Ok(pid) => Reply::Started(pid),
        Err(e) => failed(e.source.to_string(), Some(&e.source), e.unreaped),
    }
}
