//! The few system calls on the pty and the side channel that std does
//! not wrap.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Makes `fd`'s open file description non-blocking.
pub fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: F_GETFL only queries the description's flags.
    let flags = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: F_SETFL changes only the status flags of a valid fd.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// Drops what is queued in the pty both ways (tcflush TCIOFLUSH).
pub fn flush_pty(master: &File) -> io::Result<()> {
    // SAFETY: tcflush only acts on the terminal behind a valid fd.
    check(unsafe { libc::tcflush(master.as_raw_fd(), libc::TCIOFLUSH) })?;
    Ok(())
}

/// Whether `fd` is a terminal (a pty end).
pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only queries the fd.
    unsafe { libc::isatty(fd) == 1 }
}

pub use ipc::fds::socket_type;

/// A new pty pair, the slave in raw mode (standalone mode only: under
/// the monitor the pty is passed in). Returns (master, slave).
pub fn open_pty() -> io::Result<(File, File)> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: both out-pointers are valid; name, termios and winsize may
    // be null.
    check(unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    })?;
    // SAFETY: openpty just created both fds; nothing else owns them.
    let (master, slave) = unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) };
    // SAFETY: termios is plain data; all-zero is a valid value to fill.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `tio` is valid for writes; the fd is a terminal.
    check(unsafe { libc::tcgetattr(slave.as_raw_fd(), &mut tio) })?;
    // SAFETY: cfmakeraw only edits `tio`.
    unsafe { libc::cfmakeraw(&mut tio) };
    // SAFETY: `tio` is a valid termios; the fd is a terminal.
    check(unsafe { libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &tio) })?;
    Ok((master, slave))
}

/// What [`recv_packet`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A packet of this many bytes, whole, at the start of the buffer.
    Packet(usize),
    /// A packet longer than the buffer (the rest was discarded).
    Truncated(usize),
    /// Nothing is queued.
    Empty,
    /// A zero-length read: an empty packet, or the peer's end of stream.
    Zero,
}

/// Receives one packet without blocking.
pub fn recv_packet(sock: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    loop {
        // SAFETY: `buf` is valid for writes of its length. MSG_TRUNC makes
        // the call return the packet's real length.
        let n = unsafe {
            libc::recv(
                sock,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(Received::Empty),
                _ => return Err(e),
            }
        }
        let n = n as usize;
        return Ok(match n {
            0 => Received::Zero,
            n if n > buf.len() => Received::Truncated(n),
            n => Received::Packet(n),
        });
    }
}

/// Sends one packet without blocking; `Ok(false)` when the socket has no
/// room now.
pub fn send_packet(sock: RawFd, packet: &[u8]) -> io::Result<bool> {
    loop {
        // SAFETY: `packet` is valid for reads of its length. MSG_NOSIGNAL:
        // a closed peer is an error, not SIGPIPE.
        let n = unsafe {
            libc::send(
                sock,
                packet.as_ptr().cast(),
                packet.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// poll(2) on `fds`, retrying on EINTR; `timeout_ms` -1 waits forever.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    loop {
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
