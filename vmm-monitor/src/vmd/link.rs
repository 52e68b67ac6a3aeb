//! vmd's side of one monitor: starting it, and the connection to it.
//!
//! [`spawn_monitor`] starts `vmm-monitor --control-fd 3` in its own session
//! (so that neither a signal to vmd's process group nor vmd's death
//! reaches it), sends the launch messages of ipc::monitor with their fds,
//! and waits for `Started`. [`MonitorLink`] then carries requests (one at a
//! time, each awaiting its answer) while a reader thread hands the
//! monitor's events (`Rebooted`, `Exited`, or the connection's end) to a
//! callback. A re-adopted monitor (see `adopt`) gets the same link, without
//! a child to reap.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use ipc::monitor::{DiskAttach, FromMonitor, Launch, LogLevel, ToMonitor, VmRecord};
use ipc::Channel;
use sandbox_profiles::exec_root::ExecRoot;

use super::resources::{Console, OpenDisk};

/// How long a monitor may take to build its VM.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a monitor may take to answer a request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Something a monitor reported without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorEvent {
    /// The guest reset and runs again.
    Rebooted,
    /// The VM ended (the monitor said how, or the connection ended and the
    /// text says what is known).
    Exited(String),
}

/// Why a monitor could not be started or asked something.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The monitor binary could not be started.
    #[error("cannot start the monitor")]
    Spawn(#[source] std::io::Error),
    /// The monitor's root could not be planned.
    #[error("cannot prepare the monitor's root")]
    Root(#[from] sandbox_profiles::exec_root::ExecRootError),
    /// The conversation broke.
    #[error("monitor connection")]
    Ipc(#[from] ipc::IpcError),
    /// The monitor refused or failed.
    #[error("{0}")]
    Failed(String),
    /// No answer in time.
    #[error("the monitor did not answer within {0:?}")]
    Timeout(Duration),
    /// The monitor went away.
    #[error("the monitor is gone")]
    Gone,
    /// It answered something out of turn.
    #[error("the monitor answered out of turn: {0}")]
    Protocol(String),
}

/// The files of a VM, opened by vmd, for [`spawn_monitor`].
pub struct LaunchFiles {
    /// /dev/kvm.
    pub kvm: std::fs::File,
    /// The kernel.
    pub kernel: std::fs::File,
    /// The initrd.
    pub initrd: Option<std::fs::File>,
    /// The console.
    pub console: Option<Console>,
    /// The socket later vmds reach the monitor at.
    pub listener: std::os::unix::net::UnixListener,
    /// The disks.
    pub disks: Vec<OpenDisk>,
    /// The network interfaces' taps.
    pub nics: Vec<super::net::OpenNic>,
}

/// A monitor's connection.
pub struct MonitorLink {
    writer: Mutex<Channel>,
    replies: Mutex<Receiver<FromMonitor>>,
    pid: u32,
}

impl MonitorLink {
    /// The monitor's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `request` and returns the monitor's answer (not `Done`: an
    /// answer with data, e.g. [`FromMonitor::Devices`]).
    pub fn ask(&self, request: &ToMonitor) -> Result<FromMonitor, LinkError> {
        let replies = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        while replies.try_recv().is_ok() {}
        self.writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(request, &[])?;
        match replies.recv_timeout(REQUEST_TIMEOUT) {
            Ok(FromMonitor::Failed(why)) => Err(LinkError::Failed(why)),
            Ok(answer) => Ok(answer),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                Err(LinkError::Timeout(REQUEST_TIMEOUT))
            }
            Err(_) => Err(LinkError::Gone),
        }
    }

    /// Sends `request` and waits for its answer, `Done`.
    pub fn request(&self, request: &ToMonitor) -> Result<(), LinkError> {
        match self.ask(request)? {
            FromMonitor::Done => Ok(()),
            other => Err(LinkError::Protocol(format!("{other:?}"))),
        }
    }

    /// Shuts the connection (the reader thread then reports the end).
    pub fn shutdown(&self) {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writer.stream().shutdown(std::net::Shutdown::Both);
    }
}

/// In the forked child, before exec: gives up root for the VM's own
/// unprivileged ids, for good — an empty capability bounding set, no
/// supplementary groups, uid and gid `uid`:`gid` (which clears every
/// capability), no_new_privs. The same steps as a sandboxed device's
/// (`sandbox_profiles::privileges`), which allocate nothing.
fn become_vm_user(uid: u32, gid: u32) -> std::io::Result<()> {
    use sandbox_profiles::privileges::{self, PrivilegeError};
    let io = |PrivilegeError::Call { source, .. }| source;
    privileges::drop_bounding_set().map_err(io)?;
    privileges::become_user(uid, gid).map_err(io)?;
    privileges::no_new_privs().map_err(io)
}

/// The device binaries a monitor starts, found beside it.
const DEVICE_BINARIES: [&str; 3] = ["dev-block", "dev-net", "dev-console"];

/// Plans the root a sandboxed monitor runs in: `program`, the device
/// binaries beside it, their libraries, and the syslog socket when logs go
/// there. Nothing else of the host's filesystem is in it.
pub fn monitor_root(program: &Path) -> Result<ExecRoot, LinkError> {
    let mut executables = vec![program.to_owned()];
    if let Some(dir) = program.parent() {
        executables.extend(
            DEVICE_BINARIES
                .iter()
                .map(|name| dir.join(name))
                .filter(|path| path.is_file()),
        );
    }
    let syslog = Path::new("/dev/log");
    let extra: Vec<PathBuf> =
        if std::env::var_os(ipc::logger::SYSLOG_ENV).is_some() && syslog.exists() {
            vec![syslog.to_owned()]
        } else {
            Vec::new()
        };
    Ok(ExecRoot::plan(&executables, &extra)?)
}

/// Starts the monitor `program` for `record` with `files`; returns once
/// the VM runs. `on_event` receives the monitor's events from a reader
/// thread, the last one always [`MonitorEvent::Exited`].
pub fn spawn_monitor(
    program: &Path,
    launch: Launch,
    files: LaunchFiles,
    on_event: Box<dyn Fn(MonitorEvent) + Send>,
) -> Result<Arc<MonitorLink>, LinkError> {
    let (mut ours, theirs) = Channel::pair().map_err(LinkError::Spawn)?;
    let theirs = theirs.into_inner();
    let source = theirs.as_raw_fd();
    let user = launch.sandbox_user;
    let root = user.map(|_| monitor_root(program)).transpose()?;
    // Where a sandboxed monitor's SIGSYS reporter writes; read once it ended.
    let report = if launch.sandbox_off {
        None
    } else {
        Some(report_pipe().map_err(LinkError::Spawn)?)
    };
    let report_source = report.as_ref().map(|(_, write_end)| write_end.as_raw_fd());
    let mut command = Command::new(program);
    command
        .args(["--control-fd", &ipc::monitor::CONTROL_FD.to_string()])
        .stdin(Stdio::null());
    if report.is_some() {
        command.args(["--report-fd", &ipc::monitor::REPORT_FD.to_string()]);
    }
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (sigemptyset, sigprocmask, setsid,
    // dup2, close_range, unshare, mount, mkdir, open, close, chdir,
    // pivot_root, umount2, prctl, setgroups, setresgid, setresuid — the
    // forked child is single-threaded, so glibc's set*id wrappers do not
    // broadcast) on a local sigset, an fd the parent keeps open until spawn
    // returns, and the root planned before the fork.
    unsafe {
        command.pre_exec(move || {
            // vmd blocks the signals its signal thread takes; the monitor
            // starts with none blocked.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::dup2(source, ipc::monitor::CONTROL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut last = ipc::monitor::CONTROL_FD;
            if let Some(report) = report_source {
                // report_pipe() put it above REPORT_FD: the dup2 above
                // cannot have replaced it.
                if libc::dup2(report, ipc::monitor::REPORT_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                last = ipc::monitor::REPORT_FD;
            }
            // Only the control socket (and the report pipe) cross: no fd
            // vmd holds for another VM (a pty, a tap, a disk) may leak
            // into this one. Marked close-on-exec rather than closed, so
            // that std's own exec-error pipe still works.
            libc::close_range(
                (last + 1) as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
            );
            if let (Some((uid, gid)), Some(root)) = (user, &root) {
                // Namespaces of its own first (that needs root): no
                // network (taps come as fds, sockets are path-bound), no
                // System V IPC, no host name shared with anyone, and a
                // root holding only what it executes.
                let flags = libc::CLONE_NEWNS
                    | libc::CLONE_NEWNET
                    | libc::CLONE_NEWIPC
                    | libc::CLONE_NEWUTS;
                if libc::syscall(libc::SYS_unshare, flags) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                root.enter()?;
                become_vm_user(uid, gid)?;
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(LinkError::Spawn)?;
    drop(theirs);
    let report = report.map(|(read_end, _)| read_end);
    ours.set_read_timeout(Some(START_TIMEOUT))
        .map_err(LinkError::Spawn)?;
    match send_launch(&mut ours, &launch, &files) {
        Ok(()) => {}
        Err(e) => return Err(abandon(&mut child, e)),
    }
    drop(files);
    let pid = match ours.recv::<FromMonitor>() {
        Ok((FromMonitor::Started { pid }, _)) => pid,
        Ok((FromMonitor::Failed(why), _)) => {
            return Err(abandon(&mut child, LinkError::Failed(why)))
        }
        Ok((other, _)) => {
            return Err(abandon(
                &mut child,
                LinkError::Protocol(format!("{other:?}")),
            ))
        }
        Err(ipc::IpcError::Closed) => {
            let how = with_report(exit_text(&mut child), report);
            return Err(LinkError::Failed(how));
        }
        Err(e) => return Err(abandon(&mut child, e.into())),
    };
    ours.set_read_timeout(None).map_err(LinkError::Spawn)?;
    start_link(ours, pid, Some((child, report)), on_event)
}

/// A close-on-exec pipe whose write end is numbered above
/// [`ipc::monitor::REPORT_FD`]: (read end, write end).
fn report_pipe() -> std::io::Result<(std::fs::File, OwnedFd)> {
    let (read_end, write_end) = crate::device_spawn::pipe()?;
    // SAFETY: F_DUPFD_CLOEXEC on an fd this function owns.
    let high = unsafe {
        libc::fcntl(
            write_end.as_raw_fd(),
            libc::F_DUPFD_CLOEXEC,
            ipc::monitor::REPORT_FD + 1,
        )
    };
    if high < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fcntl just returned this new fd, owned by nobody else.
    let write_end = unsafe { OwnedFd::from_raw_fd(high) };
    Ok((std::fs::File::from(read_end), write_end))
}

/// `how` the monitor ended, with its sandbox's report if it wrote one
/// (a call its profile refused).
fn with_report(how: String, report: Option<std::fs::File>) -> String {
    match report.and_then(|file| sandbox_profiles::read_report(&OwnedFd::from(file))) {
        Some(line) => format!("{how}: {line}"),
        None => how,
    }
}

/// The link to an already running monitor reached through `channel`.
pub fn adopt_link(
    channel: Channel,
    pid: u32,
    on_event: Box<dyn Fn(MonitorEvent) + Send>,
) -> Result<Arc<MonitorLink>, LinkError> {
    start_link(channel, pid, None, on_event)
}

/// Asks the monitor at `channel` who it is ([`ToMonitor::Hello`]).
pub fn hello(channel: &mut Channel) -> Result<(VmRecord, u32, bool), LinkError> {
    channel
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(LinkError::Spawn)?;
    channel.send(&ToMonitor::Hello, &[])?;
    let answer = channel.recv::<FromMonitor>()?.0;
    channel.set_read_timeout(None).map_err(LinkError::Spawn)?;
    match answer {
        FromMonitor::Identity {
            record,
            pid,
            paused,
        } => Ok((record, pid, paused)),
        other => Err(LinkError::Protocol(format!("{other:?}"))),
    }
}

fn start_link(
    channel: Channel,
    pid: u32,
    child: Option<(Child, Option<std::fs::File>)>,
    on_event: Box<dyn Fn(MonitorEvent) + Send>,
) -> Result<Arc<MonitorLink>, LinkError> {
    let reader = Channel::new(channel.stream().try_clone().map_err(LinkError::Spawn)?);
    let (tx, rx) = crossbeam_channel::unbounded();
    let link = Arc::new(MonitorLink {
        writer: Mutex::new(channel),
        replies: Mutex::new(rx),
        pid,
    });
    std::thread::Builder::new()
        .name(format!("monitor-{pid}"))
        .spawn(move || read_events(reader, tx, child, on_event))
        .map_err(LinkError::Spawn)?;
    Ok(link)
}

fn read_events(
    mut reader: Channel,
    replies: Sender<FromMonitor>,
    child: Option<(Child, Option<std::fs::File>)>,
    on_event: Box<dyn Fn(MonitorEvent) + Send>,
) {
    let (mut child, report) = match child {
        Some((child, report)) => (Some(child), report),
        None => (None, None),
    };
    let mut exited = None;
    loop {
        match reader.recv::<FromMonitor>() {
            Ok((FromMonitor::Rebooted, _)) => on_event(MonitorEvent::Rebooted),
            Ok((FromMonitor::Exited { reason, .. }, _)) => exited = Some(reason),
            Ok((reply, _)) => {
                let _ = replies.send(reply);
            }
            Err(ipc::IpcError::Closed) => break,
            Err(e) => {
                log::warn!("monitor {}: {}", reader_pid(&child), ipc::error_chain(&e));
                break;
            }
        }
    }
    let _ = reader.stream().shutdown(std::net::Shutdown::Both);
    let how = match (exited, child.as_mut()) {
        (Some(reason), Some(child)) => {
            let _ = child.wait();
            reason
        }
        (Some(reason), None) => reason,
        (None, Some(child)) => with_report(exit_text(child), report),
        (None, None) => "the monitor's connection closed".into(),
    };
    on_event(MonitorEvent::Exited(how));
}

fn reader_pid(child: &Option<Child>) -> String {
    child
        .as_ref()
        .map(|c| c.id().to_string())
        .unwrap_or_else(|| "(adopted)".into())
}

/// Waits for `child` and says how it ended.
fn exit_text(child: &mut Child) -> String {
    use std::os::unix::process::ExitStatusExt;
    match child.wait() {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("the monitor exited with status {code}"),
            (_, Some(signal)) => format!("the monitor was killed by signal {signal}"),
            _ => "the monitor ended".into(),
        },
        Err(e) => format!("the monitor could not be waited for: {e}"),
    }
}

fn abandon(child: &mut Child, error: LinkError) -> LinkError {
    let _ = child.kill();
    let _ = child.wait();
    error
}

fn send_launch(
    channel: &mut Channel,
    launch: &Launch,
    files: &LaunchFiles,
) -> Result<(), LinkError> {
    let mut fds: Vec<BorrowedFd<'_>> = vec![files.kvm.as_fd(), files.kernel.as_fd()];
    if let Some(initrd) = &files.initrd {
        fds.push(initrd.as_fd());
    }
    if let Some(console) = &files.console {
        fds.push(console.master.as_fd());
        fds.push(console.slave.as_fd());
    }
    fds.push(files.listener.as_fd());
    channel.send(&ToMonitor::Launch(launch.clone()), &fds)?;
    for disk in &files.disks {
        let attach = DiskAttach {
            path: disk.path.clone(),
            format: disk.format,
            readonly: disk.readonly,
            backing: disk.backing.len() as u8,
        };
        let mut fds = vec![disk.image.as_fd()];
        fds.extend(disk.backing.iter().map(|f| f.as_fd()));
        channel.send(&ToMonitor::Disk(attach), &fds)?;
    }
    for nic in &files.nics {
        let attach = ipc::monitor::NicAttach {
            tap: nic.name.clone(),
            mac: nic.mac.octets(),
            locked: nic.locked,
            dhcp: nic.local.map(|l| ipc::monitor::LocalDhcp {
                guest: l.guest,
                host: l.host,
                host_mac: nic.host_mac,
            }),
        };
        channel.send(&ToMonitor::Nic(attach), &[nic.fd.as_fd()])?;
    }
    channel.send(&ToMonitor::Run, &[])?;
    Ok(())
}

/// A log level request for every monitor.
pub fn log_request(level: LogLevel) -> ToMonitor {
    ToMonitor::SetLogLevel(level)
}

/// Connects to a monitor's socket.
pub fn connect(path: &Path) -> std::io::Result<Channel> {
    UnixStream::connect(path).map(Channel::new)
}
