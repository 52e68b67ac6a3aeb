//! [`Channel`]: typed messages and fds over a connected unix stream socket.
//!
//! One frame is one `sendmsg` of header and payload whose control message
//! carries the fds, then plain continuation writes if the kernel took only
//! part of it. The receiver reads exactly one frame's bytes with
//! `recvmsg(MSG_CMSG_CLOEXEC)`, so it never consumes (or steals the fds
//! of) the next frame. Linux attaches SCM_RIGHTS to the first byte of the
//! sendmsg, so the fds arrive with the header.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::fds::{take_rights, write_rights, CmsgBuf};
use crate::frame::{decode_payload, encode_payload, FrameError, Header, HEADER_LEN};
use crate::peer::{peer_credentials, PeerCred};

/// Why a send or receive failed.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// The frame broke a rule of the format (see [`FrameError`]).
    #[error("rejected frame")]
    Frame(#[from] FrameError),
    /// The peer closed the connection between frames: an orderly end.
    #[error("peer closed the connection")]
    Closed,
    /// The peer closed the connection in the middle of a frame.
    #[error("peer closed the connection mid-frame after {received} of {expected} bytes")]
    TruncatedFrame {
        /// Bytes of the part being read (header or payload) expected.
        expected: usize,
        /// Bytes of that part that arrived.
        received: usize,
    },
    /// The peer passed more fds than the control buffer holds; the kernel
    /// dropped the excess and we closed the rest.
    #[error(
        "peer passed more than the maximum number of file descriptors ({received} kept and closed)"
    )]
    FdsTruncated {
        /// Descriptors that did arrive (and were closed).
        received: usize,
    },
    /// The socket's timeout expired before any byte of a frame moved;
    /// the channel is still usable.
    #[error("timed out waiting for the peer")]
    TimedOut,
    /// The socket's timeout expired in the middle of a frame.
    #[error("peer stalled mid-frame after {done} of {expected} bytes")]
    Stalled {
        /// Bytes of the part in progress expected.
        expected: usize,
        /// Bytes of it that moved.
        done: usize,
    },
    /// An earlier error left the stream without a frame boundary.
    #[error("channel unusable after an earlier error")]
    Broken,
    /// The socket call failed.
    #[error("socket I/O failed")]
    Io(#[source] io::Error),
}

/// A framed, typed, fd-passing connection over a [`UnixStream`].
///
/// # Invariants
/// - Unless `broken`, the stream is positioned at a frame boundary in both
///   directions: every `send` wrote whole frames, every `recv` consumed
///   whole frames and nothing more.
/// - Any error after a byte of a frame moved (and any rejected frame) sets
///   `broken` and shuts the socket down, so the peer sees EOF and this
///   side fails with [`IpcError::Broken`] from then on; the owner drops
///   the channel, closing the connection. [`IpcError::TimedOut`] and
///   errors found before a send wrote anything (an oversized message, too
///   many fds) leave it usable.
/// - Every fd received is close-on-exec and owned by an [`OwnedFd`] from
///   the moment recvmsg returns, so a rejected frame's fds are closed.
///
/// `send` and `recv` take `&mut self` so two threads cannot interleave
/// frames; a reader and a writer thread may each own a `Channel` over a
/// `try_clone` of one stream.
#[derive(Debug)]
pub struct Channel {
    stream: UnixStream,
    broken: bool,
}

