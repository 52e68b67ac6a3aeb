//! The console pty of a VM in control mode: COM1's output goes to the
//! pty master without ever blocking a vCPU ([`ConsoleSink::lossy`]), and
//! an input thread (`console-in`) feeds what is typed on the slave into
//! COM1's receive FIFO.
//!
//! # Invariants
//! - The master's file description is non-blocking (set by the first
//!   sink); the input thread waits with poll(2), never in read(2).
//! - The slave stays open as long as the [`Console`], so output written
//!   while no user has the terminal open is buffered by the pty (and
//!   dropped once that buffer is full) instead of failing with EIO.
//! - Input is never dropped by the monitor: bytes that do not fit in the
//!   UART's FIFO wait (and the thread stops reading the master, so the pty
//!   buffers the rest) until the guest reads, or a rebuilt VM's COM1 is
//!   attached after a reboot.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::devices::serial::{ConsoleSink, Serial};

use super::launch::ConsolePty;

/// Bytes read from the master at a time.
const READ_CHUNK: usize = 256;
/// How long input waits before trying a full FIFO (or a VM being
/// rebuilt) again: about 6 characters at 9600 baud.
const FIFO_RETRY: Duration = Duration::from_millis(5);

type Com1Slot = Arc<Mutex<Option<Arc<Mutex<Serial>>>>>;

/// A console pty and the thread feeding its input to the current COM1.
pub struct Console {
    master: File,
    _slave: File,
    com1: Com1Slot,
}

impl Console {
    /// Takes the pty and starts the input thread.
    pub fn start(pty: ConsolePty) -> io::Result<Self> {
        let com1: Com1Slot = Arc::default();
        // The sink makes the description non-blocking; do it before the
        // input thread polls.
        crate::devices::serial::set_nonblocking(&pty.master)?;
        let reader = pty.master.try_clone()?;
        let slot = com1.clone();
        std::thread::Builder::new()
            .name("console-in".into())
            .spawn(move || feed_input(reader, &slot))?;
        Ok(Self {
            master: pty.master,
            _slave: pty.slave,
            com1,
        })
    }

    /// A COM1 sink for a new VM (a dup of the master).
    pub fn sink(&self) -> io::Result<ConsoleSink> {
        ConsoleSink::lossy(self.master.try_clone()?)
    }

    /// Makes `com1` the UART that receives input (the VM just built).
    pub fn attach(&self, com1: Arc<Mutex<Serial>>) {
        *self.com1.lock().unwrap_or_else(|p| p.into_inner()) = Some(com1);
    }

    /// Stops input while no VM exists (between a reset and the rebuild).
    pub fn detach(&self) {
        *self.com1.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// The input thread: master → COM1, for the process's life.
fn feed_input(mut master: File, com1: &Com1Slot) {
    let mut buf = [0u8; READ_CHUNK];
    loop {
        if let Err(e) = wait_readable(&master) {
            log::warn!("console input: poll failed: {e}; input stops");
            return;
        }
        let n = match master.read(&mut buf) {
            Ok(0) => {
                // No slave open (cannot happen while we hold one): wait.
                std::thread::sleep(FIFO_RETRY);
                continue;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                log::warn!("console input: read failed: {e}; input stops");
                return;
            }
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let taken = match com1.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                Some(serial) => serial
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .enqueue_input(rest),
                None => 0,
            };
            rest = &rest[taken..];
            if taken == 0 {
                std::thread::sleep(FIFO_RETRY);
            }
        }
    }
}

/// Waits until `file` has something to read (or hung up).
fn wait_readable(file: &File) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: poll on one live pollfd, for the count given.
        let ret = unsafe { libc::poll(&mut pfd, 1, -1) };
        if ret > 0 {
            if pfd.revents & libc::POLLHUP != 0 && pfd.revents & libc::POLLIN == 0 {
                // Nobody holds a slave: back off instead of spinning.
                std::thread::sleep(FIFO_RETRY * 20);
            }
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if ret < 0 && err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
