//! The negotiated state of one vhost-user connection, kept so that it can
//! be replayed to a restarted backend.
//!
//! A device process may crash or be restarted while the guest runs. The
//! new process knows nothing, so the monitor replays, on a fresh
//! connection, everything the old one was told: see [`NegotiatedState`].

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};

use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::VhostUserProtocolFeatures;
use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;

/// Most regions one VHOST_USER_SET_MEM_TABLE carries (vhost-user.rst
/// "Memory regions description": region0 … region7).
pub const MEM_TABLE_MAX_REGIONS: usize = 8;

/// One guest RAM region as a backend maps it (vhost-user.rst "Memory
/// regions description"); the fd goes in the message's ancillary data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRegion {
    /// Guest-physical address of the region.
    pub guest_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Where the monitor has it mapped; vring addresses are given in this space.
    pub user_addr: u64,
    /// Offset of the region in the guest RAM memfd.
    pub mmap_offset: u64,
}

/// Guest memory cannot be described in a memory table.
#[derive(Debug, thiserror::Error)]
pub enum MemTableError {
    /// A region is anonymous memory, which no other process can map.
    #[error("guest RAM region at {guest_addr:#x} is not backed by a file")]
    NotFileBacked {
        /// Guest address of the region.
        guest_addr: u64,
    },
    /// More regions than SET_MEM_TABLE carries.
    #[error("{count} guest RAM regions do not fit in a memory table of {max}")]
    TooManyRegions {
        /// How many regions guest memory has.
        count: usize,
        /// How many a memory table holds.
        max: usize,
    },
    /// Guest memory has no region at all.
    #[error("guest memory has no region")]
    Empty,
}

/// The memory table sent with VHOST_USER_SET_MEM_TABLE.
///
/// # Invariants
/// - `regions[i]` and `fds[i]` describe region `i` of `memory`, in order
///   (vhost-user.rst, VHOST_USER_SET_MEM_TABLE: "the size and ordering of
///   the fds matches the number and ordering of memory regions").
/// - The fds stay open as long as the table: `memory` owns the files.
#[derive(Debug)]
pub struct MemTable {
    memory: GuestMemory,
    regions: Vec<MemRegion>,
    fds: Vec<RawFd>,
}

impl MemTable {
    /// Describes every region of `memory`, each by its memfd and offset.
    pub fn new(memory: &GuestMemory) -> Result<Self, MemTableError> {
        let count = memory.num_regions();
        if count == 0 {
            return Err(MemTableError::Empty);
        }
        if count > MEM_TABLE_MAX_REGIONS {
            return Err(MemTableError::TooManyRegions {
                count,
                max: MEM_TABLE_MAX_REGIONS,
            });
        }
        let mut regions = Vec::with_capacity(count);
        let mut fds = Vec::with_capacity(count);
        for region in memory.iter() {
            let guest_addr = region.start_addr().0;
            let file_offset = region
                .file_offset()
                .ok_or(MemTableError::NotFileBacked { guest_addr })?;
            regions.push(MemRegion {
                guest_addr,
                size: region.len(),
                user_addr: region.as_ptr() as u64,
                mmap_offset: file_offset.start(),
            });
            fds.push(file_offset.file().as_raw_fd());
        }
        Ok(Self {
            memory: memory.clone(),
            regions,
            fds,
        })
    }

    /// The regions, in guest memory order.
    pub fn regions(&self) -> &[MemRegion] {
        &self.regions
    }

    /// The guest memory the table describes.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The table in the vhost crate's terms. The fds are borrowed from
    /// `self` and valid as long as it lives.
    pub fn region_infos(&self) -> Vec<VhostUserMemoryRegionInfo> {
        self.regions
            .iter()
            .zip(&self.fds)
            .map(|(r, &fd)| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.guest_addr,
                memory_size: r.size,
                userspace_addr: r.user_addr,
                mmap_offset: r.mmap_offset,
                mmap_handle: fd,
            })
            .collect()
    }
}

/// One of the three parts of a split virtqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    /// The descriptor table.
    Desc,
    /// The available (driver) ring.
    Avail,
    /// The used (device) ring.
    Used,
}

impl std::fmt::Display for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ring::Desc => "descriptor table",
            Ring::Avail => "available ring",
            Ring::Used => "used ring",
        })
    }
}

