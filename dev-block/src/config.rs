//! dev-block's command line, validated into a [`BlockConfig`].
//!
//! Two ways to run:
//! - under the monitor: `--socket-fd 3 --disk-fd 4 [--backing-fd N]...`: the
//!   vhost-user connection and the image (and its qcow2 backing chain, top
//!   down) are inherited fds; the process opens nothing by path and exits
//!   when the monitor hangs up;
//! - standalone, for other frontends (QEMU, Cloud Hypervisor):
//!   `--socket PATH --disk PATH`: it listens on PATH, opens the image (and
//!   its backing files) itself, and listens again after each frontend.

use std::path::PathBuf;

use clap::Parser;
pub use dev_backend::process::Connection;
use dev_backend::process::{passed_fd, ConnectionArgs, FdError};

use crate::disk::Format;

/// Default (and largest) descriptors per queue.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Most request queues.
pub const MAX_QUEUES: u16 = 16;
/// Default I/O threads per request queue.
///
/// Per queue because the guest's concurrency grows with its queues (Linux
/// gives each vCPU one); 8 because on the development machine (2 host
/// vCPUs, ext4 on a virtio disk) uncached 4 KiB random reads at queue depth
/// 32 on 2 queues ran the same within noise with 4 to 16 threads, and worse
/// and noisier with 32 or 64 (docs/benchmarks.md). A disk with more
/// parallelism (NVMe) may want more: `--io-threads`.
pub const IO_THREADS_PER_QUEUE: usize = 8;
/// Default I/O threads at most (qemu-storage-daemon's pool is 64).
pub const MAX_DEFAULT_IO_THREADS: usize = 64;
/// Most I/O threads `--io-threads` accepts.
pub const MAX_IO_THREADS: usize = 256;

/// `dev-block`: serve a disk image as a vhost-user-blk device.
#[derive(Debug, Parser)]
#[command(
    name = "dev-block",
    version,
    about = "vhost-user-blk backend for raw and qcow2 images"
)]
pub struct Cli {
    /// The vhost-user connection: `--socket-fd FD` or `--socket PATH`.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// The sandbox: `--report-fd FD`, `--sandbox-user UID:GID`, `--no-sandbox`.
    #[command(flatten)]
    pub sandbox: dev_backend::SandboxArgs,
    /// Inherited fd of the image (under the monitor).
    #[arg(
        long,
        value_name = "FD",
        conflicts_with = "disk",
        required_unless_present = "disk"
    )]
    pub disk_fd: Option<i32>,
    /// Image path (standalone).
    #[arg(long, value_name = "PATH")]
    pub disk: Option<PathBuf>,
    /// Inherited fds of the qcow2 backing chain, top down (under the monitor).
    #[arg(long, value_name = "FD")]
    pub backing_fd: Vec<i32>,
    /// Image format (default: qcow2 if the image says so, else raw).
    #[arg(long, value_name = "raw|qcow2")]
    pub format: Option<String>,
    /// Serve a read-only disk.
    #[arg(long)]
    pub readonly: bool,
    /// Request queues.
    #[arg(long, default_value_t = 1)]
    pub queues: u16,
    /// I/O threads that run requests (default: 8 per queue, at most 64).
    #[arg(long, value_name = "N")]
    pub io_threads: Option<usize>,
    /// The ID string a guest's GET_ID request returns (at most 20 bytes).
    #[arg(long, default_value = "")]
    pub serial: String,
    /// More log output (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Where the image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// Inherited fds: the image and its backing chain, top down.
    Fds {
        /// The image.
        image: i32,
        /// The backing chain.
        backing: Vec<i32>,
    },
    /// A path; backing files are found relative to it.
    Path(PathBuf),
}

/// A validated dev-block configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// The vhost-user connection.
    pub connection: Connection,
    /// The sandbox options.
    pub sandbox: dev_backend::SandboxArgs,
    /// The image.
    pub image: ImageSource,
    /// The format, if given.
    pub format: Option<Format>,
    /// Read-only disk.
    pub readonly: bool,
    /// Request queues, 1..=MAX_QUEUES.
    pub queues: u16,
    /// I/O threads, 1..=MAX_IO_THREADS.
    pub io_threads: usize,
    /// GET_ID string.
    pub serial: String,
}

