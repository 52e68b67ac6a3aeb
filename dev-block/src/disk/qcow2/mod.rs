//! qcow2 images, versions 2 and 3 (QEMU docs/interop/qcow2.txt).
//!
//! - [`header`]: the header, feature bits and extensions.
//! - `table`: L1/L2 entries and the bounded L2 cache.
//! - `refcount`: refcounts and cluster allocation.
//! - `compressed`: inflating compressed clusters.
//! - `write`: allocation on write, copy-on-write, discard and zeroes.
//! - [`create`](mod@create): new images for `vmctl create`.
//!
//! What is refused: encryption, external data files, extended L2 entries,
//! zstd compression, unknown incompatible features; for read-write opens
//! also dirty images (lazy refcounts: we refuse rather than repair), images
//! QEMU marked corrupt, and images with internal snapshots (their shared
//! clusters would need copy-on-write of L2 tables). Unknown autoclear bits
//! are cleared on a read-write open, as the spec asks.

mod compressed;
pub mod create;
pub mod header;
mod host;
mod refcount;
mod table;
mod write;

use std::fs::File;
use std::sync::{Mutex, MutexGuard};

use super::open::{open_backing, BackingOpener, OpenError};
use super::{DiskError, DiskImage, SECTOR_SIZE};
pub use create::{create, create_with, CreateError, CreateOptions};
pub use header::QCOW2_MAGIC;
use header::{Header, AUTOCLEAR_OFFSET, MAX_CLUSTER_BITS};
use host::{corrupt, Fault, HostFile};
use refcount::Refcounts;
use table::{check_l1, decode_l2, L2Cache, Mapping, OFFSET_MASK};

/// Largest L1 table we read: 32 MiB (QEMU's limit), enough for any disk
/// QEMU makes.
const MAX_L1_BYTES: u64 = 32 << 20;

/// The mutable state of an open image, behind one lock.
///
/// # Invariants
/// - `l1` mirrors the on-disk L1 table at `l1_offset`; every entry passed
///   [`check_l1`] or was written by us.
/// - `refcounts` is `Some` exactly when the image is writable.
/// - Metadata is written data first, then refcounts, then L2 entries, then
///   L1 entries; references are dropped before refcounts. Each step leaves
///   a consistent image (at worst with leaked clusters) on disk.
#[derive(Debug)]
pub(crate) struct Meta {
    host: HostFile,
    version: u32,
    cluster_bits: u32,
    l1: Vec<u64>,
    l1_offset: u64,
    l2: L2Cache,
    refcounts: Option<Refcounts>,
}

/// A qcow2 image over a host file, with its backing chain.
///
/// # Invariants
/// `size` is the header's size rounded down to [`SECTOR_SIZE`]; the backing
/// image is opened read-only and is at most [`super::open::MAX_CHAIN_DEPTH`]
/// - 1 images deep.
pub struct Qcow2Image {
    size: u64,
    read_only: bool,
    meta: Mutex<Meta>,
    backing: Option<Box<dyn DiskImage>>,
}

impl std::fmt::Debug for Qcow2Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Image")
            .field("size", &self.size)
            .field("read_only", &self.read_only)
            .field("meta", &self.meta)
            .field("backing_size", &self.backing.as_ref().map(|b| b.size()))
            .finish()
    }
}

impl Qcow2Image {
    /// Opens the qcow2 image in `file`; its backing files, if any, come
    /// from `opener` and are opened read-only.
    pub fn open(
        file: File,
        read_only: bool,
        opener: &mut dyn BackingOpener,
    ) -> Result<Self, OpenError> {
        Self::open_at_depth(file, read_only, opener, 0)
    }

