//! The i8042 keyboard controller, as much of it as a guest's probe and its
//! reset path need.
//!
//! One device covers ports 0x60..=0x64: offset 0 is the data port (0x60),
//! offset 4 the status/command port (0x64). Port 0x61 (the PC speaker and
//! PIT gate) lies inside the range but KVM handles it in-kernel, so accesses
//! there never reach this device; if one does, it reads 0xFF.
//!
//! Implemented controller commands: read/write of the controller RAM (the
//! command byte is byte 0: 0x20/0x60), self-test (0xAA → 0x55), keyboard and
//! aux interface tests (0xAB/0xA9 → 0x00), enable/disable of either port
//! (0xAD/0xAE, 0xA7/0xA8), output port read/write (0xD0/0xD1), writes to the
//! keyboard and aux output buffers (0xD2/0xD3) and pulses of the output
//! lines (0xF0..=0xFF). Pulsing the reset line (0xFE, or writing the output
//! port with bit 0 clear) sends [`VmEvent::Reboot`].
//!
//! No keyboard or mouse is attached and the controller raises no
//! interrupts: bytes for the devices are dropped, so a guest's keyboard
//! probe times out and finds no keyboard, while its polled controller
//! probe succeeds.

use std::collections::VecDeque;

use crate::exit::{VmEvent, VmEvents};

/// The data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// The status (read) and command (write) port.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// Ports the device claims from [`I8042_DATA_PORT`], up to the command port.
pub const I8042_LEN: u16 = I8042_COMMAND_PORT - I8042_DATA_PORT + 1;
/// The keyboard's ISA IRQ, as the DSDT reports it (never raised, see module docs).
pub const KBD_IRQ: u8 = 1;

const OFF_DATA: u64 = 0;
const OFF_COMMAND: u64 = (I8042_COMMAND_PORT - I8042_DATA_PORT) as u64;

/// Status: output buffer full.
const STS_OBF: u8 = 0x01;
/// Status: system flag (mirrors the command byte's SYS bit).
const STS_SYS: u8 = 0x04;
/// Status: the last byte written went to the command port.
const STS_CMD: u8 = 0x08;
/// Status: keyboard not inhibited (keylock open).
const STS_UNLOCKED: u8 = 0x10;
/// Status: the output buffer holds aux (mouse) data.
const STS_AUX_OBF: u8 = 0x20;

/// Command byte: keyboard interrupt enable.
const CTR_KBD_INT: u8 = 0x01;
/// Command byte: system flag (POST passed).
const CTR_SYS: u8 = 0x04;
/// Command byte: keyboard port disabled.
const CTR_KBD_DISABLE: u8 = 0x10;
/// Command byte: aux port disabled.
const CTR_AUX_DISABLE: u8 = 0x20;
/// Command byte: scan code set 1 translation.
const CTR_XLATE: u8 = 0x40;
/// The command byte a PC BIOS leaves behind.
const CTR_DEFAULT: u8 = CTR_KBD_INT | CTR_SYS | CTR_XLATE;

const CMD_READ_RAM: u8 = 0x20;
const CMD_READ_RAM_LAST: u8 = 0x3f;
const CMD_WRITE_RAM: u8 = 0x60;
const CMD_WRITE_RAM_LAST: u8 = 0x7f;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_OUTBUF: u8 = 0xd2;
const CMD_WRITE_AUX_OUTBUF: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
/// 0xF0..=0xFF pulse the output lines whose bit in the low nibble is 0.
const CMD_PULSE_FIRST: u8 = 0xf0;

/// Self-test passed.
const SELF_TEST_OK: u8 = 0x55;
/// Interface test passed.
const INTERFACE_TEST_OK: u8 = 0x00;

/// Output port bit 0: the CPU reset line (0 asserts reset).
const OUTPUT_PORT_RESET: u8 = 0x01;
/// Output port bit 1: the A20 gate (always enabled here).
const OUTPUT_PORT_A20: u8 = 0x02;
/// Output port bit 4: keyboard output buffer full.
const OUTPUT_PORT_OBF: u8 = 0x10;
/// In a pulse command's low nibble, the bit of the reset line (0 = pulse it).
const PULSE_RESET_LINE: u8 = 0x01;

/// Bytes of controller RAM addressed by 0x20..=0x3F / 0x60..=0x7F.
const RAM_SIZE: usize = 32;
/// Bytes the output queue holds before it drops the oldest.
const OUTPUT_QUEUE_MAX: usize = 16;

/// Who a byte in the output buffer is from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Controller,
    Aux,
}

/// The i8042 controller.
///
/// # Invariants
/// - `ram[0]` is the command byte; the status SYS bit mirrors its SYS bit.
/// - `pending` holds the command whose data byte the next write to the
///   data port supplies, if any.
/// - `output` never holds more than [`OUTPUT_QUEUE_MAX`] bytes.
pub struct I8042 {
    ram: [u8; RAM_SIZE],
    output: VecDeque<(u8, Source)>,
    last_output: u8,
    pending: Option<u8>,
    last_was_command: bool,
    events: VmEvents,
}

