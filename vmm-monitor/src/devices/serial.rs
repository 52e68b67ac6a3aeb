//! COM1: a 16550A UART (vm-superio) whose output goes to the console sink.
//!
//! The UART lives at the legacy COM1 ports (0x3F8, 8 registers) and raises
//! ISA IRQ 4 through an irqfd. Its transmit side writes every byte to the
//! sink at once, unbuffered, so that what the guest printed last before a
//! crash is never lost in a buffer. The receive side is fed by the console
//! process in a later step; for now nothing is ever received.

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
pub struct ConsoleSink(File);

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
        Ok(Self(unsafe { File::from_raw_fd(fd) }))
    }

    /// A sink writing to `file` (tests, or a log file later).
    pub fn from_file(file: File) -> Self {
        Self(file)
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
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
