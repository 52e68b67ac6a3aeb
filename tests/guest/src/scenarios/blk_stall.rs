//! `blk-stall`: verified I/O for a while, reporting how long the device
//! ever stopped completing requests — what a guest notices of its device
//! process being killed and restarted underneath it.
//!
//! For `secs=N` seconds (default 10) it keeps `depth=D` requests (default
//! 32) in flight on every queue, over the first `size=MiB` of the disk
//! (default 16) in 4 KiB blocks taken in turn: three writes of a block's
//! next generation (a per-sector pattern seeded by it) for every read,
//! which is checked against the generation last written. A completion
//! other than OK, or a read that does not match, fails the scenario. At the
//! end it reads the whole area back and checks every block.
//!
//! The gap between one completion and the next is measured (TSC); the
//! `top=K` largest (default 32) are printed, in µs, largest first:
//! `VMDT blk-stall requests=N errors=0 gaps_us=a,b,...`. Every gap of
//! `stall_us=T` µs or more (default 1000; the first 4096) is printed too,
//! as `TSC of the completion before it:µs`, so that a host tool that knows
//! when it killed the backend (in TSC: the `tsc=` of the `start` line
//! tells the guest's TSC when it was printed) can tell how long each kill
//! kept the guest waiting: `VMDT blk-stall stalls=t:us,t:us,...`.

use super::blk_common::{self, check, fill, SECTOR};
use super::{Ctx, Reason, Scenario};
use crate::cpu;
use crate::dma;
use crate::virtio::blk::{Seg, MAX_QUEUES, MAX_SLOTS, S_OK, T_IN, T_OUT};

/// The scenario.
pub const SCENARIO: Scenario = Scenario {
    name: "blk-stall",
    run,
};

/// Sectors per block (4 KiB).
const BLOCK_SECTORS: u64 = 8;
/// Most gaps kept.
const MAX_TOP: usize = 256;
/// Most stalls recorded.
const MAX_STALLS: usize = 4096;

/// The generation table: one u16 per block, in DMA memory (no heap).
struct Gens {
    base: u64,
    blocks: u64,
}

impl Gens {
    fn get(&self, block: u64) -> u16 {
        // SAFETY: `base` is a dma::alloc'd table of `blocks` u16s that no
        // device uses; block < blocks.
        unsafe { ((self.base + 2 * block) as *const u16).read_volatile() }
    }

    fn set(&self, block: u64, gen: u16) {
        // SAFETY: as for `get`.
        unsafe { ((self.base + 2 * block) as *mut u16).write_volatile(gen) }
    }
}

/// The `k` largest values seen, unordered.
struct Top {
    values: [u64; MAX_TOP],
    k: usize,
}

impl Top {
    fn add(&mut self, v: u64) {
        let slots = &mut self.values[..self.k];
        if let Some(min) = slots.iter_mut().min() {
            if v > *min {
                *min = v;
            }
        }
    }
}

/// A request in flight: its block, the generation written (reads: the one
/// expected), and whether it writes.
#[derive(Clone, Copy)]
struct Req {
    block: u64,
    gen: u16,
    write: bool,
}

