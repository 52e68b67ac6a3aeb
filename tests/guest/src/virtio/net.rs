//! virtio network device (virtio 1.2 §5.1) over the PCI transport, polled:
//! queue 0 is receiveq1, queue 1 transmitq1 (no multiqueue, no control
//! queue). Only VERSION_1, MAC and MRG_RXBUF are negotiated: no checksum
//! or segmentation offload, so every frame either way is a complete
//! Ethernet frame (without FCS) with valid checksums, preceded in its
//! buffer by the 12-byte `virtio_net_hdr_v1` (all zero on transmit).
//!
//! Buffer `i` of a queue always uses descriptor `i` (one descriptor per
//! buffer, [`BUF`] bytes), so a used-ring id maps straight back to its
//! buffer. Every receive buffer stays posted and is posted again as soon as
//! its bytes are copied out; with MRG_RXBUF a frame may span `num_buffers`
//! consecutive used entries ([`Net::recv`] joins them). Transmit buffers
//! are published without waiting ([`Net::send`]); [`Net::flush`] waits
//! for the device to return them all.

use super::queue::Queue;
use super::setup::{self, TxBufs};
use super::transport::{Transport, NO_VECTOR};
use super::TYPE_NET;
use crate::bootinfo::BootInfo;
use crate::cpu;
use crate::scenarios::Reason;

/// Feature bits (§5.1.3) this driver accepts.
pub const F_MAC: u64 = 1 << 5;
pub const F_MRG_RXBUF: u64 = 1 << 15;
/// Feature bit of the link status field (reported, not negotiated).
pub const F_STATUS: u64 = 1 << 16;

/// Queue indices.
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
/// Queue size asked for (at most); also the most transmit buffers (tracked
/// in a u64 bit set).
const QUEUE_SIZE: u16 = 64;
/// Bytes per buffer, both queues (a whole 1514-byte frame and its header
/// fit in one).
pub const BUF: usize = 2048;
/// Size of `virtio_net_hdr_v1` (with `num_buffers`: VERSION_1).
pub const HDR: usize = 12;
/// Longest frame [`Net::send`] takes.
pub const MAX_TX_FRAME: usize = BUF - HDR;
/// Bound of a wait for a free transmit buffer, for every transmit buffer
/// to come back, or for the rest of a multi-buffer frame.
const WAIT_MS: u64 = 5_000;
/// Receive buffers given back to the device in one publish (one kick at
/// most), as Linux's virtio-net refills after a NAPI poll rather than
/// per frame; fewer are published as soon as no frame is waiting.
const REFILL_BATCH: u16 = 32;

/// An initialised virtio network device (DRIVER_OK, receive buffers
/// posted).
pub struct Net {
    pub t: Transport,
    /// Device feature bits offered and negotiated.
    pub offered: u64,
    pub features: u64,
    /// The device's MAC address (config space; a fixed local one without
    /// VIRTIO_NET_F_MAC).
    pub mac: [u8; 6],
    rx: Queue,
    tx: TxBufs,
    rx_bufs: u64,
    /// Receive buffers pushed back but not yet published.
    rx_unpublished: u16,
    /// Bytes of each receive buffer posted (<= BUF).
    rx_len: usize,
    /// TSC ticks per millisecond (cached: CPUID is an `int3` request).
    tsc_ms: u64,
    /// Frames sent and received.
    pub tx_frames: u64,
    pub rx_frames: u64,
    /// Received frames dropped: too long for the caller's buffer, or a
    /// bad `num_buffers`.
    pub rx_dropped: u64,
}

impl Net {
    /// Finds, resets and initialises the first virtio network device on
    /// bus 0 (fails with "no virtio device of type 1 on bus 0" without one).
    /// Receive buffers are `rx_buf` bytes long (at most [`BUF`]; with
    /// MRG_RXBUF at least [`HDR`], without it whole frames must fit: at
    /// least 1526), so smaller ones make the device merge buffers.
    pub fn open(boot: &BootInfo, rx_buf: usize) -> Result<Net, Reason> {
        let t = setup::open(TYPE_NET)?;
        let mut net = Net {
            t,
            offered: 0,
            features: 0,
            mac: [0x02, 0x00, 0x00, 0x00, 0x00, 0x01],
            rx: Queue::default(),
            tx: TxBufs::default(),
            rx_bufs: 0,
            rx_unpublished: 0,
            rx_len: rx_buf.min(BUF),
            tsc_ms: cpu::tsc_per_ms(),
            tx_frames: 0,
            rx_frames: 0,
            rx_dropped: 0,
        };
        let result = net.setup(boot);
        setup::or_fail(&net.t, result)?;
        Ok(net)
    }

