//! `blk-rw`: writes a per-sector pattern over the disk (or its first
//! `size=<MiB>`) at queue depths 1, 8 and 32 per queue, on every queue
//! (VIRTIO_BLK_F_MQ), with requests of 4..64 KiB split into 1..3 data
//! descriptors placed apart in memory; flushes, reads everything back and
//! verifies. Each depth uses its own seed, so stale data is caught too.
//! Completion by MSI-X (default) or polling (`poll=1`).
//!
//! `reinit=1` (or `resets=N`): after the first depth's pass, resets the
//! device and initialises it from scratch (new rings), then reads the whole
//! area back and verifies the first pass's pattern survived (N times), then
//! goes on with the other depths.

use super::blk_common::{self, check, fill, SECTOR};
use super::{Ctx, Reason, Scenario};
use crate::cpu;
use crate::dma;
use crate::virtio::blk::{
    Blk, Seg, F_FLUSH, MAX_DATA_SEGS, MAX_QUEUES, MAX_SLOTS, S_OK, T_FLUSH, T_IN, T_OUT,
};

/// The scenario.
pub const SCENARIO: Scenario = Scenario {
    name: "blk-rw",
    run,
};

/// Queue depths tested (per queue).
const DEPTHS: [usize; 3] = [1, 8, 32];
/// Largest request, in sectors (64 KiB).
const MAX_REQ_SECTORS: u64 = 128;
/// Requests are multiples of this many sectors (4 KiB: any blk_size).
const ALIGN_SECTORS: u64 = 8;
/// Gap between the data segments of a request in memory.
const SEG_GAP: u64 = 4096;
/// Buffer per request slot.
const SLOT_BYTES: u64 = MAX_REQ_SECTORS * SECTOR + MAX_DATA_SEGS as u64 * SEG_GAP;

/// A request in flight.
#[derive(Clone, Copy)]
struct Req {
    sector: u64,
    sectors: u64,
    segs: u64,
}

impl Req {
    /// First sector (relative) and sector count of data segment `j`.
    fn seg(&self, j: u64) -> (u64, u64) {
        let start = j * self.sectors / self.segs;
        (start, (j + 1) * self.sectors / self.segs - start)
    }

    /// Calls `f(sector, address)` for every sector of the request.
    fn each_sector(
        &self,
        buf: u64,
        mut f: impl FnMut(u64, u64) -> Result<(), Reason>,
    ) -> Result<(), Reason> {
        for j in 0..self.segs {
            let (first, n) = self.seg(j);
            for k in first..first + n {
                f(self.sector + k, buf + k * SECTOR + j * SEG_GAP)?;
            }
        }
        Ok(())
    }
}

/// The geometry of one pass.
#[derive(Clone, Copy)]
struct Pass {
    write: bool,
    seed: u64,
    depth: usize,
    end: u64,
    max_sectors: u64,
    max_segs: u64,
    bufs: u64,
}

fn slot_buf(pass: &Pass, q: usize, slot: usize) -> u64 {
    pass.bufs + ((q * MAX_SLOTS + slot) as u64) * SLOT_BYTES
}

/// One pass over `[0, end)`: returns the requests made.
fn run_pass(blk: &mut Blk, pass: &Pass) -> Result<u64, Reason> {
    let mut reqs = [[None::<Req>; MAX_SLOTS]; MAX_QUEUES];
    let (mut next, mut count, mut inflight) = (0u64, 0u64, 0usize);
    loop {
        for (q, slots) in reqs.iter_mut().enumerate().take(blk.nq) {
            let mut added = false;
            for (slot, state) in slots.iter_mut().enumerate().take(pass.depth) {
                if state.is_some() || next >= pass.end {
                    continue;
                }
                // Sizes cycle through 8..=max sectors, segments 1..=max.
                let size = ALIGN_SECTORS * (1 + (count * 7) % (pass.max_sectors / ALIGN_SECTORS));
                let sectors = size.min(pass.end - next);
                let req = Req {
                    sector: next,
                    sectors,
                    segs: (1 + count % pass.max_segs).min(sectors),
                };
                let buf = slot_buf(pass, q, slot);
                if pass.write {
                    req.each_sector(buf, |s, a| {
                        fill(a, s, pass.seed);
                        Ok(())
                    })?;
                }
                let mut segs = [Seg {
                    addr: 0,
                    len: 0,
                    device_writes: false,
                }; MAX_DATA_SEGS];
                for j in 0..req.segs {
                    let (first, n) = req.seg(j);
                    segs[j as usize] = Seg {
                        addr: buf + first * SECTOR + j * SEG_GAP,
                        len: (n * SECTOR) as u32,
                        device_writes: !pass.write,
                    };
                }
                let ty = if pass.write { T_OUT } else { T_IN };
                blk.submit(q, slot, ty, req.sector, &segs[..req.segs as usize]);
                *state = Some(req);
                next += sectors;
                count += 1;
                inflight += 1;
                added = true;
            }
            if added {
                blk.kick(q);
            }
        }
        if inflight == 0 {
            return Ok(count);
        }
        blk.wait()?;
        while let Some(done) = blk.take()? {
            let Some(req) = reqs[done.queue][done.slot].take() else {
                crate::fail!(
                    "completion for idle slot {} of queue {}",
                    done.slot,
                    done.queue
                );
            };
            inflight -= 1;
            let what = if pass.write { "write" } else { "read" };
            if done.status != S_OK {
                crate::fail!(
                    "{what} of {} sectors at {}: status {}",
                    req.sectors,
                    req.sector,
                    done.status
                );
            }
            if !pass.write {
                let bytes = (req.sectors * SECTOR) as u32 + 1;
                if done.len < bytes {
                    crate::fail!("read at {}: used len {} < {bytes}", req.sector, done.len);
                }
                let buf = slot_buf(pass, done.queue, done.slot);
                req.each_sector(buf, |s, a| check(a, s, Some(pass.seed)))?;
            }
        }
    }
}

