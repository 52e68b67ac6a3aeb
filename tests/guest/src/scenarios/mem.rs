//! `mem`: writes an address-derived pattern to every RAM byte of the memory
//! map except the first MiB and the guest image, then verifies it. RAM
//! above 4 GiB is included (identity mapped by `paging`).

use super::{Ctx, Reason, Scenario};
use crate::{cpu, entry, paging};

/// The scenario.
pub const SCENARIO: Scenario = Scenario { name: "mem", run };

/// Below this the guest keeps its tables, trampoline and firmware areas.
const LOW_SKIP: u64 = 1 << 20;
const FOUR_GIB: u64 = 1 << 32;

/// The value stored at `addr`: a bijection of the address (xor, then
/// multiply by an odd constant), so aliased addresses read back wrong.
fn pattern(addr: u64) -> u64 {
    (addr ^ 0x5A5A_A5A5_0F0F_F0F0).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Calls `f(start, end)` for each 8-byte aligned piece of RAM to test.
fn for_each_piece(
    ctx: &Ctx,
    mut f: impl FnMut(u64, u64) -> Result<(), Reason>,
) -> Result<(), Reason> {
    let (img_start, img_end) = entry::image_range();
    for range in ctx.boot.ram() {
        let start = range.addr.max(LOW_SKIP);
        let end = range.end();
        // The range minus the image: at most two pieces.
        for (s, e) in [(start, end.min(img_start)), (start.max(img_end), end)] {
            let (s, e) = ((s + 7) & !7, e & !7);
            if s < e {
                f(s, e)?;
            }
        }
    }
    Ok(())
}

fn run(ctx: &Ctx) -> Result<(), Reason> {
    let (mut tested, mut high, mut pieces) = (0u64, 0u64, 0u32);
    for_each_piece(ctx, |s, e| {
        if !paging::is_mapped(s, e - s) {
            crate::fail!("RAM {s:#x}..{e:#x} not mapped");
        }
        tested += e - s;
        high += e.saturating_sub(s.max(FOUR_GIB));
        pieces += 1;
        Ok(())
    })?;

    let began = cpu::rdtsc();
    for_each_piece(ctx, |s, e| {
        for addr in (s..e).step_by(8) {
            // SAFETY: [s, e) is RAM by the memory map, identity mapped
            // (checked above), outside the first MiB and the guest image,
            // so no Rust object or table lives there.
            unsafe { (addr as *mut u64).write_volatile(pattern(addr)) };
        }
        Ok(())
    })?;
    for_each_piece(ctx, |s, e| {
        for addr in (s..e).step_by(8) {
            // SAFETY: as for the writes.
            let got = unsafe { (addr as *const u64).read_volatile() };
            if got != pattern(addr) {
                crate::fail!(
                    "mismatch at {addr:#x}: wrote {:#x}, read {got:#x}",
                    pattern(addr)
                );
            }
        }
        Ok(())
    })?;
    let ms = (cpu::rdtsc() - began) / cpu::tsc_per_ms();
    crate::println!(
        "VMDT {} tested={tested} high={high} ranges={pieces}",
        ctx.name
    );
    let pages = if paging::used_1g_pages() { "1g" } else { "2m" };
    crate::println!("VMDT {} pages={pages} ms={ms}", ctx.name);
    Ok(())
}
