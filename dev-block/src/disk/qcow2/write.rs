//! Writing: cluster allocation, copy-on-write, discard and zeroes.
//!
//! Order of writes for a new data cluster: the L2 table if missing (zeroed
//! table, its refcount, then the L1 entry), the data, its refcount, the L2
//! entry; a replaced cluster's refcount is dropped last. A process dying
//! between any two writes leaves a consistent image, leaking at worst.

use super::compressed;
use super::host::{corrupt, Fault};
use super::table::{Mapping, COPIED, OFFSET_MASK, ZERO};
use super::{read_backing, DiskImage, Meta};

/// What a discard-like request asks of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ZeroMode {
    /// The guest no longer needs the data: reads may return anything.
    Discard,
    /// Reads must return zeroes; `unmap` allows deallocation.
    Zeroes {
        /// The guest allows deallocating.
        unmap: bool,
    },
}

impl Meta {
    /// Reserves a free cluster, writes `content` there and takes it.
    /// Returns its host offset.
    fn allocate_with(&mut self, content: &[u8]) -> Result<u64, Fault> {
        let cb = self.cluster_bits;
        let Some(rc) = self.refcounts.as_mut() else {
            return Err(corrupt("write to an image opened read-only"));
        };
        let c = rc.reserve(&mut self.host)?;
        self.host.write(content, c << cb, "write a new cluster")?;
        rc.increment(&mut self.host, c)?;
        Ok(c << cb)
    }

    /// The L2 table covering guest offset `g`, allocated if missing.
    /// Returns its offset and the entry index within it.
    fn ensure_l2(&mut self, g: u64) -> Result<(u64, usize), Fault> {
        let (l1i, l2, l2i) = self.locate(g)?;
        if l2 != 0 {
            return Ok((l2, l2i));
        }
        let cs = self.cluster_size() as usize;
        let off = self.allocate_with(&vec![0u8; cs])?;
        let entry = off | COPIED;
        self.host
            .write_u64(entry, self.l1_offset + l1i as u64 * 8, "write the L1 table")?;
        self.l1[l1i] = entry;
        self.l2.insert(off, vec![0u64; cs / 8]);
        Ok((off, l2i))
    }

    /// Writes L2 entry `index` of the table at `l2`.
    fn set_l2(&mut self, l2: u64, index: usize, value: u64) -> Result<(), Fault> {
        self.host
            .write_u64(value, l2 + index as u64 * 8, "write an L2 table")?;
        self.l2.update(l2, index, value);
        Ok(())
    }

    /// Drops this image's reference to what `m` pointed to, except the
    /// cluster at `kept`.
    fn release(&mut self, m: Mapping, kept: Option<u64>) -> Result<(), Fault> {
        let cb = self.cluster_bits;
        let clusters = match m {
            Mapping::Data { host, .. }
            | Mapping::Zero {
                host: Some(host), ..
            } if Some(host) != kept => host >> cb..(host >> cb) + 1,
            Mapping::Compressed { host, sectors } => {
                let (start, len) = compressed::span(host, sectors)?;
                start >> cb..(start + len - 1) / (1 << cb) + 1
            }
            _ => return Ok(()),
        };
        for c in clusters {
            let host = &mut self.host;
            let rc = self
                .refcounts
                .as_mut()
                .ok_or_else(|| corrupt("write to an image opened read-only"))?;
            rc.decrement(host, c)?;
        }
        Ok(())
    }

    /// Writes `data`, within one cluster, at guest offset `g`.
    pub(crate) fn write_piece(
        &mut self,
        backing: Option<&dyn DiskImage>,
        data: &[u8],
        g: u64,
    ) -> Result<(), Fault> {
        let cs = self.cluster_size();
        let in_cluster = g % cs;
        let m = self.lookup(g)?;
        if let Mapping::Data { host, copied: true } = m {
            return self
                .host
                .write(data, host + in_cluster, "write a data cluster");
        }
        let mut content = vec![0u8; cs as usize];
        if data.len() as u64 != cs {
            self.cluster_content(backing, m, g - in_cluster, &mut content)?;
        }
        let at = in_cluster as usize;
        content[at..at + data.len()].copy_from_slice(data);
        let (l2, l2i) = self.ensure_l2(g)?;
        let host = match m {
            // A preallocated zero cluster of ours is reused in place.
            Mapping::Zero {
                host: Some(h),
                copied: true,
            } => {
                self.host.write(&content, h, "write a data cluster")?;
                h
            }
            _ => self.allocate_with(&content)?,
        };
        self.set_l2(l2, l2i, host | COPIED)?;
        self.release(m, Some(host))
    }

    /// Applies `mode` to `len` bytes at guest offset `g`, within one
    /// cluster; `size` is the disk size (a cluster cut short by it counts
    /// as whole).
    pub(crate) fn zero_piece(
        &mut self,
        backing: Option<&dyn DiskImage>,
        g: u64,
        len: usize,
        size: u64,
        mode: ZeroMode,
    ) -> Result<(), Fault> {
        let cs = self.cluster_size();
        let whole = g % cs == 0 && (len as u64 == cs || g + len as u64 == size);
        let v3 = self.version >= 3;
        let m = self.lookup(g)?;
        let ZeroMode::Zeroes { unmap } = mode else {
            // Discard is a hint: partial clusters and clusters holding
            // nothing stay as they are; v2 with a backing file lets the
            // backing data show through, which discard allows.
            if !whole || matches!(m, Mapping::Unallocated | Mapping::Zero { host: None, .. }) {
                return Ok(());
            }
            return self.replace_entry(g, m, if v3 { ZERO } else { 0 });
        };
        let reads_zero = match m {
            Mapping::Zero { .. } => true,
            Mapping::Unallocated => backing_zero(backing, g, len)?,
            _ => false,
        };
        if reads_zero {
            return Ok(());
        }
        if !whole || (!v3 && backing.is_some()) {
            // v2 has no zero flag: hide the backing data with real zeroes.
            return self.write_piece(backing, &vec![0u8; len], g);
        }
        let new = match m {
            Mapping::Data { host, copied: true } if v3 && !unmap => host | COPIED | ZERO,
            _ if v3 => ZERO,
            _ => 0,
        };
        self.replace_entry(g, m, new)
    }

    /// Points guest cluster `g` (currently `m`) at `new`, then releases
    /// what `m` held that `new` does not keep.
    fn replace_entry(&mut self, g: u64, m: Mapping, new: u64) -> Result<(), Fault> {
        let (l2, l2i) = self.ensure_l2(g)?;
        self.set_l2(l2, l2i, new)?;
        let kept = (new & COPIED != 0).then_some(new & OFFSET_MASK);
        self.release(m, kept)
    }
}

/// True if the backing image reads as zeroes at `[g, g + len)`.
fn backing_zero(backing: Option<&dyn DiskImage>, g: u64, len: usize) -> Result<bool, Fault> {
    let Some(b) = backing else { return Ok(true) };
    if g >= b.size() {
        return Ok(true);
    }
    let mut buf = vec![0u8; len];
    read_backing(Some(b), &mut buf, g)?;
    Ok(buf.iter().all(|&x| x == 0))
}
