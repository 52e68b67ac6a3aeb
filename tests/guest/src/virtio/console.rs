//! virtio console (virtio 1.2 §5.3) over the PCI transport: port 0 only
//! (VIRTIO_CONSOLE_F_MULTIPORT is not negotiated, nor SIZE or
//! EMERG_WRITE), so queue 0 is receiveq0 and queue 1 transmitq0.
//!
//! Completion is polled (both queues ask for no interrupts; no MSI-X
//! vector is set). Buffer `i` of a queue always uses descriptor `i`, so a
//! used-ring id maps straight back to its buffer:
//!
//! - receive: every buffer stays posted; a returned buffer is consumed byte
//!   by byte ([`Console::try_read_line`]) and posted again once empty.
//! - transmit: [`Console::send`] copies bytes into free buffers (up to
//!   [`TX_BUF`] each) and publishes them without waiting; [`Console::flush`]
//!   waits until the device returned all of them; [`Console::write`] is
//!   both.

use core::fmt::{self, Write};

use super::queue::{Queue, DESC_F_WRITE};
use super::transport::{self, Transport, NO_VECTOR};
use super::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_NEEDS_RESET, TYPE_CONSOLE,
};
use crate::bootinfo::BootInfo;
use crate::cpu;
use crate::dma;
use crate::scenarios::Reason;

// Feature bits (§5.3.3) left alone: SIZE (0), MULTIPORT (1), EMERG_WRITE
// (2). Without MULTIPORT there is no control queue and port 0 is the
// console.

/// Queue indices of port 0.
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
/// Queue size asked for (at most); also the most buffers per queue (the
/// transmit buffers are tracked in a u64 bit set).
const QUEUE_SIZE: u16 = 64;
/// Bytes per receive buffer.
pub const RX_BUF: u64 = 256;
/// Bytes per transmit buffer (longer writes take several).
pub const TX_BUF: u64 = 512;
/// Longest line kept by [`Console::try_read_line`] (longer lines are cut).
pub const MAX_LINE: usize = 256;
/// Bound of a wait for a free transmit buffer or for the device to return
/// every transmit buffer.
const TX_WAIT_MS: u64 = 10_000;

/// An initialised virtio console (status DRIVER_OK, receive buffers
/// posted).
pub struct Console {
    pub t: Transport,
    /// Device feature bits offered and negotiated (VERSION_1 only).
    pub offered: u64,
    pub features: u64,
    rx: Queue,
    tx: Queue,
    /// Buffer areas (buffer `i` at `base + i * size`).
    rx_bufs: u64,
    tx_bufs: u64,
    /// Transmit buffers the device holds (bit `i`: buffer `i`).
    tx_busy: u64,
    /// The returned receive buffer being consumed: (id, used length,
    /// next byte).
    cur: Option<(u16, u32, u32)>,
    /// The line being assembled.
    line: [u8; MAX_LINE],
    line_len: usize,
    /// Bytes of the current line, including those cut off.
    line_total: usize,
    /// `line` holds a completed line (cleared when the next one starts).
    line_done: bool,
    /// The last line ended with '\r' (a '\n' right after it is skipped).
    after_cr: bool,
    /// TSC ticks per millisecond (cached: CPUID is an `int3` request).
    tsc_ms: u64,
}

