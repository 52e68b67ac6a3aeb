//! The frontend's memory table: regions mapped from the fds it sent.
//!
//! vhost-user spec, "Memory access": each region has a guest address and a
//! user address (the frontend's own mapping). Ring addresses from
//! SET_VRING_ADDR are user addresses and are translated here; descriptor
//! addresses are guest addresses and are used as they are.

use std::fs::File;
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserMemoryRegion;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryAtomic, GuestRegionCollection, GuestRegionMmap, MmapRegion,
};

use crate::sys;

/// Guest memory as the workers see it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
/// Guest memory that the control thread can swap under running workers.
pub type AtomicMemory = GuestMemoryAtomic<GuestMemoryMmap>;

/// Most regions a frontend may add one at a time with ADD_MEM_REG; the
/// value QEMU and libvhost-user use.
pub const MAX_MEM_SLOTS: u64 = 509;

/// Why a memory table update failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap of a region's fd failed.
    #[error("mapping region at guest {gpa:#x} ({size:#x} bytes)")]
    Map {
        /// Guest address of the region.
        gpa: u64,
        /// Size in bytes.
        size: u64,
        /// The mapping error.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// A region with an offset that is not page aligned, an empty one, or
    /// one that overflows.
    #[error("region at guest {gpa:#x} ({size:#x} bytes, offset {offset:#x}) is malformed")]
    BadRegion {
        /// Guest address of the region.
        gpa: u64,
        /// Size in bytes.
        size: u64,
        /// Offset in the fd.
        offset: u64,
    },
    /// Regions overlap in guest address space.
    #[error("guest regions overlap")]
    Overlap(#[source] vm_memory::GuestRegionCollectionError),
    /// REM_MEM_REG named a region that is not in the table.
    #[error("no region at guest {gpa:#x} of {size:#x} bytes")]
    NoSuchRegion {
        /// Guest address asked for.
        gpa: u64,
        /// Size asked for.
        size: u64,
    },
    /// Too many regions.
    #[error("more than {MAX_MEM_SLOTS} regions")]
    TooManyRegions,
}

#[derive(Debug)]
struct Region {
    gpa: u64,
    size: u64,
    user_addr: u64,
    mapping: Arc<GuestRegionMmap>,
}

/// The memory table of one connection.
///
/// # Invariants
/// - `memory` always holds exactly the mappings in `regions` (vhost-user
///   spec, SET_MEM_TABLE / ADD_MEM_REG / REM_MEM_REG).
/// - Workers hold [`AtomicMemory`] snapshots, so a replaced table stays
///   mapped until the last worker drops its snapshot.
#[derive(Debug)]
pub struct MemoryTable {
    regions: Vec<Region>,
    memory: AtomicMemory,
}

impl Default for MemoryTable {
    fn default() -> Self {
        Self {
            regions: Vec::new(),
            memory: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        }
    }
}

impl MemoryTable {
    /// The shared handle workers load snapshots from.
    pub fn memory(&self) -> AtomicMemory {
        self.memory.clone()
    }

    /// Whether no region is mapped.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Replaces the table (SET_MEM_TABLE).
    pub fn set(
        &mut self,
        regions: &[VhostUserMemoryRegion],
        files: Vec<File>,
    ) -> Result<(), MemoryError> {
        let mut mapped = Vec::with_capacity(regions.len());
        for (region, file) in regions.iter().zip(files) {
            mapped.push(map_region(region, file)?);
        }
        self.publish(mapped)
    }

    /// Adds one region (ADD_MEM_REG).
    pub fn add(&mut self, region: &VhostUserMemoryRegion, file: File) -> Result<(), MemoryError> {
        if self.regions.len() as u64 >= MAX_MEM_SLOTS {
            return Err(MemoryError::TooManyRegions);
        }
        let new = map_region(region, file)?;
        let mut all: Vec<Region> = self.regions.drain(..).collect();
        all.push(new);
        self.publish(all)
    }

    /// Removes the region at `gpa` of `size` bytes (REM_MEM_REG).
    pub fn remove(&mut self, gpa: u64, size: u64) -> Result<(), MemoryError> {
        let pos = self
            .regions
            .iter()
            .position(|r| r.gpa == gpa && r.size == size)
            .ok_or(MemoryError::NoSuchRegion { gpa, size })?;
        let mut all: Vec<Region> = self.regions.drain(..).collect();
        all.remove(pos);
        self.publish(all)
    }

    fn publish(&mut self, mut regions: Vec<Region>) -> Result<(), MemoryError> {
        regions.sort_by_key(|r| r.gpa);
        let collection = if regions.is_empty() {
            GuestMemoryMmap::new()
        } else {
            let arcs = regions.iter().map(|r| Arc::clone(&r.mapping)).collect();
            GuestRegionCollection::from_arc_regions(arcs).map_err(MemoryError::Overlap)?
        };
        self.regions = regions;
        match self.memory.lock() {
            Ok(guard) => guard.replace(collection),
            Err(poisoned) => poisoned.into_inner().replace(collection),
        }
        Ok(())
    }

    /// Translates a frontend user address (ring addresses) to a guest
    /// address; `None` outside every region.
    pub fn user_to_guest(&self, user_addr: u64) -> Option<GuestAddress> {
        self.regions.iter().find_map(|r| {
            let off = user_addr.checked_sub(r.user_addr)?;
            (off < r.size).then(|| GuestAddress(r.gpa + off))
        })
    }
}

fn map_region(region: &VhostUserMemoryRegion, file: File) -> Result<Region, MemoryError> {
    let (gpa, size, offset) = (
        region.guest_phys_addr,
        region.memory_size,
        region.mmap_offset,
    );
    let bad = || MemoryError::BadRegion { gpa, size, offset };
    let len = usize::try_from(size).map_err(|_| bad())?;
    // mmap needs a page-aligned file offset; QEMU's RAM sections are.
    if size == 0 || offset % sys::page_size() != 0 || gpa.checked_add(size).is_none() {
        return Err(bad());
    }
    let mapping = MmapRegion::<()>::build(
        Some(FileOffset::new(file, offset)),
        len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
    )
    .map_err(|source| MemoryError::Map { gpa, size, source })?;
    let guest = GuestRegionMmap::new(mapping, GuestAddress(gpa)).ok_or_else(bad)?;
    Ok(Region {
        gpa,
        size,
        user_addr: region.user_addr,
        mapping: Arc::new(guest),
    })
}
