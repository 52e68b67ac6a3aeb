//! Inflight I/O tracking for split virtqueues (vhost-user spec, "Inflight
//! I/O tracking").
//!
//! The backend owns a shared region, one [`QueueInflight`] area per queue:
//!
//! ```text
//! offset  size  field
//! 0       8     features         (0)
//! 8       2     version          (1; 0 = not yet initialised)
//! 10      2     desc_num         (queue size)
//! 12      2     last_batch_head  (head of the last used batch list)
//! 14      2     used_idx         (used ring idx as last published)
//! 16      16*n  desc[n]: inflight u8, padding [u8; 5], next u16, counter u64
//! ```
//!
//! Each queue's area is rounded up to [`INFLIGHT_ALIGNMENT`]. The frontend
//! keeps the region (it got the fd from GET_INFLIGHT_FD) and hands it to
//! the next backend instance with SET_INFLIGHT_FD, which then resubmits the
//! requests still marked inflight.

use std::fs::File;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory, VolatileSlice};

use crate::sys;

/// Bytes of the per-queue header (features, version, desc_num,
/// last_batch_head, used_idx).
pub const QUEUE_HEADER_SIZE: usize = 16;
/// Bytes of one `DescStateSplit` entry.
pub const DESC_STATE_SIZE: usize = 16;
/// Each queue's area starts on a cache line, as libvhost-user does, so that
/// two queues' workers never write the same line.
pub const INFLIGHT_ALIGNMENT: usize = 64;
/// The only region version the spec defines.
pub const INFLIGHT_VERSION: u16 = 1;

const OFF_FEATURES: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_DESC_NUM: usize = 10;
const OFF_LAST_BATCH_HEAD: usize = 12;
const OFF_USED_IDX: usize = 14;
const DESC_OFF_INFLIGHT: usize = 0;
const DESC_OFF_NEXT: usize = 6;
const DESC_OFF_COUNTER: usize = 8;

