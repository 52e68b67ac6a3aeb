//! `vmctl console id`: attach this terminal to a VM's console.
//!
//! vmd checks the right and answers with the console pty's slave side as
//! an fd; this process then copies the terminal to the pty and back, with
//! the terminal in raw mode, until `~.` is typed at the start of a line,
//! or the VM stops (the pty hangs up). When the input ends (not a terminal:
//! `vmctl console web < /dev/null > web.log`), output is still copied until
//! the VM stops. Closing the control connection is what detaches: vmd
//! notices it however vmctl ends.
//!
//! Escapes, recognised only right after a newline, a carriage return or
//! the start of the session: `~.` detaches, `~?` lists the escapes, `~~`
//! sends one `~`; `~` followed by anything else sends both.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use ipc::control::{Request, Response, VmRef};

use crate::client::Session;
use crate::commands::Failure;

/// The escape help.
pub const ESCAPES: &str = "~.\tdetach from the console\r\n~?\tthis list\r\n~~\tsend a ~\r\n";

/// Attaches to the console of `vm` until detached; returns what to say.
pub fn attach(vm: &VmRef) -> Result<String, Failure> {
    let fail = |e: &dyn std::error::Error| Failure(format!("console: {}", ipc::error_chain(e)));
    let mut session = Session::send(&Request::Console(vm.clone())).map_err(|e| fail(&e))?;
    let (response, mut fds) = session.recv_with_fds().map_err(|e| fail(&e))?;
    let (name, tty) = match response {
        Response::Console { name, tty, .. } => (name, tty),
        Response::Error { message, .. } => return Err(Failure(format!("console: {message}"))),
        other => return Err(Failure(format!("unexpected answer from vmd: {other:?}"))),
    };
    let Some(pty) = fds.pop().filter(|_| fds.is_empty()) else {
        return Err(Failure("console: vmd sent no terminal".into()));
    };
    eprint!("Connected to {tty} (vm {name}). Type ~? for help, ~. to detach.\r\n");
    let raw = RawTerminal::enter(io::stdin().as_raw_fd());
    let end = relay(pty, &mut io::stdout());
    drop(raw);
    // The session (our control connection) closes here: vmd detaches.
    drop(session);
    match end {
        Ok(End::Detached) => Ok(format!("detached from vm {name}")),
        Ok(End::HungUp) => Ok(format!("the console of vm {name} closed (the vm stopped)")),
        Err(e) => Err(Failure(format!("console of vm {name}: {e}"))),
    }
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// `~.`.
    Detached,
    /// The pty hung up.
    HungUp,
}

/// The escape state machine: what typed bytes become.
#[derive(Debug, Default)]
pub struct Escapes {
    at_line_start: bool,
    pending_tilde: bool,
}

/// What to do with a chunk of typed input.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Typed {
    /// Bytes for the console.
    pub send: Vec<u8>,
    /// Print the escape help.
    pub help: bool,
    /// Detach (the bytes before the escape are in `send`).
    pub detach: bool,
}

impl Escapes {
    /// A session's start counts as a line start.
    pub fn new() -> Self {
        Self {
            at_line_start: true,
            pending_tilde: false,
        }
    }

    /// Processes `input`.
    pub fn feed(&mut self, input: &[u8]) -> Typed {
        let mut out = Typed::default();
        for &b in input {
            if self.pending_tilde {
                self.pending_tilde = false;
                match b {
                    b'.' => {
                        out.detach = true;
                        return out;
                    }
                    b'?' => {
                        out.help = true;
                        continue;
                    }
                    b'~' => out.send.push(b'~'),
                    other => {
                        out.send.push(b'~');
                        out.send.push(other);
                    }
                }
                self.at_line_start = matches!(b, b'\r' | b'\n');
                continue;
            }
            if self.at_line_start && b == b'~' {
                self.pending_tilde = true;
                continue;
            }
            out.send.push(b);
            self.at_line_start = matches!(b, b'\r' | b'\n');
        }
        out
    }
}

/// Copies stdin → `pty` (through the escapes) and `pty` → `out` until
/// the session ends.
fn relay(pty: OwnedFd, out: &mut dyn Write) -> io::Result<End> {
    let mut pty = File::from(pty);
    let stdin = io::stdin();
    // SAFETY: fd 0 stays open for the life of the process.
    let input = unsafe { BorrowedFd::borrow_raw(stdin.as_raw_fd()) };
    let mut escapes = Escapes::new();
    let mut buf = [0u8; 4096];
    let mut input_open = true;
    loop {
        let mut fds = [
            libc::pollfd {
                // A negative fd is ignored by poll: input has ended.
                fd: if input_open { input.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: pty.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on two live pollfds, for the count given.
        let ret = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            match pty.read(&mut buf) {
                Ok(0) => return Ok(End::HungUp),
                Ok(n) => {
                    out.write_all(&buf[..n])?;
                    out.flush()?;
                }
                // A pty whose master is gone reads EIO.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(End::HungUp),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if fds[0].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            let n = match read_fd(input.as_raw_fd(), &mut buf) {
                Ok(0) => {
                    input_open = false;
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let typed = escapes.feed(&buf[..n]);
            pty.write_all(&typed.send)?;
            if typed.help {
                out.write_all(ESCAPES.as_bytes())?;
                out.flush()?;
            }
            if typed.detach {
                return Ok(End::Detached);
            }
        }
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: read writes at most `buf.len()` bytes into a live buffer.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The terminal on `fd` in raw mode until dropped (nothing if `fd` is not
/// a terminal).
struct RawTerminal {
    fd: RawFd,
    saved: Option<libc::termios>,
}

impl RawTerminal {
    fn enter(fd: RawFd) -> Self {
        // SAFETY: termios is plain data that tcgetattr fills.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes into a live termios.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Self { fd, saved: None };
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits a live termios.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: tcsetattr reads a live termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &raw) } != 0 {
            return Self { fd, saved: None };
        }
        Self {
            fd,
            saved: Some(saved),
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: tcsetattr reads a live termios.
            unsafe { libc::tcsetattr(self.fd, libc::TCSAFLUSH, saved) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilde_dot_at_line_start_detaches() {
        let mut e = Escapes::new();
        let t = e.feed(b"~.");
        assert!(t.detach && t.send.is_empty());
        let mut e = Escapes::new();
        let t = e.feed(b"ls\r~.");
        assert_eq!(t.send, b"ls\r");
        assert!(t.detach);
    }

    #[test]
    fn tilde_inside_a_line_is_plain_text() {
        let mut e = Escapes::new();
        let t = e.feed(b"a~.b\n");
        assert_eq!(t.send, b"a~.b\n");
        assert!(!t.detach);
    }

    #[test]
    fn other_escapes_help_double_tilde_and_split_reads() {
        let mut e = Escapes::new();
        let t = e.feed(b"~?");
        assert!(t.help && t.send.is_empty());
        let t = e.feed(b"~~x");
        assert_eq!(
            t.send, b"~x",
            "after ~? the line start still holds: ~~ sends one ~"
        );
        let mut e = Escapes::new();
        assert_eq!(e.feed(b"~").send, b"");
        let t = e.feed(b"q");
        assert_eq!(t.send, b"~q");
        let mut e = Escapes::new();
        e.feed(b"x\n~");
        assert!(
            e.feed(b".").detach,
            "an escape split across reads still works"
        );
    }
}
