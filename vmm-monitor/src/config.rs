//! The monitor's command line, validated into a [`VmConfig`].

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
pub use ipc::size::{parse_size, SizeError};

/// Smallest guest RAM we accept: room for the low-memory tables, a small
/// kernel at 1 MiB and its stack.
pub const MIN_MEMORY: u64 = 4 << 20;
/// Largest guest RAM we accept (1 TiB); KVM and the host may allow less.
pub const MAX_MEMORY: u64 = 1 << 40;
/// Most vCPUs per VM: one package of 64 cores, APIC IDs 0..63.
pub const MAX_CPUS: usize = 64;

/// `vmm-monitor`: run one virtual machine.
#[derive(Debug, Parser)]
#[command(
    name = "vmm-monitor",
    version,
    about = "Run one virtual machine on KVM"
)]
pub struct Cli {
    /// Kernel to boot: a Linux bzImage, or an ELF with a PVH note.
    #[arg(long, value_name = "PATH", required_unless_present_any = ["control_fd", "launcher_fd"])]
    pub kernel: Option<PathBuf>,
    /// Control mode: take everything from vmd over the unix socket at fd
    /// N (see `ipc::monitor`) instead of from this command line.
    #[arg(long, value_name = "N", conflicts_with_all = ["kernel", "initrd", "cmdline", "memory", "cpus", "disk"])]
    pub control_fd: Option<i32>,
    /// Control mode: the pipe its sandbox's SIGSYS reporter writes to
    /// (vmd reads it once the monitor has ended).
    #[arg(long, value_name = "FD", requires = "control_fd")]
    pub report_fd: Option<i32>,
    /// The device launcher a monitor in control mode starts (its
    /// connection at fd N): see `vmm_monitor::launcher`.
    #[arg(long, value_name = "N", hide = true, conflicts_with_all = ["kernel", "control_fd"])]
    pub launcher_fd: Option<i32>,
    /// Initial ramdisk (bzImage: the initrd; PVH: module 0).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,
    /// Guest RAM, with a K, M, G or T suffix (e.g. 512M, 1.5G).
    #[arg(long, value_name = "SIZE", default_value = "512M")]
    pub memory: String,
    /// Number of vCPUs (1 to 64).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: usize,
    /// A disk: `PATH[,format=raw|qcow2][,readonly]`, served by its own
    /// dev-block process; `vhost-user=SOCKET` attaches an external
    /// vhost-user-blk backend instead. Repeatable.
    #[arg(long, value_name = "DISK")]
    pub disk: Vec<String>,
    /// More log output (repeat for more); SIGUSR1/SIGUSR2 change it while running.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Disk image formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    /// A raw image.
    Raw,
    /// A qcow2 image (versions 2 and 3).
    Qcow2,
}

/// A disk image and its backing chain, opened by vmd and passed as fds.
#[derive(Debug)]
pub struct DiskFiles {
    /// The image's path, for messages only.
    pub path: PathBuf,
    /// The format vmd found.
    pub format: DiskFormat,
    /// The guest sees a read-only disk.
    pub readonly: bool,
    /// The image (writable unless `readonly`).
    pub image: File,
    /// Its backing files, top-down, read-only.
    pub backing: Vec<File>,
}

impl PartialEq for DiskFiles {
    /// The same disk: same path, format and mode, and the same fds.
    fn eq(&self, other: &Self) -> bool {
        let fds = |d: &Self| {
            std::iter::once(d.image.as_raw_fd())
                .chain(d.backing.iter().map(|f| f.as_raw_fd()))
                .collect::<Vec<_>>()
        };
        (&self.path, self.format, self.readonly) == (&other.path, other.format, other.readonly)
            && fds(self) == fds(other)
    }
}

impl Eq for DiskFiles {}

/// Where a disk's requests are served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskBackend {
    /// An image file served by a dev-block process the monitor spawns.
    Image {
        /// The image path (the monitor opens it and passes the fd).
        path: PathBuf,
        /// The format; `None`: detected from the image (qcow2 magic, else raw).
        format: Option<DiskFormat>,
        /// The guest sees a read-only disk and the image is opened read-only.
        readonly: bool,
    },
    /// An external vhost-user-blk backend listening on a socket
    /// (qemu-storage-daemon, SPDK, a standalone dev-block).
    VhostUser {
        /// The backend's socket path.
        socket: PathBuf,
    },
    /// An image (and backing chain) already open, served by a dev-block
    /// process the monitor spawns with dups of the files; shared so that
    /// a rebuilt VM (after a guest reboot) serves the same files.
    Files(Arc<DiskFiles>),
}