/// Formats one line into a fixed buffer (cut at its capacity).
struct LineBuf {
    buf: [u8; TX_BUF as usize],
    len: usize,
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - 1 - self.len; // one byte kept for '\n'
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl Console {
    /// Finds, resets and initialises the first virtio console on bus 0
    /// (fails with "no virtio device of type 3 on bus 0" without one).
    pub fn open(boot: &BootInfo) -> Result<Console, Reason> {
        let t = transport::find(TYPE_CONSOLE)?;
        t.reset()?;
        let mut con = Console {
            t,
            offered: 0,
            features: 0,
            rx: Queue::default(),
            tx: Queue::default(),
            rx_bufs: 0,
            tx_bufs: 0,
            tx_busy: 0,
            cur: None,
            line: [0; MAX_LINE],
            line_len: 0,
            line_total: 0,
            line_done: false,
            after_cr: false,
            tsc_ms: cpu::tsc_per_ms(),
        };
        if let Err(reason) = con.setup(boot) {
            con.t.fail();
            return Err(reason);
        }
        Ok(con)
    }

    fn setup(&mut self, boot: &BootInfo) -> Result<(), Reason> {
        let func = self.t.func;
        self.t.add_status(STATUS_ACKNOWLEDGE);
        self.t.add_status(STATUS_DRIVER);
        self.offered = self.t.device_features();
        self.features = self.t.negotiate(0)?;
        if self.t.num_queues() < 2 {
            crate::fail!("{func}: {} queues, port 0 needs 2", self.t.num_queues());
        }
        self.rx = self.queue(boot, RX_QUEUE)?;
        self.tx = self.queue(boot, TX_QUEUE)?;
        self.rx_bufs = dma::alloc(boot, u64::from(self.rx.size) * RX_BUF, 4096)?;
        self.tx_bufs = dma::alloc(boot, u64::from(self.tx.size) * TX_BUF, 4096)?;
        for i in 0..self.rx.size {
            self.rx
                .set_desc(i, self.rx_buf(i), RX_BUF as u32, DESC_F_WRITE, 0);
        }
        self.t.add_status(STATUS_DRIVER_OK);
        let status = self.t.status();
        if status & STATUS_DRIVER_OK == 0 || status & STATUS_NEEDS_RESET != 0 {
            crate::fail!("{func}: status {status:#x} after DRIVER_OK");
        }
        // Post every receive buffer (the device may not use buffers before
        // DRIVER_OK).
        for i in 0..self.rx.size {
            self.rx.push(i);
        }
        self.rx.publish();
        Ok(())
    }

    /// Sets up queue `index` (polled, no MSI-X vector).
    fn queue(&self, boot: &BootInfo, index: u16) -> Result<Queue, Reason> {
        let func = self.t.func;
        let max = self.t.select_queue(index);
        if max == 0 {
            crate::fail!("{func}: queue {index} unavailable");
        }
        let mut size = QUEUE_SIZE;
        while size > max {
            size /= 2;
        }
        let mut queue = Queue::new(boot, index, size)?;
        let kept = self
            .t
            .setup_queue(size, queue.desc, queue.avail, queue.used, NO_VECTOR);
        if kept != NO_VECTOR {
            crate::fail!("{func}: queue {index} took MSI-X vector {kept:#x}, none set");
        }
        queue.notify_addr = self.t.queue_notify_addr();
        queue.suppress_interrupts();
        self.t.enable_queue();
        Ok(queue)
    }

    /// Sizes of the receive and transmit queues.
    pub fn queue_sizes(&self) -> (u16, u16) {
        (self.rx.size, self.tx.size)
    }

    fn rx_buf(&self, i: u16) -> u64 {
        self.rx_bufs + u64::from(i) * RX_BUF
    }

    fn tx_buf(&self, i: u16) -> u64 {
        self.tx_bufs + u64::from(i) * TX_BUF
    }

    /// A TSC deadline `ms` from now.
    fn deadline(&self, ms: u64) -> u64 {
        cpu::rdtsc().saturating_add(ms.saturating_mul(self.tsc_ms))
    }

    /// Takes the transmit buffers the device has returned.
    fn reap(&mut self) -> Result<(), Reason> {
        while let Some((id, _)) = self.tx.pop_used() {
            if id >= u32::from(self.tx.size) || self.tx_busy & (1 << id) == 0 {
                crate::fail!("transmitq0: used id {id} was not in flight");
            }
            self.tx_busy &= !(1 << id);
        }
        Ok(())
    }

    /// Whether a transmit buffer is free now (without waiting).
    pub fn can_send(&mut self) -> Result<bool, Reason> {
        self.reap()?;
        Ok(self.free_tx().is_some())
    }

    fn free_tx(&self) -> Option<u16> {
        (0..self.tx.size).find(|&i| self.tx_busy & (1 << i) == 0)
    }

    /// Transmit buffers the device holds.
    pub fn in_flight(&self) -> u32 {
        self.tx_busy.count_ones()
    }

    /// Queues `bytes` on transmitq0 (in buffers of up to [`TX_BUF`] bytes)
    /// and notifies the device, without waiting for it to take them; waits
    /// (bounded) only for a free buffer.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), Reason> {
        for chunk in bytes.chunks(TX_BUF as usize) {
            self.reap()?;
            let slot = match self.free_tx() {
                Some(slot) => slot,
                None => {
                    let deadline = self.deadline(TX_WAIT_MS);
                    loop {
                        self.reap()?;
                        if let Some(slot) = self.free_tx() {
                            break slot;
                        }
                        if cpu::rdtsc() >= deadline {
                            crate::fail!(
                                "transmitq0: no buffer returned in {TX_WAIT_MS} ms ({} in flight, status {:#x})",
                                self.in_flight(),
                                self.t.status()
                            );
                        }
                        core::hint::spin_loop();
                    }
                }
            };
            let addr = self.tx_buf(slot);
            for (k, &b) in chunk.iter().enumerate() {
                // SAFETY: byte `k` < TX_BUF of transmit buffer `slot`, RAM
                // from `dma::alloc` (no Rust object) the device does not
                // hold (its bit in `tx_busy` is clear).
                unsafe { ((addr + k as u64) as *mut u8).write_volatile(b) };
            }
            self.tx.set_desc(slot, addr, chunk.len() as u32, 0, 0);
            self.tx.push(slot);
            self.tx_busy |= 1 << slot;
            self.tx.publish();
        }
        Ok(())
    }