/// The driver placed a ring where a backend cannot use it (a guest error).
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The ring breaks virtio 1.2 §2.7 "Virtqueue Alignment".
    #[error("{ring} at {addr:#x} is not aligned to {align} bytes")]
    Misaligned {
        /// Which ring.
        ring: Ring,
        /// Its guest address.
        addr: u64,
        /// The alignment required.
        align: u64,
    },
    /// The ring is not inside one region of guest RAM.
    #[error("{ring} at {addr:#x} ({len} bytes) is not inside one guest RAM region")]
    OutsideMemory {
        /// Which ring.
        ring: Ring,
        /// Its guest address.
        addr: u64,
        /// Its length.
        len: u64,
    },
}

/// A split virtqueue's rings as addresses in the monitor's mapping, which is
/// what VHOST_USER_SET_VRING_ADDR takes without VIRTIO_F_ACCESS_PLATFORM
/// (vhost-user.rst "A vring address description").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingAddrs {
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

/// Translates a split virtqueue of `size` entries to monitor addresses,
/// checking alignment and that each ring lies inside one region (virtio 1.2
/// §2.7: the descriptor table is 16·size bytes aligned to 16, the available
/// ring 6 + 2·size aligned to 2, the used ring 6 + 8·size aligned to 4).
pub fn ring_user_addrs(
    memory: &GuestMemory,
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
) -> Result<RingAddrs, RingError> {
    let n = u64::from(size);
    Ok(RingAddrs {
        desc: host_addr(memory, Ring::Desc, desc, 16 * n, 16)?,
        avail: host_addr(memory, Ring::Avail, avail, 6 + 2 * n, 2)?,
        used: host_addr(memory, Ring::Used, used, 6 + 8 * n, 4)?,
    })
}

/// The monitor address of `len` bytes at `addr`, all in one region.
fn host_addr(
    memory: &GuestMemory,
    ring: Ring,
    addr: GuestAddress,
    len: u64,
    align: u64,
) -> Result<u64, RingError> {
    if addr.0 % align != 0 {
        return Err(RingError::Misaligned {
            ring,
            addr: addr.0,
            align,
        });
    }
    let outside = RingError::OutsideMemory {
        ring,
        addr: addr.0,
        len,
    };
    let Some(region) = memory.find_region(addr) else {
        return Err(outside);
    };
    let offset = addr.0 - region.start_addr().0;
    match offset.checked_add(len) {
        Some(end) if end <= region.len() => {}
        _ => return Err(outside),
    }
    match region.get_host_address(MemoryRegionAddress(offset)) {
        Ok(ptr) => Ok(ptr as u64),
        Err(_) => Err(outside),
    }
}

/// One started vring: what its SET_VRING_* requests carried.
#[derive(Debug)]
pub struct VringState {
    /// Queue index.
    pub index: u16,
    /// Number of descriptors (SET_VRING_NUM).
    pub size: u16,
    /// Guest addresses of the descriptor table, available and used rings.
    pub guest: [GuestAddress; 3],
    /// The same in the monitor's mapping (SET_VRING_ADDR).
    pub user: RingAddrs,
    /// The first available index the backend processed (SET_VRING_BASE).
    pub base: u16,
    /// The kick eventfd (SET_VRING_KICK), a KVM ioeventfd.
    pub kick: EventFd,
    /// The call eventfd (SET_VRING_CALL): a KVM irqfd, or, when the driver
    /// polls, an eventfd nobody reads.
    pub call: EventFd,
}

/// The inflight-tracking region a backend handed out (vhost-user.rst
/// "Inflight I/O tracking"); the monitor keeps the fd and never maps it.
#[derive(Debug)]
pub struct InflightRegion {
    /// Size of the area (VhostUserInflight mmap_size).
    pub mmap_size: u64,
    /// Its offset in `file`.
    pub mmap_offset: u64,
    /// Number of queues it tracks.
    pub num_queues: u16,
    /// Descriptors per queue it tracks.
    pub queue_size: u16,
    /// The shared memory, as the backend passed it.
    pub file: File,
}

impl InflightRegion {
    /// The description VHOST_USER_SET_INFLIGHT_FD carries.
    pub fn descriptor(&self) -> VhostUserInflight {
        VhostUserInflight::new(
            self.mmap_size,
            self.mmap_offset,
            self.num_queues,
            self.queue_size,
        )
    }
}

