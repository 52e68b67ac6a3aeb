//! The process side every device shares: where its vhost-user connection
//! comes from, and the fds the monitor passes it.
//!
//! A device process runs in one of two ways:
//! - under the monitor, `--socket-fd FD [--metrics-fd FD]`: the
//!   connection is an inherited, connected socket; the process serves it
//!   once and exits when the frontend hangs up; it counts in the page its
//!   supervisor shares ([`MetricsPage`]), so counts go on across restarts;
//! - standalone, `--socket PATH`: it listens on PATH and listens again
//!   after each frontend.
//!
//! [`ConnectionArgs`] is those options, flattened into each device's
//! command line; [`ConnectionArgs::connection`] validates them into a
//! [`Connection`], [`Connection::open`] takes the fds (at run time, once)
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
use crate::metrics::MetricsPage;
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
    /// Inherited fd of the page the counters are kept in, shared with the
    /// monitor (under the monitor; `ipc::metrics`).
    #[arg(long, value_name = "FD")]
    pub metrics_fd: Option<i32>,
    /// Inherited socket to wait on before serving, stopped by the monitor
    /// for a debugger (`vmctl device restart -d`; `ipc::hold`).
    #[arg(long, value_name = "FD")]
    pub hold_fd: Option<i32>,
}

/// Where the vhost-user connection comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    /// An inherited, connected socket: a passed fd (3 or more), not yet
    /// taken; with the passed fd of the shared counters' page, if any.
    Fd {
        /// The socket.
        socket: i32,
        /// The counters' page ([`MetricsPage::map`]).
        metrics: Option<i32>,
        /// Where to wait, held, before serving (`ipc::hold`).
        hold: Option<i32>,
    },
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
    /// An fd only the monitor passes, with `--socket`.
    #[error("--{0} goes with --socket-fd (under the monitor), not --socket")]
    OnlyWithFd(&'static str),
    /// The counters' page could not be mapped.
    #[error("--metrics-fd {fd}: {reason}")]
    Metrics {
        /// The fd.
        fd: i32,
        /// Why.
        reason: String,
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
            (Some(fd), _) => Some(Connection::Fd {
                socket: passed_fd("socket-fd", fd)?,
                metrics: self
                    .metrics_fd
                    .map(|fd| passed_fd("metrics-fd", fd))
                    .transpose()?,
                hold: self
                    .hold_fd
                    .map(|fd| passed_fd("hold-fd", fd))
                    .transpose()?,
            }),
            (None, Some(_)) if self.metrics_fd.is_some() => {
                return Err(FdError::OnlyWithFd("metrics-fd"))
            }
            (None, Some(_)) if self.hold_fd.is_some() => {
                return Err(FdError::OnlyWithFd("hold-fd"))
            }
            (None, Some(path)) => Some(Connection::Listen(path)),
            (None, None) => None,
        })
    }
}

/// A connection ready to serve: its fd, if any, taken.
#[derive(Debug)]
pub enum Endpoint {
    /// The inherited, connected socket, and where to wait held before
    /// serving it, if the monitor asked.
    Stream(UnixStream, Option<UnixStream>),
    /// A socket listening at a path (bound already).
    Listen(PathBuf, UnixListener),
}

impl Connection {
    /// An inherited connection on `socket`, without a counters' page.
    pub fn fd(socket: i32) -> Self {
        Connection::Fd {
            socket,
            metrics: None,
            hold: None,
        }
    }

    /// The passed fds this connection takes (for checks that no fd serves
    /// two purposes).
    pub fn passed_fds(&self) -> Vec<i32> {
        match self {
            Connection::Fd {
                socket,
                metrics,
                hold,
            } => std::iter::once(*socket)
                .chain(*metrics)
                .chain(*hold)
                .collect(),
            Connection::Listen(_) => Vec::new(),
        }
    }

    /// Takes the connection's fds: the socket (as "vhost-user socket"), if
    /// it has one, and maps the counters' page, if one was passed
    /// (otherwise the counters are the process's own).
    pub fn open(self) -> Result<(Endpoint, MetricsPage), FdError> {
        Ok(match self {
            Connection::Fd {
                socket,
                metrics,
                hold,
            } => {
                let stream = UnixStream::from(take_passed_fd(socket, "vhost-user socket")?);
                let hold = hold
                    .map(|fd| take_passed_fd(fd, "hold socket").map(UnixStream::from))
                    .transpose()?;
                let page = match metrics {
                    None => MetricsPage::private(),
                    Some(fd) => {
                        MetricsPage::map(take_passed_fd(fd, "metrics page")?).map_err(|e| {
                            FdError::Metrics {
                                fd,
                                reason: ipc::error_chain(&e),
                            }
                        })?
                    }
                };
                (Endpoint::Stream(stream, hold), page)
            }
            Connection::Listen(path) => {
                let listener = crate::serve::listen(&path).map_err(|e| FdError::Listen {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                (Endpoint::Listen(path, listener), MetricsPage::private())
            }
        })
    }
}

impl Endpoint {
    /// Serves `device`: on the stream until the frontend hangs up
    /// ([`serve_connection`]), or on the listening socket forever
    /// ([`serve_listener`], which returns only errors).
    ///
    /// Held, it first waits to be released (`ipc::hold`): its monitor
    /// stops it there until a debugger or tracer continues it.
    pub fn serve<D: Device>(self, device: Arc<D>) -> Result<(), ServeError> {
        match self {
            Endpoint::Stream(stream, hold) => {
                if let Some(mut hold) = hold {
                    log::warn!("held before serving: continue it to serve");
                    ipc::hold::wait_released(&mut hold).map_err(ServeError::Hold)?;
                    log::warn!("released: serving");
                }
                serve_connection(stream, device)
            }
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
        assert_eq!(parse(&["--socket-fd", "3"]), Ok(Some(Connection::fd(3))));
        assert_eq!(
            parse(&["--socket-fd", "3", "--metrics-fd", "5"]),
            Ok(Some(Connection::Fd {
                socket: 3,
                metrics: Some(5),
                hold: None,
            }))
        );
        assert_eq!(
            parse(&["--socket", "s", "--metrics-fd", "5"]).unwrap_err(),
            "--metrics-fd goes with --socket-fd (under the monitor), not --socket"
        );
        assert_eq!(
            parse(&["--socket", "s", "--hold-fd", "5"]).unwrap_err(),
            "--hold-fd goes with --socket-fd (under the monitor), not --socket"
        );
        assert_eq!(
            parse(&["--socket-fd", "3", "--metrics-fd", "1"]).unwrap_err(),
            "--metrics-fd: fd 1 is not a passed fd (3 or more)"
        );
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
