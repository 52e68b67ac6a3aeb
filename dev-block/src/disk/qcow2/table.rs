//! L1 and L2 tables: entry decoding, validation and the bounded L2 cache
//! (qcow2.txt, "Cluster mapping").

use super::host::{corrupt, Fault, HostFile};

/// Bits 9..=55 of an L1 or standard L2 entry: a cluster-aligned host offset.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 63: the refcount of the cluster is exactly one (written in place).
pub const COPIED: u64 = 1 << 63;
/// Bit 62 of an L2 entry: the cluster is compressed.
pub const COMPRESSED: u64 = 1 << 62;
/// Bit 0 of a standard L2 entry (v3): the cluster reads as zeroes.
pub const ZERO: u64 = 1;
/// Reserved bits of an L1 entry.
const L1_RESERVED: u64 = !(OFFSET_MASK | COPIED);
/// Reserved bits of a standard L2 entry.
const L2_RESERVED: u64 = !(OFFSET_MASK | COPIED | COMPRESSED | ZERO);
/// Compressed data is counted in 512-byte sectors.
pub const COMPRESSED_SECTOR: u64 = 512;
/// Host offsets are below 2^56 (bits 56 and up are flags or reserved).
pub const MAX_HOST_OFFSET: u64 = 1 << 56;
/// Bytes of L2 tables kept in memory; at least [`MIN_L2_CACHED`] tables.
/// 4 MiB maps 32 GiB of guest with 64 KiB clusters.
const L2_CACHE_BYTES: u64 = 4 << 20;
/// Fewest L2 tables cached, whatever their size (2 MiB clusters).
const MIN_L2_CACHED: usize = 2;

/// Where the data of one guest cluster is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Not in this image: read the backing image, or zeroes.
    Unallocated,
    /// Reads as zeroes; `host` is a preallocated cluster, if any.
    Zero {
        /// Preallocated host cluster.
        host: Option<u64>,
        /// Its refcount is one.
        copied: bool,
    },
    /// A standard cluster at `host`.
    Data {
        /// Host offset of the cluster.
        host: u64,
        /// Its refcount is one: it may be written in place.
        copied: bool,
    },
    /// Deflated data starting at byte `host`, spanning `sectors` 512-byte
    /// sectors counted from the sector that holds `host`.
    Compressed {
        /// Host byte offset of the compressed data.
        host: u64,
        /// Sectors the data may span.
        sectors: u64,
    },
}

/// Decodes and checks an L2 entry of an image with `cluster_bits` and
/// `version`, whose file is `host_len` bytes long.
pub fn decode_l2(
    entry: u64,
    cluster_bits: u32,
    version: u32,
    host_len: u64,
) -> Result<Mapping, Fault> {
    let cluster_size = 1u64 << cluster_bits;
    if entry & COMPRESSED != 0 {
        // Descriptor: offset in bits 0..x, sectors - 1 in bits x..62.
        let x = 62 - (cluster_bits - 8);
        let host = entry & ((1u64 << x) - 1);
        let sectors = ((entry & !(COPIED | COMPRESSED)) >> x) + 1;
        if host >= MAX_HOST_OFFSET || host >= host_len {
            return Err(corrupt(format!(
                "compressed L2 entry {entry:#x} points past the end of the file"
            )));
        }
        return Ok(Mapping::Compressed { host, sectors });
    }
    if entry & L2_RESERVED != 0 || (version < 3 && entry & ZERO != 0) {
        return Err(corrupt(format!(
            "L2 entry {entry:#x} has reserved bits set"
        )));
    }
    let host = entry & OFFSET_MASK;
    let copied = entry & COPIED != 0;
    if host % cluster_size != 0 {
        return Err(corrupt(format!(
            "L2 entry {entry:#x} is not cluster-aligned"
        )));
    }
    if host != 0 && host.checked_add(cluster_size).is_none_or(|e| e > host_len) {
        return Err(corrupt(format!(
            "L2 entry {entry:#x} points past the end of the file ({host_len:#x} bytes)"
        )));
    }
    let host = (host != 0).then_some(host);
    Ok(match (entry & ZERO != 0, host) {
        (true, host) => Mapping::Zero { host, copied },
        (false, Some(host)) => Mapping::Data { host, copied },
        (false, None) => Mapping::Unallocated,
    })
}

/// Checks an L1 entry; returns the L2 table offset (0: none).
pub fn check_l1(entry: u64, index: usize, cluster_size: u64, host_len: u64) -> Result<u64, Fault> {
    if entry & L1_RESERVED != 0 {
        return Err(corrupt(format!(
            "L1 entry {index} ({entry:#x}) has reserved bits set"
        )));
    }
    let off = entry & OFFSET_MASK;
    if off % cluster_size != 0 {
        return Err(corrupt(format!(
            "L1 entry {index}: L2 table at {off:#x} is unaligned"
        )));
    }
    if off != 0 && off.checked_add(cluster_size).is_none_or(|e| e > host_len) {
        return Err(corrupt(format!(
            "L1 entry {index}: L2 table at {off:#x} is past the end of the file"
        )));
    }
    Ok(off)
}

/// A cached L2 table.
#[derive(Debug)]
struct Cached {
    offset: u64,
    entries: Vec<u64>,
    last_use: u64,
}

