//! Refcounts and cluster allocation (qcow2.txt, "Host cluster management").
//!
//! A cluster is free when its refcount is zero. Allocation finds the lowest
//! free cluster from a hint; a range without a refcount block gets one at
//! its own first cluster (the block counts itself), and a full refcount
//! table is replaced by a larger one written past the end of the file
//! together with the blocks covering that new area.

use super::host::{corrupt, Fault, HostFile};
use super::table::MAX_HOST_OFFSET;

/// Refcount table entries: bits 0..=8 are reserved.
const REFTABLE_RESERVED: u64 = 0x1ff;
/// Largest refcount table we read or grow (QEMU's limit too): 8 MiB, a
/// million blocks.
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Header field `refcount_table_offset` (u64), followed by
/// `refcount_table_clusters` (u32): rewritten in one write when the table
/// moves.
const HEADER_REFTABLE_FIELDS: u64 = 48;
/// Bytes of refcount blocks cached.
const BLOCK_CACHE_BYTES: u64 = 1 << 20;
/// Fewest refcount blocks cached.
const MIN_BLOCKS_CACHED: usize = 2;
/// Attempts at finding a free cluster: making a refcount block may take
/// the candidate, growing the table may take it too.
const RESERVE_ATTEMPTS: usize = 4;

/// The refcount of entry `index` in `block`, entries `1 << order` bits wide.
/// Narrower than a byte: the lowest bits of a byte hold the first entry.
pub fn get_entry(block: &[u8], index: u64, order: u32) -> u64 {
    let bits = 1u64 << order;
    if bits >= 8 {
        let n = (bits / 8) as usize;
        let at = index as usize * n;
        block[at..at + n]
            .iter()
            .fold(0u64, |v, &b| (v << 8) | u64::from(b))
    } else {
        let per_byte = 8 / bits;
        let byte = block[(index / per_byte) as usize];
        (u64::from(byte) >> ((index % per_byte) * bits)) & ((1 << bits) - 1)
    }
}

/// Sets entry `index` of `block` to `value`; returns the byte range changed.
pub fn set_entry(block: &mut [u8], index: u64, order: u32, value: u64) -> std::ops::Range<usize> {
    let bits = 1u64 << order;
    if bits >= 8 {
        let n = (bits / 8) as usize;
        let at = index as usize * n;
        for (i, b) in block[at..at + n].iter_mut().enumerate() {
            *b = (value >> (8 * (n - 1 - i))) as u8;
        }
        at..at + n
    } else {
        let per_byte = 8 / bits;
        let at = (index / per_byte) as usize;
        let shift = (index % per_byte) * bits;
        let mask = ((1u64 << bits) - 1) << shift;
        block[at] = ((u64::from(block[at]) & !mask) | ((value << shift) & mask)) as u8;
        at..at + 1
    }
}

/// The refcount table, a cache of refcount blocks and the allocator.
///
/// # Invariants
/// - `table` mirrors the on-disk table at `table_offset` (`table_clusters`
///   clusters); entries are 0 or cluster-aligned offsets inside the file.
/// - Cached blocks mirror the file: every change is written through.
/// - Every cluster below `free_hint` that was free at open has since been
///   allocated, or `free_hint` was lowered when it was freed.
/// - A refcount is raised only after the cluster's data is written and
///   dropped only after the last reference to it is gone, so a process
///   dying between two writes leaks clusters at worst.
#[derive(Debug)]
pub struct Refcounts {
    table: Vec<u64>,
    table_offset: u64,
    table_clusters: u64,
    order: u32,
    cluster_bits: u32,
    /// Clusters `[start, end)` of the L1 table, never handed out.
    l1_clusters: (u64, u64),
    blocks: Vec<(u64, Vec<u8>, u64)>,
    capacity: usize,
    clock: u64,
    free_hint: u64,
}