impl Channel {
    /// Wraps a connected, blocking stream.
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            broken: false,
        }
    }

    /// Two channels connected to each other (a socketpair, close-on-exec).
    pub fn pair() -> io::Result<(Self, Self)> {
        let (a, b) = UnixStream::pair()?;
        Ok((Self::new(a), Self::new(b)))
    }

    /// The underlying stream.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Gives the stream back.
    pub fn into_inner(self) -> UnixStream {
        self.stream
    }

    /// Sets how long `recv` waits for the peer (None: forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }

    /// Sets how long `send` waits for room in the socket (None: forever).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_write_timeout(timeout)
    }

    /// The peer's credentials (SO_PEERCRED).
    pub fn peer_credentials(&self) -> io::Result<PeerCred> {
        peer_credentials(&self.stream)
    }

    /// Whether an earlier error has made the channel unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Sends `msg` with `fds` (duplicated into the peer by the kernel; the
    /// caller keeps its own).
    pub fn send<T: Serialize>(&mut self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), IpcError> {
        if self.broken {
            return Err(IpcError::Broken);
        }
        let payload = encode_payload(msg)?;
        let header = Header::new(payload.len(), fds.len())?.encode();
        let result = self.send_frame(&header, &payload, fds);
        if let Err(IpcError::TimedOut | IpcError::Frame(_)) = &result {
            // Nothing was written: still at a frame boundary.
        } else if result.is_err() {
            self.poison();
        }
        result
    }

    /// Receives one message and the fds that came with it.
    ///
    /// The frame is checked in this order: header (magic, version, flags,
    /// length, fd count), the fds that arrived against the header's count,
    /// then the payload, which must decode to a `T` using every byte.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<(T, Vec<OwnedFd>), IpcError> {
        if self.broken {
            return Err(IpcError::Broken);
        }
        let result = self.recv_frame();
        match result {
            Ok(x) => Ok(x),
            Err(IpcError::TimedOut) => Err(IpcError::TimedOut),
            Err(e) => {
                self.poison();
                Err(e)
            }
        }
    }

    fn recv_frame<T: DeserializeOwned>(&mut self) -> Result<(T, Vec<OwnedFd>), IpcError> {
        // Dropping `fds` on any early return closes what arrived.
        let mut fds = Vec::new();
        let mut head = [0u8; HEADER_LEN];
        self.recv_exact(&mut head, &mut fds, true)?;
        let header = Header::decode(&head)?;
        if fds.len() != header.fd_count() {
            return Err(FrameError::FdCountMismatch {
                declared: header.fd_count() as u32,
                received: fds.len(),
            }
            .into());
        }
        // Bounded by MAX_PAYLOAD: Header::decode checked it.
        let mut payload = vec![0u8; header.payload_len()];
        self.recv_exact(&mut payload, &mut fds, false)?;
        if fds.len() != header.fd_count() {
            return Err(FrameError::FdCountMismatch {
                declared: header.fd_count() as u32,
                received: fds.len(),
            }
            .into());
        }
        let msg = decode_payload(&payload)?;
        Ok((msg, fds))
    }

    /// Fills `buf` from the socket, collecting any fds into `fds`.
    /// `frame_start`: whether `buf` begins a frame (an EOF or timeout before
    /// its first byte is then [`IpcError::Closed`] / [`IpcError::TimedOut`]).
    fn recv_exact(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        frame_start: bool,
    ) -> Result<(), IpcError> {
        let mut filled = 0;
        while filled < buf.len() {
            let rest = &mut buf[filled..];
            let mut iov = libc::iovec {
                iov_base: rest.as_mut_ptr().cast(),
                iov_len: rest.len(),
            };
            let mut control = CmsgBuf::new();
            // SAFETY: msghdr is plain old data; all-zero is a valid empty value.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr();
            msg.msg_controllen = control.capacity() as _;
            // SAFETY: msg points at a live iovec over `rest` and at a live,
            // aligned control buffer of the length given; both outlive the call.
            let n =
                unsafe { libc::recvmsg(self.stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        if frame_start && filled == 0 {
                            return Err(IpcError::TimedOut);
                        }
                        return Err(IpcError::Stalled {
                            expected: buf.len(),
                            done: filled,
                        });
                    }
                    _ => return Err(IpcError::Io(err)),
                }
            }
            take_rights(&msg, fds);
            if msg.msg_flags & libc::MSG_CTRUNC != 0 {
                return Err(IpcError::FdsTruncated {
                    received: fds.len(),
                });
            }
            if n == 0 {
                if frame_start && filled == 0 {
                    return Err(IpcError::Closed);
                }
                return Err(IpcError::TruncatedFrame {
                    expected: buf.len(),
                    received: filled,
                });
            }
            filled += n as usize;
        }
        Ok(())
    }

    /// Writes header and payload; the fds ride on the first sendmsg that
    /// moves any byte.
    fn send_frame(
        &self,
        header: &[u8],
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), IpcError> {
        let total = header.len() + payload.len();
        let mut sent = 0;
        while sent < total {
            let (first, second) = if sent < header.len() {
                (&header[sent..], payload)
            } else {
                (&payload[sent - header.len()..], &[][..])
            };
            let mut iov = [
                libc::iovec {
                    iov_base: first.as_ptr() as *mut libc::c_void,
                    iov_len: first.len(),
                },
                libc::iovec {
                    iov_base: second.as_ptr() as *mut libc::c_void,
                    iov_len: second.len(),
                },
            ];
            let mut control = CmsgBuf::new();
            // SAFETY: msghdr is plain old data; all-zero is a valid empty value.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = if second.is_empty() { 1 } else { 2 };
            if sent == 0 && !fds.is_empty() {
                msg.msg_control = control.as_mut_ptr();
                msg.msg_controllen = control.capacity() as _;
                if write_rights(&mut msg, fds).is_none() {
                    return Err(FrameError::TooManyFds {
                        count: fds.len() as u64,
                    }
                    .into());
                }
            }
            // SAFETY: msg points at live iovecs over `header`/`payload`
            // (read only by sendmsg despite the *mut) and at a live control
            // buffer of the length set; all outlive the call. MSG_NOSIGNAL:
            // a closed peer is EPIPE, not a SIGPIPE that kills the process.
            let n = unsafe { libc::sendmsg(self.stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut if sent == 0 => {
                        return Err(IpcError::TimedOut)
                    }
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        return Err(IpcError::Stalled {
                            expected: total,
                            done: sent,
                        })
                    }
                    _ => return Err(IpcError::Io(err)),
                }
            }
            if n == 0 {
                return Err(IpcError::Io(io::ErrorKind::WriteZero.into()));
            }
            sent += n as usize;
        }
        Ok(())
    }

    /// Marks the channel unusable and tells the peer (it reads EOF).
    fn poison(&mut self) {
        self.broken = true;
        // The socket may already be gone; there is nothing more to do then.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}
