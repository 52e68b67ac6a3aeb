//! `blk-ro`: on a device offering VIRTIO_BLK_F_RO, a write must complete
//! with status IOERR (and change nothing), after which reads still work.
//! Fails if RO is not offered.

use super::blk_common::{self, SECTOR};
use super::{Ctx, Reason, Scenario};
use crate::dma;
use crate::virtio::blk::{F_RO, S_IOERR, S_OK};

/// The scenario.
pub const SCENARIO: Scenario = Scenario {
    name: "blk-ro",
    run,
};

/// Sectors written and read.
const SECTORS: u64 = 8;

fn run(ctx: &Ctx) -> Result<(), Reason> {
    let mut blk = blk_common::open(ctx, F_RO, 1)?;
    if !blk.has(F_RO) {
        crate::fail!("VIRTIO_BLK_F_RO not offered");
    }
    let before = dma::alloc(ctx.boot, SECTORS * SECTOR, 4096)?;
    let data = dma::alloc(ctx.boot, SECTORS * SECTOR, 4096)?;
    let after = dma::alloc(ctx.boot, SECTORS * SECTOR, 4096)?;
    let read_status = blk_common::io(&mut blk, false, 0, before, SECTORS)?;
    for k in 0..SECTORS {
        blk_common::fill(data + k * SECTOR, k, 0x7E57);
    }
    let write_status = blk_common::io(&mut blk, true, 0, data, SECTORS)?;
    let reread_status = blk_common::io(&mut blk, false, 0, after, SECTORS)?;
    crate::println!(
        "VMDT {} ro=1 write_status={write_status} read_status={read_status} reread_status={reread_status}",
        ctx.name
    );
    if write_status != S_IOERR {
        crate::fail!("write to a read-only device: status {write_status}, want {S_IOERR}");
    }
    if read_status != S_OK || reread_status != S_OK {
        crate::fail!("reads failed: status {read_status}, {reread_status}");
    }
    // SAFETY: both are SECTORS-sector buffers from `dma::alloc`, filled
    // by completed reads.
    let same = unsafe {
        core::slice::from_raw_parts(before as *const u8, (SECTORS * SECTOR) as usize)
            == core::slice::from_raw_parts(after as *const u8, (SECTORS * SECTOR) as usize)
    };
    if !same {
        crate::fail!("the refused write changed the data");
    }
    Ok(())
}
