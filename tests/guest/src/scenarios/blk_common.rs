//! Shared by the `blk-*` scenarios: opening the device (MSI-X unless
//! `poll=1`), the per-sector data pattern and synchronous I/O helpers.

use super::{Ctx, Reason};
use crate::virtio::blk::{Blk, Options, Seg, S_OK};

/// Bytes per sector (virtio block requests count 512-byte sectors).
pub const SECTOR: u64 = 512;

/// Opens the virtio block device with the optional `features` and up to
/// `max_queues` queues, and prints its `device=` line.
pub fn open(ctx: &Ctx, features: u64, max_queues: usize) -> Result<Blk, Reason> {
    let irq = ctx.boot.arg("poll") != Some("1");
    let options = Options {
        features,
        irq,
        max_queues,
    };
    let blk = Blk::open(ctx.boot, &options)?;
    let func = blk.t.func;
    crate::println!(
        "VMDT {} device={func} id={:04x}:{:04x} offered={:#x} features={:#x} capacity={} blk_size={} seg_max={} size_max={} queues={} slots={} mode={}",
        ctx.name,
        func.vendor,
        func.device,
        blk.offered,
        blk.features,
        blk.cfg.capacity,
        blk.cfg.blk_size,
        blk.cfg.seg_max,
        blk.cfg.size_max,
        blk.nq,
        blk.slots,
        if irq { "msix" } else { "poll" }
    );
    Ok(blk)
}

const SALT: u64 = 0x5A5A_A5A5_0F0F_F0F0;
const MUL: u64 = 0x9E37_79B9_7F4A_7C15;
/// Inverse of MUL modulo 2^64 (Newton iteration), to decode a bad word.
const MUL_INV: u64 = {
    let mut x = MUL;
    let mut i = 0;
    while i < 6 {
        x = x.wrapping_mul(2u64.wrapping_sub(MUL.wrapping_mul(x)));
        i += 1;
    }
    x
};

/// Word `w` (0..64) of `sector` under `seed` (< 2^16): a bijection of
/// (seed, sector, word), so a misdirected or stale sector is told apart.
pub fn word(sector: u64, w: u64, seed: u64) -> u64 {
    (((sector << 6) | w) ^ (seed << 48) ^ SALT).wrapping_mul(MUL)
}

/// Fills the sector buffer at `addr` with the pattern of `sector`.
pub fn fill(addr: u64, sector: u64, seed: u64) {
    for w in 0..SECTOR / 8 {
        // SAFETY: callers pass a sector buffer from `dma::alloc` (no Rust
        // object) that the device is not using.
        unsafe { ((addr + 8 * w) as *mut u64).write_volatile(word(sector, w, seed)) };
    }
}

/// Checks the sector buffer at `addr` holds the pattern of `sector`
/// (`seed` None: all zeroes).
pub fn check(addr: u64, sector: u64, seed: Option<u64>) -> Result<(), Reason> {
    for w in 0..SECTOR / 8 {
        // SAFETY: as for `fill`; the device has completed the read.
        let got = unsafe { ((addr + 8 * w) as *const u64).read_volatile() };
        let want = seed.map_or(0, |s| word(sector, w, s));
        if got != want {
            let v = got.wrapping_mul(MUL_INV) ^ SALT;
            crate::fail!(
                "sector {sector} word {w}: got {got:#x} want {want:#x} (looks like seed {} sector {} word {})",
                v >> 48,
                (v & ((1 << 48) - 1)) >> 6,
                v & 63
            );
        }
    }
    Ok(())
}

/// Synchronous read (`write` false) or write of `sectors` sectors at
/// `sector` from/to the buffer `buf`; returns the status byte.
pub fn io(blk: &mut Blk, write: bool, sector: u64, buf: u64, sectors: u64) -> Result<u8, Reason> {
    let ty = if write {
        crate::virtio::blk::T_OUT
    } else {
        crate::virtio::blk::T_IN
    };
    let seg = Seg {
        addr: buf,
        len: (sectors * SECTOR) as u32,
        device_writes: !write,
    };
    Ok(blk.request(ty, sector, &[seg])?.status)
}

/// Writes (seed Some) or verifies (`verify`) the pattern over sectors
/// `[start, end)` in chunks of `chunk` sectors through `buf`.
pub fn pattern_io(
    blk: &mut Blk,
    write: bool,
    start: u64,
    end: u64,
    buf: u64,
    chunk: u64,
    expect: impl Fn(u64) -> Option<Option<u64>>,
) -> Result<(), Reason> {
    let mut sector = start;
    while sector < end {
        let n = chunk.min(end - sector);
        if write {
            for k in 0..n {
                if let Some(Some(seed)) = expect(sector + k) {
                    fill(buf + k * SECTOR, sector + k, seed);
                }
            }
        }
        let status = io(blk, write, sector, buf, n)?;
        if status != S_OK {
            crate::fail!(
                "{} at sector {sector}: status {status}",
                if write { "write" } else { "read" }
            );
        }
        if !write {
            for k in 0..n {
                if let Some(seed) = expect(sector + k) {
                    check(buf + k * SECTOR, sector + k, seed)?;
                }
            }
        }
        sector += n;
    }
    Ok(())
}
