//! The control protocol between `vmctl` (or any client) and `vmd`.
//!
//! One connection carries one [`Request`] and its [`Response`]s: most
//! requests get exactly one; `stop -w` and `wait` get their final
//! response only when the VMs have stopped, so the connection stays open
//! until then. vmd checks each request against the peer's credentials
//! (SO_PEERCRED) before acting on it.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where vmd listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/vmd/vmd.sock";
/// Environment variable naming another control socket, read by vmd and
/// vmctl alike (tests run a private vmd this way).
pub const SOCKET_ENV: &str = "VMD_SOCKET";
/// Longest VM name: vmd's VMM_MAX_NAME_LEN is 64 bytes with the NUL.
pub const MAX_NAME_LEN: usize = 63;

/// The control socket path: `$VMD_SOCKET` if set, else [`DEFAULT_SOCKET`].
pub fn socket_path() -> PathBuf {
    std::env::var_os(SOCKET_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Why a VM name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The empty string.
    #[error("a VM name cannot be empty")]
    Empty,
    /// Longer than [`MAX_NAME_LEN`].
    #[error("VM name '{0}' is longer than {MAX_NAME_LEN} characters")]
    TooLong(String),
    /// A character other than alphanumerics, `.`, `-`, `_`.
    #[error("VM name '{0}' has a character other than letters, digits, '.', '-' and '_'")]
    BadCharacter(String),
    /// Starts with `.`, `-` or `_`.
    #[error("VM name '{0}' must not start with '.', '-' or '_'")]
    BadStart(String),
    /// All digits: it would read as a VM id.
    #[error("VM name '{0}' is all digits, which reads as a VM id")]
    Numeric(String),
}

/// Checks a VM name as vmctl does: 1 to 63 ASCII letters, digits, `.`, `-`
/// and `_`, not starting with `.`, `-` or `_`; and (ours) not all digits,
/// since an id argument that is all digits means a VM id.
pub fn check_vm_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.into()));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    {
        return Err(NameError::BadCharacter(name.into()));
    }
    if name.starts_with(['.', '-', '_']) {
        return Err(NameError::BadStart(name.into()));
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NameError::Numeric(name.into()));
    }
    Ok(())
}

/// A VM as a command names it: its numeric id, or its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VmRef {
    /// The id vmd gave it (1 and up).
    Id(u32),
    /// Its name.
    Name(String),
}

impl FromStr for VmRef {
    type Err = NameError;

    /// All digits: an id; anything else must be a valid name.
    fn from_str(text: &str) -> Result<Self, NameError> {
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(id) = text.parse() {
                return Ok(VmRef::Id(id));
            }
        }
        check_vm_name(text)?;
        Ok(VmRef::Name(text.to_string()))
    }
}

impl fmt::Display for VmRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmRef::Id(id) => write!(f, "{id}"),
            VmRef::Name(name) => f.write_str(name),
        }
    }
}

/// A disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskFormat {
    /// A flat image.
    Raw,
    /// A qcow2 image.
    Qcow2,
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        })
    }
}

/// A disk given to `vmctl start -d`: `[raw:|qcow2:]path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskArg {
    /// The image, as an absolute path (vmctl resolves relative ones).
    pub path: PathBuf,
    /// The format; `None`: detected by vmd when it opens the image.
    pub format: Option<DiskFormat>,
}

/// `vmctl start`'s options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRequest {
    /// The VM to start: a configured or stopped VM by name or id, or the
    /// name of a new VM.
    pub vm: Option<VmRef>,
    /// `-t name`: start `vm` as an instance of this (template) VM.
    pub template: Option<String>,
    /// `-b path`: the kernel to boot (absolute path).
    pub kernel: Option<PathBuf>,
    /// `-d disk`, in order.
    pub disks: Vec<DiskArg>,
    /// `-m size`, in bytes.
    pub memory: Option<u64>,
    /// `-L`, given this many times: local interfaces, numbered first.
    pub local_interfaces: u32,
    /// `-n switch`, in order: an interface on each switch.
    pub switches: Vec<String>,
    /// `-i count`: at least this many interfaces in all.
    pub interfaces: u32,
}

