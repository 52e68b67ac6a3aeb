//! `blk-discard`: with VIRTIO_BLK_F_DISCARD (and WRITE_ZEROES when
//! offered) negotiated: fills a 1 MiB region with a pattern, discards a
//! range, write-zeroes a range (and an unmapping one when
//! write_zeroes_may_unmap), then reads the region back: zeroes where
//! zeroes were written, the pattern everywhere but the discarded range
//! (whose content is undefined). Without DISCARD: fails, or passes with
//! `skipped=discard` given `optional=1`.

use super::blk_common::{self, SECTOR};
use super::{Ctx, Reason, Scenario};
use crate::dma;
use crate::virtio::blk::{Blk, Seg, F_DISCARD, F_WRITE_ZEROES, S_OK, T_DISCARD, T_WRITE_ZEROES};

/// The scenario.
pub const SCENARIO: Scenario = Scenario {
    name: "blk-discard",
    run,
};

/// Region tested, sectors from 0.
const REGION: u64 = 2048;
/// Where the write-zeroes ranges start.
const ZERO_AT: u64 = 1024;
const UNMAP_AT: u64 = 1536;
/// Chunk of the pattern writes and reads (32 KiB).
const CHUNK: u64 = 64;
const SEED: u64 = 0xD15C;
/// Flag of a discard/write-zeroes segment: unmap.
const FLAG_UNMAP: u32 = 1;

/// Sends a discard or write-zeroes request for `[sector, sector + n)`.
fn range_request(
    blk: &mut Blk,
    buf: u64,
    ty: u32,
    sector: u64,
    n: u64,
    flags: u32,
) -> Result<(), Reason> {
    // SAFETY: `buf` is a 16-byte-or-larger buffer from `dma::alloc`, not in
    // use by the device.
    unsafe {
        (buf as *mut u64).write_volatile(sector);
        ((buf + 8) as *mut u32).write_volatile(n as u32);
        ((buf + 12) as *mut u32).write_volatile(flags);
    }
    let seg = Seg {
        addr: buf,
        len: 16,
        device_writes: false,
    };
    let status = blk.request(ty, 0, &[seg])?.status;
    if status != S_OK {
        crate::fail!("request type {ty} for {n} sectors at {sector}: status {status}");
    }
    Ok(())
}

/// `want` sectors limited by a device maximum (0: no limit given) and
/// aligned down to `align` sectors; at least 1.
fn limit(want: u64, max: u32, align: u32) -> u64 {
    let mut n = if max == 0 {
        want
    } else {
        want.min(u64::from(max))
    };
    if align > 1 && n >= u64::from(align) {
        n -= n % u64::from(align);
    }
    n.max(1)
}

fn run(ctx: &Ctx) -> Result<(), Reason> {
    let mut blk = blk_common::open(ctx, F_DISCARD | F_WRITE_ZEROES, 1)?;
    if !blk.has(F_DISCARD) {
        if ctx.boot.arg("optional") == Some("1") {
            crate::println!("VMDT {} skipped=discard", ctx.name);
            return Ok(());
        }
        crate::fail!("VIRTIO_BLK_F_DISCARD not offered");
    }
    if blk.cfg.capacity < REGION {
        crate::fail!("disk of {} sectors too small", blk.cfg.capacity);
    }
    let cfg = &blk.cfg;
    crate::println!(
        "VMDT {} max_discard_sectors={} max_discard_seg={} discard_sector_alignment={} max_write_zeroes_sectors={} max_write_zeroes_seg={} write_zeroes_may_unmap={}",
        ctx.name,
        cfg.max_discard_sectors,
        cfg.max_discard_seg,
        cfg.discard_sector_alignment,
        cfg.max_write_zeroes_sectors,
        cfg.max_write_zeroes_seg,
        cfg.write_zeroes_may_unmap
    );
    let discard = limit(512, cfg.max_discard_sectors, cfg.discard_sector_alignment);
    let wz = blk.has(F_WRITE_ZEROES);
    let zeroes = if wz {
        limit(256, cfg.max_write_zeroes_sectors, 1)
    } else {
        0
    };
    let unmap = if wz && cfg.write_zeroes_may_unmap != 0 {
        zeroes
    } else {
        0
    };
    let buf = dma::alloc(ctx.boot, CHUNK * SECTOR, 4096)?;
    let range = dma::alloc(ctx.boot, 512, 512)?;
    let pattern = |_| Some(Some(SEED));
    blk_common::pattern_io(&mut blk, true, 0, REGION, buf, CHUNK, pattern)?;
    range_request(&mut blk, range, T_DISCARD, 0, discard, 0)?;
    if wz {
        range_request(&mut blk, range, T_WRITE_ZEROES, ZERO_AT, zeroes, 0)?;
    }
    if unmap != 0 {
        range_request(&mut blk, range, T_WRITE_ZEROES, UNMAP_AT, unmap, FLAG_UNMAP)?;
    }
    let expect = |s: u64| {
        if s < discard {
            None
        } else if (ZERO_AT..ZERO_AT + zeroes).contains(&s)
            || (UNMAP_AT..UNMAP_AT + unmap).contains(&s)
        {
            Some(None)
        } else {
            Some(Some(SEED))
        }
    };
    blk_common::pattern_io(&mut blk, false, 0, REGION, buf, CHUNK, expect)?;
    crate::println!(
        "VMDT {} discard={discard} write_zeroes={zeroes} write_zeroes_unmap={unmap} verified={REGION}",
        ctx.name
    );
    Ok(())
}