    fn setup(&mut self, boot: &BootInfo) -> Result<(), Reason> {
        let func = self.t.func;
        (self.offered, self.features) = setup::negotiate(&self.t, F_MAC | F_MRG_RXBUF)?;
        if self.features & F_MAC != 0 {
            for (i, b) in self.mac.iter_mut().enumerate() {
                *b = self.t.config_u8(i as u32);
            }
        }
        let min = if self.features & F_MRG_RXBUF != 0 {
            HDR
        } else {
            HDR + 1514
        };
        if self.rx_len < min {
            crate::fail!("{func}: receive buffers of {} bytes < {min}", self.rx_len);
        }
        let t = &self.t;
        setup::need_queues(t, 2, "need")?;
        self.rx = setup::queue(t, boot, RX_QUEUE, QUEUE_SIZE, NO_VECTOR)?;
        let tx = setup::queue(t, boot, TX_QUEUE, QUEUE_SIZE, NO_VECTOR)?;
        self.rx_bufs = setup::alloc_bufs(boot, &self.rx, BUF as u64)?;
        self.tx = TxBufs::new(boot, tx, BUF as u64, "transmitq1", WAIT_MS)?;
        self.rx
            .set_write_bufs(self.rx_bufs, BUF as u64, self.rx_len as u32);
        setup::driver_ok(&self.t)?;
        self.rx.post_all();
        Ok(())
    }

    /// Sizes of the receive and transmit queues.
    pub fn queue_sizes(&self) -> (u16, u16) {
        (self.rx.size, self.tx.queue.size)
    }

    /// Link status (config `status` bit 0) when the device offers
    /// VIRTIO_NET_F_STATUS (the field is readable without negotiating it
    /// on the devices we know; None when not offered).
    pub fn link_up(&self) -> Option<bool> {
        (self.offered & F_STATUS != 0).then(|| self.t.config_u16(6) & 1 != 0)
    }

    fn rx_buf(&self, i: u16) -> u64 {
        self.rx_bufs + u64::from(i) * BUF as u64
    }

    fn deadline(&self, ms: u64) -> u64 {
        cpu::rdtsc().saturating_add(ms.saturating_mul(self.tsc_ms))
    }