/// Everything the frontend has told one backend, in one place, so that a
/// restarted backend can be brought to the same state.
///
/// Replaying it on a fresh connection means, in order: SET_OWNER;
/// GET_FEATURES (the new backend must offer at least
/// [`backend_features`](Self::backend_features)'s acked bits);
/// SET_PROTOCOL_FEATURES with [`protocol_features`](Self::protocol_features);
/// SET_FEATURES with [`acked_features`](Self::acked_features); then, if
/// queues were running, SET_MEM_TABLE from [`mem_table`](Self::mem_table),
/// SET_INFLIGHT_FD with [`inflight`](Self::inflight) (the *same* region, not
/// a new one: it records what was in flight), and for each of
/// [`vrings`](Self::vrings) NUM, ADDR, BASE, CALL, KICK, then ENABLE. The
/// base for a restart is the used ring's current `idx`, not the stored one:
/// the backend resubmits what the inflight region says was in flight.
///
/// # Invariants
/// - `protocol_features` is what SET_PROTOCOL_FEATURES sent, a subset of
///   what the backend offered (vhost-user.rst "Protocol features").
/// - `vrings` is empty exactly when no queue is started; each one in it was
///   started (SET_VRING_KICK sent) and has not been stopped with
///   GET_VRING_BASE (vhost-user.rst "Ring states").
/// - `inflight` is `Some` only if INFLIGHT_SHMFD was negotiated; it lives
///   from the first activation to the next driver reset (vhost-user.rst
///   VHOST_USER_GET_INFLIGHT_FD: a new one after a VM reset).
#[derive(Debug)]
pub struct NegotiatedState {
    /// What VHOST_USER_GET_FEATURES returned.
    pub backend_features: u64,
    /// What VHOST_USER_SET_PROTOCOL_FEATURES sent (empty without bit 30).
    pub protocol_features: VhostUserProtocolFeatures,
    /// How many queues the device has (the hint, capped by GET_QUEUE_NUM).
    pub num_queues: u16,
    /// What the last VHOST_USER_SET_FEATURES sent, bit 30 included.
    pub acked_features: Option<u64>,
    /// The memory table of the running queues.
    pub mem_table: Option<MemTable>,
    /// The inflight-tracking region.
    pub inflight: Option<InflightRegion>,
    /// The started vrings, by increasing index.
    pub vrings: Vec<VringState>,
    /// Signalling it raises the guest's configuration-change interrupt.
    pub config_change: Option<EventFd>,
    /// (queue, base) as GET_VRING_BASE reported at the last stop, for logs
    /// and tests.
    pub stopped_bases: Vec<(u16, u32)>,
    /// The driver's configuration writes since the last reset (SET_CONFIG:
    /// offset, bytes), replayed to a restarted backend.
    pub config_writes: Vec<(u32, Vec<u8>)>,
}

impl NegotiatedState {
    /// The state right after connecting, before any activation.
    pub fn new(
        backend_features: u64,
        protocol_features: VhostUserProtocolFeatures,
        num_queues: u16,
    ) -> Self {
        Self {
            backend_features,
            protocol_features,
            num_queues,
            acked_features: None,
            mem_table: None,
            inflight: None,
            vrings: Vec::new(),
            config_change: None,
            config_writes: Vec::new(),
            stopped_bases: Vec::new(),
        }
    }

    /// Whether the backend was given protocol features (and so rings start
    /// disabled, vhost-user.rst "Ring states").
    pub fn has_protocol_features(&self) -> bool {
        self.backend_features & super::features::VHOST_USER_F_PROTOCOL_FEATURES != 0
    }

