//! Receiving a VM from vmd: [`ToMonitor::Launch`], one [`ToMonitor::Disk`]
//! per disk, then [`ToMonitor::Run`], each with its fds, into a typed,
//! validated [`LaunchPlan`]. Nothing is built here; nothing is opened by
//! path.
//!
//! The fds of Launch, in order: /dev/kvm, the kernel, the initrd (if
//! `initrd`), the console pty's master and slave (if `console`), the
//! listening socket for later vmd connections. Of each Disk: the image,
//! then `backing` backing files.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Duration;

use ipc::monitor::{DiskAttach, DiskFormat as WireFormat, Launch, LogLevel, ToMonitor, VmRecord};
use ipc::{Channel, IpcError};
use kvm_ioctls::Kvm;

use crate::config::{memory_problem, DiskBackend, DiskFiles, DiskFormat, VmConfig, MAX_CPUS};
use crate::supervisor::RestartPolicy;
use crate::vm::BootImages;

/// How long vmd may take to send the whole launch sequence.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);

/// The KVM API version every KVM since Linux 2.6.22 reports
/// (KVM_GET_API_VERSION); anything else is not /dev/kvm.
const KVM_API_VERSION: i32 = 12;

/// Most disks a VM may have: one PCI slot each on bus 0, with room left
/// for the host bridge and other devices.
pub const MAX_DISKS: usize = 16;