    /// Queues one Ethernet frame (destination MAC first, no FCS; at most
    /// [`MAX_TX_FRAME`] bytes) behind a zero header and notifies the
    /// device, without waiting for it to be sent; waits (bounded) only for
    /// a free buffer.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), Reason> {
        if frame.len() > MAX_TX_FRAME {
            crate::fail!("frame of {} bytes > {MAX_TX_FRAME}", frame.len());
        }
        let (slot, addr) = self.tx.acquire(&self.t)?;
        // SAFETY: transmit buffer `slot` is BUF bytes of RAM from
        // `dma::alloc` (no Rust object) that the device does not hold
        // (`acquire` returned it); HDR + frame.len() <= BUF.
        unsafe {
            core::ptr::write_bytes(addr as *mut u8, 0, HDR);
            core::ptr::copy_nonoverlapping(
                frame.as_ptr(),
                (addr as usize + HDR) as *mut u8,
                frame.len(),
            );
        }
        self.tx.submit(slot, (HDR + frame.len()) as u32);
        self.tx_frames += 1;
        Ok(())
    }

    /// Waits (bounded) until the device has returned every transmit buffer.
    pub fn flush(&mut self) -> Result<(), Reason> {
        self.tx.flush(&self.t)
    }

    /// Whether a received buffer is waiting (cheap: one ring read).
    pub fn has_rx(&self) -> bool {
        self.rx.has_used()
    }

    /// The next used receive entry, validated: (buffer id, used length).
    fn pop_rx(&mut self) -> Result<Option<(u16, usize)>, Reason> {
        let Some((id, len)) = self.rx.pop_used() else {
            return Ok(None);
        };
        if id >= u32::from(self.rx.size) {
            crate::fail!("receiveq1: used id {id} out of range");
        }
        if len as usize > self.rx_len {
            crate::fail!("receiveq1: used length {len} > buffer size {}", self.rx_len);
        }
        Ok(Some((id as u16, len as usize)))
    }

    /// Copies `len` bytes at `off` of receive buffer `id` into `dst` (as
    /// far as it has room from `at`); returns the bytes copied.
    fn copy_out(&self, id: u16, off: usize, len: usize, dst: &mut [u8], at: usize) -> usize {
        let n = len.min(dst.len().saturating_sub(at));
        // SAFETY: bytes off..off+len (<= BUF) of receive buffer `id`, RAM
        // from `dma::alloc` (no Rust object) that the device has returned
        // and not been given back yet; `dst[at..at + n]` is in bounds.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (self.rx_buf(id) as usize + off) as *const u8,
                dst.as_mut_ptr().add(at),
                n,
            );
        }
        n
    }

    /// Gives receive buffer `id` back; the device sees it at the next
    /// [`Self::refill`].
    fn repost(&mut self, id: u16) {
        self.rx.push(id);
        self.rx_unpublished += 1;
    }

    /// Publishes the buffers given back since the last refill (and kicks
    /// unless the device asked not to be).
    fn refill(&mut self) {
        if self.rx_unpublished > 0 {
            self.rx.publish();
            self.rx_unpublished = 0;
        }
    }

    /// The next received frame, if one is there: copied into `buf`
    /// (without the virtio header), its length returned. A frame longer
    /// than `buf` is dropped (counted in `rx_dropped`) and None returned.
    /// With MRG_RXBUF the buffers of a frame spanning several are joined
    /// (their used entries are waited for, bounded, should the device have
    /// published only the first).
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Reason> {
        let Some((id, len)) = self.pop_rx()? else {
            self.refill();
            return Ok(None);
        };
        let frame = self.recv_frame(id, len, buf);
        if self.rx_unpublished >= REFILL_BATCH || !self.rx.has_used() {
            self.refill();
        }
        frame
    }

    /// The rest of [`Self::recv`], from the frame's first used entry.
    fn recv_frame(&mut self, id: u16, len: usize, buf: &mut [u8]) -> Result<Option<usize>, Reason> {
        if len < HDR {
            self.repost(id);
            crate::fail!("receiveq1: used length {len} < header {HDR}");
        }
        let mut hdr = [0u8; HDR];
        self.copy_out(id, 0, HDR, &mut hdr, 0);
        let num_buffers = if self.features & F_MRG_RXBUF != 0 {
            u16::from_le_bytes([hdr[10], hdr[11]])
        } else {
            1
        };
        if num_buffers == 0 || num_buffers > self.rx.size {
            self.repost(id);
            crate::fail!("receiveq1: num_buffers {num_buffers}");
        }
        let mut total = len - HDR;
        let mut copied = self.copy_out(id, HDR, len - HDR, buf, 0);
        self.repost(id);
        for _ in 1..num_buffers {
            let deadline = self.deadline(WAIT_MS);
            let (id, len) = loop {
                if let Some(entry) = self.pop_rx()? {
                    break entry;
                }
                // Waiting: the device may need the buffers held back.
                self.refill();
                if cpu::rdtsc() >= deadline {
                    crate::fail!(
                        "receiveq1: frame of {num_buffers} buffers not completed in {WAIT_MS} ms"
                    );
                }
                core::hint::spin_loop();
            };
            copied += self.copy_out(id, 0, len, buf, copied);
            total += len;
            self.repost(id);
        }
        if total > buf.len() {
            self.rx_dropped += 1;
            return Ok(None);
        }
        debug_assert_eq!(copied, total);
        self.rx_frames += 1;
        Ok(Some(total))
    }
}