impl Refcounts {
    /// Reads and checks the refcount table. `l1` is the L1 table's
    /// `(offset, bytes)`.
    pub fn load(
        host: &HostFile,
        (table_offset, table_clusters): (u64, u32),
        order: u32,
        cluster_bits: u32,
        l1: (u64, u64),
    ) -> Result<Self, Fault> {
        let cs = 1u64 << cluster_bits;
        let bytes = u64::from(table_clusters) << cluster_bits;
        if bytes == 0 || bytes > MAX_REFTABLE_BYTES {
            return Err(corrupt(format!(
                "refcount table of {table_clusters} clusters"
            )));
        }
        if table_offset % cs != 0 || !host.contains(table_offset, bytes) {
            return Err(corrupt(format!(
                "refcount table at {table_offset:#x} is unaligned or past the end of the file"
            )));
        }
        let table = host.read_u64s(
            table_offset,
            (bytes / 8) as usize,
            "read the refcount table",
        )?;
        for (i, &e) in table.iter().enumerate() {
            if e & REFTABLE_RESERVED != 0 || (e != 0 && !host.contains(e, cs)) {
                return Err(corrupt(format!(
                    "refcount table entry {i} ({e:#x}) is unaligned or past the end of the file"
                )));
            }
        }
        if table.first() == Some(&0) {
            return Err(corrupt("the refcount table does not cover the header"));
        }
        let l1_start = l1.0 >> cluster_bits;
        let l1_end = l1.0.saturating_add(l1.1).div_ceil(cs);
        Ok(Self {
            table,
            table_offset,
            table_clusters: u64::from(table_clusters),
            order,
            cluster_bits,
            l1_clusters: (l1_start, l1_end),
            blocks: Vec::new(),
            capacity: usize::try_from(BLOCK_CACHE_BYTES >> cluster_bits)
                .unwrap_or(MIN_BLOCKS_CACHED)
                .max(MIN_BLOCKS_CACHED),
            clock: 0,
            free_hint: 0,
        })
    }

    fn per_block(&self) -> u64 {
        (8u64 << self.cluster_bits) >> self.order
    }

    fn max_refcount(&self) -> u64 {
        u64::MAX >> (64 - (1u32 << self.order))
    }

    /// True for the clusters of the header, the L1 table and the refcount
    /// table: a zero refcount on them means a corrupt image.
    fn protected(&self, cluster: u64) -> bool {
        let t = self.table_offset >> self.cluster_bits;
        cluster == 0
            || (self.l1_clusters.0..self.l1_clusters.1).contains(&cluster)
            || (t..t + self.table_clusters).contains(&cluster)
    }

    /// Slot of the cached block at `offset`, reading it if needed.
    fn block(&mut self, host: &HostFile, offset: u64) -> Result<usize, Fault> {
        self.clock += 1;
        if let Some(i) = self.blocks.iter().position(|b| b.0 == offset) {
            self.blocks[i].2 = self.clock;
            return Ok(i);
        }
        let mut buf = vec![0u8; 1usize << self.cluster_bits];
        host.read(&mut buf, offset, "read a refcount block")?;
        Ok(self.cache(offset, buf))
    }

    fn cache(&mut self, offset: u64, data: Vec<u8>) -> usize {
        self.clock += 1;
        let entry = (offset, data, self.clock);
        if let Some(i) = self.blocks.iter().position(|b| b.0 == offset) {
            self.blocks[i] = entry;
            i
        } else if self.blocks.len() < self.capacity {
            self.blocks.push(entry);
            self.blocks.len() - 1
        } else {
            let mut victim = 0;
            for (i, b) in self.blocks.iter().enumerate() {
                if b.2 < self.blocks[victim].2 {
                    victim = i;
                }
            }
            self.blocks[victim] = entry;
            victim
        }
    }

    /// The refcount of host cluster `cluster` (0 where no block covers it).
    pub fn get(&mut self, host: &HostFile, cluster: u64) -> Result<u64, Fault> {
        let epb = self.per_block();
        let off = match self.table.get((cluster / epb) as usize) {
            Some(&off) if off != 0 => off,
            _ => return Ok(0),
        };
        let slot = self.block(host, off)?;
        Ok(get_entry(&self.blocks[slot].1, cluster % epb, self.order))
    }

    fn set(&mut self, host: &mut HostFile, cluster: u64, value: u64) -> Result<(), Fault> {
        let epb = self.per_block();
        let off = match self.table.get((cluster / epb) as usize) {
            Some(&off) if off != 0 => off,
            _ => {
                return Err(corrupt(format!(
                    "no refcount block covers cluster {cluster:#x}"
                )))
            }
        };
        let slot = self.block(host, off)?;
        let range = set_entry(&mut self.blocks[slot].1, cluster % epb, self.order, value);
        let at = off + range.start as u64;
        host.write(&self.blocks[slot].1[range], at, "write a refcount block")
    }

    /// Adds one reference to `cluster`.
    pub fn increment(&mut self, host: &mut HostFile, cluster: u64) -> Result<(), Fault> {
        let v = self.get(host, cluster)?;
        if v >= self.max_refcount() {
            return Err(corrupt(format!(
                "refcount overflow on host cluster {cluster:#x}"
            )));
        }
        self.set(host, cluster, v + 1)
    }

