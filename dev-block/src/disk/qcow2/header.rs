//! The qcow2 header and its extensions (QEMU docs/interop/qcow2.txt,
//! "Header" and "Header extensions"). All fields are big-endian.

use super::OpenError;

/// "QFI\xfb".
pub const QCOW2_MAGIC: u32 = 0x5146_49fb;
/// Length of the version 2 header (and of the fields shared with v3).
pub const V2_HEADER_LEN: usize = 72;
/// Smallest version 3 header: up to `header_length`.
pub const V3_MIN_HEADER_LEN: usize = 104;
/// The version 3 header we write: v3 fields plus the compression type
/// byte, padded to 8.
pub const V3_HEADER_LEN: usize = 112;
/// Smallest cluster: 512 bytes.
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster QEMU accepts: 2 MiB.
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Largest refcount_order: 64-bit refcounts.
pub const MAX_REFCOUNT_ORDER: u32 = 6;
/// Refcount order implied by version 2: 16-bit refcounts.
pub const V2_REFCOUNT_ORDER: u32 = 4;
/// Longest backing file name QEMU writes.
pub const MAX_BACKING_NAME: usize = 1023;

/// Incompatible feature: refcounts may be stale (lazy refcounts).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature: QEMU found corruption and marked the image.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature: guest data lives in an external data file.
pub const INCOMPAT_EXTERNAL_DATA: u64 = 1 << 2;
/// Incompatible feature: the compression type field is not zlib.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature: extended (subcluster) L2 entries.
pub const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
/// Every incompatible feature bit the spec defines.
const INCOMPAT_KNOWN: u64 = INCOMPAT_DIRTY
    | INCOMPAT_CORRUPT
    | INCOMPAT_EXTERNAL_DATA
    | INCOMPAT_COMPRESSION
    | INCOMPAT_EXTENDED_L2;
/// Compression type 0: deflate (zlib).
const COMPRESSION_ZLIB: u8 = 0;

/// Header extension: end of the extension area.
pub const EXT_END: u32 = 0;
/// Header extension: backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Byte offset of `autoclear_features` in a v3 header.
pub const AUTOCLEAR_OFFSET: u64 = 88;