fn run(ctx: &Ctx) -> Result<(), Reason> {
    let mut blk = blk_common::open(ctx, F_FLUSH, MAX_QUEUES)?;
    let capacity = blk.cfg.capacity;
    let mut end = capacity;
    if let Some(mib) = ctx.boot.arg("size") {
        let Ok(mib) = mib.parse::<u64>() else {
            crate::fail!("bad size={mib}");
        };
        end = end.min(mib.saturating_mul((1 << 20) / SECTOR));
    }
    end -= end % ALIGN_SECTORS;
    if end == 0 {
        crate::fail!("disk of {capacity} sectors too small");
    }
    let mut max_sectors = MAX_REQ_SECTORS;
    if blk.cfg.size_max != 0 {
        max_sectors =
            max_sectors.min(u64::from(blk.cfg.size_max) / SECTOR / ALIGN_SECTORS * ALIGN_SECTORS);
        if max_sectors == 0 {
            crate::fail!(
                "size_max {} below {} sectors",
                blk.cfg.size_max,
                ALIGN_SECTORS
            );
        }
    }
    let slots = blk.slots.min(MAX_SLOTS);
    let bufs = dma::alloc(ctx.boot, (blk.nq * MAX_SLOTS) as u64 * SLOT_BYTES, 4096)?;
    let resets = resets(ctx)?;
    let tsc_ms = cpu::tsc_per_ms();
    for (i, &want_depth) in DEPTHS.iter().enumerate() {
        let depth = want_depth.min(slots);
        let mut pass = Pass {
            write: true,
            seed: 0x100 + i as u64,
            depth,
            end,
            max_sectors,
            max_segs: blk.max_segs() as u64,
            bufs,
        };
        let irqs_before = blk.irqs();
        let began = cpu::rdtsc();
        let writes = run_pass(&mut blk, &pass)?;
        if blk.has(F_FLUSH) {
            let status = blk.request(T_FLUSH, 0, &[])?.status;
            if status != S_OK {
                crate::fail!("flush: status {status}");
            }
        }
        let wrote = cpu::rdtsc();
        pass.write = false;
        let reads = run_pass(&mut blk, &pass)?;
        let done = cpu::rdtsc();
        let irqs = blk.irqs() - irqs_before;
        crate::println!(
            "VMDT {} capacity={capacity} written={} depth={depth} queues={} irqs={irqs} ms={} write_ms={} read_ms={} requests={}",
            ctx.name,
            end * SECTOR,
            blk.nq,
            (done - began) / tsc_ms,
            (wrote - began) / tsc_ms,
            (done - wrote) / tsc_ms,
            writes + reads
        );
        if blk.irq && irqs == 0 {
            crate::fail!("MSI-X mode but no interrupt counted");
        }
        if i == 0 {
            for k in 1..=resets {
                reset_and_verify(ctx, &mut blk, &pass, k)?;
            }
        }
    }
    Ok(())
}

/// Device resets asked for: `resets=N`, else 1 with `reinit=1`, else 0.
fn resets(ctx: &Ctx) -> Result<u32, Reason> {
    let arg = ctx
        .boot
        .arg("resets")
        .or(ctx.boot.arg("reinit").filter(|v| *v != "0"));
    match arg.map(str::parse::<u32>) {
        None => Ok(0),
        Some(Ok(n)) if n <= 100 => Ok(n),
        Some(_) => crate::fail!("bad reinit=/resets= (0..=100 resets)"),
    }
}

/// Reset number `k`: resets and re-initialises the device, then reads
/// `[0, pass.end)` back (at the pass's depth) and verifies it still holds
/// the pattern written before the reset.
fn reset_and_verify(ctx: &Ctx, blk: &mut Blk, pass: &Pass, k: u32) -> Result<(), Reason> {
    let tsc_ms = cpu::tsc_per_ms();
    let began = cpu::rdtsc();
    blk.reinit(ctx.boot)?;
    let reset = cpu::rdtsc();
    let irqs_before = blk.irqs();
    let verify = Pass {
        write: false,
        depth: pass.depth.min(blk.slots),
        ..*pass
    };
    let reads = run_pass(blk, &verify)?;
    let irqs = blk.irqs() - irqs_before;
    crate::println!(
        "VMDT {} reinit={k} verified={} queues={} irqs={irqs} reset_ms={} read_ms={} requests={reads}",
        ctx.name,
        pass.end * SECTOR,
        blk.nq,
        (reset - began) / tsc_ms,
        (cpu::rdtsc() - reset) / tsc_ms,
    );
    if blk.irq && irqs == 0 {
        crate::fail!("MSI-X mode but no interrupt counted after reset {k}");
    }
    Ok(())
}
