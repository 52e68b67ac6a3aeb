//! The process side every device shares: where its vhost-user connection
//! comes from, and the fds the monitor passes it.
//!
//! A device process runs in one of two ways:
//! - under the monitor, `--socket-fd FD`: the connection is an inherited,
//!   connected socket; the process serves it once and exits when the
//!   frontend hangs up;
//! - standalone, `--socket PATH`: it listens on PATH and listens again
//!   after each frontend.
//!
//! [`ConnectionArgs`] is that pair of options, flattened into each
//! device's command line; [`ConnectionArgs::connection`] validates it into
//! a [`Connection`], [`Connection::open`] takes the fd (at run time, once)
//! and [`Endpoint::serve`] serves a device on it.
//!
//! Passed fds: the monitor hands resources down as fds 3 and up; stdin,
//! stdout and stderr are never resources ([`passed_fd`]). A passed fd is
//! owned by the process only once [`take_passed_fd`] has checked it is
//! open; each fd must be taken at most once, which every device's config
//! ensures by refusing one fd for two purposes.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use crate::device::Device;
use crate::serve::{serve_connection, serve_listener, ServeError};

/// The vhost-user connection options, for `#[command(flatten)]`.
///
/// Invariant (enforced by clap when parsed): exactly one of the two is
/// present.
#[derive(Clone, Debug, clap::Args)]
pub struct ConnectionArgs {
    /// Inherited fd of the vhost-user connection (under the monitor).
    #[arg(
        long,
        value_name = "FD",
        conflicts_with = "socket",
        required_unless_present = "socket"
    )]
    pub socket_fd: Option<i32>,
    /// Socket path to listen on (standalone).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// Where the vhost-user connection comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    /// An inherited, connected socket: a passed fd (3 or more), not yet
    /// taken.
    Fd(i32),
    /// A path to listen on.
    Listen(PathBuf),
}

/// A passed fd that cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FdError {
    /// An fd below 3 (stdin/stdout/stderr are not passed resources).
    #[error("--{option}: fd {fd} is not a passed fd (3 or more)")]
    NotPassed {
        /// The option, without its leading `--`.
        option: &'static str,
        /// The fd.
        fd: i32,
    },
    /// A passed fd that is not open.
    #[error("fd {fd} ({what}) is not open")]
    NotOpen {
        /// The fd.
        fd: i32,
        /// What it was for.
        what: &'static str,
    },
    /// The socket to listen on could not be bound.
    #[error("--socket {}: cannot listen there: {reason}", path.display())]
    Listen {
        /// The path.
        path: PathBuf,
        /// Why (the OS error's text).
        reason: String,
    },
}

/// Checks that `fd`, given with `--option`, can be a passed fd (3 or more).
pub fn passed_fd(option: &'static str, fd: i32) -> Result<i32, FdError> {
    if fd >= 3 {
        Ok(fd)
    } else {
        Err(FdError::NotPassed { option, fd })
    }
}

/// Takes ownership of passed fd `fd` (for `what`) after checking that it
/// is open.
///
/// The caller must take each passed fd once and must not use `fd` as a
/// raw fd afterwards: the returned `OwnedFd` closes it.
pub fn take_passed_fd(fd: RawFd, what: &'static str) -> Result<OwnedFd, FdError> {
    // SAFETY: F_GETFD only queries the fd's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(FdError::NotOpen { fd, what });
    }
    // SAFETY: the fd is open, was passed to this process for this purpose,
    // and nothing else in the process owns it (each device's config
    // refuses one fd for two purposes, and each is taken once).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl ConnectionArgs {
    /// The validated connection: `--socket-fd` (which must be 3 or more)
    /// wins over `--socket`; `None` if neither is given (clap refuses
    /// that when parsing).
    pub fn connection(self) -> Result<Option<Connection>, FdError> {
        Ok(match (self.socket_fd, self.socket) {
            (Some(fd), _) => Some(Connection::Fd(passed_fd("socket-fd", fd)?)),
            (None, Some(path)) => Some(Connection::Listen(path)),
            (None, None) => None,
        })
    }
}

/// A connection ready to serve: its fd, if any, taken.
#[derive(Debug)]
pub enum Endpoint {
    /// The inherited, connected socket.
    Stream(UnixStream),
    /// A socket listening at a path (bound already).
    Listen(PathBuf, UnixListener),
}

impl Connection {
    /// Takes the connection's fd (as "vhost-user socket"), if it has one.
    pub fn open(self) -> Result<Endpoint, FdError> {
        Ok(match self {
            Connection::Fd(fd) => {
                Endpoint::Stream(UnixStream::from(take_passed_fd(fd, "vhost-user socket")?))
            }
            Connection::Listen(path) => {
                let listener = crate::serve::listen(&path).map_err(|e| FdError::Listen {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                Endpoint::Listen(path, listener)
            }
        })
    }
}

impl Endpoint {
    /// Serves `device`: on the stream until the frontend hangs up
    /// ([`serve_connection`]), or on the listening socket forever
    /// ([`serve_listener`], which returns only errors).
    pub fn serve<D: Device>(self, device: Arc<D>) -> Result<(), ServeError> {
        match self {
            Endpoint::Stream(stream) => serve_connection(stream, device),
            Endpoint::Listen(path, listener) => serve_listener(&listener, &path, device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::os::fd::{AsRawFd, IntoRawFd};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        connection: ConnectionArgs,
    }

    fn parse(args: &[&str]) -> Result<Option<Connection>, String> {
        let cli = Cli::try_parse_from(std::iter::once("dev").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.connection.connection().map_err(|e| e.to_string())
    }

    #[test]
    fn connection_args_take_an_fd_or_a_path() {
        assert_eq!(parse(&["--socket-fd", "3"]), Ok(Some(Connection::Fd(3))));
        assert_eq!(
            parse(&["--socket", "/tmp/s"]),
            Ok(Some(Connection::Listen("/tmp/s".into())))
        );
        assert_eq!(
            parse(&["--socket-fd", "2"]).unwrap_err(),
            "--socket-fd: fd 2 is not a passed fd (3 or more)"
        );
        assert!(parse(&[]).is_err(), "a connection is required");
        assert!(parse(&["--socket-fd", "3", "--socket", "s"]).is_err());
    }

    #[test]
    fn take_passed_fd_checks_the_fd_is_open() {
        let fd = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        let owned = take_passed_fd(fd, "null").unwrap();
        assert_eq!(owned.as_raw_fd(), fd);
        drop(owned);
        // Far above any fd the test process has open (and its fd limit).
        assert_eq!(
            take_passed_fd(1 << 30, "nothing").unwrap_err().to_string(),
            "fd 1073741824 (nothing) is not open"
        );
    }
}
