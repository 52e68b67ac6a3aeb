//! virtio-blk device logic of vmd-rs.
//!
//! - [`disk`]: disk images (raw, qcow2) behind the [`disk::DiskImage`] trait.
//! - [`wire`]: the virtio-blk structures in guest memory.
//! - [`request`]: descriptor chain → validated request.
//! - [`device`]: executing requests against a disk; the config space.
//! - [`metrics`]: counters the device reports.

pub mod device;
pub mod disk;
pub mod metrics;
pub mod request;
pub mod wire;
