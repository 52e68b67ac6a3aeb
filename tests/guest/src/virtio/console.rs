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

use super::queue::Queue;
use super::setup::{self, TxBufs};
use super::transport::{Transport, NO_VECTOR};
use super::TYPE_CONSOLE;
use crate::bootinfo::BootInfo;
use crate::cpu;
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
    tx: TxBufs,
    /// Receive buffer area (buffer `i` at `rx_bufs + i * RX_BUF`).
    rx_bufs: u64,
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
        let t = setup::open(TYPE_CONSOLE)?;
        let mut con = Console {
            t,
            offered: 0,
            features: 0,
            rx: Queue::default(),
            tx: TxBufs::default(),
            rx_bufs: 0,
            cur: None,
            line: [0; MAX_LINE],
            line_len: 0,
            line_total: 0,
            line_done: false,
            after_cr: false,
            tsc_ms: cpu::tsc_per_ms(),
        };
        let result = con.setup(boot);
        setup::or_fail(&con.t, result)?;
        Ok(con)
    }

    fn setup(&mut self, boot: &BootInfo) -> Result<(), Reason> {
        let t = &self.t;
        (self.offered, self.features) = setup::negotiate(t, 0)?;
        setup::need_queues(t, 2, "port 0 needs")?;
        self.rx = setup::queue(t, boot, RX_QUEUE, QUEUE_SIZE, NO_VECTOR)?;
        let tx = setup::queue(t, boot, TX_QUEUE, QUEUE_SIZE, NO_VECTOR)?;
        self.rx_bufs = setup::alloc_bufs(boot, &self.rx, RX_BUF)?;
        self.tx = TxBufs::new(boot, tx, TX_BUF, "transmitq0", TX_WAIT_MS)?;
        self.rx.set_write_bufs(self.rx_bufs, RX_BUF, RX_BUF as u32);
        setup::driver_ok(&self.t)?;
        // Post every receive buffer (the device may not use buffers before
        // DRIVER_OK).
        self.rx.post_all();
        Ok(())
    }

    /// Sizes of the receive and transmit queues.
    pub fn queue_sizes(&self) -> (u16, u16) {
        (self.rx.size, self.tx.queue.size)
    }

    fn rx_buf(&self, i: u16) -> u64 {
        self.rx_bufs + u64::from(i) * RX_BUF
    }

    /// A TSC deadline `ms` from now.
    fn deadline(&self, ms: u64) -> u64 {
        cpu::rdtsc().saturating_add(ms.saturating_mul(self.tsc_ms))
    }

    /// Whether a transmit buffer is free now (without waiting).
    pub fn can_send(&mut self) -> Result<bool, Reason> {
        self.tx.reap()?;
        Ok(self.tx.free().is_some())
    }

    /// Queues `bytes` on transmitq0 (in buffers of up to [`TX_BUF`] bytes)
    /// and notifies the device, without waiting for it to take them; waits
    /// (bounded) only for a free buffer.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), Reason> {
        for chunk in bytes.chunks(TX_BUF as usize) {
            let (slot, addr) = self.tx.acquire(&self.t)?;
            for (k, &b) in chunk.iter().enumerate() {
                // SAFETY: byte `k` < TX_BUF of transmit buffer `slot`, RAM
                // from `dma::alloc` (no Rust object) the device does not
                // hold (`acquire` returned it).
                unsafe { ((addr + k as u64) as *mut u8).write_volatile(b) };
            }
            self.tx.submit(slot, chunk.len() as u32);
        }
        Ok(())
    }

    /// Waits (bounded) until the device has returned every transmit buffer.
    pub fn flush(&mut self) -> Result<(), Reason> {
        self.tx.flush(&self.t)
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
