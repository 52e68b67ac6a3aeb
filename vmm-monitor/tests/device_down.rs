//! A guest that resets or activates its device while the device process
//! is dead and its successor not yet started: the request waits for the
//! successor and is made on it, so the guest never sees a device that
//! needs a reset. A real dev-block under a real supervisor, with a crash
//! loop's delay before each restart; the test plays the guest driver on
//! memfd guest RAM (no KVM needed).

use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_monitor::config::DeviceSandbox;
use vmm_monitor::exit::VmEvents;
use vmm_monitor::memory::GuestRam;
use vmm_monitor::supervisor::{Recipe, RestartPolicy, Supervisor};
use vmm_monitor::vhost_user::SharedDevice;
use vmm_monitor::virtio::VirtioDevice;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

mod common;
use common::driver::{dev_block_binary, scratch_image, Driver, AVAIL, USED};
use common::{VIRTIO_BLK_T_OUT, VIRTIO_ID_BLOCK};

const RING: u16 = 16;
const BLOCK: u64 = 4096;

/// Every death counts as a crash, and each restart waits a while: long
/// enough for the test to act while no backend runs.
fn slow_restarts() -> RestartPolicy {
    RestartPolicy {
        quick: Duration::from_secs(3600),
        first_delay: Duration::from_millis(300),
        max_delay: Duration::from_millis(300),
        max_streak: 10,
    }
}

/// Kills the device's process and waits until its supervisor has seen
/// the death (and has not restarted it yet: that takes 300 ms).
fn kill_and_wait_for_the_death(supervisor: &Supervisor) {
    let pid = supervisor.pid().expect("a process runs");
    // SAFETY: kill has no memory-safety preconditions; the pid is the
    // supervisor's unreaped child.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while supervisor.pid() == Some(pid) {
        assert!(Instant::now() < deadline, "death of {pid} never seen");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Activates a fresh ring and has one 4 KiB write completed on it.
fn activate_and_write(device: &mut SharedDevice, driver: &mut Driver, fill: u8) {
    let mem = driver.ram.memory();
    mem.write_slice(&[0u8; 4096], GuestAddress(AVAIL)).unwrap();
    mem.write_slice(&[0u8; 4096], GuestAddress(USED)).unwrap();
    driver.avail_idx = 0;
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    device
        .activate(driver.queue(&kick, &call))
        .expect("activation");
    driver.submit(0, VIRTIO_BLK_T_OUT, fill);
    kick.write(1).unwrap();
    driver.wait_used(1);
    assert_eq!(driver.status(0), 0, "the write's status");
}

#[test]
fn a_reset_or_an_activation_while_no_backend_runs_waits_for_its_successor() {
    let test = "a_reset_or_an_activation_while_no_backend_runs_waits_for_its_successor";
    let Some(program) = dev_block_binary() else {
        eprintln!("SKIPPED {test}: dev-block is not built beside the tests");
        return;
    };
    let (dir, path, image) = scratch_image("down", 1 << 20);
    let recipe = Recipe {
        name: "disk0".into(),
        program,
        args: ["--socket-fd", "3", "--disk-fd", "4", "--queues", "1"]
            .map(String::from)
            .to_vec(),
        resources: vec![image.into()],
        after_restart: None,
    };
    let (events, _event_rx) = VmEvents::new();
    let (supervisor, mut device) = Supervisor::start(
        recipe,
        &DeviceSandbox::default(),
        events,
        slow_restarts(),
        VIRTIO_ID_BLOCK,
        1,
    )
    .expect("dev-block starts");
    let mut driver = Driver {
        ram: GuestRam::new(64 << 20).unwrap(),
        avail_idx: 0,
        ring: RING,
        block: BLOCK,
    };
    activate_and_write(&mut device, &mut driver, 1);

    // The guest resets the device while its backend is dead: the reset
    // waits for the successor, which it is then made on.
    kill_and_wait_for_the_death(&supervisor);
    assert_eq!(supervisor.restarts(), 0);
    device.reset().expect("a reset while no backend runs");
    assert_eq!(
        supervisor.restarts(),
        1,
        "the reset waited for the successor"
    );
    activate_and_write(&mut device, &mut driver, 2);

    // The guest activates it again while the next backend is dead.
    device.reset().unwrap();
    kill_and_wait_for_the_death(&supervisor);
    activate_and_write(&mut device, &mut driver, 3);
    assert_eq!(supervisor.restarts(), 2);

    let bytes = std::fs::read(&path).unwrap();
    assert!(
        bytes[..4096].iter().all(|&b| b == 3),
        "the last write is on disk"
    );
    supervisor.vm_ending();
    drop(device);
    let _ = std::fs::remove_dir_all(&dir);
}
