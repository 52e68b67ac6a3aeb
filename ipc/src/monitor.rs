//! The protocol between vmd and a VM's monitor.
//!
//! vmd starts a monitor with one end of a socketpair at fd 3 and sends, in
//! order: [`ToMonitor::Launch`] (with the fds [`Launch`] lists),
//! one [`ToMonitor::Disk`] per disk (with that disk's fds), one
//! [`ToMonitor::Nic`] per network interface (with its tap's fd), and
//! [`ToMonitor::Run`]. The monitor builds the VM and answers
//! [`FromMonitor::Started`], or [`FromMonitor::Failed`] and exits.
//!
//! From then on vmd sends requests (pause, unpause, stop, log level), each
//! answered by [`FromMonitor::Done`] or [`FromMonitor::Failed`], and the
//! monitor reports events: [`FromMonitor::Rebooted`] when the guest reset
//! and the monitor rebuilt it in place, and [`FromMonitor::Exited`] just
//! before it exits.
//!
//! The monitor does not die with vmd. It also listens on a socket vmd
//! bound for it (`/run/vmd/vm<id>.sock`, passed as an fd); a vmd started
//! again connects there, sends [`ToMonitor::Hello`], gets
//! [`FromMonitor::Identity`], and carries on with that connection as
//! above. A monitor has one vmd connection at a time: a new one replaces
//! the old.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::control::DiskFormat;

/// The fd number the monitor finds its first vmd connection at.
pub const CONTROL_FD: i32 = 3;
/// The fd a sandboxed monitor finds the pipe its SIGSYS reporter writes
/// to (vmd reads it when the monitor has ended).
pub const REPORT_FD: i32 = 4;

/// A log level as carried in messages (absolute, unlike SIGUSR1/SIGUSR2 steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Informational messages and worse.
    Info,
    /// Debug messages too.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// As the `log` crate's filter.
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }

    /// From the `log` crate's filter (`Off` counts as errors only).
    pub fn from_filter(filter: log::LevelFilter) -> Self {
        match filter {
            log::LevelFilter::Off | log::LevelFilter::Error => LogLevel::Error,
            log::LevelFilter::Warn => LogLevel::Warn,
            log::LevelFilter::Info => LogLevel::Info,
            log::LevelFilter::Debug => LogLevel::Debug,
            log::LevelFilter::Trace => LogLevel::Trace,
        }
    }
}

/// What vmd knows of a running VM and needs back when it re-adopts the
/// monitor; the monitor uses `name`, `memory` and `cpus`, and keeps the
/// rest for vmd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// vmd's id of the VM.
    pub id: u32,
    /// The VM's name.
    pub name: String,
    /// Guest RAM, bytes.
    pub memory: u64,
    /// vCPUs.
    pub cpus: u32,
    /// The kernel's path (the monitor gets it as an fd).
    pub kernel: PathBuf,
    /// The disks' paths and formats, in order.
    pub disks: Vec<(PathBuf, DiskFormat)>,
    /// The owner's uid, if the VM has an owning user.
    pub owner_uid: Option<u32>,
    /// The owner's gid, if the VM has an owning group.
    pub owner_gid: Option<u32>,
    /// The owner as `vmctl status` shows it.
    pub owner: String,
    /// The console's terminal path.
    pub tty: Option<String>,
    /// The template, for an instance started with `vmctl start -t`.
    pub instance_of: Option<String>,
    /// The VM came from vm.conf (not `vmctl start` alone).
    pub configured: bool,
}

/// The first message to a monitor. Its fds, in order: /dev/kvm, the
/// kernel, the initrd (if `initrd`), the console's pty master and slave
/// (if `console`), and the listening socket for later vmd connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    /// The VM.
    pub record: VmRecord,
    /// The kernel command line.
    pub cmdline: String,
    /// An initrd fd follows the kernel's.
    pub initrd: bool,
    /// A console pty (master, slave) follows.
    pub console: bool,
    /// The log level to start with.
    pub log_level: LogLevel,
    /// The unprivileged uid and gid the VM's device processes become.
    pub sandbox_user: Option<(u32, u32)>,
    /// Run the VM's device processes without their sandbox (debugging;
    /// vmd sets it only when root asked).
    pub sandbox_off: bool,
    /// vm.conf's `restarts N`: quick deaths in a row of a device process
    /// after which the VM stops (0: never restart one); `None`: the
    /// monitor's default.
    pub device_restarts: Option<u32>,
}