/// A parsed, self-consistent qcow2 header. Checks against the file size
/// are done by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Guest-visible size in bytes.
    pub size: u64,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Host offset of the L1 table.
    pub l1_table_offset: u64,
    /// Host offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters of the refcount table.
    pub refcount_table_clusters: u32,
    /// Internal snapshots.
    pub nb_snapshots: u32,
    /// v3 incompatible feature bits (0 on v2).
    pub incompatible: u64,
    /// v3 autoclear feature bits (0 on v2).
    pub autoclear: u64,
    /// log2 of the refcount width in bits.
    pub refcount_order: u32,
    /// Backing file name, if any.
    pub backing_name: Option<String>,
    /// Backing file format from its header extension, if any.
    pub backing_format: Option<String>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn corrupt(msg: impl Into<String>) -> OpenError {
    OpenError::Corrupt(msg.into())
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Parses the header from `buf`, the first bytes of the file (the first
    /// cluster, or all of a shorter file). Refuses what this implementation
    /// cannot handle safely: unknown incompatible features, external data,
    /// encryption, non-zlib compression, extended L2 entries; for
    /// read-write opens also dirty, corrupt-marked and snapshotted images.
    pub fn parse(buf: &[u8], read_only: bool) -> Result<Header, OpenError> {
        if buf.len() < V2_HEADER_LEN {
            return Err(corrupt("file is shorter than a qcow2 header"));
        }
        let magic = be32(buf, 0);
        if magic != QCOW2_MAGIC {
            return Err(OpenError::BadMagic(magic));
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(OpenError::Unsupported(format!("qcow2 version {version}")));
        }
        let cluster_bits = be32(buf, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(corrupt(format!("cluster_bits {cluster_bits} out of range")));
        }
        let cluster_size = 1usize << cluster_bits;
        if be32(buf, 32) != 0 {
            return Err(OpenError::Unsupported("encrypted images".into()));
        }
        let mut h = Header {
            version,
            cluster_bits,
            size: be64(buf, 24),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            incompatible: 0,
            autoclear: 0,
            refcount_order: V2_REFCOUNT_ORDER,
            backing_name: None,
            backing_format: None,
        };
        let header_len = if version == 3 {
            h.parse_v3(buf, read_only)?
        } else {
            V2_HEADER_LEN
        };
        if !read_only && h.nb_snapshots != 0 {
            return Err(OpenError::Unsupported(
                "writing to an image with internal snapshots".into(),
            ));
        }
        let area = &buf[..buf.len().min(cluster_size)];
        h.backing_format = parse_extensions(area, header_len)?;
        let backing_offset = be64(buf, 8);
        let backing_len = be32(buf, 16) as usize;
        if backing_offset != 0 && backing_len != 0 {
            if backing_len > MAX_BACKING_NAME {
                return Err(corrupt(format!("backing file name of {backing_len} bytes")));
            }
            let start = usize::try_from(backing_offset)
                .ok()
                .filter(|&s| s.checked_add(backing_len).is_some_and(|e| e <= area.len()))
                .ok_or_else(|| corrupt("backing file name outside the first cluster"))?;
            let name = std::str::from_utf8(&area[start..start + backing_len])
                .map_err(|_| corrupt("backing file name is not UTF-8"))?;
            h.backing_name = Some(name.to_owned());
        }
        Ok(h)
    }

    /// Parses and checks the v3 fields; returns the header length.
    fn parse_v3(&mut self, buf: &[u8], read_only: bool) -> Result<usize, OpenError> {
        if buf.len() < V3_MIN_HEADER_LEN {
            return Err(corrupt("file is shorter than a qcow2 v3 header"));
        }
        let incompat = be64(buf, 72);
        self.autoclear = be64(buf, 88);
        self.refcount_order = be32(buf, 96);
        let header_len = be32(buf, 100) as usize;
        if header_len < V3_MIN_HEADER_LEN || header_len > buf.len().min(1 << self.cluster_bits) {
            return Err(corrupt(format!("header_length {header_len}")));
        }
        if self.refcount_order > MAX_REFCOUNT_ORDER {
            return Err(corrupt(format!(
                "refcount_order {} above 6",
                self.refcount_order
            )));
        }
        let unknown = incompat & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(OpenError::Unsupported(format!(
                "unknown incompatible features {unknown:#x}"
            )));
        }
        if incompat & INCOMPAT_EXTERNAL_DATA != 0 {
            return Err(OpenError::Unsupported("external data files".into()));
        }
        if incompat & INCOMPAT_EXTENDED_L2 != 0 {
            return Err(OpenError::Unsupported(
                "extended L2 entries (subclusters)".into(),
            ));
        }
        let compression = if header_len > V3_MIN_HEADER_LEN {
            buf[104]
        } else {
            COMPRESSION_ZLIB
        };
        if compression != COMPRESSION_ZLIB {
            return Err(OpenError::Unsupported(format!(
                "compression type {compression} (only zlib)"
            )));
        }
        if !read_only && incompat & INCOMPAT_DIRTY != 0 {
            return Err(OpenError::Dirty);
        }
        if !read_only && incompat & INCOMPAT_CORRUPT != 0 {
            return Err(corrupt(
                "marked corrupt by QEMU; open it read-only or repair it",
            ));
        }
        self.incompatible = incompat;
        Ok(header_len)
    }
}

/// Walks the header extensions from `start`; returns the backing format.
fn parse_extensions(area: &[u8], start: usize) -> Result<Option<String>, OpenError> {
    let mut at = start;
    let mut backing_format = None;
    while at + 8 <= area.len() {
        let kind = be32(area, at);
        let len = be32(area, at + 4) as usize;
        if kind == EXT_END {
            break;
        }
        let data = at + 8;
        let end = data
            .checked_add(len)
            .filter(|&e| e <= area.len())
            .ok_or_else(|| {
                corrupt(format!(
                    "header extension {kind:#x} overruns the first cluster"
                ))
            })?;
        if kind == EXT_BACKING_FORMAT {
            let f = std::str::from_utf8(&area[data..end])
                .map_err(|_| corrupt("backing format is not UTF-8"))?;
            backing_format = Some(f.to_owned());
        }
        // Other extensions (feature names, bitmaps, ...) are not needed to
        // read or write guest data; bitmaps are invalidated through the
        // autoclear bits.
        at = end.next_multiple_of(8);
    }
    Ok(backing_format)
}

