//! virtio-blk device logic (being written).
