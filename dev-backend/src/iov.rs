//! A chain's guest buffers as `iovec`s, so that one `writev` (or `readv`)
//! moves the bytes between guest memory and a file without a bounce copy.
//!
//! The guest may change its buffers while the kernel reads them: that is
//! the guest's own race and harms nobody but its request. Whatever a
//! device must check before the bytes leave (a source MAC, a header) it
//! copies first and passes as its own buffer, never as guest memory.

use std::marker::PhantomData;

use vm_memory::volatile_memory::PtrGuard;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::chain::{ChainError, Segment};
use crate::memory::GuestMemoryMmap;

/// `iovec`s over guest memory, valid while the memory table they came from
/// is borrowed.
///
/// # Invariants
/// - Each entry points into a region of the `GuestMemoryMmap` borrowed for
///   `'a`, which stays mapped at least that long (a new memory table
///   replaces the `Arc`, not the mapping a worker holds); `guards` keep
///   each slice's pointer valid where the mapping needs it (Xen).
/// - Entries never have zero length and never exceed the segments given.
pub struct GuestIoVecs<'a> {
    iovecs: Vec<libc::iovec>,
    guards: Vec<PtrGuard>,
    _memory: PhantomData<&'a GuestMemoryMmap>,
}

impl<'a> GuestIoVecs<'a> {
    /// Starts a list with room for `capacity` entries, after
    /// `prefix`: bytes of the caller's own (copied and checked) that go
    /// first. `prefix` must outlive the use of [`Self::as_iovecs`].
    pub fn with_prefix(prefix: &'a [u8], capacity: usize) -> Self {
        let mut iovecs = Vec::with_capacity(capacity + 1);
        if !prefix.is_empty() {
            iovecs.push(libc::iovec {
                iov_base: prefix.as_ptr() as *mut libc::c_void,
                iov_len: prefix.len(),
            });
        }
        Self {
            iovecs,
            guards: Vec::with_capacity(capacity),
            _memory: PhantomData,
        }
    }

    /// Appends the bytes of `segments` from byte `skip` on (a range that
    /// crosses memory regions becomes several entries).
    pub fn push_segments(
        &mut self,
        mem: &'a GuestMemoryMmap,
        segments: &[Segment],
        mut skip: usize,
    ) -> Result<(), ChainError> {
        for seg in segments {
            let len = seg.len as usize;
            if skip >= len {
                skip -= len;
                continue;
            }
            let start = GuestAddress(seg.addr.0 + skip as u64);
            for slice in mem.get_slices(start, len - skip) {
                let slice = slice.map_err(ChainError::Access)?;
                let guard = slice.ptr_guard();
                self.iovecs.push(libc::iovec {
                    iov_base: guard.as_ptr() as *mut libc::c_void,
                    iov_len: slice.len(),
                });
                self.guards.push(guard);
            }
            skip = 0;
        }
        Ok(())
    }

    /// The entries, for `writev`/`readv`.
    pub fn as_iovecs(&self) -> &[libc::iovec] {
        &self.iovecs
    }

    /// Total bytes covered.
    pub fn total_len(&self) -> usize {
        self.iovecs.iter().map(|v| v.iov_len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestRegionMmap};

    fn two_regions() -> GuestMemoryMmap {
        // Two regions that touch: 0..0x1000 and 0x1000..0x2000.
        let regions = vec![
            GuestRegionMmap::from_range(GuestAddress(0), 0x1000, None).unwrap(),
            GuestRegionMmap::from_range(GuestAddress(0x1000), 0x1000, None).unwrap(),
        ];
        GuestMemoryMmap::from_regions(regions).unwrap()
    }

    fn gather(v: &GuestIoVecs<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        for iov in v.as_iovecs() {
            // SAFETY: each entry covers live memory (the type's invariant)
            // that nobody writes during the test.
            let s = unsafe { std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len) };
            out.extend_from_slice(s);
        }
        out
    }

    #[test]
    fn prefix_then_segments_skipping_and_crossing_regions() {
        let mem = two_regions();
        let data: Vec<u8> = (0..=255u8).cycle().take(0x2000).collect();
        mem.write_slice(&data, GuestAddress(0)).unwrap();
        let segments = [
            Segment {
                addr: GuestAddress(0x10),
                len: 8,
            },
            Segment {
                addr: GuestAddress(0xff0),
                len: 0x20,
            },
        ];
        let prefix = b"HDR".to_vec();
        let mut v = GuestIoVecs::with_prefix(&prefix, segments.len());
        // Skip the first segment and 4 bytes of the second.
        v.push_segments(&mem, &segments, 12).unwrap();
        // The second segment crosses into the second region: two entries.
        assert_eq!(v.as_iovecs().len(), 3);
        assert_eq!(v.total_len(), 3 + 0x1c);
        let mut want = prefix.clone();
        want.extend_from_slice(&data[0xff4..0x1010]);
        assert_eq!(gather(&v), want);
    }

    #[test]
    fn segment_outside_memory_is_an_error() {
        let mem = two_regions();
        let segments = [Segment {
            addr: GuestAddress(0x1ff0),
            len: 0x20,
        }];
        let mut v = GuestIoVecs::with_prefix(&[], 1);
        assert!(matches!(
            v.push_segments(&mem, &segments, 0),
            Err(ChainError::Access(_))
        ));
    }
}