fn run(ctx: &Ctx) -> Result<(), Reason> {
    let mut blk = blk_common::open(ctx, 0, MAX_QUEUES)?;
    let secs = ctx.number("secs", 10)?;
    let depth = (ctx.number("depth", 32)? as usize).clamp(1, blk.slots.min(MAX_SLOTS));
    let mib = ctx.number("size", 16)?;
    let k = (ctx.number("top", 32)? as usize).clamp(1, MAX_TOP);
    let blocks = (mib * (1 << 20) / SECTOR).min(blk.cfg.capacity) / BLOCK_SECTORS;
    let slots = blk.nq * depth;
    if blocks < 2 * slots as u64 {
        crate::fail!("{blocks} blocks are too few for {slots} requests in flight");
    }
    let block_bytes = BLOCK_SECTORS * SECTOR;
    let bufs = dma::alloc(
        ctx.boot,
        (MAX_QUEUES * MAX_SLOTS) as u64 * block_bytes,
        4096,
    )?;
    let gens = Gens {
        base: dma::alloc(ctx.boot, 2 * blocks, 4096)?,
        blocks,
    };
    for b in 0..gens.blocks {
        gens.set(b, 0);
    }
    let buf = |q: usize, slot: usize| bufs + ((q * MAX_SLOTS + slot) as u64) * block_bytes;
    let mut reqs = [[None::<Req>; MAX_SLOTS]; MAX_QUEUES];
    let tsc_ms = cpu::tsc_per_ms();
    let deadline = cpu::Deadline::after_ms(secs * 1000);
    let mut top = Top {
        values: [0; MAX_TOP],
        k,
    };
    let (mut next, mut count, mut inflight, mut requests) = (0u64, 0u64, 0usize, 0u64);
    let stall_ticks = ctx.number("stall_us", 1000)? * tsc_ms / 1000;
    let mut stalls = [(0u64, 0u64); MAX_STALLS];
    let mut nstalls = 0;
    crate::println!(
        "VMDT {} start tsc={} tsc_per_ms={tsc_ms}",
        ctx.name,
        cpu::rdtsc()
    );
    let mut last = cpu::rdtsc();
    loop {
        let more = !deadline.expired();
        for q in 0..blk.nq {
            let mut added = false;
            for slot in 0..depth {
                if reqs[q][slot].is_some() || !more {
                    continue;
                }
                // Blocks in turn: with 2 * slots blocks or more, the one
                // taken is never one still in flight.
                let block = next % blocks;
                next += 1;
                let write = count % 4 != 3;
                count += 1;
                let gen = if write {
                    gens.get(block).wrapping_add(1).max(1)
                } else {
                    gens.get(block)
                };
                let addr = buf(q, slot);
                let sector = block * BLOCK_SECTORS;
                if write {
                    for s in 0..BLOCK_SECTORS {
                        fill(addr + s * SECTOR, sector + s, u64::from(gen));
                    }
                }
                let seg = Seg {
                    addr,
                    len: block_bytes as u32,
                    device_writes: !write,
                };
                blk.submit(q, slot, if write { T_OUT } else { T_IN }, sector, &[seg]);
                reqs[q][slot] = Some(Req { block, gen, write });
                inflight += 1;
                added = true;
            }
            if added {
                blk.kick(q);
            }
        }
        if inflight == 0 {
            break;
        }
        blk.wait()?;
        while let Some(done) = blk.take()? {
            let now = cpu::rdtsc();
            let gap = now.saturating_sub(last);
            top.add(gap);
            if gap >= stall_ticks && nstalls < MAX_STALLS {
                stalls[nstalls] = (last, gap);
                nstalls += 1;
            }
            last = now;
            let Some(req) = reqs[done.queue][done.slot].take() else {
                crate::fail!(
                    "completion for idle slot {} of queue {}",
                    done.slot,
                    done.queue
                );
            };
            inflight -= 1;
            requests += 1;
            let sector = req.block * BLOCK_SECTORS;
            if done.status != S_OK {
                crate::fail!(
                    "{} of block {} (request {requests}): status {}",
                    if req.write { "write" } else { "read" },
                    req.block,
                    done.status
                );
            }
            if req.write {
                gens.set(req.block, req.gen);
            } else {
                let addr = buf(done.queue, done.slot);
                // Generation 0: never written, zeroes.
                let seed = (req.gen != 0).then_some(u64::from(req.gen));
                for s in 0..BLOCK_SECTORS {
                    check(addr + s * SECTOR, sector + s, seed)?;
                }
            }
        }
    }
    // Everything written is there.
    let addr = buf(0, 0);
    for block in 0..blocks {
        let sector = block * BLOCK_SECTORS;
        let status = blk_common::io(&mut blk, false, sector, addr, BLOCK_SECTORS)?;
        if status != S_OK {
            crate::fail!("final read of block {block}: status {status}");
        }
        let gen = gens.get(block);
        let seed = (gen != 0).then_some(u64::from(gen));
        for s in 0..BLOCK_SECTORS {
            check(addr + s * SECTOR, sector + s, seed)?;
        }
    }
    let mut gaps = top.values;
    let gaps = &mut gaps[..k];
    gaps.sort_unstable_by(|a, b| b.cmp(a));
    crate::println!(
        "VMDT {} requests={requests} errors=0 blocks={blocks} depth={depth} queues={} gaps_us={}",
        ctx.name,
        blk.nq,
        Micros(gaps, tsc_ms.max(1))
    );
    crate::println!(
        "VMDT {} stalls={}",
        ctx.name,
        Stalls(&stalls[..nstalls], tsc_ms.max(1))
    );
    Ok(())
}

/// (TSC, interval) pairs shown as comma-separated `tsc:µs`.
struct Stalls<'a>(&'a [(u64, u64)], u64);

impl core::fmt::Display for Stalls<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, (at, ticks)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{at}:{}", ticks * 1000 / self.1)?;
        }
        Ok(())
    }
}

/// TSC intervals shown as comma-separated microseconds.
struct Micros<'a>(&'a [u64], u64);

impl core::fmt::Display for Micros<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, ticks) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{}", ticks * 1000 / self.1)?;
        }
        Ok(())
    }
}