/// One disk, opened (and locked) by vmd. Its fds: the image, then its
/// backing chain top-down (`backing` of them), all read-only but the image
/// of a writable disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskAttach {
    /// The image's path, for messages.
    pub path: PathBuf,
    /// Its format, as vmd found it.
    pub format: DiskFormat,
    /// The guest sees a read-only disk.
    pub readonly: bool,
    /// How many backing-file fds follow the image's.
    pub backing: u8,
}

/// vmd to monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToMonitor {
    /// The VM to build, with its fds.
    Launch(Launch),
    /// A disk, with its fds.
    Disk(DiskAttach),
    /// Build the VM and start its vCPUs.
    Run,
    /// A vmd (re)connecting on the listening socket: say who you are.
    Hello,
    /// Park every vCPU.
    Pause,
    /// Let the vCPUs run again.
    Unpause,
    /// End the VM now.
    Stop,
    /// Set the log level of the monitor and its device processes.
    SetLogLevel(LogLevel),
    /// A `vmctl console` client is about to read the pty: dev-console
    /// drops what is queued there and replays its ring of recent output.
    ConsoleAttach,
    /// That client left: console output goes to the ring only.
    ConsoleDetach,
    /// List the VM's device processes: answered by
    /// [`FromMonitor::Devices`].
    Devices,
    /// Restart device process `name` (e.g. "disk0"): it is killed, and
    /// its supervisor starts another as for any death; with `hold`, held
    /// stopped before it serves (answered by [`FromMonitor::Held`]).
    RestartDevice {
        /// The device.
        name: String,
        /// Hold the new process for a debugger.
        hold: bool,
    },
    /// Set device `name`'s log level, for its process and its successors.
    DeviceLogLevel {
        /// The device.
        name: String,
        /// The level.
        level: LogLevel,
    },
    /// A network interface, with its tap's fd (sent between the Disks and
    /// Run).
    Nic(NicAttach),
}

/// One network interface: vmd made and configured its tap (fd: the tap,
/// IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicAttach {
    /// The tap's name, for messages.
    pub tap: String,
    /// The guest's Ethernet address.
    pub mac: [u8; 6],
    /// `locked lladdr`.
    pub locked: bool,
    /// For a local interface: the addresses the built-in DHCP server
    /// hands out (guest) and names as router and DNS (host).
    pub dhcp: Option<LocalDhcp>,
}

/// The two ends of a local interface's /31.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalDhcp {
    /// The guest's address.
    pub guest: std::net::Ipv4Addr,
    /// The host side's (the tap's) address.
    pub host: std::net::Ipv4Addr,
    /// The tap's own Ethernet address (the source of DHCP replies).
    pub host_mac: [u8; 6],
}

/// Monitor to vmd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromMonitor {
    /// The VM is built and its vCPUs run.
    Started {
        /// The monitor's pid.
        pid: u32,
    },
    /// The answer to [`ToMonitor::Hello`].
    Identity {
        /// What vmd sent at launch.
        record: VmRecord,
        /// The monitor's pid.
        pid: u32,
        /// The vCPUs are parked.
        paused: bool,
    },
    /// A request was carried out.
    Done,
    /// A request failed (for [`ToMonitor::Run`]: the VM could not be
    /// built, and the monitor exits).
    Failed(String),
    /// The answer to [`ToMonitor::Devices`].
    Devices(Vec<crate::control::DeviceStatus>),
    /// The answer to a held [`ToMonitor::RestartDevice`]: the new process,
    /// stopped.
    Held {
        /// Its pid.
        pid: u32,
    },
    /// The guest reset; the monitor rebuilt the VM and it runs again.
    Rebooted,
    /// The VM ended; the monitor exits next.
    Exited {
        /// How, e.g. "guest powered off".
        reason: String,
        /// The monitor's exit code (see vmm_monitor::exit).
        code: i32,
    },
}
