//! virtio block device (virtio 1.2 §5.2) over the PCI transport.
//!
//! Each request queue has `slots` request slots; slot `s` owns descriptors
//! `s * DESC_PER_SLOT ..` (header, up to [`MAX_DATA_SEGS`] data segments,
//! status) and a 32-byte metadata cell (16-byte header, status byte), so a
//! used-ring id maps straight back to its slot. Completion is by MSI-X (one
//! vector per queue, counted by the CPL0 stubs; CPL3 waits for a count to
//! change) or, with `irq: false`, by polling the used rings.

use super::queue::{Queue, DESC_F_NEXT, DESC_F_WRITE};
use super::setup;
use super::transport::{self, Transport, NO_VECTOR};
use super::TYPE_BLOCK;
use crate::bootinfo::BootInfo;
use crate::cpu::{self, Deadline};
use crate::entry::{VEC_IRQ_BASE, VEC_SPURIOUS};
use crate::interrupts::irq_count;
use crate::scenarios::Reason;
use crate::{dma, lapic};

/// Feature bits (§5.2.3).
pub const F_SIZE_MAX: u64 = 1 << 1;
pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
pub const F_FLUSH: u64 = 1 << 9;
pub const F_MQ: u64 = 1 << 12;
pub const F_DISCARD: u64 = 1 << 13;
pub const F_WRITE_ZEROES: u64 = 1 << 14;

/// Request types.
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;
/// Status values.
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
/// Status byte before the device wrote one.
const S_NONE: u8 = 0xFF;

/// Most request queues used.
pub const MAX_QUEUES: usize = 8;
/// Most data descriptors per request.
pub const MAX_DATA_SEGS: usize = 3;
const DESC_PER_SLOT: u16 = 2 + MAX_DATA_SEGS as u16;
/// Most request slots per queue.
pub const MAX_SLOTS: usize = 32;
/// Queue size asked for (at most).
const QUEUE_SIZE: u16 = 256;
/// Bytes of metadata per slot (header at 0, status at 16).
const META_STRIDE: u64 = 32;
/// Bound of a wait for a completion.
const WAIT_MS: u64 = 10_000;

/// Device configuration (fields of negotiated features, else 0).
#[derive(Default)]
pub struct Config {
    pub capacity: u64,
    pub size_max: u32,
    pub seg_max: u32,
    pub blk_size: u32,
    pub num_queues: u16,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub discard_sector_alignment: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
    pub write_zeroes_may_unmap: u8,
}

/// What to negotiate and how to complete.
pub struct Options {
    /// Optional features wanted (taken where offered).
    pub features: u64,
    /// MSI-X interrupts (else polling).
    pub irq: bool,
    /// Most queues to use (MQ is negotiated when above 1).
    pub max_queues: usize,
}

/// One data segment of a request.
#[derive(Clone, Copy)]
pub struct Seg {
    pub addr: u64,
    pub len: u32,
    /// Written by the device (reads, GET_ID).
    pub device_writes: bool,
}

/// A completed request.
pub struct Done {
    pub queue: usize,
    pub slot: usize,
    pub status: u8,
    /// Bytes the device reports written.
    pub len: u32,
}

/// An initialised block device (status DRIVER_OK).
pub struct Blk {
    pub t: Transport,
    pub offered: u64,
    pub features: u64,
    pub cfg: Config,
    queues: [Queue; MAX_QUEUES],
    /// Queues in use.
    pub nq: usize,
    /// Request slots per queue.
    pub slots: usize,
    meta: u64,
    pub irq: bool,
    /// Features asked for (with the ones the driver always wants).
    wanted: u64,
    /// `Options::max_queues`.
    max_queues: usize,
}

impl Blk {
    /// Finds, resets and initialises the first virtio block device.
    pub fn open(boot: &BootInfo, opts: &Options) -> Result<Blk, Reason> {
        let t = transport::find(TYPE_BLOCK)?;
        let mut wanted = opts.features | F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE;
        if opts.max_queues > 1 {
            wanted |= F_MQ;
        }
        let mut blk = Blk {
            t,
            offered: 0,
            features: 0,
            cfg: Config::default(),
            queues: [Queue::default(); MAX_QUEUES],
            nq: 0,
            slots: MAX_SLOTS,
            meta: dma::alloc(
                boot,
                MAX_QUEUES as u64 * MAX_SLOTS as u64 * META_STRIDE,
                4096,
            )?,
            irq: opts.irq,
            wanted,
            max_queues: opts.max_queues,
        };
        blk.init(boot)?;
        Ok(blk)
    }