    /// Drops one reference to `cluster`; at zero it is free again.
    pub fn decrement(&mut self, host: &mut HostFile, cluster: u64) -> Result<(), Fault> {
        let v = self.get(host, cluster)?;
        if v == 0 {
            return Err(corrupt(format!(
                "refcount underflow on host cluster {cluster:#x}"
            )));
        }
        self.set(host, cluster, v - 1)?;
        if v == 1 {
            self.free_hint = self.free_hint.min(cluster);
        }
        Ok(())
    }

    /// Finds a free host cluster whose refcount block exists, without
    /// taking it: the caller writes the cluster, then [`Self::increment`]s
    /// it before anything else is allocated.
    pub fn reserve(&mut self, host: &mut HostFile) -> Result<u64, Fault> {
        for _ in 0..RESERVE_ATTEMPTS {
            let c = self.find_free(host, self.free_hint)?;
            if self.protected(c) {
                return Err(corrupt(format!(
                    "metadata cluster {c:#x} has a zero refcount"
                )));
            }
            self.ensure_block(host, c / self.per_block())?;
            if self.get(host, c)? == 0 {
                self.free_hint = c;
                return Ok(c);
            }
        }
        Err(corrupt("no free cluster could be found"))
    }

    fn find_free(&mut self, host: &HostFile, from: u64) -> Result<u64, Fault> {
        let epb = self.per_block();
        let mut c = from;
        loop {
            if c >= MAX_HOST_OFFSET >> self.cluster_bits {
                return Err(corrupt("the image has no room for another cluster"));
            }
            let ti = c / epb;
            let off = match self.table.get(ti as usize) {
                Some(&off) if off != 0 => off,
                _ => return Ok(c),
            };
            let slot = self.block(host, off)?;
            let block = &self.blocks[slot].1;
            if let Some(i) = (c % epb..epb).find(|&i| get_entry(block, i, self.order) == 0) {
                return Ok(ti * epb + i);
            }
            c = (ti + 1) * epb;
        }
    }

    /// Makes sure refcount block `ti` exists; a new one is placed at the
    /// first cluster of the range it covers (all free) and counts itself.
    fn ensure_block(&mut self, host: &mut HostFile, ti: u64) -> Result<(), Fault> {
        if ti >= self.table.len() as u64 {
            self.grow_table(host, ti + 1)?;
        }
        if self.table[ti as usize] != 0 {
            return Ok(());
        }
        let b = ti * self.per_block();
        if self.protected(b) {
            return Err(corrupt(format!(
                "metadata cluster {b:#x} has no refcount block"
            )));
        }
        let off = b << self.cluster_bits;
        let mut buf = vec![0u8; 1usize << self.cluster_bits];
        set_entry(&mut buf, 0, self.order, 1);
        host.write(&buf, off, "write a refcount block")?;
        host.write_u64(off, self.table_offset + ti * 8, "write the refcount table")?;
        self.table[ti as usize] = off;
        self.cache(off, buf);
        Ok(())
    }

