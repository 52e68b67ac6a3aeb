//! A dev-block process killed with SIGKILL while requests are in flight,
//! and a new one given the old one's state (`VhostUserDevice::reconnect`):
//! every request completes exactly once, with status OK, and the disk holds
//! what was written. The test plays the guest driver on memfd guest RAM (no
//! KVM needed): it lays out one split virtqueue, submits a batch of
//! virtio-blk writes, kicks, and kills the backend at once, before it could
//! have finished them all.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_monitor::memory::GuestRam;
use vmm_monitor::vhost_user::VhostUserDevice;
use vmm_monitor::virtio::VirtioDevice;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

mod common;
use common::driver::{dev_block_binary, scratch_image, Driver, DATA};
use common::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_ID_BLOCK};

/// Room for [`BATCH`] requests of three descriptors each.
const RING: u16 = 128;
const BATCH: u16 = 32;
/// Bytes per request: large, so that a batch takes the backend a while.
const BLOCK: u64 = 1 << 20;
/// Kill-and-replace rounds.
const ROUNDS: u8 = 6;
/// Ring size the monitor asks dev-block to track inflight state for.
const INFLIGHT_DESCS: u64 = 256;

/// A dev-block process on one end of a socket pair; killed when dropped.
struct Backend {
    child: Child,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts dev-block on `image`; returns it and the monitor's end.
fn start_backend(program: &PathBuf, image: &std::fs::File) -> (Backend, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fds: [RawFd; 2] = [theirs.as_raw_fd(), image.as_raw_fd()];
    let mut command = Command::new(program);
    command
        .args(["--socket-fd", "3", "--disk-fd", "4", "--queues", "1"])
        .stdin(Stdio::null());
    // SAFETY: the closure runs in the forked child and only calls dup and
    // dup2 on fds the parent keeps open until spawn returns.
    unsafe {
        command.pre_exec(move || {
            let high: Vec<RawFd> = fds.iter().map(|&fd| libc::dup(fd)).collect();
            for (i, fd) in high.into_iter().enumerate() {
                if fd < 0 || libc::dup2(fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn().expect("start dev-block");
    drop(OwnedFd::from(theirs));
    (Backend { child }, ours)
}

/// How many descriptors queue 0's inflight area marks in flight (read
/// through the memfd the monitor keeps; layout in dev-backend's inflight).
fn marked_inflight(dev: &VhostUserDevice) -> usize {
    use std::os::unix::fs::FileExt;
    let Some(region) = &dev.state().inflight else {
        return 0;
    };
    let mut area = vec![0u8; (16 + 16 * INFLIGHT_DESCS) as usize];
    region
        .file
        .read_exact_at(&mut area, region.mmap_offset)
        .unwrap();
    (0..INFLIGHT_DESCS as usize)
        .filter(|i| area[16 + 16 * i] != 0)
        .count()
}

#[test]
fn a_killed_backend_is_replaced_and_every_request_completes_once() {
    let test = "a_killed_backend_is_replaced_and_every_request_completes_once";
    let Some(program) = dev_block_binary() else {
        eprintln!("SKIPPED {test}: dev-block is not built beside the tests");
        return;
    };
    let (dir, path, image) = scratch_image("restart", BLOCK * u64::from(BATCH));

    let (mut backend, socket) = start_backend(&program, &image);
    let mut dev = VhostUserDevice::connect("blk-restart", socket, VIRTIO_ID_BLOCK, 1).unwrap();
    assert!(
        dev.state()
            .has(vhost::vhost_user::VhostUserProtocolFeatures::INFLIGHT_SHMFD),
        "dev-block tracks inflight I/O"
    );
    let mut driver = Driver {
        ram: GuestRam::new(64 << 20).unwrap(),
        avail_idx: 0,
        ring: RING,
        block: BLOCK,
    };
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    dev.activate(driver.queue(&kick, &call)).unwrap();

    let mut resubmitted = 0;
    for round in 0..ROUNDS {
        // A batch of writes, kicked; the backend killed at a different
        // moment each round: once it has taken the first request, then
        // once it has completed 5, 10, ... of them.
        let start = driver.avail_idx;
        for n in 0..BATCH {
            driver.submit(
                n,
                VIRTIO_BLK_T_OUT,
                round.wrapping_mul(37).wrapping_add(n as u8),
            );
        }
        kick.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_millis(500);
        let completed = u16::from(round) * 5;
        while Instant::now() < deadline {
            let done = driver.used_idx().wrapping_sub(start);
            if (round == 0 && marked_inflight(&dev) > 0) || (round > 0 && done >= completed) {
                break;
            }
            std::hint::spin_loop();
        }
        backend.child.kill().unwrap();
        backend.child.wait().unwrap();
        let in_flight = marked_inflight(&dev);
        let done = driver.used_idx().wrapping_sub(start);
        eprintln!("round {round}: {done} of {BATCH} done, {in_flight} in flight at the kill");
        resubmitted += in_flight;

        // Its successor, with the state the monitor kept.
        let (next, socket) = start_backend(&program, &image);
        backend = next;
        dev.reconnect(socket, Some(vmm_monitor::vhost_user::REPLAY_TIMEOUT))
            .expect("replay to the new backend");
        driver.wait_used(start.wrapping_add(BATCH));
        let heads = driver.used_heads(start, start.wrapping_add(BATCH));
        let mut sorted = heads.clone();
        sorted.sort_unstable();
        let expected: Vec<u32> = (0..BATCH).map(|n| 3 * u32::from(n)).collect();
        assert_eq!(
            sorted, expected,
            "round {round}: each request once: {heads:?}"
        );
        for n in 0..BATCH {
            assert_eq!(driver.status(n), 0, "round {round}: request {n}'s status");
        }
        assert_eq!(
            marked_inflight(&dev),
            0,
            "round {round}: nothing left in flight"
        );
    }
    assert!(
        resubmitted > 0,
        "no kill found a request in flight: resubmission was not exercised"
    );

    // A kick after the restarts is served too, and the disk holds the
    // last round's writes: read them back through the last backend.
    let last = ROUNDS - 1;
    let start = driver.avail_idx;
    for n in 0..BATCH {
        driver.submit(n, VIRTIO_BLK_T_IN, 0);
    }
    kick.write(1).unwrap();
    driver.wait_used(start.wrapping_add(BATCH));
    let fill = |n: u16| last.wrapping_mul(37).wrapping_add(n as u8);
    for n in 0..BATCH {
        let mut block = vec![0u8; BLOCK as usize];
        driver
            .ram
            .memory()
            .read_slice(&mut block, GuestAddress(DATA + BLOCK * u64::from(n)))
            .unwrap();
        assert!(block.iter().all(|&b| b == fill(n)), "block {n} read back");
    }
    let bytes = std::fs::read(&path).unwrap();
    for n in 0..BATCH {
        let at = usize::from(n) * BLOCK as usize;
        let block = &bytes[at..at + BLOCK as usize];
        assert!(block.iter().all(|&b| b == fill(n)), "file block {n}");
    }
    drop(dev);
    drop(backend);
    let _ = std::fs::remove_dir_all(&dir);
}
