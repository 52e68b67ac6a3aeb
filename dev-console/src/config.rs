//! dev-console's command line, validated into a [`ConsoleConfig`].
//!
//! Two ways to run:
//! - under the monitor: `--socket-fd 3 --pty-fd 4 --pty-slave-fd 5
//!   --com-fd 6`: the vhost-user connection, the pty master and slave and
//!   the side channel (SOCK_SEQPACKET, [`ipc::console`]) are inherited
//!   fds; the process opens nothing by path and exits when the monitor
//!   closes either connection;
//! - standalone, for debugging with another frontend: `--socket PATH`
//!   listens on PATH (again after each frontend). The pty is passed
//!   (`--pty-fd` and `--pty-slave-fd`) or, without them, a new one is
//!   opened and its slave's name logged; `--com-fd` is optional, and
//!   without it the console counts as attached from the start.

use clap::Parser;
pub use dev_backend::process::Connection;
use dev_backend::process::{passed_fd, ConnectionArgs, FdError};

/// Smallest (and default) ring of recent output: a few screens of boot
/// messages, replayed to a client that attaches late.
pub const MIN_RING_SIZE: usize = 64 * 1024;
/// Largest ring `--ring-size` accepts: the ring is allocated whole at
/// start, one per VM, so memory stays bounded per console.
pub const MAX_RING_SIZE: usize = 64 * 1024 * 1024;

/// `dev-console`: a virtio-console and COM1, merged on one pty.
#[derive(Debug, Parser)]
#[command(
    name = "dev-console",
    version,
    about = "vhost-user virtio-console backend merging the guest's virtio port and COM1 on a pty"
)]
pub struct Cli {
    /// The vhost-user connection: `--socket-fd FD` or `--socket PATH`.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// The sandbox: `--report-fd FD`, `--sandbox-user UID:GID`, `--no-sandbox`.
    #[command(flatten)]
    pub sandbox: dev_backend::SandboxArgs,
    /// Inherited fd of the pty master.
    #[arg(long, value_name = "FD")]
    pub pty_fd: Option<i32>,
    /// Inherited fd of the pty slave (held open, never read).
    #[arg(long, value_name = "FD")]
    pub pty_slave_fd: Option<i32>,
    /// Inherited fd of the side channel to the monitor (SOCK_SEQPACKET).
    #[arg(long, value_name = "FD")]
    pub com_fd: Option<i32>,
    /// Bytes of recent output kept for replay (at least 64K; K/M suffixes).
    #[arg(long, value_name = "BYTES", conflicts_with = "ring_fd")]
    pub ring_size: Option<String>,
    /// Inherited memfd the ring is kept in (under the monitor, which keeps
    /// it for this process's successors): its size, less a header, is the
    /// ring's.
    #[arg(long, value_name = "FD")]
    pub ring_fd: Option<i32>,
    /// More log output (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Where the pty comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PtySource {
    /// Inherited master and slave.
    Fds {
        /// The master.
        master: i32,
        /// The slave.
        slave: i32,
    },
    /// Opened by the process (standalone only).
    Open,
}

/// A validated dev-console configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// The vhost-user connection.
    pub connection: Connection,
    /// The sandbox options.
    pub sandbox: dev_backend::SandboxArgs,
    /// The pty.
    pub pty: PtySource,
    /// The side channel to the monitor, if any (always under the monitor).
    pub side_channel: Option<i32>,
    /// Ring size in bytes, MIN_RING_SIZE..=MAX_RING_SIZE.
    pub ring_size: usize,
    /// The memfd the ring is kept in, if any (then `ring_size` is unused).
    pub ring_fd: Option<i32>,
}