/// Why the launch sequence could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A message could not be received.
    #[error("cannot receive vmd's {expected} message")]
    Recv {
        /// What was awaited.
        expected: &'static str,
        /// Why.
        #[source]
        source: IpcError,
    },
    /// A message came out of order.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// What was awaited.
        expected: &'static str,
        /// What came (the variant's name).
        got: String,
    },
    /// A message came with the wrong number of fds.
    #[error("{message} came with {got} fd(s), {expected} expected")]
    FdCount {
        /// The message.
        message: &'static str,
        /// fds its fields call for.
        expected: usize,
        /// fds that came.
        got: usize,
    },
    /// The VM record cannot be run.
    #[error("VM {name}: {why}")]
    Record {
        /// The VM's name.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// The /dev/kvm fd is not KVM.
    #[error("the /dev/kvm fd is not KVM (API version {0})")]
    NotKvm(i32),
    /// The listening socket fd is not a listening socket.
    #[error("the listening socket fd is not a listening unix socket")]
    NotListening(#[source] std::io::Error),
    /// The console pty's slave could not be set to raw mode.
    #[error("cannot set the console pty to raw mode")]
    Console(#[source] std::io::Error),
    /// More network interfaces than [`crate::nics::MAX_NICS`].
    #[error("more than {} network interfaces", crate::nics::MAX_NICS)]
    TooManyNics,
    /// More disks than [`MAX_DISKS`].
    #[error("more than {MAX_DISKS} disks")]
    TooManyDisks,
}

/// The console pty vmd made (openpty): the monitor writes COM1 to the
/// master and reads input from it; it keeps the slave open for the VM's
/// life so that output is buffered while nobody has the terminal open.
#[derive(Debug)]
pub struct ConsolePty {
    /// The master side.
    pub master: File,
    /// The slave side (in raw mode).
    pub slave: File,
}

/// Everything vmd sent, checked and typed.
pub struct LaunchPlan {
    /// vmd's record of the VM, returned by Identity.
    pub record: VmRecord,
    /// The VM to build (kernel path for messages; disks as open files).
    pub config: VmConfig,
    /// KVM, from vmd's /dev/kvm fd.
    pub kvm: Kvm,
    /// Kernel and initrd files.
    pub images: BootImages,
    /// The console pty, if any.
    pub console: Option<ConsolePty>,
    /// Where a restarted vmd connects.
    pub listener: UnixListener,
    /// The log level to start with.
    pub log_level: LogLevel,
    /// The network interfaces, in order.
    pub nics: Vec<crate::nics::NicFiles>,
}

/// Receives Launch, the Disks and Run on `chan` (the first vmd
/// connection) and checks them. The read timeout is [`LAUNCH_TIMEOUT`]
/// during the sequence and none after.
pub fn receive(chan: &mut Channel) -> Result<LaunchPlan, LaunchError> {
    // Without a timeout a stuck vmd would leave an idle monitor forever.
    let _ = chan.set_read_timeout(Some(LAUNCH_TIMEOUT));
    let result = receive_sequence(chan);
    let _ = chan.set_read_timeout(None);
    result
}

fn receive_sequence(chan: &mut Channel) -> Result<LaunchPlan, LaunchError> {
    let (launch, fds) = match recv(chan, "Launch")? {
        (ToMonitor::Launch(launch), fds) => (launch, fds),
        (other, _) => return Err(unexpected("Launch", &other)),
    };
    let mut plan = plan_from_launch(launch, fds)?;
    loop {
        match recv(chan, "Disk or Run")? {
            (ToMonitor::Disk(disk), fds) => {
                if plan.config.disks.len() == MAX_DISKS {
                    return Err(LaunchError::TooManyDisks);
                }
                plan.config.disks.push(disk_from_message(disk, fds)?);
            }
            (ToMonitor::Nic(nic), fds) => {
                if plan.nics.len() == crate::nics::MAX_NICS {
                    return Err(LaunchError::TooManyNics);
                }
                expect_fds("Nic", 1, &fds)?;
                let tap = File::from(fds.into_iter().next().ok_or(LaunchError::TooManyNics)?);
                plan.nics.push(crate::nics::NicFiles { attach: nic, tap });
            }
            (ToMonitor::Run, fds) => {
                expect_fds("Run", 0, &fds)?;
                return Ok(plan);
            }
            (other, _) => return Err(unexpected("Disk, Nic or Run", &other)),
        }
    }
}

fn recv(
    chan: &mut Channel,
    expected: &'static str,
) -> Result<(ToMonitor, Vec<OwnedFd>), LaunchError> {
    chan.recv()
        .map_err(|source| LaunchError::Recv { expected, source })
}

fn unexpected(expected: &'static str, got: &ToMonitor) -> LaunchError {
    let text = format!("{got:?}");
    let name = text.split(['(', ' ', '{']).next().unwrap_or_default();
    LaunchError::Unexpected {
        expected,
        got: name.to_string(),
    }
}

fn expect_fds(message: &'static str, expected: usize, fds: &[OwnedFd]) -> Result<(), LaunchError> {
    if fds.len() == expected {
        Ok(())
    } else {
        Err(LaunchError::FdCount {
            message,
            expected,
            got: fds.len(),
        })
    }
}

/// Checks the record and takes Launch's fds apart.
fn plan_from_launch(launch: Launch, fds: Vec<OwnedFd>) -> Result<LaunchPlan, LaunchError> {
    let expected = 3 + usize::from(launch.initrd) + 2 * usize::from(launch.console);
    expect_fds("Launch", expected, &fds)?;
    let (memory, cpus) = check_record(&launch.record)?;
    let mut fds = fds.into_iter();
    // The count was checked: every next() below yields an fd.
    let mut next = || {
        fds.next().ok_or(LaunchError::FdCount {
            message: "Launch",
            expected,
            got: 0,
        })
    };
    let kvm_fd = next()?;
    let kernel = File::from(next()?);
    let initrd = if launch.initrd {
        Some(File::from(next()?))
    } else {
        None
    };
    let console = if launch.console {
        let master = File::from(next()?);
        let slave = File::from(next()?);
        make_raw(&slave).map_err(LaunchError::Console)?;
        Some(ConsolePty { master, slave })
    } else {
        None
    };
    let listener = listener_from(next()?)?;
    let kvm = kvm_from(kvm_fd)?;
    let config = VmConfig {
        kernel: launch.record.kernel.clone(),
        initrd: None,
        cmdline: launch.cmdline,
        memory,
        cpus,
        disks: Vec::new(),
        sandbox: crate::config::DeviceSandbox {
            user: launch.sandbox_user,
            off: launch.sandbox_off,
        },
        restart_policy: launch
            .device_restarts
            .map(RestartPolicy::with_max_streak)
            .unwrap_or_default(),
    };
    Ok(LaunchPlan {
        record: launch.record,
        config,
        kvm,
        images: BootImages::from_files(kernel, initrd),
        console,
        listener,
        log_level: launch.log_level,
        nics: Vec::new(),
    })
}

/// The record's memory and vCPU count, if the monitor can run them.
fn check_record(record: &VmRecord) -> Result<(u64, usize), LaunchError> {
    let bad = |why: String| LaunchError::Record {
        name: record.name.clone(),
        why,
    };
    if let Some(why) = memory_problem(record.memory) {
        return Err(bad(format!("{} bytes of memory: {why}", record.memory)));
    }
    let cpus = usize::try_from(record.cpus).unwrap_or(usize::MAX);
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(bad(format!(
            "{} vCPUs is out of range (1 to {MAX_CPUS})",
            record.cpus
        )));
    }
    Ok((record.memory, cpus))
}

fn kvm_from(fd: OwnedFd) -> Result<Kvm, LaunchError> {
    // SAFETY: `fd` is owned and handed over whole; Kvm closes it on drop.
    let kvm = unsafe { Kvm::from_raw_fd(fd.into_raw_fd()) };
    match kvm.get_api_version() {
        KVM_API_VERSION => Ok(kvm),
        other => Err(LaunchError::NotKvm(other)),
    }
}

fn listener_from(fd: OwnedFd) -> Result<UnixListener, LaunchError> {
    let mut accepting: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `accepting`, a
    // live c_int, and updates `len`.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut accepting as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(LaunchError::NotListening(std::io::Error::last_os_error()));
    }
    if accepting == 0 {
        return Err(LaunchError::NotListening(
            std::io::Error::from_raw_os_error(libc::EINVAL),
        ));
    }
    Ok(UnixListener::from(fd))
}