    /// Replaces the table by one of at least `min_len` entries, written
    /// past the end of the file after the new blocks that cover it.
    fn grow_table(&mut self, host: &mut HostFile, min_len: u64) -> Result<(), Fault> {
        let (cb, epb) = (self.cluster_bits, self.per_block());
        let cs = 1u64 << cb;
        let end = host.len().div_ceil(cs);
        let old_len = self.table.len() as u64;
        let mut new_len = min_len.max(old_len.saturating_mul(2));
        let (tc, ranges) = loop {
            if new_len.saturating_mul(8) > MAX_REFTABLE_BYTES {
                return Err(corrupt("the refcount table cannot grow further"));
            }
            let tc = (new_len * 8).div_ceil(cs);
            let mut ranges: Vec<u64> = Vec::new();
            loop {
                let area_end = end + ranges.len() as u64 + tc;
                let needed: Vec<u64> = (end / epb..=(area_end - 1) / epb)
                    .filter(|&ti| ti >= old_len || self.table[ti as usize] == 0)
                    .collect();
                if needed.len() == ranges.len() {
                    break;
                }
                ranges = needed;
            }
            let last_ti = (end + ranges.len() as u64 + tc - 1) / epb;
            if last_ti < new_len {
                break (tc, ranges);
            }
            new_len = last_ti + 1;
        };
        let nb = ranges.len() as u64;
        let area_end = end + nb + tc;
        if area_end >= MAX_HOST_OFFSET >> cb {
            return Err(corrupt("the image has no room for a larger refcount table"));
        }
        let mut new_table = self.table.clone();
        new_table.resize(new_len as usize, 0);
        for (k, &ti) in ranges.iter().enumerate() {
            let off = (end + k as u64) << cb;
            let mut buf = vec![0u8; cs as usize];
            for c in (ti * epb).max(end)..((ti + 1) * epb).min(area_end) {
                set_entry(&mut buf, c - ti * epb, self.order, 1);
            }
            host.write(&buf, off, "write a refcount block")?;
            new_table[ti as usize] = off;
            self.cache(off, buf);
        }
        for c in end..area_end {
            let ti = c / epb;
            if ti < old_len && self.table[ti as usize] != 0 {
                self.set(host, c, 1)?;
            }
        }
        let toff = (end + nb) << cb;
        let mut bytes = vec![0u8; (tc << cb) as usize];
        for (i, e) in new_table.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
        }
        host.write(&bytes, toff, "write the refcount table")?;
        let mut fields = [0u8; 12];
        fields[..8].copy_from_slice(&toff.to_be_bytes());
        fields[8..].copy_from_slice(&(tc as u32).to_be_bytes());
        host.write(&fields, HEADER_REFTABLE_FIELDS, "write the qcow2 header")?;
        let (old_off, old_tc) = (self.table_offset, self.table_clusters);
        self.table = new_table;
        self.table_offset = toff;
        self.table_clusters = tc;
        for i in 0..old_tc {
            self.decrement(host, (old_off >> cb) + i)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_roundtrip_every_order_keeps_neighbours() {
        for order in 0..=6u32 {
            let mut block = vec![0u8; 64];
            let max = u64::MAX >> (64 - (1u32 << order));
            let n = (64 * 8) >> order;
            for i in 0..n {
                set_entry(&mut block, i, order, i.wrapping_mul(0x9e37_79b9) & max);
            }
            for i in 0..n {
                assert_eq!(
                    get_entry(&block, i, order),
                    i.wrapping_mul(0x9e37_79b9) & max,
                    "order {order} entry {i}"
                );
            }
        }
    }

    #[test]
    fn entry_sub_byte_lowest_bits_first() {
        let mut block = vec![0u8; 1];
        set_entry(&mut block, 0, 0, 1);
        assert_eq!(block[0], 1);
        set_entry(&mut block, 1, 1, 2);
        assert_eq!(block[0], 0b1001);
    }

    fn one_bit_image() -> (HostFile, Refcounts) {
        let f = tempfile::tempfile().unwrap();
        let o = crate::disk::qcow2::CreateOptions {
            size: 1 << 20,
            cluster_bits: 16,
            refcount_order: 0,
            backing: None,
        };
        crate::disk::qcow2::create_with(&f, &o).unwrap();
        let host = HostFile::new(f).unwrap();
        let rc = Refcounts::load(&host, (1 << 16, 1), 0, 16, (3 << 16, 8)).unwrap();
        (host, rc)
    }

    #[test]
    fn increment_past_max_is_overflow() {
        let (mut host, mut rc) = one_bit_image();
        assert_eq!(rc.get(&host, 0).unwrap(), 1);
        let e = rc.increment(&mut host, 0).unwrap_err();
        assert!(
            matches!(e, Fault::Corrupt(ref m) if m.contains("overflow")),
            "{e:?}"
        );
    }

    #[test]
    fn decrement_of_free_cluster_is_underflow() {
        let (mut host, mut rc) = one_bit_image();
        assert!(matches!(
            rc.decrement(&mut host, 100),
            Err(Fault::Corrupt(_))
        ));
    }

    #[test]
    fn reserve_skips_used_then_reuses_freed() {
        let (mut host, mut rc) = one_bit_image();
        let c = rc.reserve(&mut host).unwrap();
        assert_eq!(c, 4); // header, table, block, L1
        host.write(&[0u8; 1 << 16], c << 16, "t").unwrap();
        rc.increment(&mut host, c).unwrap();
        let d = rc.reserve(&mut host).unwrap();
        assert_eq!(d, 5);
        rc.decrement(&mut host, c).unwrap();
        assert_eq!(rc.reserve(&mut host).unwrap(), 4);
    }

    #[test]
    fn entry_16bit_is_big_endian() {
        let mut block = vec![0u8; 4];
        set_entry(&mut block, 1, 4, 0x1234);
        assert_eq!(block, [0, 0, 0x12, 0x34]);
    }
}