    /// Whether `feature` was negotiated.
    pub fn has(&self, feature: VhostUserProtocolFeatures) -> bool {
        self.protocol_features.contains(feature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;
    use std::os::fd::FromRawFd;
    use vm_memory::mmap::MmapRegionBuilder;
    use vm_memory::{GuestMemoryMmap, GuestRegionMmap};

    #[test]
    fn mem_table_two_regions_map_consecutive_memfd_offsets() {
        let ram = GuestRam::new((3 << 30) + (8 << 20)).unwrap();
        let table = MemTable::new(ram.memory()).unwrap();
        let regions = table.regions();
        assert_eq!(regions.len(), 2);
        assert_eq!(
            (
                regions[0].guest_addr,
                regions[0].size,
                regions[0].mmap_offset
            ),
            (0, 3 << 30, 0)
        );
        assert_eq!(
            (
                regions[1].guest_addr,
                regions[1].size,
                regions[1].mmap_offset
            ),
            (4 << 30, 8 << 20, 3 << 30)
        );
        let host = ram
            .memory()
            .get_host_address(GuestAddress(4 << 30))
            .unwrap();
        assert_eq!(regions[1].user_addr, host as u64);
        let infos = table.region_infos();
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[1].guest_phys_addr, 4 << 30);
        assert_eq!(infos[1].mmap_offset, 3 << 30);
        // Every fd is a handle on the one guest RAM memfd.
        for info in &infos {
            assert!(info.mmap_handle >= 0);
            let path = std::fs::read_link(format!("/proc/self/fd/{}", info.mmap_handle)).unwrap();
            assert!(path.to_string_lossy().contains("vmd-guest-ram"), "{path:?}");
        }
    }

    #[test]
    fn mem_table_anonymous_memory_is_refused() {
        let anon = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert!(matches!(
            MemTable::new(&anon),
            Err(MemTableError::NotFileBacked { guest_addr: 0 })
        ));
    }

    #[test]
    fn mem_table_nine_regions_are_refused() {
        // SAFETY: memfd_create with a valid name and flags; the fd is owned below.
        let fd = unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` was just created and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(9 << 12).unwrap();
        let regions = (0..9u64)
            .map(|i| {
                let mapping = MmapRegionBuilder::new(4096)
                    .with_file_offset(vm_memory::FileOffset::new(
                        file.try_clone().unwrap(),
                        i << 12,
                    ))
                    .build()
                    .unwrap();
                GuestRegionMmap::new(mapping, GuestAddress(i << 16)).unwrap()
            })
            .collect();
        let memory = GuestMemoryMmap::from_regions(regions).unwrap();
        assert!(matches!(
            MemTable::new(&memory),
            Err(MemTableError::TooManyRegions { count: 9, max: 8 })
        ));
    }

    #[test]
    fn ring_user_addrs_translates_each_ring() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mem = ram.memory();
        let addrs = ring_user_addrs(
            mem,
            16,
            GuestAddress(0x1000),
            GuestAddress(0x2000),
            GuestAddress(0x3000),
        )
        .unwrap();
        let base = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
        assert_eq!(
            addrs,
            RingAddrs {
                desc: base + 0x1000,
                avail: base + 0x2000,
                used: base + 0x3000
            }
        );
    }

    #[test]
    fn ring_user_addrs_misaligned_or_outside_is_refused() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mem = ram.memory();
        let at =
            |d, a, u| ring_user_addrs(mem, 16, GuestAddress(d), GuestAddress(a), GuestAddress(u));
        assert!(matches!(
            at(0x1008, 0x2000, 0x3000),
            Err(RingError::Misaligned {
                ring: Ring::Desc,
                align: 16,
                ..
            })
        ));
        assert!(matches!(
            at(0x1000, 0x2001, 0x3000),
            Err(RingError::Misaligned {
                ring: Ring::Avail,
                ..
            })
        ));
        assert!(matches!(
            at(0x1000, 0x2000, 0x3002),
            Err(RingError::Misaligned {
                ring: Ring::Used,
                align: 4,
                ..
            })
        ));
        // The used ring of 16 entries is 134 bytes: it must not run off the end.
        assert!(matches!(
            at(0x1000, 0x2000, (1 << 20) - 128),
            Err(RingError::OutsideMemory {
                ring: Ring::Used,
                len: 134,
                ..
            })
        ));
        assert!(matches!(
            at(1 << 20, 0x2000, 0x3000),
            Err(RingError::OutsideMemory {
                ring: Ring::Desc,
                ..
            })
        ));
    }

    #[test]
    fn ring_user_addrs_ring_across_regions_is_refused() {
        let ram = GuestRam::new((3 << 30) + (1 << 20)).unwrap();
        // A descriptor table ending exactly at 3 GiB fits; one byte later does not.
        let end = (3u64 << 30) - 16 * 16;
        let ok = ring_user_addrs(
            ram.memory(),
            16,
            GuestAddress(end),
            GuestAddress(0),
            GuestAddress(0x1000),
        );
        assert!(ok.is_ok());
        let bad = ring_user_addrs(
            ram.memory(),
            16,
            GuestAddress(end + 16),
            GuestAddress(0),
            GuestAddress(0x1000),
        );
        assert!(matches!(
            bad,
            Err(RingError::OutsideMemory {
                ring: Ring::Desc,
                ..
            })
        ));
    }
}