/// A command line that cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Unknown format name.
    #[error("--format: '{0}' is not raw or qcow2")]
    Format(String),
    /// Queue count out of range.
    #[error("--queues: {0} is out of range (1 to {MAX_QUEUES})")]
    Queues(u16),
    /// An fd below 3 (stdin/stdout/stderr are not passed resources).
    #[error(transparent)]
    Fd(#[from] FdError),
    /// I/O thread count out of range.
    #[error("--io-threads: {0} is out of range (1 to {MAX_IO_THREADS})")]
    IoThreads(usize),
    /// A required option is missing.
    #[error("{0} is required")]
    Missing(&'static str),
    /// One fd passed for two purposes.
    #[error("fd {0} is given for two purposes")]
    SameFd(i32),
    /// Backing fds with a path image.
    #[error("--backing-fd goes with --disk-fd; with --disk, backing files are found by path")]
    BackingWithPath,
}

impl TryFrom<Cli> for BlockConfig {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Self, ConfigError> {
        let connection = cli
            .connection
            .connection()?
            .ok_or(ConfigError::Missing("--socket-fd or --socket"))?;
        let image = match (cli.disk_fd, cli.disk) {
            (Some(fd), _) => ImageSource::Fds {
                image: passed_fd("disk-fd", fd)?,
                backing: cli
                    .backing_fd
                    .iter()
                    .map(|fd| passed_fd("backing-fd", *fd))
                    .collect::<Result<_, _>>()?,
            },
            (None, Some(path)) if cli.backing_fd.is_empty() => ImageSource::Path(path),
            (None, Some(_)) => return Err(ConfigError::BackingWithPath),
            (None, None) => return Err(ConfigError::Missing("--disk-fd or --disk")),
        };
        let mut fds = connection.passed_fds();
        if let ImageSource::Fds { image, backing } = &image {
            fds.push(*image);
            fds.extend(backing);
        }
        fds.sort_unstable();
        if let Some(w) = fds.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::SameFd(w[0]));
        }
        let format = cli
            .format
            .map(|f| Format::from_name(&f).ok_or(ConfigError::Format(f)))
            .transpose()?;
        if cli.queues == 0 || cli.queues > MAX_QUEUES {
            return Err(ConfigError::Queues(cli.queues));
        }
        let io_threads = match cli.io_threads {
            Some(n) if n == 0 || n > MAX_IO_THREADS => return Err(ConfigError::IoThreads(n)),
            Some(n) => n,
            None => (usize::from(cli.queues) * IO_THREADS_PER_QUEUE).min(MAX_DEFAULT_IO_THREADS),
        };
        cli.sandbox.validate()?;
        Ok(Self {
            connection,
            sandbox: cli.sandbox,
            image,
            format,
            readonly: cli.readonly,
            queues: cli.queues,
            io_threads,
            serial: cli.serial,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<BlockConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("dev-block").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        BlockConfig::try_from(cli).map_err(|e| e.to_string())
    }

    #[test]
    fn config_monitor_mode_takes_fds() {
        let c = parse(&[
            "--socket-fd",
            "3",
            "--disk-fd",
            "4",
            "--backing-fd",
            "5",
            "--queues",
            "2",
        ])
        .unwrap();
        assert_eq!(c.connection, Connection::fd(3));
        assert_eq!(
            c.image,
            ImageSource::Fds {
                image: 4,
                backing: vec![5]
            }
        );
        assert_eq!((c.queues, c.io_threads), (2, 16));
    }

    #[test]
    fn config_standalone_mode_takes_paths() {
        let c = parse(&[
            "--socket",
            "/tmp/s",
            "--disk",
            "d.qcow2",
            "--format",
            "qcow2",
            "--readonly",
        ])
        .unwrap();
        assert_eq!(c.connection, Connection::Listen("/tmp/s".into()));
        assert_eq!(c.image, ImageSource::Path("d.qcow2".into()));
        assert_eq!((c.format, c.readonly), (Some(Format::Qcow2), true));
        assert_eq!(c.io_threads, IO_THREADS_PER_QUEUE);
        let c = parse(&["--socket", "s", "--disk", "d", "--io-threads", "3"]).unwrap();
        assert_eq!(c.io_threads, 3);
    }

    #[test]
    fn config_errors_name_the_option() {
        assert_eq!(
            parse(&["--socket-fd", "1", "--disk-fd", "4"]).unwrap_err(),
            "--socket-fd: fd 1 is not a passed fd (3 or more)"
        );
        assert_eq!(
            parse(&["--socket", "s", "--disk", "d", "--format", "vmdk"]).unwrap_err(),
            "--format: 'vmdk' is not raw or qcow2"
        );
        assert_eq!(
            parse(&["--socket", "s", "--disk", "d", "--queues", "0"]).unwrap_err(),
            "--queues: 0 is out of range (1 to 16)"
        );
        assert_eq!(
            parse(&["--socket", "s", "--disk", "d", "--io-threads", "0"]).unwrap_err(),
            "--io-threads: 0 is out of range (1 to 256)"
        );
        assert!(parse(&["--socket", "s", "--disk", "d", "--backing-fd", "5"]).is_err());
        assert!(parse(&["--disk", "d"]).is_err(), "a connection is required");
        assert!(parse(&["--socket-fd", "3", "--socket", "s", "--disk", "d"]).is_err());
        assert_eq!(
            parse(&["--socket-fd", "3", "--metrics-fd", "4", "--disk-fd", "4"]).unwrap_err(),
            "fd 4 is given for two purposes"
        );
    }
}
