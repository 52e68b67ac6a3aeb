//! The identity map beyond the boot tables, built at CPL3.
//!
//! The boot tables (entry.rs) map the first GiB and the IOAPIC/LAPIC pages.
//! [`init`] adds the rest of 0..4 GiB (RAM write-back, the rest uncached:
//! the MMIO hole) and all RAM above 4 GiB, with 2 MiB pages, or on request
//! (see [`init`]) 1 GiB pages where a GiB is all RAM or all hole.
//!
//! Page tables are user-writable in this guest, so CPL3 writes them. Only
//! not-present entries are ever filled in, and a processor caches no
//! translation for a not-present entry (Intel SDM vol. 3, 4.10.2.3), so no
//! TLB flush (a CPL0 instruction) is needed.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::bootinfo::BootInfo;
use crate::cpu;
use crate::entry;

const GIB: u64 = 1 << 30;
const PAGE_2M: u64 = 1 << 21;
/// One PDPT covers 512 GiB: the most this guest maps.
pub const MAPPABLE_END: u64 = 512 * GIB;

const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_PWT: u64 = 1 << 3;
const PTE_PCD: u64 = 1 << 4;
const PTE_LARGE: u64 = 1 << 7;
const PTE_ADDR: u64 = 0x000F_FFFF_FFFF_F000;
/// A pointer to a lower-level table.
const TABLE: u64 = PTE_PRESENT | PTE_WRITE | PTE_USER;
/// A large page of RAM (write-back).
const LEAF_RAM: u64 = TABLE | PTE_LARGE;
/// A large page of MMIO (uncached).
const LEAF_MMIO: u64 = LEAF_RAM | PTE_PWT | PTE_PCD;

/// Page directories for GiBs that need 2 MiB pages (covers 64 GiB).
const POOL_SIZE: usize = 64;

#[repr(C, align(4096))]
struct PageDirectory([u64; 512]);

struct Pool(UnsafeCell<[PageDirectory; POOL_SIZE]>);
// SAFETY: only `init`, run once by the BSP before any AP starts, hands out
// page directories (through the atomic `POOL_NEXT`).
unsafe impl Sync for Pool {}

static POOL: Pool = Pool(UnsafeCell::new(
    [const { PageDirectory([0; 512]) }; POOL_SIZE],
));
static POOL_NEXT: AtomicUsize = AtomicUsize::new(0);
/// Bit per GiB slot: mapped.
static MAPPED: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
/// Whether 1 GiB pages were used.
static USED_1G: AtomicU64 = AtomicU64::new(0);

/// Whether CPUID offers 1 GiB pages (0x80000001 EDX bit 26).
pub fn has_1g_pages() -> bool {
    let (max_ext, ..) = cpu::cpuid(0x8000_0000, 0);
    max_ext >= 0x8000_0001 && cpu::cpuid(0x8000_0001, 0).3 & (1 << 26) != 0
}

/// Bytes of RAM (per the memory map) inside `[start, end)`.
fn ram_in(boot: &BootInfo, start: u64, end: u64) -> u64 {
    boot.ram()
        .map(|r| r.end().min(end).saturating_sub(r.addr.max(start)))
        .sum()
}

/// Maps 0..4 GiB and all RAM up to [`MAPPABLE_END`]. Call once, on the BSP.
///
/// 1 GiB pages where the VMM's CPUID offers them (on our development hosts
/// it does not), else 2 MiB pages; `pages=2m` on the command line forces
/// 2 MiB pages.
pub fn init(boot: &BootInfo) -> Result<(), &'static str> {
    let use_1g = boot.arg("pages") != Some("2m") && has_1g_pages();
    MAPPED[0].fetch_or(1, Ordering::SeqCst);
    for slot in 1..(MAPPABLE_END / GIB) {
        let base = slot * GIB;
        if slot < 4 || ram_in(boot, base, base + GIB) != 0 {
            map_slot(boot, slot, use_1g)?;
        }
    }
    Ok(())
}