    /// Resets the device and initialises it from scratch (virtio 1.2
    /// §3.1.1): status, features, configuration, fresh queues at new
    /// addresses (the old rings are abandoned, so a device that kept their
    /// addresses or ring state would miss every new request), MSI-X
    /// vectors, DRIVER_OK. Nothing may be in flight. Fails unless the device
    /// comes back with the same features, capacity and queue count.
    pub fn reinit(&mut self, boot: &BootInfo) -> Result<(), Reason> {
        let func = self.t.func;
        let (features, capacity, nq, slots) =
            (self.features, self.cfg.capacity, self.nq, self.slots);
        let old = self.queues;
        self.init(boot)?;
        if self.features != features {
            crate::fail!(
                "{func}: features {:#x} after reset, {features:#x} before",
                self.features
            );
        }
        if self.cfg.capacity != capacity || self.nq != nq || self.slots != slots {
            crate::fail!(
                "{func}: capacity/queues/slots {}/{}/{} after reset, {capacity}/{nq}/{slots} before",
                self.cfg.capacity,
                self.nq,
                self.slots
            );
        }
        for (q, (new, old)) in self.queues[..nq].iter().zip(&old[..nq]).enumerate() {
            if new.desc == old.desc || new.avail == old.avail || new.used == old.used {
                crate::fail!("{func}: queue {q} rings not moved by reinit");
            }
        }
        Ok(())
    }

    /// Device reset and initialisation up to DRIVER_OK (marks the device
    /// FAILED on an error after the reset).
    fn init(&mut self, boot: &BootInfo) -> Result<(), Reason> {
        self.t.reset()?;
        let result = self.negotiate_and_setup(boot);
        setup::or_fail(&self.t, result)
    }

    fn negotiate_and_setup(&mut self, boot: &BootInfo) -> Result<(), Reason> {
        let t = &self.t;
        let (offered, features) = setup::negotiate(t, self.wanted)?;
        let has = |f: u64| features & f != 0;
        let cfg = Config {
            capacity: t.config_u64(0),
            size_max: if has(F_SIZE_MAX) { t.config_u32(8) } else { 0 },
            seg_max: if has(F_SEG_MAX) { t.config_u32(12) } else { 0 },
            blk_size: if has(F_BLK_SIZE) {
                t.config_u32(20)
            } else {
                512
            },
            num_queues: if has(F_MQ) { t.config_u16(34) } else { 1 },
            max_discard_sectors: t.config_u32(36),
            max_discard_seg: t.config_u32(40),
            discard_sector_alignment: t.config_u32(44),
            max_write_zeroes_sectors: t.config_u32(48),
            max_write_zeroes_seg: t.config_u32(52),
            write_zeroes_may_unmap: t.config_u8(56),
        };
        self.nq = usize::from(cfg.num_queues.min(t.num_queues()))
            .min(MAX_QUEUES)
            .min(self.max_queues)
            .max(1);
        self.offered = offered;
        self.features = features;
        self.cfg = cfg;
        self.queues = [Queue::default(); MAX_QUEUES];
        self.slots = MAX_SLOTS;
        self.setup(boot)
    }

    fn setup(&mut self, boot: &BootInfo) -> Result<(), Reason> {
        let func = self.t.func;
        if self.irq {
            let Some(msix) = &self.t.msix else {
                crate::fail!("{func}: no MSI-X capability");
            };
            if usize::from(msix.entries) < self.nq + 1 {
                crate::fail!(
                    "{func}: {} MSI-X entries for {} queues",
                    msix.entries,
                    self.nq
                );
            }
            // Unprogrammed PICs must not interrupt; the LAPIC must accept.
            cpu::outb(0x21, 0xFF);
            cpu::outb(0xA1, 0xFF);
            lapic::enable(VEC_SPURIOUS);
            let apic = lapic::id();
            for entry in 0..=self.nq as u16 {
                msix.set_entry(entry, apic, VEC_IRQ_BASE + entry as u8);
            }
            msix.enable();
            if self.t.set_config_vector(0) != 0 {
                crate::fail!("{func}: config MSI-X vector refused");
            }
        }
        for q in 0..self.nq {
            let vector = if self.irq { q as u16 + 1 } else { NO_VECTOR };
            let mut queue = setup::queue(&self.t, boot, q as u16, QUEUE_SIZE, vector)?;
            if self.irq {
                queue.irq = Some(q + 1);
            }
            self.slots = self.slots.min(usize::from(queue.size / DESC_PER_SLOT));
            self.queues[q] = queue;
        }
        if self.slots == 0 {
            crate::fail!("{func}: queues too small for a request");
        }
        setup::driver_ok(&self.t)?;
        if self.irq {
            cpu::sti();
        }
        Ok(())
    }

