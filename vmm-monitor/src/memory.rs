//! Guest RAM: one memfd, mapped shared, registered with KVM.
//!
//! All of a guest's RAM is one memfd, so that a device process can map the
//! same memory from a passed fd (vhost-user's memory table names the fd and
//! an offset per region). The memfd is sealed against shrinking: a process
//! that holds it can never make another one's mapping fault by truncating
//! it. Each [`layout::ram_regions`] region is a slice of the memfd at the
//! offset where the previous one ended.
//!
//! # Invariants
//! - The memfd's size equals the guest's RAM size and cannot shrink.
//! - Region `i` of the guest memory is KVM memory slot `i`, and maps memfd
//!   bytes `[offset_i, offset_i + size_i)` with `offset_i` the sum of the
//!   sizes before it.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

use crate::layout;

/// Guest memory as the rest of the monitor uses it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Size of a page; RAM sizes must be a multiple of it.
pub const PAGE_SIZE: u64 = 4096;

/// Errors while creating or registering guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// memfd_create failed.
    #[error("cannot create the guest RAM memfd")]
    CreateMemfd(#[source] std::io::Error),
    /// The memfd could not be sized to the guest's RAM.
    #[error("cannot size the guest RAM memfd to {size} bytes")]
    SizeMemfd {
        /// Requested RAM size.
        size: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The shrink seal could not be applied.
    #[error("cannot seal the guest RAM memfd")]
    Seal(#[source] std::io::Error),
    /// The RAM size is zero or not page aligned.
    #[error("guest RAM size {0:#x} is not a non-zero multiple of 4 KiB")]
    BadSize(u64),
    /// Mapping a region of the memfd failed.
    #[error("cannot map guest RAM at {addr:#x} ({size} bytes)")]
    Map {
        /// Guest address of the region.
        addr: u64,
        /// Size of the region.
        size: u64,
        /// What went wrong.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// A region would wrap past the end of the guest address space.
    #[error("guest RAM region at {addr:#x} ({size} bytes) wraps the address space")]
    Wraps {
        /// Guest address of the region.
        addr: u64,
        /// Size of the region.
        size: u64,
    },
    /// vm-memory refused the set of regions.
    #[error("cannot assemble guest memory")]
    Assemble(#[source] vm_memory::GuestRegionCollectionError),
    /// Duplicating the memfd for a mapping failed.
    #[error("cannot duplicate the guest RAM memfd")]
    Dup(#[source] std::io::Error),
    /// KVM refused a memory slot.
    #[error("KVM refused memory slot {slot} at {addr:#x} ({size} bytes)")]
    Register {
        /// The slot number.
        slot: u32,
        /// Guest address of the region.
        addr: u64,
        /// Size of the region.
        size: u64,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// A guest's RAM: the memfd and its mapping.
pub struct GuestRam {
    memfd: File,
    memory: GuestMemory,
}

impl GuestRam {
    /// Creates `size` bytes of guest RAM laid out by [`layout::ram_regions`].
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        if size == 0 || size % PAGE_SIZE != 0 {
            return Err(MemoryError::BadSize(size));
        }
        let memfd = create_sealed_memfd(size)?;
        let mut regions = Vec::new();
        let mut offset = 0;
        for (addr, len) in layout::ram_regions(size) {
            let file = memfd.try_clone().map_err(MemoryError::Dup)?;
            let mapping = MmapRegionBuilder::new(len as usize)
                .with_file_offset(FileOffset::new(file, offset))
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
                .build()
                .map_err(|source| MemoryError::Map {
                    addr: addr.0,
                    size: len,
                    source,
                })?;
            regions.push(
                GuestRegionMmap::new(mapping, addr).ok_or(MemoryError::Wraps {
                    addr: addr.0,
                    size: len,
                })?,
            );
            offset += len;
        }
        let memory = GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Assemble)?;
        Ok(Self { memfd, memory })
    }

    /// The guest memory, for loaders and devices.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The memfd backing all of guest RAM (for passing to device processes).
    pub fn memfd(&self) -> &File {
        &self.memfd
    }

    /// Registers every region with KVM, region `i` as slot `i`.
    pub fn register(&self, vm: &VmFd) -> Result<(), MemoryError> {
        for (slot, region) in self.memory.iter().enumerate() {
            let slot = slot as u32;
            let addr = region.start_addr().0;
            let size = region.len();
            let host = region.as_ptr() as u64;
            let mem_region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: addr,
                memory_size: size,
                userspace_addr: host,
            };
            // SAFETY: `host` is the start of a live shared mapping of `size`
            // bytes owned by `self.memory`, which outlives the VM: the monitor
            // drops the VM fd before its guest memory.
            unsafe { vm.set_user_memory_region(mem_region) }.map_err(|source| {
                MemoryError::Register {
                    slot,
                    addr,
                    size,
                    source,
                }
            })?;
        }
        Ok(())
    }
}

/// Creates a memfd of `size` bytes that nobody can shrink.
fn create_sealed_memfd(size: u64) -> Result<File, MemoryError> {
    let name = c"vmd-guest-ram";
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(MemoryError::CreateMemfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|source| MemoryError::SizeMemfd { size, source })?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on a memfd we own, with valid seal flags.
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    if ret < 0 {
        return Err(MemoryError::Seal(std::io::Error::last_os_error()));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn guest_ram_above_3g_continues_at_4g() {
        let ram = GuestRam::new((3 << 30) + (8 << 20)).unwrap();
        let regions: Vec<_> = ram
            .memory()
            .iter()
            .map(|r| (r.start_addr().0, r.len()))
            .collect();
        assert_eq!(regions, vec![(0, 3 << 30), (4 << 30, 8 << 20)]);
        // The high region maps the memfd right after the low one.
        ram.memory()
            .write_obj(0x1234_5678u32, GuestAddress(4 << 30))
            .unwrap();
        let mut word = [0u8; 4];
        use std::os::unix::fs::FileExt;
        ram.memfd().read_exact_at(&mut word, 3 << 30).unwrap();
        assert_eq!(u32::from_le_bytes(word), 0x1234_5678);
    }

    #[test]
    fn guest_ram_memfd_cannot_shrink() {
        let ram = GuestRam::new(16 << 20).unwrap();
        assert_eq!(ram.memfd().metadata().unwrap().len(), 16 << 20);
        assert!(ram.memfd().set_len(4096).is_err());
    }

    #[test]
    fn guest_ram_unaligned_size_is_refused() {
        assert!(matches!(
            GuestRam::new(4097),
            Err(MemoryError::BadSize(4097))
        ));
        assert!(matches!(GuestRam::new(0), Err(MemoryError::BadSize(0))));
    }
}