/// Whether `init` used 1 GiB pages anywhere.
pub fn used_1g_pages() -> bool {
    USED_1G.load(Ordering::SeqCst) != 0
}

/// Whether every GiB touched by `[addr, addr + len)` is mapped.
pub fn is_mapped(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    if len == 0 {
        return true;
    }
    if end > MAPPABLE_END {
        return false;
    }
    (addr / GIB..=(end - 1) / GIB)
        .all(|slot| MAPPED[(slot / 64) as usize].load(Ordering::SeqCst) & (1 << (slot % 64)) != 0)
}

/// Maps `[addr, addr + len)` (device memory above 4 GiB, e.g. a 64-bit
/// BAR) where it is not mapped yet: each GiB it touches is mapped like
/// `init` maps the hole, uncached except for RAM. BSP only, like `init`.
pub fn map_mmio(boot: &BootInfo, addr: u64, len: u64) -> Result<(), &'static str> {
    let end = addr.checked_add(len).ok_or("MMIO range overflows")?;
    if len == 0 {
        return Ok(());
    }
    if end > MAPPABLE_END {
        return Err("MMIO range beyond the mappable 512 GiB");
    }
    for slot in addr / GIB..=(end - 1) / GIB {
        if !is_mapped(slot * GIB, 1) {
            map_slot(boot, slot, false)?;
        }
    }
    Ok(())
}

fn pdpt() -> *mut u64 {
    core::ptr::addr_of_mut!(entry::vmdt_pdpt) as *mut u64
}

/// Maps GiB `slot` (1..512): RAM write-back, everything else uncached.
fn map_slot(boot: &BootInfo, slot: u64, use_1g: bool) -> Result<(), &'static str> {
    let base = slot * GIB;
    // SAFETY: slot < 512 indexes the static PDPT, identity mapped and
    // user-writable; the BSP is the only CPU running.
    let pdpte = unsafe { pdpt().add(slot as usize).read_volatile() };
    let ram = ram_in(boot, base, base + GIB);
    if pdpte == 0 && use_1g && (ram == 0 || ram == GIB) {
        let leaf = if ram == 0 { LEAF_MMIO } else { LEAF_RAM };
        // SAFETY: as above; the entry was not present.
        unsafe { pdpt().add(slot as usize).write_volatile(base | leaf) };
        USED_1G.store(1, Ordering::SeqCst);
    } else {
        let pd = if pdpte & PTE_PRESENT != 0 {
            if pdpte & PTE_LARGE != 0 {
                return Ok(());
            }
            (pdpte & PTE_ADDR) as *mut u64
        } else {
            let index = POOL_NEXT.fetch_add(1, Ordering::SeqCst);
            if index >= POOL_SIZE {
                return Err("out of page directories (RAM too large for 2 MiB pages)");
            }
            // SAFETY: index < POOL_SIZE; each directory is handed out once.
            unsafe { (*POOL.0.get())[index].0.as_mut_ptr() }
        };
        for j in 0..512u64 {
            let page = base + j * PAGE_2M;
            // SAFETY: `pd` is a page directory of this identity map (static
            // or from the pool), 512 entries, user-writable.
            let entry = unsafe { pd.add(j as usize) };
            // SAFETY: as above.
            if unsafe { entry.read_volatile() } & PTE_PRESENT == 0 {
                let leaf = if ram_in(boot, page, page + PAGE_2M) == 0 {
                    LEAF_MMIO
                } else {
                    LEAF_RAM
                };
                // SAFETY: as above; the entry was not present.
                unsafe { entry.write_volatile(page | leaf) };
            }
        }
        if pdpte == 0 {
            core::sync::atomic::fence(Ordering::SeqCst);
            // SAFETY: as for the read of `pdpte`; not present before.
            unsafe { pdpt().add(slot as usize).write_volatile(pd as u64 | TABLE) };
        }
    }
    MAPPED[(slot / 64) as usize].fetch_or(1 << (slot % 64), Ordering::SeqCst);
    Ok(())
}
