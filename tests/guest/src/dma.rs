//! Memory for devices: a bump allocator over the RAM just above the guest
//! image (the identity map makes guest-physical = virtual, so the addresses
//! go straight into descriptors). Nothing is ever freed; a scenario
//! allocates what it needs once.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::bootinfo::BootInfo;
use crate::entry;

/// Next free byte (0: not initialised yet).
static NEXT: AtomicU64 = AtomicU64::new(0);
/// End of the RAM range the allocator hands out.
static LIMIT: AtomicU64 = AtomicU64::new(0);

fn init(boot: &BootInfo) -> Result<(), &'static str> {
    let (_, image_end) = entry::image_range();
    let start = (image_end + 0xFFF) & !0xFFF;
    let range = boot
        .ram()
        .find(|r| r.addr <= start && start < r.end())
        .ok_or("no RAM above the guest image")?;
    LIMIT.store(range.end().min(1 << 32), Ordering::SeqCst);
    NEXT.store(start, Ordering::SeqCst);
    Ok(())
}

/// Allocates `size` zeroed bytes aligned to `align` (a power of two).
pub fn alloc(boot: &BootInfo, size: u64, align: u64) -> Result<u64, &'static str> {
    if NEXT.load(Ordering::SeqCst) == 0 {
        init(boot)?;
    }
    let start = (NEXT.load(Ordering::SeqCst) + align - 1) & !(align - 1);
    let end = start.checked_add(size).ok_or("allocation overflows")?;
    if end > LIMIT.load(Ordering::SeqCst) {
        return Err("out of DMA memory above the image");
    }
    NEXT.store(end, Ordering::SeqCst);
    // SAFETY: [start, end) is RAM by the memory map, above the image, below
    // 4 GiB (identity mapped) and handed out once: no Rust object lives
    // there.
    unsafe { core::ptr::write_bytes(start as *mut u8, 0, size as usize) };
    Ok(start)
}