impl std::str::FromStr for DiskBackend {
    type Err = ConfigError;

    /// Parses `PATH[,format=raw|qcow2][,readonly]` or `vhost-user=SOCKET`.
    fn from_str(text: &str) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::Disk {
            value: text.to_string(),
            why,
        };
        if let Some(socket) = text.strip_prefix("vhost-user=") {
            if socket.is_empty() || socket.contains(',') {
                return Err(bad(
                    "vhost-user= takes one socket path and no options".into()
                ));
            }
            return Ok(DiskBackend::VhostUser {
                socket: socket.into(),
            });
        }
        let mut parts = text.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| bad("no image path".into()))?;
        let (mut format, mut readonly) = (None, false);
        for option in parts {
            match option {
                "readonly" => readonly = true,
                "format=raw" => format = Some(DiskFormat::Raw),
                "format=qcow2" => format = Some(DiskFormat::Qcow2),
                other => {
                    return Err(bad(format!(
                        "unknown option '{other}' (format=raw|qcow2, readonly)"
                    )))
                }
            }
        }
        Ok(DiskBackend::Image {
            path: path.into(),
            format,
            readonly,
        })
    }
}

/// A validated VM configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Kernel image path.
    pub kernel: PathBuf,
    /// Initrd path, if any.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM in bytes: a multiple of 4 KiB within [MIN_MEMORY, MAX_MEMORY].
    pub memory: u64,
    /// vCPU count, 1..=MAX_CPUS.
    pub cpus: usize,
    /// Disks, in the order given (the guest sees them in PCI slot order).
    pub disks: Vec<DiskBackend>,
    /// How the VM's device processes are sandboxed.
    pub sandbox: DeviceSandbox,
    /// When a dead device process is restarted.
    pub restart_policy: crate::supervisor::RestartPolicy,
}

/// How a VM's device processes are sandboxed (crate sandbox-profiles:
/// each enters its profile before it serves).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceSandbox {
    /// The unprivileged uid and gid they become when the monitor runs as
    /// root (vmd gives each VM its own).
    pub user: Option<(u32, u32)>,
    /// Run them without their sandbox: debugging only, which vmd allows
    /// only when root asks (and every process logs loudly).
    pub off: bool,
}

impl DeviceSandbox {
    /// The device command-line options that say so.
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some((uid, gid)) = self.user {
            args.push("--sandbox-user".to_string());
            args.push(format!("{uid}:{gid}"));
        }
        if self.off {
            args.push("--no-sandbox".to_string());
        }
        args
    }
}

/// A command-line value that cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A size that does not parse.
    #[error("--{option}: {source}")]
    Size {
        /// The option it was given to.
        option: &'static str,
        /// What is wrong with it.
        #[source]
        source: SizeError,
    },
    /// Guest RAM outside the allowed range or not page aligned.
    #[error("--memory: {value} bytes is not usable guest RAM: {why}")]
    Memory {
        /// The parsed size.
        value: u64,
        /// Why not.
        why: &'static str,
    },
    /// A --disk value that does not parse.
    #[error("--disk {value}: {why}")]
    Disk {
        /// The value given.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// A vCPU count outside 1..=MAX_CPUS.
    #[error("--cpus: {0} is out of range (1 to {MAX_CPUS})")]
    Cpus(usize),
    /// Neither --kernel nor --control-fd (clap normally catches this).
    #[error("--kernel is required")]
    NoKernel,
}

/// Why `memory` bytes are not usable guest RAM, if they are not.
pub fn memory_problem(memory: u64) -> Option<&'static str> {
    if memory < MIN_MEMORY {
        Some("below the 4M minimum (a bare number counts bytes: did you mean a suffix like 512M?)")
    } else if memory > MAX_MEMORY {
        Some("above the 1T maximum")
    } else if memory % 4096 != 0 {
        Some("not a multiple of 4K")
    } else {
        None
    }
}