impl I8042 {
    /// A controller in its post-POST state, reporting resets through `events`.
    pub fn new(events: VmEvents) -> Self {
        let mut ram = [0u8; RAM_SIZE];
        ram[0] = CTR_DEFAULT;
        Self {
            ram,
            output: VecDeque::new(),
            last_output: 0,
            pending: None,
            last_was_command: false,
            events,
        }
    }

    fn status(&self) -> u8 {
        let mut sts = STS_UNLOCKED;
        if self.ram[0] & CTR_SYS != 0 {
            sts |= STS_SYS;
        }
        if let Some((_, source)) = self.output.front() {
            sts |= STS_OBF;
            if *source == Source::Aux {
                sts |= STS_AUX_OBF;
            }
        }
        if self.last_was_command {
            sts |= STS_CMD;
        }
        sts
    }

    fn push_output(&mut self, byte: u8, source: Source) {
        if self.output.len() == OUTPUT_QUEUE_MAX {
            log::debug!("i8042: output buffer overrun, oldest byte dropped");
            self.output.pop_front();
        }
        self.output.push_back((byte, source));
    }

    fn read_data(&mut self) -> u8 {
        if let Some((byte, _)) = self.output.pop_front() {
            self.last_output = byte;
        }
        // An empty buffer reads as the last byte again, as on hardware.
        self.last_output
    }

    fn reset(&self) {
        log::info!("i8042: guest pulsed the reset line, rebooting");
        self.events.send(VmEvent::Reboot);
    }

    fn command(&mut self, cmd: u8) {
        self.pending = None;
        match cmd {
            CMD_READ_RAM..=CMD_READ_RAM_LAST => {
                let byte = self.ram[usize::from(cmd - CMD_READ_RAM)];
                self.push_output(byte, Source::Controller);
            }
            CMD_WRITE_RAM..=CMD_WRITE_RAM_LAST
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KBD_OUTBUF
            | CMD_WRITE_AUX_OUTBUF
            | CMD_WRITE_AUX => self.pending = Some(cmd),
            CMD_AUX_DISABLE => self.ram[0] |= CTR_AUX_DISABLE,
            CMD_AUX_ENABLE => self.ram[0] &= !CTR_AUX_DISABLE,
            CMD_KBD_DISABLE => self.ram[0] |= CTR_KBD_DISABLE,
            CMD_KBD_ENABLE => self.ram[0] &= !CTR_KBD_DISABLE,
            CMD_AUX_TEST | CMD_KBD_TEST => self.push_output(INTERFACE_TEST_OK, Source::Controller),
            CMD_SELF_TEST => {
                self.ram[0] |= CTR_SYS;
                self.push_output(SELF_TEST_OK, Source::Controller);
            }
            CMD_READ_OUTPUT_PORT => {
                let mut port = OUTPUT_PORT_RESET | OUTPUT_PORT_A20;
                if !self.output.is_empty() {
                    port |= OUTPUT_PORT_OBF;
                }
                self.push_output(port, Source::Controller);
            }
            CMD_PULSE_FIRST..=u8::MAX => {
                if cmd & PULSE_RESET_LINE == 0 {
                    self.reset();
                }
            }
            _ => log::debug!("i8042: unsupported command {cmd:#04x} ignored"),
        }
    }

    fn data(&mut self, byte: u8) {
        match self.pending.take() {
            Some(cmd @ CMD_WRITE_RAM..=CMD_WRITE_RAM_LAST) => {
                self.ram[usize::from(cmd - CMD_WRITE_RAM)] = byte;
            }
            Some(CMD_WRITE_OUTPUT_PORT) => {
                if byte & OUTPUT_PORT_RESET == 0 {
                    self.reset();
                }
            }
            Some(CMD_WRITE_KBD_OUTBUF) => self.push_output(byte, Source::Controller),
            Some(CMD_WRITE_AUX_OUTBUF) => self.push_output(byte, Source::Aux),
            Some(CMD_WRITE_AUX) => {
                log::debug!("i8042: byte {byte:#04x} for absent aux device dropped")
            }
            _ => log::debug!("i8042: byte {byte:#04x} for absent keyboard dropped"),
        }
    }
}

