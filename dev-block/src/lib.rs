//! virtio-blk device logic of vmd-rs (being written): disk images now; the
//! request layer and the vhost-user backend follow.

pub mod disk;