/// What `reset` resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResetTarget {
    /// Everything: VMs and switches.
    All,
    /// Switches only.
    Switches,
    /// Every VM is stopped and removed.
    Vms,
}

/// `log brief|verbose`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogVerbosity {
    /// Informational messages and worse.
    Brief,
    /// Debug messages too.
    Verbose,
}

/// A request to vmd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Start a VM (`vmctl start`).
    Start(StartRequest),
    /// Stop one VM, or every VM when `vm` is `None` (`vmctl stop -a`).
    Stop {
        /// The VM, or `None` for all.
        vm: Option<VmRef>,
        /// `-f`: terminate without asking the guest.
        force: bool,
        /// `-w`: answer only once the VM(s) stopped.
        wait: bool,
    },
    /// List VMs (`vmctl status`, `show`).
    Status,
    /// Answer once the VM has stopped (`vmctl wait`).
    Wait(VmRef),
    /// Park the VM's vCPUs.
    Pause(VmRef),
    /// Let a paused VM's vCPUs run again.
    Unpause(VmRef),
    /// Add the configuration in this file (`vmctl load`).
    Load(PathBuf),
    /// Drop stopped VMs and re-read the configuration (`vmctl reload`).
    Reload,
    /// `vmctl reset`.
    Reset(ResetTarget),
    /// Set the log level of vmd and of every process of every VM.
    Log(LogVerbosity),
    /// List the VM's device processes (`vmctl device list`): answered by
    /// [`Response::Devices`].
    DeviceList(VmRef),
    /// Restart one device process of the VM (`vmctl device restart`).
    DeviceRestart {
        /// The VM.
        vm: VmRef,
        /// The device, e.g. "disk0", "net0", "console".
        device: String,
        /// `-d`: hold the new process stopped before it serves, for a
        /// debugger (root only).
        hold: bool,
    },
    /// Set one device's log level (`vmctl device log`, root only); it
    /// keeps it across restarts.
    DeviceLog {
        /// The VM.
        vm: VmRef,
        /// The device.
        device: String,
        /// The level.
        verbosity: LogVerbosity,
    },
    /// Attach to the VM's console (`vmctl console`): answered by
    /// [`Response::Console`] with the pty's fd; the connection stays open
    /// for as long as the client is attached, and its end detaches.
    Console(VmRef),
}

/// One device process of a VM, as `vmctl device list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// The device ("disk0", "net0", "console").
    pub name: String,
    /// Its process, `None` while a new one is not started yet.
    pub pid: Option<u32>,
    /// What the process is doing.
    pub state: DeviceState,
    /// Times it was restarted.
    pub restarts: u64,
    /// Requests completed, over every process the device had.
    pub requests: u64,
    /// Bytes moved to and from guest buffers, likewise.
    pub bytes: u64,
    /// Requests failed and queues stopped (by the guest or the host).
    pub errors: u64,
}

/// A device process's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// It serves.
    Running,
    /// Its process died; a new one is being started and given its state.
    Restarting,
    /// Held stopped before it serves (`vmctl device restart -d`), until
    /// whoever attached continues it.
    Held,
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceState::Running => "running",
            DeviceState::Restarting => "restarting",
            DeviceState::Held => "held",
        })
    }
}

/// A VM's state, as `vmctl status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// vCPUs run.
    Running,
    /// Configured, not running.
    Stopped,
    /// vCPUs parked by `vmctl pause`.
    Paused,
    /// Asked to stop, not gone yet.
    Stopping,
    /// Waiting for its turn in a staggered start.
    Waiting,
    /// Starting: the monitor is building the VM.
    Starting,
    /// vmd cannot tell.
    Unknown,
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmState::Running => "running",
            VmState::Stopped => "stopped",
            VmState::Paused => "paused",
            VmState::Stopping => "stopping",
            VmState::Waiting => "waiting",
            VmState::Starting => "starting",
            VmState::Unknown => "unknown",
        })
    }
}

