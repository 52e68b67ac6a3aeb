//! What the vhost-user tests share: the virtio numbers a test driver needs
//! (virtio 1.2 §2.7 split virtqueues, §5.2 block devices).

// Each test binary uses some of them.
#![allow(dead_code)]

pub mod driver;

/// Device ID of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Feature bit of a modern device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Request type: read.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Descriptor flag: the chain goes on.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const VRING_DESC_F_WRITE: u16 = 2;