/// Serializes a v3 header for a new image into `buf` (the first cluster).
/// Returns false if the extensions and backing name do not fit.
pub fn write_new(h: &Header, buf: &mut [u8]) -> bool {
    let put32 = |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    let put64 = |b: &mut [u8], at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_be_bytes());
    let mut at = V3_HEADER_LEN;
    let fmt_len = h
        .backing_format
        .as_ref()
        .map_or(0, |f| 8 + f.len().next_multiple_of(8));
    let name_len = h.backing_name.as_ref().map_or(0, String::len);
    if at + fmt_len + 8 + name_len > buf.len() {
        return false;
    }
    put32(buf, 0, QCOW2_MAGIC);
    put32(buf, 4, 3);
    put32(buf, 20, h.cluster_bits);
    put64(buf, 24, h.size);
    put32(buf, 36, h.l1_size);
    put64(buf, 40, h.l1_table_offset);
    put64(buf, 48, h.refcount_table_offset);
    put32(buf, 56, h.refcount_table_clusters);
    put32(buf, 96, h.refcount_order);
    put32(buf, 100, V3_HEADER_LEN as u32);
    if let Some(f) = &h.backing_format {
        put32(buf, at, EXT_BACKING_FORMAT);
        put32(buf, at + 4, f.len() as u32);
        buf[at + 8..at + 8 + f.len()].copy_from_slice(f.as_bytes());
        at += fmt_len;
    }
    put32(buf, at, EXT_END);
    put32(buf, at + 4, 0);
    at += 8;
    if let Some(n) = &h.backing_name {
        put64(buf, 8, at as u64);
        put32(buf, 16, n.len() as u32);
        buf[at..at + n.len()].copy_from_slice(n.as_bytes());
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            version: 3,
            cluster_bits: 16,
            size: 1 << 30,
            l1_size: 2,
            l1_table_offset: 3 << 16,
            refcount_table_offset: 1 << 16,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            incompatible: 0,
            autoclear: 0,
            refcount_order: 4,
            backing_name: Some("base.img".into()),
            backing_format: Some("raw".into()),
        }
    }

    #[test]
    fn header_write_then_parse_roundtrips() {
        let mut buf = vec![0u8; 1 << 16];
        assert!(write_new(&sample(), &mut buf));
        assert_eq!(Header::parse(&buf, false).unwrap(), sample());
    }

    #[test]
    fn header_bad_magic_is_refused() {
        let mut buf = vec![0u8; 4096];
        buf[..4].copy_from_slice(b"QFI\0");
        assert!(matches!(
            Header::parse(&buf, true),
            Err(OpenError::BadMagic(_))
        ));
    }

    #[test]
    fn header_unknown_incompatible_bit_is_refused() {
        let mut buf = vec![0u8; 1 << 16];
        write_new(&sample(), &mut buf);
        buf[72..80].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert!(matches!(
            Header::parse(&buf, true),
            Err(OpenError::Unsupported(_))
        ));
    }

    #[test]
    fn header_dirty_read_write_is_refused_read_only_allowed() {
        let mut buf = vec![0u8; 1 << 16];
        write_new(&sample(), &mut buf);
        buf[72..80].copy_from_slice(&INCOMPAT_DIRTY.to_be_bytes());
        assert!(matches!(Header::parse(&buf, false), Err(OpenError::Dirty)));
        assert!(Header::parse(&buf, true).is_ok());
    }

    #[test]
    fn header_external_data_and_encryption_are_refused() {
        let mut buf = vec![0u8; 1 << 16];
        write_new(&sample(), &mut buf);
        buf[72..80].copy_from_slice(&INCOMPAT_EXTERNAL_DATA.to_be_bytes());
        assert!(matches!(
            Header::parse(&buf, true),
            Err(OpenError::Unsupported(_))
        ));
        write_new(&sample(), &mut buf);
        buf[72..80].fill(0);
        buf[32..36].copy_from_slice(&1u32.to_be_bytes());
        assert!(matches!(
            Header::parse(&buf, true),
            Err(OpenError::Unsupported(_))
        ));
    }

    #[test]
    fn header_extension_overrun_is_corrupt() {
        let mut buf = vec![0u8; 512];
        let mut h = sample();
        h.cluster_bits = 9;
        h.backing_name = None;
        h.backing_format = None;
        assert!(write_new(&h, &mut buf));
        buf[112..116].copy_from_slice(&0x1234u32.to_be_bytes());
        buf[116..120].copy_from_slice(&1000u32.to_be_bytes());
        assert!(matches!(
            Header::parse(&buf, true),
            Err(OpenError::Corrupt(_))
        ));
    }
}
