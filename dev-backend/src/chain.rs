//! Descriptor chains of a split virtqueue, walked and validated once.
//!
//! virtio 1.2 §2.7.5 ("The Virtqueue Descriptor Table") and §2.7.5.3
//! ("Indirect Descriptors"). A chain is parsed into a [`DescChain`] before
//! a device acts on it: every index is bounds-checked, the walk is bounded,
//! device-readable buffers precede device-writable ones, and every buffer
//! lies in guest memory. Any violation is a guest error ([`ChainError`]).

use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::memory::GuestMemoryMmap;

/// Bytes of one descriptor (`struct virtq_desc`).
pub const DESC_SIZE: u64 = 16;
/// Most entries accepted in one indirect table: the largest split queue
/// size (virtio 1.2 §2.7: Queue Size is at most 32768).
pub const MAX_INDIRECT_ENTRIES: u32 = 32768;

const FLAG_NEXT: u16 = VRING_DESC_F_NEXT as u16;
const FLAG_WRITE: u16 = VRING_DESC_F_WRITE as u16;
const FLAG_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// Why a chain is not acceptable (all guest errors).
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A `next` index or head beyond the table.
    #[error("descriptor index {index} is beyond a table of {size}")]
    IndexOutOfRange {
        /// The index.
        index: u32,
        /// Entries in the table.
        size: u32,
    },
    /// The chain loops or is longer than the queue allows.
    #[error("chain is longer than {limit} descriptors")]
    TooLong {
        /// The bound that was hit.
        limit: usize,
    },
    /// A descriptor could not be read from guest memory.
    #[error("descriptor table at {addr:#x} is outside guest memory")]
    TableOutsideMemory {
        /// Guest address of the descriptor.
        addr: u64,
    },
    /// A device-readable buffer after a device-writable one (§2.7.4.2).
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// An indirect descriptor with NEXT, a bad length, or inside an
    /// indirect table (§2.7.5.3.1).
    #[error("malformed indirect descriptor (len {len}, flags {flags:#x})")]
    BadIndirect {
        /// Length of the indirect table in bytes.
        len: u32,
        /// Flags of the descriptor.
        flags: u16,
    },
    /// A buffer outside guest memory.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    BufferOutsideMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// Guest memory changed under the request (a region was removed).
    #[error("guest memory access failed")]
    Access(#[source] vm_memory::GuestMemoryError),
}

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest address of the buffer.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A validated descriptor chain.
///
/// # Invariants
/// - Every segment lies within guest memory as it was when the chain was
///   walked; readable segments came before writable ones in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescChain {
    head: u16,
    readable: Vec<Segment>,
    writable: Vec<Segment>,
}

struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_desc(mem: &GuestMemoryMmap, table: u64, index: u32) -> Result<RawDesc, ChainError> {
    let addr = u64::from(index)
        .checked_mul(DESC_SIZE)
        .and_then(|off| table.checked_add(off))
        .ok_or(ChainError::TableOutsideMemory { addr: table })?;
    let mut raw = [0u8; DESC_SIZE as usize];
    mem.read_slice(&mut raw, GuestAddress(addr))
        .map_err(|_| ChainError::TableOutsideMemory { addr })?;
    let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = raw;
    Ok(RawDesc {
        addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        len: u32::from_le_bytes([l0, l1, l2, l3]),
        flags: u16::from_le_bytes([f0, f1]),
        next: u16::from_le_bytes([n0, n1]),
    })
}