impl TryFrom<Cli> for VmConfig {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Self, ConfigError> {
        let memory = parse_size(&cli.memory).map_err(|source| ConfigError::Size {
            option: "memory",
            source,
        })?;
        if let Some(why) = memory_problem(memory) {
            return Err(ConfigError::Memory { value: memory, why });
        }
        if cli.cpus == 0 || cli.cpus > MAX_CPUS {
            return Err(ConfigError::Cpus(cli.cpus));
        }
        let disks = cli
            .disk
            .iter()
            .map(|d| d.parse())
            .collect::<Result<_, _>>()?;
        Ok(VmConfig {
            sandbox: DeviceSandbox::default(),
            restart_policy: crate::supervisor::RestartPolicy::default(),
            kernel: cli.kernel.ok_or(ConfigError::NoKernel)?,
            initrd: cli.initrd,
            cmdline: cli.cmdline,
            memory,
            cpus: cli.cpus,
            disks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(memory: &str, cpus: usize) -> Cli {
        Cli::parse_from([
            "vmm-monitor",
            "--kernel",
            "k",
            "--memory",
            memory,
            "--cpus",
            &cpus.to_string(),
        ])
    }

    #[test]
    fn parse_size_suffixes_scale_binary() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512MB"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("4.5g"), Ok(9 << 29));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
    }

    #[test]
    fn parse_size_garbage_is_refused_with_the_text() {
        for bad in [
            "", "M", "12Q", "1.G", ".5G", "-1G", "1 G", "0x10", "1B2", "B",
        ] {
            assert_eq!(
                parse_size(bad),
                Err(SizeError::Syntax(bad.to_string())),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_size("99999999999T"),
            Err(SizeError::Overflow("99999999999T".into()))
        );
        assert_eq!(
            parse_size("99999999999999999999"),
            Err(SizeError::Overflow("99999999999999999999".into()))
        );
    }

    #[test]
    fn config_defaults_are_512m_and_one_cpu() {
        let config = VmConfig::try_from(Cli::parse_from(["vmm-monitor", "--kernel", "k"])).unwrap();
        assert_eq!(
            (config.memory, config.cpus, config.cmdline.as_str()),
            (512 << 20, 1, "")
        );
    }

    #[test]
    fn config_bad_memory_names_the_problem() {
        let err = VmConfig::try_from(cli("512", 1)).unwrap_err();
        assert!(err.to_string().contains("did you mean"), "{err}");
        assert!(matches!(
            VmConfig::try_from(cli("2T", 1)),
            Err(ConfigError::Memory { .. })
        ));
        assert!(matches!(
            VmConfig::try_from(cli("5001K", 1)),
            Err(ConfigError::Memory { .. })
        ));
        let err = VmConfig::try_from(cli("lots", 1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--memory: 'lots' is not a size (a number with an optional K, M, G or T suffix)"
        );
    }

    #[test]
    fn disk_option_parses_path_format_and_readonly() {
        assert_eq!(
            "a.qcow2,format=qcow2,readonly"
                .parse::<DiskBackend>()
                .unwrap(),
            DiskBackend::Image {
                path: "a.qcow2".into(),
                format: Some(DiskFormat::Qcow2),
                readonly: true
            }
        );
        assert_eq!(
            "/d/x.img".parse::<DiskBackend>().unwrap(),
            DiskBackend::Image {
                path: "/d/x.img".into(),
                format: None,
                readonly: false
            }
        );
        assert_eq!(
            "vhost-user=/run/qsd.sock".parse::<DiskBackend>().unwrap(),
            DiskBackend::VhostUser {
                socket: "/run/qsd.sock".into()
            }
        );
    }

    #[test]
    fn disk_option_errors_name_value_and_problem() {
        let err = "x.img,format=vmdk".parse::<DiskBackend>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "--disk x.img,format=vmdk: unknown option 'format=vmdk' (format=raw|qcow2, readonly)"
        );
        assert!(",readonly"
            .parse::<DiskBackend>()
            .unwrap_err()
            .to_string()
            .contains("no image path"));
        assert!("vhost-user=".parse::<DiskBackend>().is_err());
        assert!("vhost-user=/s,readonly".parse::<DiskBackend>().is_err());
    }

    #[test]
    fn control_fd_replaces_the_vm_options() {
        let cli = Cli::try_parse_from(["vmm-monitor", "--control-fd", "3", "-vv"]).unwrap();
        assert_eq!(
            (cli.control_fd, cli.kernel, cli.verbose),
            (Some(3), None, 2)
        );
        assert!(
            Cli::try_parse_from(["vmm-monitor", "--control-fd", "3", "--kernel", "k"]).is_err()
        );
        assert!(Cli::try_parse_from(["vmm-monitor"]).is_err());
    }

    #[test]
    fn config_cpu_count_is_bounded() {
        assert_eq!(VmConfig::try_from(cli("1G", 0)), Err(ConfigError::Cpus(0)));
        assert_eq!(
            VmConfig::try_from(cli("1G", 65)),
            Err(ConfigError::Cpus(65))
        );
        assert_eq!(VmConfig::try_from(cli("1G", 64)).unwrap().cpus, 64);
    }
}
