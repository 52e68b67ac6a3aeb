//! `blk-bench`: a block I/O benchmark on the first virtio-blk disk. Rows of
//! 4 KiB random reads and writes and 64 KiB sequential reads and writes,
//! each at queue depth 1 and 32 *per queue* on every queue the device
//! offers (VIRTIO_BLK_F_MQ, up to 8), run for a fixed number of requests
//! (`ops=N` overrides every row's default). Random offsets come from a
//! xorshift64* generator seeded per row (the same sequence on every run),
//! aligned to the request size, anywhere on the disk; sequential rows walk
//! the disk from sector 0 and wrap at its end. Data is not verified
//! (`blk-rw` does that): this measures the device.
//!
//! Each row prints a `row-start` line before its first request and its
//! result line right after its last completion, so that a host-side tool
//! reading the console as it streams can sample the backend's CPU time at
//! both (the device is idle while the guest prints). Completion by MSI-X
//! (default) or polling (`poll=1`). `rw=<name>` and `depth=<n>` run only
//! the rows of that kind and depth (for profiling one of them).

use super::blk_common::{self, SECTOR};
use super::{Ctx, Reason, Scenario};
use crate::cpu;
use crate::dma;
use crate::virtio::blk::{Blk, Seg, MAX_DATA_SEGS, MAX_QUEUES, MAX_SLOTS, S_OK, T_IN, T_OUT};

/// The scenario.
pub const SCENARIO: Scenario = Scenario {
    name: "blk-bench",
    run,
};

/// Largest request of any row, bytes.
const MAX_BS: u64 = 64 << 10;

/// One row of the benchmark.
struct Row {
    /// fio's names: randread, randwrite, read, write.
    rw: &'static str,
    write: bool,
    random: bool,
    bs: u64,
    /// Requests in flight per queue (capped at the driver's slots).
    depth: usize,
    /// Requests by default: 0.2 to 1 s of dev-block on our development
    /// hosts, up to a few seconds of slower backends.
    ops: u64,
}

const fn row(rw: &'static str, bs: u64, depth: usize, ops: u64) -> Row {
    let b = rw.as_bytes();
    Row {
        rw,
        // "randwrite" and "write" end in 'e', the reads in 'd'.
        write: b[b.len() - 1] == b'e',
        random: b[0] == b'r' && b[1] == b'a',
        bs,
        depth,
        ops,
    }
}

/// The rows, in the order they run.
const ROWS: [Row; 8] = [
    row("randread", 4096, 1, 10_000),
    row("randread", 4096, 32, 100_000),
    row("randwrite", 4096, 1, 10_000),
    row("randwrite", 4096, 32, 100_000),
    row("read", 64 << 10, 1, 10_000),
    row("read", 64 << 10, 32, 40_000),
    row("write", 64 << 10, 1, 10_000),
    row("write", 64 << 10, 32, 40_000),
];

/// xorshift64* (Vigna): small, fast, and deterministic from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// What a row needs of the device and its buffers.
struct Setup {
    /// Request slots per queue in use.
    slots: usize,
    /// Data segments a request may be split into (seg_max) and the largest
    /// segment (size_max; 0: no limit).
    max_segs: usize,
    size_max: u64,
    /// Disk capacity in bytes.
    disk_bytes: u64,
    /// Buffers, [`MAX_BS`] per (queue, slot).
    bufs: u64,
}

impl Setup {
    fn buf(&self, q: usize, slot: usize) -> u64 {
        self.bufs + ((q * MAX_SLOTS + slot) as u64) * MAX_BS
    }

    /// The data segments of a `bs`-byte request from/to `buf`.
    fn segs(&self, buf: u64, bs: u64, write: bool) -> ([Seg; MAX_DATA_SEGS], usize) {
        let mut segs = [Seg {
            addr: 0,
            len: 0,
            device_writes: false,
        }; MAX_DATA_SEGS];
        let piece = if self.size_max == 0 {
            bs
        } else {
            self.size_max.min(bs)
        };
        let mut n = 0;
        let mut at = 0;
        while at < bs {
            let len = piece.min(bs - at);
            segs[n] = Seg {
                addr: buf + at,
                len: len as u32,
                device_writes: !write,
            };
            n += 1;
            at += len;
        }
        (segs, n)
    }
}