impl DescChain {
    /// Walks the chain starting at `head` in the descriptor table of a
    /// queue of `queue_size` entries.
    pub fn walk(
        mem: &GuestMemoryMmap,
        desc_table: GuestAddress,
        queue_size: u16,
        head: u16,
    ) -> Result<Self, ChainError> {
        let mut chain = DescChain {
            head,
            readable: Vec::new(),
            writable: Vec::new(),
        };
        let mut table = desc_table.0;
        let mut table_len = u32::from(queue_size);
        let mut index = u32::from(head);
        let mut in_indirect = false;
        // A direct chain visits each entry at most once; an indirect table
        // adds at most its own entries.
        let mut limit = usize::from(queue_size);
        let mut seen = 0usize;
        loop {
            if index >= table_len {
                return Err(ChainError::IndexOutOfRange {
                    index,
                    size: table_len,
                });
            }
            seen += 1;
            if seen > limit {
                return Err(ChainError::TooLong { limit });
            }
            let desc = read_desc(mem, table, index)?;
            if desc.flags & FLAG_INDIRECT != 0 {
                let entries = desc.len / DESC_SIZE as u32;
                if in_indirect
                    || desc.flags & FLAG_NEXT != 0
                    || desc.len % DESC_SIZE as u32 != 0
                    || entries == 0
                    || entries > MAX_INDIRECT_ENTRIES
                {
                    return Err(ChainError::BadIndirect {
                        len: desc.len,
                        flags: desc.flags,
                    });
                }
                in_indirect = true;
                table = desc.addr;
                table_len = entries;
                index = 0;
                limit = seen + entries as usize;
                continue;
            }
            chain.push(mem, &desc)?;
            if desc.flags & FLAG_NEXT == 0 {
                return Ok(chain);
            }
            index = u32::from(desc.next);
        }
    }

    fn push(&mut self, mem: &GuestMemoryMmap, desc: &RawDesc) -> Result<(), ChainError> {
        let seg = Segment {
            addr: GuestAddress(desc.addr),
            len: desc.len,
        };
        let outside = ChainError::BufferOutsideMemory {
            addr: desc.addr,
            len: desc.len,
        };
        if desc.len > 0 && !GuestMemoryBackend::check_range(mem, seg.addr, desc.len as usize) {
            return Err(outside);
        }
        if desc.flags & FLAG_WRITE != 0 {
            self.writable.push(seg);
        } else if self.writable.is_empty() {
            self.readable.push(seg);
        } else {
            return Err(ChainError::ReadableAfterWritable);
        }
        Ok(())
    }

    /// Index of the head descriptor (the id in the used ring).
    pub fn head(&self) -> u16 {
        self.head
    }

    /// Device-readable buffers, in chain order.
    pub fn readable(&self) -> &[Segment] {
        &self.readable
    }

    /// Device-writable buffers, in chain order.
    pub fn writable(&self) -> &[Segment] {
        &self.writable
    }

    /// Total bytes the device may read.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|s| u64::from(s.len)).sum()
    }

    /// Total bytes the device may write.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|s| u64::from(s.len)).sum()
    }

    /// Reads all device-readable bytes, at most `max`.
    pub fn read_to_vec(&self, mem: &GuestMemoryMmap, max: usize) -> Result<Vec<u8>, ChainError> {
        let mut out = Vec::new();
        for seg in &self.readable {
            let take = (seg.len as usize).min(max - out.len());
            let start = out.len();
            out.resize(start + take, 0);
            mem.read_slice(&mut out[start..], seg.addr)
                .map_err(ChainError::Access)?;
            if out.len() == max {
                break;
            }
        }
        Ok(out)
    }

    /// Copies the first device-readable bytes into `buf` (as many as fit);
    /// returns how many were copied.
    pub fn read_prefix(&self, mem: &GuestMemoryMmap, buf: &mut [u8]) -> Result<usize, ChainError> {
        let mut done = 0usize;
        for seg in &self.readable {
            if done == buf.len() {
                break;
            }
            let take = (seg.len as usize).min(buf.len() - done);
            mem.read_slice(&mut buf[done..done + take], seg.addr)
                .map_err(ChainError::Access)?;
            done += take;
        }
        Ok(done)
    }

    /// Writes `data` into the device-writable buffers in order; returns the
    /// bytes written (less than `data.len()` if the buffers are shorter).
    pub fn write_from(&self, mem: &GuestMemoryMmap, data: &[u8]) -> Result<usize, ChainError> {
        let mut done = 0usize;
        for seg in &self.writable {
            if done == data.len() {
                break;
            }
            let take = (seg.len as usize).min(data.len() - done);
            mem.write_slice(&data[done..done + take], seg.addr)
                .map_err(ChainError::Access)?;
            done += take;
        }
        Ok(done)
    }
}

#[cfg(test)]
#[path = "chain_tests.rs"]
mod tests;
