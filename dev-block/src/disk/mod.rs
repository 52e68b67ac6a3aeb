//! Disk images: the host side of a virtio-blk device.
//!
//! A [`DiskImage`] is a guest-visible disk of `size()` bytes backed by an
//! image file the device was given as an fd (the device opens nothing by
//! path; backing files of a qcow2 chain are opened by the monitor or vmd and
//! passed in too). Every method takes `&self`: requests from several queues
//! run concurrently and the implementations lock what they must.

use std::io;

pub mod create;
pub mod open;
pub mod qcow2;
pub mod raw;

pub use open::{
    open_image, BackingOpener, FileListOpener, Format, NoBacking, OpenError, PathOpener,
    RecordingOpener,
};
pub use qcow2::Qcow2Image;
pub use raw::RawImage;

/// Bytes in a sector: the unit of disk sizes.
pub const SECTOR_SIZE: u64 = 512;

/// Why a disk operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The host file failed.
    #[error("{op} at offset {offset:#x} ({len} bytes)")]
    Io {
        /// What was being done ("read", "write", "flush", ...).
        op: &'static str,
        /// Guest-visible byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A range beyond the end of the disk.
    #[error("range {offset:#x}+{len:#x} is beyond the disk's {size:#x} bytes")]
    OutOfRange {
        /// Guest-visible byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// Disk size in bytes.
        size: u64,
    },
    /// A write to a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// The image's metadata is inconsistent (a corrupt qcow2 table, say).
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// The operation is not supported by this image format.
    #[error("{0} is not supported by this image")]
    Unsupported(&'static str),
}

/// A guest-visible disk.
pub trait DiskImage: Send + Sync {
    /// Size of the disk in bytes (a multiple of 512).
    fn size(&self) -> u64;
    /// True if writes, discards and write-zeroes must fail.
    fn read_only(&self) -> bool;
    /// Fills `buf` from the disk at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError>;
    /// Like [`read_at`](Self::read_at), but only if that needs no wait for
    /// the host disk (the data is in the host's page cache): `Ok(false)`
    /// when it would have to wait or cannot tell, and `buf` is then
    /// unspecified. The default never tries.
    fn try_read_at(&self, _buf: &mut [u8], _offset: u64) -> Result<bool, DiskError> {
        Ok(false)
    }
    /// Writes `buf` to the disk at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DiskError>;
    /// Makes every completed write durable (fdatasync of the image and of
    /// any metadata it depends on).
    fn flush(&self) -> Result<(), DiskError>;
    /// Tells the image that `[offset, offset + len)` is unused; reads of it
    /// may then return anything (zeroes where the format can).
    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError>;
    /// Makes `[offset, offset + len)` read as zeroes; with `unmap` the image
    /// may deallocate it.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), DiskError>;
}

impl DiskError {
    /// Checks that `[offset, offset + len)` lies within a disk of `size`
    /// bytes.
    pub fn check_range(offset: u64, len: u64, size: u64) -> Result<(), DiskError> {
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(DiskError::OutOfRange { offset, len, size }),
        }
    }
}