    /// Waits (bounded) until the device has returned every transmit buffer.
    pub fn flush(&mut self) -> Result<(), Reason> {
        self.reap()?;
        if self.tx_busy == 0 {
            return Ok(());
        }
        let deadline = self.deadline(TX_WAIT_MS);
        loop {
            self.reap()?;
            if self.tx_busy == 0 {
                return Ok(());
            }
            if cpu::rdtsc() >= deadline {
                crate::fail!(
                    "transmitq0: {} buffers not returned in {TX_WAIT_MS} ms (status {:#x})",
                    self.in_flight(),
                    self.t.status()
                );
            }
            core::hint::spin_loop();
        }
    }

    /// Writes `bytes` and waits until the device has taken them.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Reason> {
        self.send(bytes)?;
        self.flush()
    }

    /// Formats `args` and a '\n' (one line, cut at [`TX_BUF`] bytes) and
    /// [`send`](Self::send)s it.
    pub fn send_line(&mut self, args: fmt::Arguments) -> Result<(), Reason> {
        let mut line = LineBuf {
            buf: [0; TX_BUF as usize],
            len: 0,
        };
        let _ = line.write_fmt(args);
        line.buf[line.len] = b'\n';
        self.send(&line.buf[..=line.len])
    }

    /// [`send_line`](Self::send_line), then waits until the device has
    /// taken it (and everything before).
    pub fn write_line(&mut self, args: fmt::Arguments) -> Result<(), Reason> {
        self.send_line(args)?;
        self.flush()
    }

    /// The next received byte, if one is there; a consumed receive buffer
    /// is posted again.
    fn next_byte(&mut self) -> Result<Option<u8>, Reason> {
        loop {
            if let Some((id, len, pos)) = self.cur {
                if pos < len {
                    // SAFETY: byte `pos` < len <= RX_BUF of receive buffer
                    // `id`, RAM from `dma::alloc` (no Rust object) the device
                    // has returned.
                    let b = unsafe {
                        ((self.rx_buf(id) + u64::from(pos)) as *const u8).read_volatile()
                    };
                    self.cur = Some((id, len, pos + 1));
                    return Ok(Some(b));
                }
                self.cur = None;
                self.rx.push(id);
                self.rx.publish();
            }
            let Some((id, len)) = self.rx.pop_used() else {
                return Ok(None);
            };
            if id >= u32::from(self.rx.size) {
                crate::fail!("receiveq0: used id {id} out of range");
            }
            if u64::from(len) > RX_BUF {
                crate::fail!("receiveq0: used length {len} > buffer size {RX_BUF}");
            }
            self.cur = Some((id as u16, len, 0));
        }
    }

    /// Consumes the bytes received so far up to the end of a line ('\n' or
    /// '\r', not kept; a '\n' right after a '\r' is skipped). Returns the
    /// line's length once one is complete (its bytes: [`Self::line`]),
    /// None while it is not; the partial line is kept for the next call.
    pub fn try_read_line(&mut self) -> Result<Option<usize>, Reason> {
        while let Some(b) = self.next_byte()? {
            let after_cr = core::mem::replace(&mut self.after_cr, false);
            if b == b'\n' && after_cr {
                continue;
            }
            if self.line_done {
                self.line_done = false;
                self.line_len = 0;
            }
            if b == b'\n' || b == b'\r' {
                self.after_cr = b == b'\r';
                self.line_done = true;
                let total = self.line_total;
                self.line_total = 0;
                return Ok(Some(total));
            }
            if self.line_len < MAX_LINE {
                self.line[self.line_len] = b;
                self.line_len += 1;
            }
            self.line_total += 1;
        }
        Ok(None)
    }

    /// The last line completed by [`Self::try_read_line`] or
    /// [`Self::read_line`] (its first [`MAX_LINE`] bytes).
    pub fn line(&self) -> &[u8] {
        &self.line[..self.line_len]
    }

    /// Waits up to `timeout_ms` (None: forever) for a complete line; see
    /// [`Self::try_read_line`].
    pub fn read_line(&mut self, timeout_ms: Option<u64>) -> Result<usize, Reason> {
        let deadline = timeout_ms.map(|ms| self.deadline(ms));
        loop {
            if let Some(total) = self.try_read_line()? {
                return Ok(total);
            }
            if deadline.is_some_and(|d| cpu::rdtsc() >= d) {
                crate::fail!(
                    "no complete line on the virtio console in {} ms ({} bytes)",
                    timeout_ms.unwrap_or(0),
                    self.line_total
                );
            }
            core::hint::spin_loop();
        }
    }
}