/// A command line that cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// An fd below 3 (stdin/stdout/stderr are not passed resources).
    #[error(transparent)]
    Fd(#[from] FdError),
    /// One fd given for two purposes.
    #[error("fd {0} is passed for two purposes")]
    SameFd(i32),
    /// A required option is missing.
    #[error("{0} is required with --socket-fd")]
    Missing(&'static str),
    /// One pty fd without the other.
    #[error("--pty-fd and --pty-slave-fd go together")]
    HalfPty,
    /// An unreadable ring size.
    #[error("--ring-size")]
    RingSyntax(#[source] ipc::size::SizeError),
    /// A ring size out of range.
    #[error("--ring-size: {0} bytes is out of range ({MIN_RING_SIZE} to {MAX_RING_SIZE})")]
    RingRange(u64),
}

fn passed_fd_opt(option: &'static str, fd: Option<i32>) -> Result<Option<i32>, FdError> {
    fd.map(|fd| passed_fd(option, fd)).transpose()
}

fn ring_size(text: Option<&str>) -> Result<usize, ConfigError> {
    let Some(text) = text else {
        return Ok(MIN_RING_SIZE);
    };
    let size = ipc::size::parse_size(text).map_err(ConfigError::RingSyntax)?;
    match usize::try_from(size) {
        Ok(n) if (MIN_RING_SIZE..=MAX_RING_SIZE).contains(&n) => Ok(n),
        _ => Err(ConfigError::RingRange(size)),
    }
}

impl TryFrom<Cli> for ConsoleConfig {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Self, ConfigError> {
        let connection = cli.connection.connection()?;
        let master = passed_fd_opt("pty-fd", cli.pty_fd)?;
        let slave = passed_fd_opt("pty-slave-fd", cli.pty_slave_fd)?;
        let side_channel = passed_fd_opt("com-fd", cli.com_fd)?;
        let pty = match (master, slave) {
            (Some(master), Some(slave)) => PtySource::Fds { master, slave },
            (None, None) => PtySource::Open,
            _ => return Err(ConfigError::HalfPty),
        };
        let connection = match connection {
            Some(fd @ Connection::Fd { .. }) => {
                if pty == PtySource::Open {
                    return Err(ConfigError::Missing("--pty-fd"));
                }
                if side_channel.is_none() {
                    return Err(ConfigError::Missing("--com-fd"));
                }
                fd
            }
            Some(listen) => listen,
            None => return Err(ConfigError::Missing("--socket-fd or --socket")),
        };
        let ring_fd = passed_fd_opt("ring-fd", cli.ring_fd)?;
        let mut fds: Vec<i32> = [master, slave, side_channel, ring_fd]
            .into_iter()
            .flatten()
            .chain(connection.passed_fds())
            .collect();
        fds.sort_unstable();
        if let Some(w) = fds.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::SameFd(w[0]));
        }
        cli.sandbox.validate()?;
        Ok(Self {
            connection,
            sandbox: cli.sandbox,
            pty,
            side_channel,
            ring_size: ring_size(cli.ring_size.as_deref())?,
            ring_fd,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ConsoleConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("dev-console").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        ConsoleConfig::try_from(cli).map_err(|e| ipc::error_chain(&e))
    }

    const MONITOR: [&str; 8] = [
        "--socket-fd",
        "3",
        "--pty-fd",
        "4",
        "--pty-slave-fd",
        "5",
        "--com-fd",
        "6",
    ];

    #[test]
    fn config_monitor_mode_takes_fds() {
        let c = parse(&MONITOR).unwrap();
        assert_eq!(c.connection, Connection::fd(3));
        assert_eq!(
            c.pty,
            PtySource::Fds {
                master: 4,
                slave: 5
            }
        );
        assert_eq!((c.side_channel, c.ring_size), (Some(6), MIN_RING_SIZE));
        let mut args = MONITOR.to_vec();
        args.extend(["--ring-size", "1M"]);
        assert_eq!(parse(&args).unwrap().ring_size, 1 << 20);
        let mut args = MONITOR.to_vec();
        args.extend(["--ring-fd", "7"]);
        assert_eq!(parse(&args).unwrap().ring_fd, Some(7));
        args.extend(["--ring-size", "1M"]);
        assert!(parse(&args).is_err(), "the fd's size is the ring's");
        let mut args = MONITOR.to_vec();
        args.extend(["--ring-fd", "6"]);
        assert_eq!(parse(&args).unwrap_err(), "fd 6 is passed for two purposes");
    }

    #[test]
    fn config_standalone_mode_opens_its_own_pty() {
        let c = parse(&["--socket", "/tmp/c.sock"]).unwrap();
        assert_eq!(c.connection, Connection::Listen("/tmp/c.sock".into()));
        assert_eq!((c.pty, c.side_channel), (PtySource::Open, None));
        let c = parse(&["--socket", "s", "--pty-fd", "4", "--pty-slave-fd", "5"]).unwrap();
        assert_eq!(
            c.pty,
            PtySource::Fds {
                master: 4,
                slave: 5
            }
        );
    }

    #[test]
    fn config_errors_name_the_option() {
        assert_eq!(
            parse(&["--socket-fd", "3", "--pty-fd", "4", "--pty-slave-fd", "5"]).unwrap_err(),
            "--com-fd is required with --socket-fd"
        );
        assert_eq!(
            parse(&["--socket-fd", "3", "--com-fd", "6"]).unwrap_err(),
            "--pty-fd is required with --socket-fd"
        );
        assert_eq!(
            parse(&["--socket", "s", "--pty-fd", "4"]).unwrap_err(),
            "--pty-fd and --pty-slave-fd go together"
        );
        let mut args = MONITOR.to_vec();
        args[7] = "2";
        assert_eq!(
            parse(&args).unwrap_err(),
            "--com-fd: fd 2 is not a passed fd (3 or more)"
        );
        args[7] = "4";
        assert_eq!(parse(&args).unwrap_err(), "fd 4 is passed for two purposes");
        let mut args = MONITOR.to_vec();
        args.extend(["--ring-size", "4K"]);
        assert_eq!(
            parse(&args).unwrap_err(),
            "--ring-size: 4096 bytes is out of range (65536 to 67108864)"
        );
        args[9] = "lots";
        assert!(parse(&args).unwrap_err().starts_with("--ring-size: 'lots'"));
        assert!(
            parse(&["--pty-fd", "4"]).is_err(),
            "a connection is required"
        );
        assert!(parse(&["--socket-fd", "3", "--socket", "s"]).is_err());
    }
}