/// A bounded cache of validated L2 tables, evicting the least recently
/// used. Tables are written through: the cache never holds an entry the
/// file does not.
///
/// # Invariants
/// - At most `capacity` tables; every table held passed [`decode_l2`] on
///   every entry when loaded, so nothing is written through a table that
///   failed validation.
#[derive(Debug)]
pub struct L2Cache {
    tables: Vec<Cached>,
    capacity: usize,
    clock: u64,
}

impl L2Cache {
    /// A cache for tables of `cluster_size` bytes.
    pub fn new(cluster_size: u64) -> Self {
        let capacity = usize::try_from(L2_CACHE_BYTES / cluster_size)
            .unwrap_or(MIN_L2_CACHED)
            .max(MIN_L2_CACHED);
        Self {
            tables: Vec::with_capacity(capacity),
            capacity,
            clock: 0,
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The entry at `index` of the table at `offset`, loading (and
    /// validating) the table if it is not cached.
    pub fn entry(
        &mut self,
        host: &HostFile,
        offset: u64,
        index: usize,
        geometry: (u32, u32),
    ) -> Result<u64, Fault> {
        let slot = self.load(host, offset, geometry)?;
        self.tables[slot]
            .entries
            .get(index)
            .copied()
            .ok_or_else(|| corrupt("L2 index out of range"))
    }

    fn load(
        &mut self,
        host: &HostFile,
        offset: u64,
        (cluster_bits, version): (u32, u32),
    ) -> Result<usize, Fault> {
        let now = self.tick();
        if let Some(i) = self.tables.iter().position(|t| t.offset == offset) {
            self.tables[i].last_use = now;
            return Ok(i);
        }
        let count = 1usize << (cluster_bits - 3);
        let entries = host.read_u64s(offset, count, "read a qcow2 L2 table")?;
        for e in &entries {
            decode_l2(*e, cluster_bits, version, host.len())?;
        }
        Ok(self.insert(offset, entries))
    }

    /// Caches `entries` as the table at `offset`; returns its slot.
    pub fn insert(&mut self, offset: u64, entries: Vec<u64>) -> usize {
        let last_use = self.tick();
        let new = Cached {
            offset,
            entries,
            last_use,
        };
        if let Some(i) = self.tables.iter().position(|t| t.offset == offset) {
            self.tables[i] = new;
            return i;
        }
        if self.tables.len() < self.capacity {
            self.tables.push(new);
            return self.tables.len() - 1;
        }
        let mut victim = 0;
        for (i, t) in self.tables.iter().enumerate() {
            if t.last_use < self.tables[victim].last_use {
                victim = i;
            }
        }
        self.tables[victim] = new;
        victim
    }

    /// Updates a cached entry after it was written to the file.
    pub fn update(&mut self, offset: u64, index: usize, value: u64) {
        if let Some(t) = self.tables.iter_mut().find(|t| t.offset == offset) {
            if let Some(e) = t.entries.get_mut(index) {
                *e = value;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CB: u32 = 16;

    #[test]
    fn decode_l2_zero_entry_is_unallocated() {
        assert_eq!(decode_l2(0, CB, 3, 1 << 20).unwrap(), Mapping::Unallocated);
    }

    #[test]
    fn decode_l2_past_eof_is_corrupt() {
        let e = COPIED | (1 << 20);
        assert!(decode_l2(e, CB, 3, 1 << 20).is_err());
        assert_eq!(
            decode_l2(e, CB, 3, 2 << 20).unwrap(),
            Mapping::Data {
                host: 1 << 20,
                copied: true
            }
        );
    }

    #[test]
    fn decode_l2_zero_flag_on_v2_is_corrupt() {
        assert!(decode_l2(ZERO, CB, 2, 1 << 20).is_err());
        assert_eq!(
            decode_l2(ZERO, CB, 3, 1 << 20).unwrap(),
            Mapping::Zero {
                host: None,
                copied: false
            }
        );
    }

    #[test]
    fn decode_l2_unaligned_standard_is_corrupt() {
        assert!(decode_l2((1 << 16) | 0x200, CB, 3, 1 << 30).is_err());
    }

    #[test]
    fn decode_l2_compressed_fields_split_at_x() {
        let x = 62 - (CB - 8);
        let e = COMPRESSED | (3u64 << x) | 0x12345;
        assert_eq!(
            decode_l2(e, CB, 3, 1 << 20).unwrap(),
            Mapping::Compressed {
                host: 0x12345,
                sectors: 4
            }
        );
    }

    #[test]
    fn check_l1_reserved_or_past_eof_is_corrupt() {
        assert!(check_l1(1 << 62, 0, 1 << 16, 1 << 20).is_err());
        assert!(check_l1(1 << 20, 0, 1 << 16, 1 << 20).is_err());
        assert_eq!(
            check_l1(COPIED | (1 << 16), 0, 1 << 16, 1 << 20).unwrap(),
            1 << 16
        );
    }

    #[test]
    fn l2_cache_full_evicts_least_recent() {
        let mut c = L2Cache::new(1 << 21);
        c.insert(1, vec![1]);
        c.insert(2, vec![2]);
        c.tables[1].last_use = 100;
        c.insert(3, vec![3]);
        assert!(c.tables.iter().any(|t| t.offset == 2));
        assert!(!c.tables.iter().any(|t| t.offset == 1));
    }
}