/// Puts a terminal in raw mode (cfmakeraw): no echo, no line editing, no
/// signals, no output processing. Without this the slave's line
/// discipline would echo what is typed back to the master (the monitor
/// would feed the guest its own input) and turn "\n" into "\r\n".
pub fn make_raw(tty: &File) -> std::io::Result<()> {
    // SAFETY: termios is plain old data; tcgetattr fills it.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr on an fd we own, writing into a live termios.
    if unsafe { libc::tcgetattr(tty.as_raw_fd(), &mut termios) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: cfmakeraw only edits the termios it is given.
    unsafe { libc::cfmakeraw(&mut termios) };
    // SAFETY: tcsetattr on an fd we own, reading a live termios.
    if unsafe { libc::tcsetattr(tty.as_raw_fd(), libc::TCSANOW, &termios) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn disk_from_message(disk: DiskAttach, fds: Vec<OwnedFd>) -> Result<DiskBackend, LaunchError> {
    expect_fds("Disk", 1 + usize::from(disk.backing), &fds)?;
    let mut files = fds.into_iter().map(File::from);
    let image = files.next().ok_or(LaunchError::FdCount {
        message: "Disk",
        expected: 1,
        got: 0,
    })?;
    Ok(DiskBackend::Files(Arc::new(DiskFiles {
        path: disk.path,
        format: match disk.format {
            WireFormat::Raw => DiskFormat::Raw,
            WireFormat::Qcow2 => DiskFormat::Qcow2,
        },
        readonly: disk.readonly,
        image,
        backing: files.collect(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn record() -> VmRecord {
        VmRecord {
            id: 1,
            name: "web".into(),
            memory: 64 << 20,
            cpus: 1,
            kernel: "/bsd".into(),
            disks: Vec::new(),
            owner_uid: None,
            owner_gid: None,
            owner: "root".into(),
            tty: None,
            instance_of: None,
            configured: false,
        }
    }

    fn launch(record: VmRecord) -> ToMonitor {
        ToMonitor::Launch(Launch {
            record,
            cmdline: String::new(),
            initrd: false,
            console: false,
            log_level: LogLevel::Info,
            sandbox_user: None,
            sandbox_off: false,
            device_restarts: None,
        })
    }

    fn error_of(messages: Vec<(ToMonitor, Vec<File>)>) -> String {
        let (mut vmd, mut monitor) = Channel::pair().unwrap();
        for (msg, files) in &messages {
            let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
            vmd.send(msg, &fds).unwrap();
        }
        drop(vmd);
        match receive(&mut monitor) {
            Ok(_) => panic!("accepted"),
            Err(e) => ipc::error_chain(&e),
        }
    }

    fn null() -> File {
        File::open("/dev/null").unwrap()
    }

    #[test]
    fn launch_must_come_first() {
        assert_eq!(
            error_of(vec![(ToMonitor::Run, vec![])]),
            "expected Launch, got Run"
        );
    }

    #[test]
    fn launch_with_missing_fds_is_refused_by_count() {
        assert_eq!(
            error_of(vec![(launch(record()), vec![null()])]),
            "Launch came with 1 fd(s), 3 expected"
        );
    }

    #[test]
    fn launch_with_bad_memory_names_the_vm() {
        let mut r = record();
        r.memory = 4097;
        let err = error_of(vec![(launch(r), vec![null(), null(), null()])]);
        assert!(
            err.starts_with("VM web: 4097 bytes of memory: below"),
            "{err}"
        );
    }

    #[test]
    fn launch_with_a_non_kvm_fd_is_refused() {
        let listener = tempfile_listener();
        let err = error_of(vec![(launch(record()), vec![null(), null(), listener])]);
        assert_eq!(err, "the /dev/kvm fd is not KVM (API version -1)");
    }

    #[test]
    fn closed_connection_during_launch_is_a_receive_error() {
        let err = error_of(vec![]);
        assert_eq!(
            err,
            "cannot receive vmd's Launch message: peer closed the connection"
        );
    }

    #[test]
    fn disk_message_takes_image_and_backing_fds() {
        let disk = DiskAttach {
            path: "/d.qcow2".into(),
            format: WireFormat::Qcow2,
            readonly: true,
            backing: 2,
        };
        let backend = disk_from_message(
            disk.clone(),
            vec![null().into(), null().into(), null().into()],
        )
        .unwrap();
        match backend {
            DiskBackend::Files(files) => {
                assert_eq!(files.backing.len(), 2);
                assert_eq!((files.format, files.readonly), (DiskFormat::Qcow2, true));
            }
            other => panic!("{other:?}"),
        }
        let err = disk_from_message(disk, vec![null().into()]).unwrap_err();
        assert_eq!(err.to_string(), "Disk came with 1 fd(s), 3 expected");
    }

    /// A listening socket as a File (only its fd matters here).
    fn tempfile_listener() -> File {
        let dir = std::env::temp_dir().join(format!("launch-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = UnixListener::bind(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        File::from(OwnedFd::from(listener))
    }
}
