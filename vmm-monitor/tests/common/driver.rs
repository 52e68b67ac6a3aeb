//! A guest driver for the vhost-user tests: one split virtqueue of
//! virtio-blk requests on memfd guest RAM, no KVM.

use std::path::PathBuf;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use vm_memory::{Address, Bytes, GuestAddress};
use vmm_monitor::memory::GuestRam;
use vmm_monitor::virtio::{QueueConfig, QueueSet};
use vmm_sys_util::eventfd::EventFd;

use super::{VIRTIO_BLK_T_IN, VIRTIO_F_VERSION_1, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

/// Where the ring and the requests live in guest RAM.
pub const DESC: u64 = 0x1_0000;
/// The avail ring.
pub const AVAIL: u64 = 0x1_1000;
/// The used ring.
pub const USED: u64 = 0x1_2000;
/// Request headers, 16 bytes each.
pub const HEADERS: u64 = 0x2_0000;
/// Status bytes, one per request.
pub const STATUS: u64 = 0x3_0000;
/// Data buffers, `block` bytes each.
pub const DATA: u64 = 0x10_0000;
/// Longest wait for a completion.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// dev-block, built beside this test's binary (`cargo build --workspace`).
pub fn dev_block_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("dev-block");
    path.is_file().then_some(path)
}

/// A read-write image of `len` bytes in a new directory named after
/// `tag` under the temporary directory; returns the directory, the
/// image's path and the open file.
pub fn scratch_image(tag: &str, len: u64) -> (PathBuf, PathBuf, std::fs::File) {
    let dir = std::env::temp_dir().join(format!("vmd-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("disk.img");
    let image = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    image.set_len(len).unwrap();
    (dir, path, image)
}

/// The guest driver's side of one split virtqueue of `ring` descriptors,
/// laid out at fixed guest addresses; request `n` uses descriptors
/// `3n..3n+2` and a data buffer of `block` bytes.
pub struct Driver {
    /// Guest RAM.
    pub ram: GuestRam,
    /// The driver's next avail index.
    pub avail_idx: u16,
    /// Descriptors in the ring.
    pub ring: u16,
    /// Bytes per request.
    pub block: u64,
}

impl Driver {
    pub fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(DESC + 16 * u64::from(i));
        let mem = self.ram.memory();
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, at.unchecked_add(8)).unwrap();
        mem.write_obj(flags, at.unchecked_add(12)).unwrap();
        mem.write_obj(next, at.unchecked_add(14)).unwrap();
    }

    /// Queues request `n` (`kind` on sector range `n * self.block`) without
    /// kicking; its data buffer is filled with `fill` for a write.
    pub fn submit(&mut self, n: u16, kind: u32, fill: u8) {
        let mem = self.ram.memory();
        let header = HEADERS + 16 * u64::from(n);
        let data = DATA + self.block * u64::from(n);
        let status = STATUS + u64::from(n);
        mem.write_obj(kind, GuestAddress(header)).unwrap();
        mem.write_obj(0u32, GuestAddress(header + 4)).unwrap();
        mem.write_obj(u64::from(n) * self.block / 512, GuestAddress(header + 8))
            .unwrap();
        mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let data_flags = if kind == VIRTIO_BLK_T_IN {
            VRING_DESC_F_WRITE
        } else {
            mem.write_slice(&vec![fill; self.block as usize], GuestAddress(data))
                .unwrap();
            0
        };
        let head = 3 * n;
        self.desc(head, header, 16, VRING_DESC_F_NEXT, head + 1);
        self.desc(
            head + 1,
            data,
            self.block as u32,
            data_flags | VRING_DESC_F_NEXT,
            head + 2,
        );
        self.desc(head + 2, status, 1, VRING_DESC_F_WRITE, 0);
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % self.ring);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
        fence(Ordering::SeqCst);
    }

    pub fn used_idx(&self) -> u16 {
        fence(Ordering::SeqCst);
        self.ram.memory().read_obj(GuestAddress(USED + 2)).unwrap()
    }

    /// The head ids in the used ring, entries `from..to`.
    pub fn used_heads(&self, from: u16, to: u16) -> Vec<u32> {
        (from..to)
            .map(|i| {
                let at = USED + 4 + 8 * u64::from(i % self.ring);
                self.ram.memory().read_obj(GuestAddress(at)).unwrap()
            })
            .collect()
    }

    pub fn wait_used(&self, idx: u16) {
        let deadline = Instant::now() + TIMEOUT;
        while self.used_idx() != idx {
            assert!(
                Instant::now() < deadline,
                "used idx {} never reached {idx}",
                self.used_idx()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn status(&self, n: u16) -> u8 {
        self.ram
            .memory()
            .read_obj(GuestAddress(STATUS + u64::from(n)))
            .unwrap()
    }

    pub fn queue(&self, kick: &EventFd, call: &EventFd) -> QueueSet {
        QueueSet {
            memory: self.ram.memory().clone(),
            acked_features: VIRTIO_F_VERSION_1,
            queues: vec![QueueConfig {
                index: 0,
                size: self.ring,
                desc_table: GuestAddress(DESC),
                avail_ring: GuestAddress(AVAIL),
                used_ring: GuestAddress(USED),
                kick: kick.try_clone().unwrap(),
                call: Some(call.try_clone().unwrap()),
            }],
            config_change: None,
        }
    }
}