    /// Whether feature `f` was negotiated.
    pub fn has(&self, f: u64) -> bool {
        self.features & f != 0
    }

    /// Most data segments a request may have (seg_max, [`MAX_DATA_SEGS`]).
    pub fn max_segs(&self) -> usize {
        match self.cfg.seg_max {
            0 => MAX_DATA_SEGS,
            n => (n as usize).min(MAX_DATA_SEGS),
        }
    }

    fn meta(&self, q: usize, slot: usize) -> u64 {
        self.meta + ((q * MAX_SLOTS + slot) as u64) * META_STRIDE
    }

    /// Queues request `ty` at `sector` with data `segs` in slot `slot` of
    /// queue `q` (the slot must be free); [`Self::kick`] publishes it.
    pub fn submit(&mut self, q: usize, slot: usize, ty: u32, sector: u64, segs: &[Seg]) {
        assert!(q < self.nq && slot < self.slots && segs.len() <= MAX_DATA_SEGS);
        let meta = self.meta(q, slot);
        // SAFETY: `meta` is this slot's 32-byte cell of the metadata area
        // from `dma::alloc` (no Rust object); the slot is free, so the
        // device does not use it now.
        unsafe {
            (meta as *mut u32).write_volatile(ty);
            ((meta + 4) as *mut u32).write_volatile(0);
            ((meta + 8) as *mut u64).write_volatile(sector);
            ((meta + 16) as *mut u8).write_volatile(S_NONE);
        }
        let queue = &mut self.queues[q];
        let head = slot as u16 * DESC_PER_SLOT;
        queue.set_desc(head, meta, 16, DESC_F_NEXT, head + 1);
        let mut d = head + 1;
        for seg in segs {
            let flags = DESC_F_NEXT | if seg.device_writes { DESC_F_WRITE } else { 0 };
            queue.set_desc(d, seg.addr, seg.len, flags, d + 1);
            d += 1;
        }
        queue.set_desc(d, meta + 16, 1, DESC_F_WRITE, 0);
        queue.push(head);
    }

    /// Publishes the requests queued on `q` and notifies the device.
    pub fn kick(&mut self, q: usize) {
        self.queues[q].publish();
    }

    /// The next completed request of any queue.
    pub fn take(&mut self) -> Result<Option<Done>, Reason> {
        for q in 0..self.nq {
            if let Some((id, len)) = self.queues[q].pop_used() {
                let slot = id as usize / usize::from(DESC_PER_SLOT);
                if id % u32::from(DESC_PER_SLOT) != 0 || slot >= self.slots {
                    crate::fail!("queue {q}: used id {id} is no chain head");
                }
                // SAFETY: the status byte of the slot's metadata cell (see
                // `submit`); the device has returned the chain.
                let status = unsafe { ((self.meta(q, slot) + 16) as *const u8).read_volatile() };
                return Ok(Some(Done {
                    queue: q,
                    slot,
                    status,
                    len,
                }));
            }
        }
        Ok(None)
    }

    fn any_used(&self) -> bool {
        self.queues[..self.nq].iter().any(|q| q.has_used())
    }

    /// Interrupts counted on the queue vectors so far.
    pub fn irqs(&self) -> u64 {
        self.queues[..self.nq]
            .iter()
            .filter_map(|q| q.irq)
            .map(irq_count)
            .sum()
    }

    /// Waits until some queue has a completion: for an interrupt (a queue
    /// vector's count changes) or, polled, for a used ring to move.
    pub fn wait(&self) -> Result<(), Reason> {
        let deadline = Deadline::after_ms(WAIT_MS);
        loop {
            let seen = self.irqs();
            if self.any_used() {
                return Ok(());
            }
            let arrived = if self.irq {
                cpu::wait_until(deadline, || self.irqs() != seen)
            } else {
                cpu::wait_until(deadline, || self.any_used())
            };
            if !arrived {
                crate::fail!(
                    "no completion in {WAIT_MS} ms (irqs={seen} status={:#x})",
                    self.t.status()
                );
            }
        }
    }

    /// Runs one request on queue 0, slot 0 (nothing else in flight).
    pub fn request(&mut self, ty: u32, sector: u64, segs: &[Seg]) -> Result<Done, Reason> {
        self.submit(0, 0, ty, sector, segs);
        self.kick(0);
        loop {
            if let Some(done) = self.take()? {
                return Ok(done);
            }
            self.wait()?;
        }
    }
}