impl crate::bus::BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            log::debug!("i8042: {}-byte read at offset {offset} ignored", data.len());
            data.fill(0xff);
            return;
        }
        data[0] = match offset {
            OFF_DATA => self.read_data(),
            OFF_COMMAND => self.status(),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [byte] = data else {
            log::debug!(
                "i8042: {}-byte write at offset {offset} ignored",
                data.len()
            );
            return;
        };
        match offset {
            OFF_DATA => {
                self.last_was_command = false;
                self.data(*byte);
            }
            OFF_COMMAND => {
                self.last_was_command = true;
                self.command(*byte);
            }
            _ => log::debug!("i8042: write at offset {offset} ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;

    fn device() -> (I8042, crossbeam_channel::Receiver<VmEvent>) {
        let (events, rx) = VmEvents::new();
        (I8042::new(events), rx)
    }

    fn status(dev: &mut I8042) -> u8 {
        let mut d = [0u8];
        dev.read(OFF_COMMAND, &mut d);
        d[0]
    }

    fn data(dev: &mut I8042) -> u8 {
        let mut d = [0u8];
        dev.read(OFF_DATA, &mut d);
        d[0]
    }

    fn cmd(dev: &mut I8042, c: u8) {
        dev.write(OFF_COMMAND, &[c]);
    }

    #[test]
    fn i8042_idle_status_has_no_output_and_unlocked() {
        let (mut dev, _) = device();
        let sts = status(&mut dev);
        assert_eq!(sts & (STS_OBF | STS_AUX_OBF), 0);
        assert_eq!(sts & STS_UNLOCKED, STS_UNLOCKED);
        assert_eq!(sts & STS_SYS, STS_SYS);
    }

    #[test]
    fn i8042_self_test_returns_0x55_then_empties_buffer() {
        let (mut dev, _) = device();
        cmd(&mut dev, CMD_SELF_TEST);
        assert_eq!(status(&mut dev) & (STS_OBF | STS_CMD), STS_OBF | STS_CMD);
        assert_eq!(data(&mut dev), SELF_TEST_OK);
        assert_eq!(status(&mut dev) & STS_OBF, 0);
    }

    #[test]
    fn i8042_interface_tests_return_zero() {
        let (mut dev, _) = device();
        for c in [CMD_KBD_TEST, CMD_AUX_TEST] {
            cmd(&mut dev, c);
            assert_eq!(data(&mut dev), INTERFACE_TEST_OK);
        }
    }

    #[test]
    fn i8042_command_byte_write_then_read_round_trips() {
        let (mut dev, _) = device();
        cmd(&mut dev, CMD_READ_RAM);
        assert_eq!(data(&mut dev), CTR_DEFAULT);
        cmd(&mut dev, CMD_WRITE_RAM);
        dev.write(OFF_DATA, &[0x74]);
        assert_eq!(status(&mut dev) & STS_CMD, 0);
        cmd(&mut dev, CMD_READ_RAM);
        assert_eq!(data(&mut dev), 0x74);
        assert_eq!(status(&mut dev) & STS_SYS, STS_SYS);
    }

    #[test]
    fn i8042_port_disable_commands_set_command_byte_bits() {
        let (mut dev, _) = device();
        cmd(&mut dev, CMD_KBD_DISABLE);
        cmd(&mut dev, CMD_AUX_DISABLE);
        cmd(&mut dev, CMD_READ_RAM);
        let ctr = data(&mut dev);
        assert_eq!(
            ctr & (CTR_KBD_DISABLE | CTR_AUX_DISABLE),
            CTR_KBD_DISABLE | CTR_AUX_DISABLE
        );
        cmd(&mut dev, CMD_KBD_ENABLE);
        cmd(&mut dev, CMD_AUX_ENABLE);
        cmd(&mut dev, CMD_READ_RAM);
        assert_eq!(data(&mut dev) & (CTR_KBD_DISABLE | CTR_AUX_DISABLE), 0);
    }

    #[test]
    fn i8042_aux_loopback_sets_aux_obf() {
        let (mut dev, _) = device();
        cmd(&mut dev, CMD_WRITE_AUX_OUTBUF);
        dev.write(OFF_DATA, &[0x5a]);
        assert_eq!(
            status(&mut dev) & (STS_OBF | STS_AUX_OBF),
            STS_OBF | STS_AUX_OBF
        );
        assert_eq!(data(&mut dev), 0x5a);
    }

    #[test]
    fn i8042_pulse_reset_sends_reboot() {
        let (mut dev, rx) = device();
        cmd(&mut dev, 0xfe);
        assert_eq!(rx.try_recv(), Ok(VmEvent::Reboot));
        cmd(&mut dev, 0xff); // pulses nothing
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn i8042_output_port_write_with_reset_low_sends_reboot() {
        let (mut dev, rx) = device();
        cmd(&mut dev, CMD_WRITE_OUTPUT_PORT);
        dev.write(OFF_DATA, &[OUTPUT_PORT_A20 | OUTPUT_PORT_RESET]);
        assert!(rx.try_recv().is_err());
        cmd(&mut dev, CMD_WRITE_OUTPUT_PORT);
        dev.write(OFF_DATA, &[OUTPUT_PORT_A20]);
        assert_eq!(rx.try_recv(), Ok(VmEvent::Reboot));
    }

    #[test]
    fn i8042_keyboard_bytes_and_bad_accesses_are_ignored() {
        let (mut dev, rx) = device();
        dev.write(OFF_DATA, &[0xf2]);
        dev.write(OFF_DATA, &[0xff, 0xff]);
        dev.write(1, &[0xfe]);
        cmd(&mut dev, 0x01);
        assert_eq!(status(&mut dev) & STS_OBF, 0);
        let mut d = [0u8; 2];
        dev.read(OFF_DATA, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn i8042_output_overrun_keeps_newest_bytes() {
        let (mut dev, _) = device();
        for i in 0..=OUTPUT_QUEUE_MAX as u8 {
            cmd(&mut dev, CMD_WRITE_KBD_OUTBUF);
            dev.write(OFF_DATA, &[i]);
        }
        assert_eq!(data(&mut dev), 1);
    }
}