/// Runs `ops` requests of `row`; returns (TSC ticks, interrupts counted).
fn run_row(
    blk: &mut Blk,
    setup: &Setup,
    row: &Row,
    index: u64,
    ops: u64,
) -> Result<(u64, u64), Reason> {
    let depth = row.depth.min(setup.slots);
    let blocks = setup.disk_bytes / row.bs;
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15 ^ (index << 32));
    let mut busy = [[false; MAX_SLOTS]; MAX_QUEUES];
    let (mut issued, mut done, mut next_block) = (0u64, 0u64, 0u64);
    let ty = if row.write { T_OUT } else { T_IN };
    let irqs_before = blk.irqs();
    let began = cpu::rdtsc();
    loop {
        for (q, slots) in busy.iter_mut().enumerate().take(blk.nq) {
            let mut added = false;
            for (slot, state) in slots.iter_mut().enumerate().take(depth) {
                if *state || issued == ops {
                    continue;
                }
                let block = if row.random {
                    rng.next() % blocks
                } else {
                    let b = next_block;
                    next_block = (next_block + 1) % blocks;
                    b
                };
                let (segs, n) = setup.segs(setup.buf(q, slot), row.bs, row.write);
                blk.submit(q, slot, ty, block * row.bs / SECTOR, &segs[..n]);
                *state = true;
                issued += 1;
                added = true;
            }
            if added {
                blk.kick(q);
            }
        }
        if done == ops {
            break;
        }
        blk.wait()?;
        while let Some(completion) = blk.take()? {
            let state = &mut busy[completion.queue][completion.slot];
            if !*state {
                crate::fail!(
                    "completion for idle slot {} of queue {}",
                    completion.slot,
                    completion.queue
                );
            }
            *state = false;
            done += 1;
            if completion.status != S_OK {
                crate::fail!("{} #{done}: status {}", row.rw, completion.status);
            }
            if !row.write && u64::from(completion.len) < row.bs + 1 {
                crate::fail!("{} #{done}: used len {}", row.rw, completion.len);
            }
        }
    }
    Ok((cpu::rdtsc() - began, blk.irqs() - irqs_before))
}

fn run(ctx: &Ctx) -> Result<(), Reason> {
    let ops_arg = match ctx.boot.arg("ops") {
        None => None,
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n > 0 => Some(n),
            _ => crate::fail!("bad ops={s}"),
        },
    };
    let mut blk = blk_common::open(ctx, 0, MAX_QUEUES)?;
    let disk_bytes = blk.cfg.capacity * SECTOR;
    if disk_bytes < MAX_BS {
        crate::fail!("disk of {} sectors too small", blk.cfg.capacity);
    }
    let setup = Setup {
        slots: blk.slots.min(MAX_SLOTS),
        max_segs: blk.max_segs(),
        size_max: u64::from(blk.cfg.size_max),
        disk_bytes,
        bufs: dma::alloc(ctx.boot, (blk.nq * MAX_SLOTS) as u64 * MAX_BS, 4096)?,
    };
    if setup.size_max != 0 && setup.size_max < 4096 {
        crate::fail!("size_max {} below 4096", setup.size_max);
    }
    let largest = ROWS.iter().map(|r| r.bs).max().unwrap_or(MAX_BS);
    if setup.size_max != 0 && largest.div_ceil(setup.size_max) > setup.max_segs as u64 {
        crate::fail!(
            "{largest}-byte requests need more than seg_max {} segments of size_max {}",
            setup.max_segs,
            setup.size_max
        );
    }
    // Something other than zeroes to write.
    let words = (blk.nq * MAX_SLOTS) as u64 * MAX_BS / 8;
    for w in 0..words {
        // SAFETY: the buffer area from `dma::alloc` (no Rust object); no
        // request is in flight.
        unsafe { ((setup.bufs + 8 * w) as *mut u64).write_volatile(w.wrapping_mul(0x9E37_79B9)) };
    }
    let tsc_ms = cpu::tsc_per_ms();
    let only_rw = ctx.boot.arg("rw");
    let only_depth = ctx.boot.arg("depth");
    for (index, row) in ROWS.iter().enumerate() {
        if only_rw.is_some_and(|rw| rw != row.rw)
            || only_depth.is_some_and(|d| d.parse() != Ok(row.depth))
        {
            continue;
        }
        let ops = ops_arg.unwrap_or(row.ops);
        let depth = row.depth.min(setup.slots);
        crate::println!(
            "VMDT {} row-start rw={} bs={} depth={depth} queues={} ops={ops}",
            ctx.name,
            row.rw,
            row.bs,
            blk.nq
        );
        let (ticks, irqs) = run_row(&mut blk, &setup, row, index as u64, ops)?;
        crate::println!(
            "VMDT {} rw={} bs={} depth={depth} queues={} ops={ops} ms={} us={} irqs={irqs}",
            ctx.name,
            row.rw,
            row.bs,
            blk.nq,
            ticks / tsc_ms,
            ticks * 1000 / tsc_ms
        );
        if blk.irq && irqs == 0 {
            crate::fail!("MSI-X mode but no interrupt counted");
        }
    }
    Ok(())
}