/// Why an inflight region could not be used.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    /// Creating or sizing the memfd failed.
    #[error("creating the inflight memfd")]
    Create(#[source] std::io::Error),
    /// Mapping the region failed.
    #[error("mapping the inflight region")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
    /// The frontend's description does not fit the layout.
    #[error("inflight region of {mmap_size} bytes at {mmap_offset:#x} is unusable for {num_queues} queues of {queue_size}")]
    BadDescription {
        /// Size the frontend gave.
        mmap_size: u64,
        /// Offset the frontend gave (must be page aligned).
        mmap_offset: u64,
        /// Queues the frontend gave.
        num_queues: u16,
        /// Queue size the frontend gave.
        queue_size: u16,
    },
    /// A descriptor head beyond the queue's area (a guest-supplied index
    /// the caller should have checked).
    #[error("head {head} is beyond the {desc_num} tracked descriptors")]
    HeadOutOfRange {
        /// The head index.
        head: u16,
        /// Entries in the area.
        desc_num: u16,
    },
    /// The region's content contradicts itself (a frontend or earlier
    /// backend wrote garbage): its queue cannot be recovered.
    #[error("inflight area is inconsistent: {0}")]
    Corrupt(&'static str),
    /// Reading or writing the mapping failed (offset checks make this
    /// unreachable short of a bug).
    #[error("accessing the inflight region")]
    Access(#[source] vm_memory::VolatileMemoryError),
}

/// Bytes of one queue's area for queues of `queue_size` descriptors.
pub fn queue_area_size(queue_size: u16) -> usize {
    let raw = QUEUE_HEADER_SIZE + DESC_STATE_SIZE * usize::from(queue_size);
    raw.div_ceil(INFLIGHT_ALIGNMENT) * INFLIGHT_ALIGNMENT
}

/// Bytes of the whole region for `num_queues` queues of `queue_size`.
pub fn region_size(num_queues: u16, queue_size: u16) -> usize {
    usize::from(num_queues) * queue_area_size(queue_size)
}

/// The whole shared inflight region, mapped.
///
/// # Invariants
/// - The mapping holds at least [`region_size`]`(num_queues, queue_size)`
///   bytes (vhost-user spec, "Inflight I/O tracking": queue0 region,
///   queue1 region, ... queueN region).
#[derive(Debug, Clone)]
pub struct InflightRegion {
    mapping: Arc<MmapRegion>,
    num_queues: u16,
    queue_size: u16,
}

impl InflightRegion {
    /// Creates a zeroed region for GET_INFLIGHT_FD; returns it and the fd
    /// to send to the frontend.
    pub fn create(num_queues: u16, queue_size: u16) -> Result<(Self, File), InflightError> {
        let size = region_size(num_queues, queue_size);
        let file = sys::memfd(c"vhost-inflight", size as u64).map_err(InflightError::Create)?;
        let dup = file.try_clone().map_err(InflightError::Create)?;
        let region = Self::map(dup, 0, size, num_queues, queue_size)?;
        Ok((region, file))
    }

    /// Maps the region the frontend sent with SET_INFLIGHT_FD.
    pub fn from_file(
        file: File,
        mmap_size: u64,
        mmap_offset: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Self, InflightError> {
        let bad = || InflightError::BadDescription {
            mmap_size,
            mmap_offset,
            num_queues,
            queue_size,
        };
        let page = sys::page_size();
        let size = usize::try_from(mmap_size).map_err(|_| bad())?;
        if num_queues == 0 || queue_size == 0 || size < region_size(num_queues, queue_size) {
            return Err(bad());
        }
        if mmap_offset % page != 0 {
            return Err(bad());
        }
        Self::map(file, mmap_offset, size, num_queues, queue_size)
    }

    fn map(
        file: File,
        offset: u64,
        size: usize,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Self, InflightError> {
        let mapping = MmapRegion::<()>::build(
            Some(FileOffset::new(file, offset)),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .map_err(InflightError::Map)?;
        Ok(Self {
            mapping: Arc::new(mapping),
            num_queues,
            queue_size,
        })
    }

    /// Number of queues the region covers.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// Descriptor entries per queue.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// The area of queue `index`, or `None` beyond the region.
    pub fn queue(&self, index: u16) -> Option<QueueInflight> {
        (index < self.num_queues).then(|| QueueInflight {
            mapping: Arc::clone(&self.mapping),
            base: usize::from(index) * queue_area_size(self.queue_size),
            desc_num: self.queue_size,
            counter: 0,
        })
    }
}

/// What [`QueueInflight::recover`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The area was never used and has just been initialised: nothing to
    /// recover, the frontend's ring base stands.
    pub fresh: bool,
    /// Heads still inflight, in the order they were fetched (by counter).
    pub resubmit: Vec<u16>,
}

/// One queue's inflight area.
///
/// # Invariants
/// - `base + queue_area_size(desc_num)` lies within the mapping.
/// - `counter` is greater than every counter stored in the area once
///   [`recover`](Self::recover) has run (spec: "Set desc\[i\].counter to
///   the value of global counter; increase global counter by 1").
/// - A head is marked between popping it from the avail ring and adding
///   it to the used ring, so after a crash the marked heads plus the used
///   ring describe every request the driver made available and the device
///   fetched.
#[derive(Debug)]
pub struct QueueInflight {
    mapping: Arc<MmapRegion>,
    base: usize,
    desc_num: u16,
    counter: u64,
}

impl QueueInflight {
    fn area(&self) -> Result<VolatileSlice<'_>, InflightError> {
        self.mapping
            .get_slice(self.base, queue_area_size(self.desc_num))
            .map_err(InflightError::Access)
    }

    fn write<T: vm_memory::ByteValued>(&self, off: usize, val: T) -> Result<(), InflightError> {
        self.area()?
            .write_obj(val, off)
            .map_err(InflightError::Access)
    }

    fn read<T: vm_memory::ByteValued>(&self, off: usize) -> Result<T, InflightError> {
        self.area()?.read_obj(off).map_err(InflightError::Access)
    }

    fn desc_off(&self, head: u16) -> Result<usize, InflightError> {
        if head >= self.desc_num {
            return Err(InflightError::HeadOutOfRange {
                head,
                desc_num: self.desc_num,
            });
        }
        Ok(QUEUE_HEADER_SIZE + DESC_STATE_SIZE * usize::from(head))
    }

    /// Entries in the area.
    pub fn desc_num(&self) -> u16 {
        self.desc_num
    }

    /// Whether `head` is marked inflight.
    pub fn is_inflight(&self, head: u16) -> Result<bool, InflightError> {
        let off = self.desc_off(head)?;
        Ok(self.read::<u8>(off + DESC_OFF_INFLIGHT)? == 1)
    }

    /// Brings the area in line with the used ring at ring start and
    /// returns the heads to resubmit.
    ///
    /// An area never initialised (version 0) is initialised for
    /// `used_ring_idx`. Otherwise the spec's reconnect steps apply: if the
    /// area's `used_idx` lags the used ring, the last batch (the list from
    /// `last_batch_head`, used ring idx minus `used_idx` entries long) was
    /// published and is cleared; then the inflight entries are returned in
    /// counter order.
    pub fn recover(&mut self, used_ring_idx: u16) -> Result<Recovery, InflightError> {
        if self.read::<u16>(OFF_VERSION)? == 0 {
            self.initialise(used_ring_idx)?;
            return Ok(Recovery {
                fresh: true,
                resubmit: Vec::new(),
            });
        }
        if self.read::<u16>(OFF_DESC_NUM)? != self.desc_num {
            return Err(InflightError::Corrupt(
                "desc_num differs from the queue size",
            ));
        }
        let used_idx: u16 = self.read(OFF_USED_IDX)?;
        if used_idx != used_ring_idx {
            let batch = used_ring_idx.wrapping_sub(used_idx);
            if batch > self.desc_num {
                return Err(InflightError::Corrupt("last batch longer than the queue"));
            }
            let mut head: u16 = self.read(OFF_LAST_BATCH_HEAD)?;
            for _ in 0..batch {
                let off = self.desc_off(head)?;
                self.write(off + DESC_OFF_INFLIGHT, 0u8)?;
                head = self.read(off + DESC_OFF_NEXT)?;
            }
            self.write(OFF_USED_IDX, used_ring_idx)?;
        }
        let mut found = Vec::new();
        for head in 0..self.desc_num {
            let off = self.desc_off(head)?;
            if self.read::<u8>(off + DESC_OFF_INFLIGHT)? == 1 {
                found.push((self.read::<u64>(off + DESC_OFF_COUNTER)?, head));
            }
        }
        found.sort_unstable();
        self.counter = found.last().map_or(0, |&(c, _)| c.wrapping_add(1));
        Ok(Recovery {
            fresh: false,
            resubmit: found.into_iter().map(|(_, head)| head).collect(),
        })
    }

    fn initialise(&mut self, used_ring_idx: u16) -> Result<(), InflightError> {
        let zeros = vec![0u8; queue_area_size(self.desc_num)];
        self.area()?
            .write_slice(&zeros, 0)
            .map_err(InflightError::Access)?;
        self.write(OFF_FEATURES, 0u64)?;
        self.write(OFF_DESC_NUM, self.desc_num)?;
        self.write(OFF_LAST_BATCH_HEAD, 0u16)?;
        self.write(OFF_USED_IDX, used_ring_idx)?;
        fence(Ordering::SeqCst);
        self.write(OFF_VERSION, INFLIGHT_VERSION)?;
        self.counter = 0;
        Ok(())
    }

    /// Marks `head` as fetched from the avail ring.
    pub fn mark(&mut self, head: u16) -> Result<(), InflightError> {
        let off = self.desc_off(head)?;
        self.write(off + DESC_OFF_COUNTER, self.counter)?;
        self.counter = self.counter.wrapping_add(1);
        fence(Ordering::SeqCst);
        self.write(off + DESC_OFF_INFLIGHT, 1u8)
    }

    /// First half of completing `head`: links it into the last-batch list
    /// (a batch of one). Call before adding it to the used ring.
    pub fn begin_complete(&mut self, head: u16) -> Result<(), InflightError> {
        let off = self.desc_off(head)?;
        let last: u16 = self.read(OFF_LAST_BATCH_HEAD)?;
        self.write(off + DESC_OFF_NEXT, last)?;
        self.write(OFF_LAST_BATCH_HEAD, head)?;
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Second half of completing `head`, after the used ring idx became
    /// `used_ring_idx`: clears the entry and records the idx.
    pub fn finish_complete(&mut self, head: u16, used_ring_idx: u16) -> Result<(), InflightError> {
        let off = self.desc_off(head)?;
        fence(Ordering::SeqCst);
        self.write(off + DESC_OFF_INFLIGHT, 0u8)?;
        self.write(OFF_USED_IDX, used_ring_idx)
    }
}

#[cfg(test)]
#[path = "inflight_tests.rs"]
mod tests;