/// One line of `vmctl status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    /// The VM's id.
    pub id: u32,
    /// The monitor's pid, while it runs.
    pub pid: Option<u32>,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM, bytes.
    pub max_mem: u64,
    /// Resident memory of the monitor, bytes, while it runs.
    pub cur_mem: Option<u64>,
    /// The console's terminal, while it runs (e.g. "/dev/pts/3").
    pub tty: Option<String>,
    /// Owner as configured ("root" when none).
    pub owner: String,
    /// State.
    pub state: VmState,
    /// Name.
    pub name: String,
}

/// Why a request failed, for the client's exit code and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// No VM by that name or id.
    NotFound,
    /// The peer may not do this.
    PermissionDenied,
    /// The VM is already in the wanted state, or a stop is pending.
    Already,
    /// The request or configuration is wrong.
    Invalid,
    /// A resource is in use (a locked disk).
    Busy,
    /// The host failed (cannot spawn, KVM error).
    Host,
}

/// vmd's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Done; the text says what was done (may be empty).
    Done(String),
    /// A VM was started.
    Started {
        /// Its id.
        id: u32,
        /// Its name.
        name: String,
        /// Its console terminal.
        tty: Option<String>,
    },
    /// The answer to [`Request::Status`], ordered by id.
    Status(Vec<VmStatus>),
    /// A VM stopped (for `wait` and `stop -w`; one per VM).
    Stopped {
        /// Its id.
        id: u32,
        /// Its name.
        name: String,
        /// How it ended, e.g. "guest powered off".
        how: String,
    },
    /// The console is yours: its pty (slave side) comes with this
    /// message as the one fd.
    Console {
        /// The VM's id.
        id: u32,
        /// Its name.
        name: String,
        /// The pty's path, for messages.
        tty: String,
    },
    /// The answer to [`Request::DeviceList`].
    Devices {
        /// The VM's id.
        id: u32,
        /// Its name.
        name: String,
        /// Its device processes.
        devices: Vec<DeviceStatus>,
    },
    /// The request failed; nothing was changed.
    Error {
        /// The class of error.
        kind: ErrorKind,
        /// A message naming what was wrong.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_checked_as_vmctl_does() {
        for good in ["web", "a", "db-1.example_x", "9lives"] {
            assert_eq!(check_vm_name(good), Ok(()), "{good}");
        }
        assert_eq!(check_vm_name(""), Err(NameError::Empty));
        assert!(matches!(check_vm_name(".x"), Err(NameError::BadStart(_))));
        assert!(matches!(check_vm_name("-x"), Err(NameError::BadStart(_))));
        assert!(matches!(check_vm_name("_x"), Err(NameError::BadStart(_))));
        assert!(matches!(
            check_vm_name("a b"),
            Err(NameError::BadCharacter(_))
        ));
        assert!(matches!(
            check_vm_name("a/b"),
            Err(NameError::BadCharacter(_))
        ));
        assert!(matches!(
            check_vm_name("é"),
            Err(NameError::BadCharacter(_))
        ));
        assert!(matches!(check_vm_name("123"), Err(NameError::Numeric(_))));
        assert!(matches!(
            check_vm_name(&"x".repeat(64)),
            Err(NameError::TooLong(_))
        ));
        assert_eq!(check_vm_name(&"x".repeat(63)), Ok(()));
    }

    #[test]
    fn vm_ref_digits_are_ids() {
        assert_eq!("12".parse(), Ok(VmRef::Id(12)));
        assert_eq!("web".parse(), Ok(VmRef::Name("web".into())));
        assert!("we b".parse::<VmRef>().is_err());
    }
}
