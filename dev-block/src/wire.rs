//! virtio-blk structures as they lie in guest memory (virtio 1.2 §5.2).
//!
//! All fields are little-endian, as virtio 1.x requires; this crate only
//! builds for little-endian hosts (x86_64), so the native integers are the
//! wire format.

use vm_memory::ByteValued;

/// Size of a sector: every offset and length in virtio-blk counts these.
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Length of the string a GET_ID request returns.
pub const BLK_ID_BYTES: usize = 20;

/// Request header: the first 16 device-readable bytes of every request
/// (`struct virtio_blk_req` up to `data`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestHeader {
    /// Request type (VIRTIO_BLK_T_*).
    pub kind: u32,
    /// Reserved (was ioprio).
    pub reserved: u32,
    /// First sector, for IN and OUT.
    pub sector: u64,
}

// SAFETY: plain old data of integers, repr(C) with no padding (4 + 4 + 8
// bytes), valid for every bit pattern.
unsafe impl ByteValued for RequestHeader {}

/// One range of a DISCARD or WRITE_ZEROES request (§5.2.6).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscardSegment {
    /// First sector.
    pub sector: u64,
    /// Number of sectors.
    pub num_sectors: u32,
    /// Bit 0: unmap (WRITE_ZEROES only); the other bits are reserved.
    pub flags: u32,
}

// SAFETY: plain old data of integers, repr(C) with no padding (8 + 4 + 4
// bytes), valid for every bit pattern.
unsafe impl ByteValued for DiscardSegment {}

/// DiscardSegment flag: WRITE_ZEROES may deallocate the range.
pub const SEGMENT_FLAG_UNMAP: u32 = 1;

/// The device configuration space (§5.2.4), up to the write-zeroes fields
/// and the first secure-erase field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkConfig {
    /// Disk size in 512-byte sectors.
    pub capacity: u64,
    /// Largest segment (VIRTIO_BLK_F_SIZE_MAX; unused by us).
    pub size_max: u32,
    /// Most data segments in one request (VIRTIO_BLK_F_SEG_MAX).
    pub seg_max: u32,
    /// Legacy geometry: cylinders.
    pub cylinders: u16,
    /// Legacy geometry: heads.
    pub heads: u8,
    /// Legacy geometry: sectors per track.
    pub sectors: u8,
    /// Logical block size (VIRTIO_BLK_F_BLK_SIZE).
    pub blk_size: u32,
    /// Topology: physical block exponent.
    pub physical_block_exp: u8,
    /// Topology: alignment offset.
    pub alignment_offset: u8,
    /// Topology: minimum I/O size.
    pub min_io_size: u16,
    /// Topology: optimal I/O size.
    pub opt_io_size: u32,
    /// Writeback cache (VIRTIO_BLK_F_CONFIG_WCE).
    pub wce: u8,
    /// Reserved.
    pub unused: u8,
    /// Number of request queues (VIRTIO_BLK_F_MQ).
    pub num_queues: u16,
    /// Largest DISCARD in sectors.
    pub max_discard_sectors: u32,
    /// Most segments in one DISCARD.
    pub max_discard_seg: u32,
    /// DISCARD alignment in sectors.
    pub discard_sector_alignment: u32,
    /// Largest WRITE_ZEROES in sectors.
    pub max_write_zeroes_sectors: u32,
    /// Most segments in one WRITE_ZEROES.
    pub max_write_zeroes_seg: u32,
    /// WRITE_ZEROES with the unmap flag may deallocate.
    pub write_zeroes_may_unmap: u8,
    /// Reserved.
    pub unused1: [u8; 3],
    /// Largest SECURE_ERASE in sectors (we never offer it: zero). It also
    /// makes the struct's size its natural 64 bytes, with no padding.
    pub max_secure_erase_sectors: u32,
}

// SAFETY: plain old data of integers laid out at their natural alignment
// (checked below), valid for every bit pattern.
unsafe impl ByteValued for BlkConfig {}

const _: () = assert!(std::mem::size_of::<RequestHeader>() == 16);
const _: () = assert!(std::mem::size_of::<DiscardSegment>() == 16);
const _: () = assert!(std::mem::size_of::<BlkConfig>() == 64);
const _: () = assert!(std::mem::offset_of!(BlkConfig, num_queues) == 34);
const _: () = assert!(std::mem::offset_of!(BlkConfig, write_zeroes_may_unmap) == 56);
