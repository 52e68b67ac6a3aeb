//! COM1: a 16550A UART (vm-superio) whose output goes to the console sink.
//!
//! The UART lives at the legacy COM1 ports (0x3F8, 8 registers) and raises
//! ISA IRQ 4 through an irqfd. Its transmit side writes every byte to the
//! sink at once, unbuffered, so that what the guest printed last before a
//! crash is never lost in a buffer. On a console pty (control mode) the
//! sink never blocks a vCPU: when the pty's buffer is full the byte is
//! dropped and counted. The receive side is fed by
//! [`Serial::enqueue_input`] (the monitor's console input thread).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd};

use vm_superio::serial::NoEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// I/O port base of COM1.
pub const COM1_PORT: u64 = 0x3f8;
/// Number of UART registers.
pub const COM1_PORT_LEN: u64 = 8;
/// ISA IRQ (and GSI) of COM1.
pub const COM1_IRQ: u32 = 4;

/// An interrupt line backed by an eventfd registered as a KVM irqfd.
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where the console's bytes go: a file descriptor written without buffering.
pub struct ConsoleSink {
    /// None for a queued sink (which needs no fd, and so no /dev/null in
    /// the monitor's root).
    file: Option<File>,
    /// Non-blocking fd: drop what does not fit instead of failing.
    lossy: bool,
    /// Bytes dropped so far (lossy sinks).
    dropped: u64,
    /// COM1 → dev-console: writes go to this queue instead of `file`.
    queue: Option<std::sync::Arc<super::com_queue::ComQueue>>,
}

impl ConsoleSink {
    /// The monitor's standard output. Writes go straight to fd 1.
    pub fn stdout() -> io::Result<Self> {
        // Duplicate fd 1 so that dropping the sink never closes stdout.
        // SAFETY: dup on fd 1 has no memory-safety preconditions.
        let fd = unsafe { libc::dup(io::stdout().as_raw_fd()) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by dup and is owned by nobody else.
        Ok(Self::from_file(unsafe { File::from_raw_fd(fd) }))
    }

    /// A sink writing to `file` (tests, or a log file later).
    pub fn from_file(file: File) -> Self {
        Self {
            file: Some(file),
            lossy: false,
            dropped: 0,
            queue: None,
        }
    }

    /// A sink feeding `queue` (COM1 → dev-console), never blocking: see
    /// [`super::com_queue`]. The queue is closed when the sink is dropped.
    pub fn queued(queue: std::sync::Arc<super::com_queue::ComQueue>) -> io::Result<Self> {
        Ok(Self {
            file: None,
            lossy: true,
            dropped: 0,
            queue: Some(queue),
        })
    }

    /// A sink writing to a console pty's master without ever blocking: the
    /// fd's file description is made non-blocking (for every dup of it),
    /// and bytes that do not fit in the pty's buffer are dropped.
    pub fn lossy(file: File) -> io::Result<Self> {
        set_nonblocking(&file)?;
        Ok(Self {
            file: Some(file),
            lossy: true,
            dropped: 0,
            queue: None,
        })
    }

    /// Bytes dropped because the pty was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Sets O_NONBLOCK on `file`'s open file description.
pub fn set_nonblocking(file: &File) -> io::Result<()> {
    // SAFETY: F_GETFL on an fd we own; no memory is passed.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL with flags on an fd we own; no memory is passed.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for ConsoleSink {
    fn drop(&mut self) {
        if let Some(queue) = &self.queue {
            queue.close();
        }
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(queue) = &self.queue {
            queue.push(buf);
            return Ok(buf.len());
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(buf.len());
        };
        match file.write(buf) {
            Err(e) if self.lossy && e.kind() == io::ErrorKind::WouldBlock => {
                if self.dropped == 0 {
                    log::debug!("console: pty full, dropping output until it drains");
                }
                self.dropped += buf.len() as u64;
                Ok(buf.len())
            }
            other => other,
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// COM1 on the port-I/O bus.
pub struct Serial {
    uart: vm_superio::Serial<IrqLine, NoEvents, ConsoleSink>,
}

impl Serial {
    /// A UART raising `irq` and writing to `sink`.
    pub fn new(irq: IrqLine, sink: ConsoleSink) -> Self {
        Self {
            uart: vm_superio::Serial::new(irq, sink),
        }
    }

    /// Puts `input` into the receive FIFO (raising the receive interrupt
    /// if the guest enabled it); returns how many bytes fit, 0 when the
    /// FIFO is full (or the UART is in loopback mode).
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        let room = self.uart.fifo_capacity();
        match self.uart.enqueue_raw_bytes(input) {
            Ok(n) => n,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            Err(e) => {
                // The bytes are in the FIFO; only the interrupt failed.
                log::debug!("COM1 input: {e:?}");
                room.min(input.len())
            }
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(reg)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(reg);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Some(&value), Ok(reg)) = (data.first(), u8::try_from(offset)) else {
            return;
        };
        if let Err(e) = self.uart.write(reg, value) {
            // The console sink went away (a closed pipe): the guest goes on.
            log::debug!("COM1 write to register {reg}: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};

    #[test]
    fn serial_transmit_reaches_sink_unbuffered() {
        let file = tempfile();
        let mut com1 = Serial::new(
            IrqLine(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            ConsoleSink::from_file(file.try_clone().unwrap()),
        );
        for b in b"hi\n" {
            com1.write(0, &[*b]);
        }
        let mut out = String::new();
        let mut reader = file;
        reader.rewind().unwrap();
        reader.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hi\n");
    }

    #[test]
    fn serial_input_reaches_the_receive_register_until_the_fifo_is_full() {
        let mut com1 = Serial::new(
            IrqLine(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            ConsoleSink::from_file(tempfile()),
        );
        assert_eq!(com1.enqueue_input(b"ok"), 2);
        let mut lsr = [0u8];
        com1.read(5, &mut lsr);
        assert_ne!(lsr[0] & 1, 0, "data ready");
        let mut rbr = [0u8];
        com1.read(0, &mut rbr);
        assert_eq!(rbr[0], b'o');
        com1.read(0, &mut rbr);
        assert_eq!(rbr[0], b'k');
        let big = [b'x'; 100];
        assert_eq!(com1.enqueue_input(&big), 64);
        assert_eq!(com1.enqueue_input(&big), 0, "a full FIFO takes nothing");
    }

    #[test]
    fn lossy_sink_drops_what_a_full_pipe_cannot_take() {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh fds owned by nobody else.
        let (read, write) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let mut sink = ConsoleSink::lossy(write).unwrap();
        let chunk = [b'a'; 4096];
        // A pipe holds 64 KiB by default: far more than that never blocks.
        for _ in 0..64 {
            assert_eq!(sink.write(&chunk).unwrap(), chunk.len());
        }
        assert!(sink.dropped() > 0);
        drop(read);
    }

    #[test]
    fn serial_line_status_reports_transmitter_empty() {
        let mut com1 = Serial::new(
            IrqLine(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            ConsoleSink::from_file(tempfile()),
        );
        let mut lsr = [0u8];
        com1.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
    }

    fn tempfile() -> File {
        let name = c"serial-test";
        // SAFETY: valid NUL-terminated name and flags.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fresh fd owned by nobody else.
        unsafe { File::from_raw_fd(fd) }
    }
}
