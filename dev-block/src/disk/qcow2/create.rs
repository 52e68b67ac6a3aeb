//! New qcow2 v3 images (for `vmctl create`).
//!
//! Layout: the header cluster, the refcount table, the refcount blocks
//! covering the image's metadata, then an empty L1 table. Data clusters
//! and L2 tables are allocated on first write.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::super::open::Format;
use super::super::SECTOR_SIZE;
use super::header::{
    self, Header, MAX_BACKING_NAME, MAX_CLUSTER_BITS, MAX_REFCOUNT_ORDER, MIN_CLUSTER_BITS,
};
use super::refcount::set_entry;
use super::MAX_L1_BYTES;

/// Default cluster size: 64 KiB, as QEMU.
pub const DEFAULT_CLUSTER_BITS: u32 = 16;
/// Default refcount width: 16 bits, as QEMU.
pub const DEFAULT_REFCOUNT_ORDER: u32 = 4;

/// Why an image could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Cluster size out of 512 B ..= 2 MiB.
    #[error("cluster_bits {0} is out of 9..=21")]
    ClusterBits(u32),
    /// Refcount width out of 1 ..= 64 bits.
    #[error("refcount_order {0} is out of 0..=6")]
    RefcountOrder(u32),
    /// Size zero, not a multiple of 512, or too large for the L1 table.
    #[error("disk size {0} is zero, not a multiple of 512 or too large")]
    Size(u64),
    /// The backing file name does not fit in the header cluster.
    #[error("backing file name of {0} bytes is too long")]
    BackingName(usize),
    /// Writing the image failed.
    #[error("writing the new image")]
    Io(#[source] io::Error),
}

/// Parameters of a new image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// Guest-visible size in bytes (a multiple of 512).
    pub size: u64,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// log2 of the refcount width in bits.
    pub refcount_order: u32,
    /// Backing file name (as resolved by a [`super::super::BackingOpener`])
    /// and format.
    pub backing: Option<(String, Format)>,
}

/// Writes a new, empty qcow2 v3 image of `size` bytes to `file` (truncated
/// first) with 16-bit refcounts.
pub fn create(
    file: &File,
    size: u64,
    cluster_bits: u32,
    backing: Option<(&str, Format)>,
) -> Result<(), CreateError> {
    create_with(
        file,
        &CreateOptions {
            size,
            cluster_bits,
            refcount_order: DEFAULT_REFCOUNT_ORDER,
            backing: backing.map(|(n, f)| (n.to_owned(), f)),
        },
    )
}

/// Writes a new, empty qcow2 v3 image described by `o` to `file`.
pub fn create_with(file: &File, o: &CreateOptions) -> Result<(), CreateError> {
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&o.cluster_bits) {
        return Err(CreateError::ClusterBits(o.cluster_bits));
    }
    if o.refcount_order > MAX_REFCOUNT_ORDER {
        return Err(CreateError::RefcountOrder(o.refcount_order));
    }
    if let Some((name, _)) = &o.backing {
        if name.is_empty() || name.len() > MAX_BACKING_NAME {
            return Err(CreateError::BackingName(name.len()));
        }
    }
    let cb = o.cluster_bits;
    let cs = 1u64 << cb;
    let l1_entries = o.size.div_ceil(cs).div_ceil(cs / 8);
    if o.size == 0 || o.size % SECTOR_SIZE != 0 || l1_entries * 8 > MAX_L1_BYTES {
        return Err(CreateError::Size(o.size));
    }
    let l1_clusters = (l1_entries * 8).div_ceil(cs);
    let per_block = (cs * 8) >> o.refcount_order;
    let (mut table_clusters, mut blocks) = (1u64, 1u64);
    loop {
        let total = 1 + table_clusters + blocks + l1_clusters;
        let b = total.div_ceil(per_block);
        let t = (b * 8).div_ceil(cs);
        if (b, t) == (blocks, table_clusters) {
            break;
        }
        (blocks, table_clusters) = (b, t);
    }
    let total = 1 + table_clusters + blocks + l1_clusters;
    let h = Header {
        version: 3,
        cluster_bits: cb,
        size: o.size,
        l1_size: l1_entries as u32,
        l1_table_offset: (1 + table_clusters + blocks) << cb,
        refcount_table_offset: cs,
        refcount_table_clusters: table_clusters as u32,
        nb_snapshots: 0,
        incompatible: 0,
        autoclear: 0,
        refcount_order: o.refcount_order,
        backing_name: o.backing.as_ref().map(|(n, _)| n.clone()),
        backing_format: o.backing.as_ref().map(|(_, f)| f.name().to_owned()),
    };
    let mut first = vec![0u8; cs as usize];
    if !header::write_new(&h, &mut first) {
        return Err(CreateError::BackingName(
            h.backing_name.map_or(0, |n| n.len()),
        ));
    }
    let mut table = vec![0u8; (table_clusters << cb) as usize];
    for i in 0..blocks {
        let off = (1 + table_clusters + i) << cb;
        table[i as usize * 8..i as usize * 8 + 8].copy_from_slice(&off.to_be_bytes());
    }
    let mut refblocks = vec![0u8; (blocks << cb) as usize];
    for c in 0..total {
        set_entry(&mut refblocks, c, o.refcount_order, 1);
    }
    file.set_len(0).map_err(CreateError::Io)?;
    file.set_len(total << cb).map_err(CreateError::Io)?;
    // Refcounts and tables first, the header (which makes it an image) last.
    file.write_all_at(&refblocks, (1 + table_clusters) << cb)
        .map_err(CreateError::Io)?;
    file.write_all_at(&table, cs).map_err(CreateError::Io)?;
    file.write_all_at(&first, 0).map_err(CreateError::Io)?;
    file.sync_data().map_err(CreateError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::open::NoBacking;
    use crate::disk::{DiskImage, Qcow2Image};

    #[test]
    fn create_then_open_reads_zeroes() {
        let f = tempfile::tempfile().unwrap();
        create(&f, 8 << 20, 16, None).unwrap();
        let img = Qcow2Image::open(f, false, &mut NoBacking).unwrap();
        assert_eq!(img.size(), 8 << 20);
        let mut buf = vec![1u8; 4096];
        img.read_at(&mut buf, 1 << 20).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn create_bad_parameters_are_refused() {
        let f = tempfile::tempfile().unwrap();
        assert!(matches!(
            create(&f, 1 << 20, 8, None),
            Err(CreateError::ClusterBits(8))
        ));
        assert!(matches!(
            create(&f, 1000, 16, None),
            Err(CreateError::Size(1000))
        ));
        assert!(matches!(create(&f, 0, 16, None), Err(CreateError::Size(0))));
        let long = "x".repeat(600);
        assert!(matches!(
            create(&f, 1 << 20, 9, Some((&long, Format::Raw))),
            Err(CreateError::BackingName(_))
        ));
    }

    #[test]
    fn create_tiny_refcounts_large_disk_needs_several_blocks() {
        let f = tempfile::tempfile().unwrap();
        let o = CreateOptions {
            size: 1 << 30,
            cluster_bits: 9,
            refcount_order: 6,
            backing: None,
        };
        create_with(&f, &o).unwrap();
        let img = Qcow2Image::open(f, false, &mut NoBacking).unwrap();
        img.write_at(&[5u8; 1024], (1 << 30) - 1024).unwrap();
        let mut buf = vec![0u8; 1024];
        img.read_at(&mut buf, (1 << 30) - 1024).unwrap();
        assert!(buf.iter().all(|&b| b == 5));
    }
}
