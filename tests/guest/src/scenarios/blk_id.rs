//! `blk-id`: a GET_ID request returns the device's 20-byte ID string
//! (NUL-padded when shorter), printed as `id=<string>` (bytes outside
//! printable ASCII, and spaces, shown as `_`).

use super::blk_common;
use super::{Ctx, Reason, Scenario};
use crate::dma;
use crate::virtio::blk::{Seg, S_OK, T_GET_ID};

/// The scenario.
pub const SCENARIO: Scenario = Scenario {
    name: "blk-id",
    run,
};

/// Bytes of a GET_ID answer.
const ID_BYTES: usize = 20;

fn run(ctx: &Ctx) -> Result<(), Reason> {
    let mut blk = blk_common::open(ctx, 0, 1)?;
    let buf = dma::alloc(ctx.boot, 512, 512)?;
    let seg = Seg {
        addr: buf,
        len: ID_BYTES as u32,
        device_writes: true,
    };
    let done = blk.request(T_GET_ID, 0, &[seg])?;
    if done.status != S_OK {
        crate::fail!("GET_ID: status {}", done.status);
    }
    let mut id = [0u8; ID_BYTES];
    for (i, byte) in id.iter_mut().enumerate() {
        // SAFETY: `buf` is a 512-byte buffer from `dma::alloc` the device
        // has finished writing (the request completed).
        *byte = unsafe { ((buf + i as u64) as *const u8).read_volatile() };
    }
    let len = id.iter().position(|&b| b == 0).unwrap_or(ID_BYTES);
    for byte in &mut id[..len] {
        if !byte.is_ascii_graphic() {
            *byte = b'_';
        }
    }
    let text = core::str::from_utf8(&id[..len]).unwrap_or("?");
    crate::println!(
        "VMDT {} id={text} len={len} used_len={}",
        ctx.name,
        done.len
    );
    Ok(())
}