    pub(crate) fn open_at_depth(
        file: File,
        read_only: bool,
        opener: &mut dyn BackingOpener,
        depth: usize,
    ) -> Result<Self, OpenError> {
        let mut host = HostFile::new(file)?;
        let first = host.len().min(1 << MAX_CLUSTER_BITS) as usize;
        let mut buf = vec![0u8; first];
        host.read(&mut buf, 0, "read the qcow2 header")?;
        let h = Header::parse(&buf, read_only)?;
        let l1 = read_l1(&host, &h)?;
        let refcounts = if read_only {
            None
        } else {
            let l1_bytes = u64::from(h.l1_size) * 8;
            Some(Refcounts::load(
                &host,
                (h.refcount_table_offset, h.refcount_table_clusters),
                h.refcount_order,
                h.cluster_bits,
                (h.l1_table_offset, l1_bytes),
            )?)
        };
        let backing = match &h.backing_name {
            Some(name) => Some(open_backing(
                name,
                h.backing_format.as_deref(),
                opener,
                depth,
            )?),
            None => None,
        };
        if !read_only && h.autoclear != 0 {
            // We keep no bitmaps up to date: tell QEMU they are stale.
            host.write_u64(0, AUTOCLEAR_OFFSET, "clear the autoclear features")?;
        }
        Ok(Self {
            size: h.size - h.size % SECTOR_SIZE,
            read_only,
            meta: Mutex::new(Meta {
                host,
                version: h.version,
                cluster_bits: h.cluster_bits,
                l1,
                l1_offset: h.l1_table_offset,
                l2: L2Cache::new(h.cluster_size()),
                refcounts,
            }),
            backing,
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Meta>, DiskError> {
        self.meta
            .lock()
            .map_err(|_| DiskError::Corrupt("qcow2 metadata lock poisoned".into()))
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        DiskError::check_range(offset, len, self.size)
    }

    /// Runs `f` on each cluster-bounded piece `(guest offset, start within
    /// the request, length)` of `[offset, offset + len)`.
    fn for_each_piece(
        &self,
        meta: &mut Meta,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&mut Meta, u64, usize, usize) -> Result<(), Fault>,
    ) -> Result<(), DiskError> {
        let cs = 1u64 << meta.cluster_bits;
        let mut done = 0u64;
        while done < len {
            let g = offset + done;
            let n = (cs - g % cs).min(len - done);
            f(meta, g, done as usize, n as usize).map_err(|e| e.at(offset, len))?;
            done += n;
        }
        Ok(())
    }
}

fn read_l1(host: &HostFile, h: &Header) -> Result<Vec<u64>, Fault> {
    let cs = h.cluster_size();
    let per_l2 = 1u64 << (h.cluster_bits - 3);
    let needed = h.size.div_ceil(cs).div_ceil(per_l2);
    let bytes = u64::from(h.l1_size) * 8;
    if u64::from(h.l1_size) < needed {
        return Err(corrupt(format!(
            "L1 table of {} entries maps less than the disk size",
            h.l1_size
        )));
    }
    if bytes > MAX_L1_BYTES {
        return Err(corrupt(format!(
            "L1 table of {} entries is too large",
            h.l1_size
        )));
    }
    if bytes == 0 {
        return Ok(Vec::new());
    }
    if h.l1_table_offset % cs != 0 || !host.contains(h.l1_table_offset, bytes) {
        return Err(corrupt(format!(
            "L1 table at {:#x} is unaligned or past the end of the file",
            h.l1_table_offset
        )));
    }
    let l1 = host.read_u64s(h.l1_table_offset, h.l1_size as usize, "read the L1 table")?;
    for (i, &e) in l1.iter().enumerate() {
        check_l1(e, i, cs, host.len())?;
    }
    Ok(l1)
}

/// Reads `buf` at guest offset `g` from `backing`, zeroes where there is
/// no backing image or it is shorter.
fn read_backing(backing: Option<&dyn DiskImage>, buf: &mut [u8], g: u64) -> Result<(), Fault> {
    let Some(b) = backing else {
        buf.fill(0);
        return Ok(());
    };
    let avail = b.size().saturating_sub(g).min(buf.len() as u64) as usize;
    let (head, tail) = buf.split_at_mut(avail);
    if !head.is_empty() {
        b.read_at(head, g).map_err(Fault::Disk)?;
    }
    tail.fill(0);
    Ok(())
}

impl Meta {
    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// The L1 index, L2 table offset (0: none) and L2 index of guest
    /// offset `g`.
    fn locate(&self, g: u64) -> Result<(usize, u64, usize), Fault> {
        let l2_bits = self.cluster_bits - 3;
        let cluster = g >> self.cluster_bits;
        let l1i = usize::try_from(cluster >> l2_bits).map_err(|_| corrupt("offset overflows"))?;
        let l2i = (cluster & ((1 << l2_bits) - 1)) as usize;
        let l2 = self
            .l1
            .get(l1i)
            .map(|e| e & OFFSET_MASK)
            .ok_or_else(|| corrupt("guest offset beyond the L1 table"))?;
        Ok((l1i, l2, l2i))
    }

    /// Where guest offset `g` lives.
    fn lookup(&mut self, g: u64) -> Result<Mapping, Fault> {
        let (_, l2, l2i) = self.locate(g)?;
        if l2 == 0 {
            return Ok(Mapping::Unallocated);
        }
        let geometry = (self.cluster_bits, self.version);
        let e = self.l2.entry(&self.host, l2, l2i, geometry)?;
        decode_l2(e, self.cluster_bits, self.version, self.host.len())
    }

    /// Fills `out` (one cluster) with what guest cluster `start` holds.
    fn cluster_content(
        &mut self,
        backing: Option<&dyn DiskImage>,
        m: Mapping,
        start: u64,
        out: &mut [u8],
    ) -> Result<(), Fault> {
        match m {
            Mapping::Unallocated => read_backing(backing, out, start),
            Mapping::Zero { .. } => {
                out.fill(0);
                Ok(())
            }
            Mapping::Data { host, .. } => self.host.read(out, host, "read a data cluster"),
            Mapping::Compressed { host, sectors } => {
                compressed::read_cluster(&self.host, host, sectors, out)
            }
        }
    }

    /// Reads `buf`, within one cluster, at guest offset `g`.
    fn read_piece(
        &mut self,
        backing: Option<&dyn DiskImage>,
        buf: &mut [u8],
        g: u64,
    ) -> Result<(), Fault> {
        let cs = self.cluster_size();
        let in_cluster = g % cs;
        match self.lookup(g)? {
            Mapping::Data { host, .. } => {
                self.host
                    .read(buf, host + in_cluster, "read a data cluster")
            }
            Mapping::Zero { .. } => {
                buf.fill(0);
                Ok(())
            }
            Mapping::Unallocated => read_backing(backing, buf, g),
            m @ Mapping::Compressed { .. } => {
                let mut whole = vec![0u8; cs as usize];
                self.cluster_content(backing, m, g - in_cluster, &mut whole)?;
                let at = in_cluster as usize;
                buf.copy_from_slice(&whole[at..at + buf.len()]);
                Ok(())
            }
        }
    }
}

impl DiskImage for Qcow2Image {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        let len = buf.len() as u64;
        DiskError::check_range(offset, len, self.size)?;
        let mut meta = self.lock()?;
        let backing = self.backing.as_deref();
        self.for_each_piece(&mut meta, offset, len, |m, g, at, n| {
            m.read_piece(backing, &mut buf[at..at + n], g)
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        let len = buf.len() as u64;
        self.check_write(offset, len)?;
        let mut meta = self.lock()?;
        let backing = self.backing.as_deref();
        self.for_each_piece(&mut meta, offset, len, |m, g, at, n| {
            m.write_piece(backing, &buf[at..at + n], g)
        })
    }

    fn flush(&self) -> Result<(), DiskError> {
        if self.read_only {
            return Ok(());
        }
        self.lock()?.host.sync().map_err(|e| e.at(0, self.size))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.check_write(offset, len)?;
        let mut meta = self.lock()?;
        let backing = self.backing.as_deref();
        let size = self.size;
        self.for_each_piece(&mut meta, offset, len, |m, g, _, n| {
            m.zero_piece(backing, g, n, size, write::ZeroMode::Discard)
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), DiskError> {
        self.check_write(offset, len)?;
        let mut meta = self.lock()?;
        let backing = self.backing.as_deref();
        let size = self.size;
        self.for_each_piece(&mut meta, offset, len, |m, g, _, n| {
            m.zero_piece(backing, g, n, size, write::ZeroMode::Zeroes { unmap })
        })
    }
}
