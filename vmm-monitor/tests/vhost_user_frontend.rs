//! The vhost-user frontend against a real backend: QEMU's
//! qemu-storage-daemon serving a vhost-user-blk export of a temporary image.
//!
//! The test plays the guest driver: it lays out a split virtqueue by hand
//! in memfd-backed guest RAM, submits virtio-blk requests, kicks the kick
//! eventfd and waits on the call eventfd, as KVM would on the guest's
//! behalf. No KVM is needed.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_monitor::memory::{GuestMemory, GuestRam};
use vmm_monitor::vhost_user::VhostUserDevice;
use vmm_monitor::virtio::{QueueConfig, QueueSet, VirtioDevice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

mod common;
use common::{
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
};

const QSD: &str = "qemu-storage-daemon";
const SECTOR: u64 = 512;
const IMAGE_SECTORS: u64 = 2048;
const QUEUE_SIZE: u16 = 16;
const DESC: u64 = 0x10000;
const AVAIL: u64 = 0x11000;
const USED: u64 = 0x12000;
const HEADERS: u64 = 0x20000;
const DATA: u64 = 0x30000;
const STATUS: u64 = 0x40000;
const TIMEOUT: Duration = Duration::from_secs(10);

/// The image's initial byte at `offset`; 512 is not a multiple of 251, so
/// every sector differs.
fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// Kills the daemon and removes its files, however the test ends.
struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Daemon {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("qsd.log")).unwrap_or_default()
    }

    /// Starts qemu-storage-daemon on a patterned image; `None` if it is not installed.
    fn start() -> Option<Self> {
        if Command::new(QSD).arg("--version").output().is_err() {
            return None;
        }
        let dir = std::env::temp_dir().join(format!("vmd-vhost-user-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut daemon = Daemon { child: None, dir };
        let image: Vec<u8> = (0..IMAGE_SECTORS * SECTOR).map(pattern).collect();
        std::fs::write(daemon.path("disk.img"), image).unwrap();
        let log = File::create(daemon.path("qsd.log")).unwrap();
        let child = Command::new(QSD)
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=f,filename={}",
                daemon.path("disk.img").display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on",
                daemon.path("blk.sock").display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        daemon.child = Some(child);
        Some(daemon)
    }

    fn connect(&mut self) -> UnixStream {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(stream) = UnixStream::connect(self.path("blk.sock")) {
                return stream;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{QSD} exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{QSD} never listened: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The driver side of one split virtqueue (virtio 1.2 §2.7).
struct Driver {
    mem: GuestMemory,
    next_desc: u16,
    avail_idx: u16,
    requests: u64,
}

impl Driver {
    fn new(mem: GuestMemory) -> Self {
        let mut driver = Driver {
            mem,
            next_desc: 0,
            avail_idx: 0,
            requests: 0,
        };
        driver.clear();
        driver
    }

    /// Zeroes the rings, as a driver does before (re)starting a device.
    fn clear(&mut self) {
        let zero = vec![0u8; 0x3000];
        self.mem.write_slice(&zero, GuestAddress(DESC)).unwrap();
        self.next_desc = 0;
        self.avail_idx = 0;
    }

    fn queue(&self, kick: &EventFd, call: Option<&EventFd>) -> QueueConfig {
        QueueConfig {
            index: 0,
            size: QUEUE_SIZE,
            desc_table: GuestAddress(DESC),
            avail_ring: GuestAddress(AVAIL),
            used_ring: GuestAddress(USED),
            kick: kick.try_clone().unwrap(),
            call: call.map(|c| c.try_clone().unwrap()),
        }
    }

    fn write_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = DESC + 16 * u64::from(i);
        self.mem.write_obj(addr, GuestAddress(at)).unwrap();
        self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }

    /// Queues a virtio-blk request of one sector (header, data, status) and
    /// returns (head descriptor, data address, status address).
    fn submit(&mut self, kind: u32, sector: u64) -> (u16, u64, u64) {
        let n = self.requests;
        self.requests += 1;
        let (header, data, status) = (HEADERS + 16 * n, DATA + SECTOR * n, STATUS + n);
        self.mem.write_obj(kind, GuestAddress(header)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(header + 4)).unwrap();
        self.mem
            .write_obj(sector, GuestAddress(header + 8))
            .unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let head = self.next_desc;
        let data_flags = if kind == VIRTIO_BLK_T_IN {
            VRING_DESC_F_WRITE
        } else {
            0
        };
        self.write_desc(head, header, 16, VRING_DESC_F_NEXT, head + 1);
        self.write_desc(
            head + 1,
            data,
            SECTOR as u32,
            data_flags | VRING_DESC_F_NEXT,
            head + 2,
        );
        self.write_desc(head + 2, status, 1, VRING_DESC_F_WRITE, 0);
        self.next_desc += 3;
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % QUEUE_SIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
        fence(Ordering::SeqCst);
        (head, data, status)
    }

    fn used_idx(&self) -> u16 {
        fence(Ordering::SeqCst);
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    fn used_elem(&self, i: u16) -> (u32, u32) {
        let at = USED + 4 + 8 * u64::from(i % QUEUE_SIZE);
        let id = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    /// Waits until the used ring reaches `idx`: on the call eventfd if there
    /// is one, polling the ring otherwise.
    fn wait_used(&self, idx: u16, call: Option<&EventFd>, daemon: &Daemon) {
        let deadline = Instant::now() + TIMEOUT;
        while self.used_idx() != idx {
            assert!(
                Instant::now() < deadline,
                "no completion; {QSD} log: {}",
                daemon.log()
            );
            match call {
                Some(call) => {
                    let mut fds = [libc::pollfd {
                        fd: call.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    }];
                    // SAFETY: `fds` is a valid array of one pollfd for the call.
                    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) };
                    if n == 1 {
                        call.read().unwrap();
                    }
                }
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    fn read_data(&self, addr: u64) -> Vec<u8> {
        let mut buf = vec![0u8; SECTOR as usize];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }
}

fn queue_set(ram: &GuestRam, queue: QueueConfig) -> QueueSet {
    QueueSet {
        memory: ram.memory().clone(),
        acked_features: VIRTIO_F_VERSION_1,
        queues: vec![queue],
        config_change: None,
    }
}

/// Reads `sector` through the device and checks data, status and used ring.
fn read_sector(
    driver: &mut Driver,
    call: Option<&EventFd>,
    kick: &EventFd,
    daemon: &Daemon,
    sector: u64,
) -> Vec<u8> {
    let before = driver.used_idx();
    let (head, data, status) = driver.submit(VIRTIO_BLK_T_IN, sector);
    kick.write(1).unwrap();
    driver.wait_used(before.wrapping_add(1), call, daemon);
    assert_eq!(
        driver.mem.read_obj::<u8>(GuestAddress(status)).unwrap(),
        0,
        "IN status"
    );
    let (id, len) = driver.used_elem(before);
    assert_eq!(id, u32::from(head));
    assert_eq!(len, SECTOR as u32 + 1, "IN used length: data and status");
    driver.read_data(data)
}

/// Resets the device, showing the daemon's log if that fails.
fn reset(dev: &mut VhostUserDevice, daemon: &Daemon) {
    if let Err(e) = dev.reset() {
        panic!("reset: {e}; {QSD} log: {}", daemon.log());
    }
}

#[test]
fn vhost_user_blk_against_qemu_storage_daemon() {
    let Some(mut daemon) = Daemon::start() else {
        std::io::stderr()
            .write_all(format!("SKIPPED: {QSD} is not installed\n").as_bytes())
            .unwrap();
        return;
    };
    let stream = daemon.connect();
    let mut dev = VhostUserDevice::connect("blk-test", stream, VIRTIO_ID_BLOCK, 1).unwrap();

    // Negotiation and configuration.
    let state = dev.state();
    eprintln!(
        "backend features {:#x}, protocol {:?}",
        state.backend_features, state.protocol_features
    );
    assert_eq!(dev.device_type(), VIRTIO_ID_BLOCK);
    assert_eq!(dev.queue_max_sizes(), vec![256]);
    assert_ne!(dev.features() & VIRTIO_F_VERSION_1, 0);
    assert_eq!(
        dev.features() & (1 << 30),
        0,
        "protocol features bit reached the guest"
    );
    let mut capacity = [0u8; 8];
    dev.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), IMAGE_SECTORS);
    let inflight_wanted = dev
        .state()
        .has(vhost::vhost_user::VhostUserProtocolFeatures::INFLIGHT_SHMFD);

    let ram = GuestRam::new(16 << 20).unwrap();
    let mut driver = Driver::new(ram.memory().clone());

    // First activation, with a call eventfd: one read, one write.
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    dev.activate(queue_set(&ram, driver.queue(&kick, Some(&call))))
        .unwrap();
    assert_eq!(dev.state().inflight.is_some(), inflight_wanted);
    let expected: Vec<u8> = (3 * SECTOR..4 * SECTOR).map(pattern).collect();
    assert_eq!(
        read_sector(&mut driver, Some(&call), &kick, &daemon, 3),
        expected
    );

    let (head, data, status) = driver.submit(VIRTIO_BLK_T_OUT, 5);
    driver
        .mem
        .write_slice(&[0xa5; SECTOR as usize], GuestAddress(data))
        .unwrap();
    kick.write(1).unwrap();
    driver.wait_used(2, Some(&call), &daemon);
    assert_eq!(
        driver.mem.read_obj::<u8>(GuestAddress(status)).unwrap(),
        0,
        "OUT status"
    );
    assert_eq!(
        driver.used_elem(1),
        (u32::from(head), 1),
        "OUT used: status byte only"
    );
    let mut on_disk = vec![0u8; SECTOR as usize];
    File::open(daemon.path("disk.img"))
        .unwrap()
        .read_exact_at(&mut on_disk, 5 * SECTOR)
        .unwrap();
    assert_eq!(on_disk, vec![0xa5; SECTOR as usize]);

    reset(&mut dev, &daemon);
    assert_eq!(dev.state().stopped_bases, vec![(0, 2)]);
    assert!(dev.state().vrings.is_empty());
    assert!(dev.state().inflight.is_none());

    // Second activation, the driver polling (no call fd, interrupts not
    // suppressed): the write is read back, and the backend's notifications
    // go to the unread eventfd the frontend made for the queue.
    driver.clear();
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    dev.activate(queue_set(&ram, driver.queue(&kick, None)))
        .unwrap();
    assert_eq!(
        read_sector(&mut driver, None, &kick, &daemon, 5),
        vec![0xa5; SECTOR as usize]
    );
    reset(&mut dev, &daemon);
    assert_eq!(dev.state().stopped_bases, vec![(0, 1)]);

    // Third activation, a call eventfd again.
    driver.clear();
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    dev.activate(queue_set(&ram, driver.queue(&kick, Some(&call))))
        .unwrap();
    let expected: Vec<u8> = (7 * SECTOR..8 * SECTOR).map(pattern).collect();
    assert_eq!(
        read_sector(&mut driver, Some(&call), &kick, &daemon, 7),
        expected
    );
    reset(&mut dev, &daemon);
}

/// A backend that records every request, for what qemu-storage-daemon 7.2
/// cannot show: INFLIGHT_SHMFD, MQ capping, several queues, a queue without
/// a call fd, and cleanup after a failed activation.
mod recording {
    use std::fs::File;
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::MetadataExt;
    use std::sync::{Arc, Mutex};

    use vhost::vhost_user::message::*;
    use vhost::vhost_user::{
        Backend, BackendReqHandler, GpuBackend, Result, VhostUserBackendReqHandlerMut,
        VhostUserProtocolFeatures as P,
    };
    use vhost::VhostUserMemoryRegionBase;

    /// Features offered: VERSION_1, bit 30, BLK_SIZE (6), and LOG_ALL (26),
    /// which must not reach the guest.
    pub const FEATURES: u64 = (1 << 32) | (1 << 30) | (1 << 6) | (1 << 26);

    #[derive(Default)]
    pub struct Recorder {
        pub log: Vec<String>,
    }

    fn memfd() -> File {
        // SAFETY: memfd_create with a valid name and flags.
        let fd = unsafe { libc::memfd_create(c"inflight".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` was just created and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(0x1000).unwrap();
        file
    }

    impl Recorder {
        fn rec(&mut self, entry: String) -> Result<()> {
            self.log.push(entry);
            Ok(())
        }
    }

    impl VhostUserBackendReqHandlerMut for Recorder {
        fn set_owner(&mut self) -> Result<()> {
            self.rec("SET_OWNER".into())
        }
        fn reset_owner(&mut self) -> Result<()> {
            self.rec("RESET_OWNER".into())
        }
        fn reset_device(&mut self) -> Result<()> {
            self.rec("RESET_DEVICE".into())
        }
        fn get_features(&mut self) -> Result<u64> {
            Ok(FEATURES)
        }
        fn set_features(&mut self, features: u64) -> Result<()> {
            self.rec(format!("SET_FEATURES {features:#x}"))
        }
        fn set_mem_table(
            &mut self,
            ctx: &[VhostUserMemoryRegion],
            files: Vec<File>,
            _postcopy: Option<bool>,
        ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>> {
            let (gpa, size, offset) = (
                ctx[0].guest_phys_addr,
                ctx[0].memory_size,
                ctx[0].mmap_offset,
            );
            self.rec(format!(
                "SET_MEM_TABLE n={} fds={} {gpa:#x}+{size:#x}@{offset:#x}",
                ctx.len(),
                files.len()
            ))?;
            Ok(None)
        }
        fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
            self.rec(format!("SET_VRING_NUM {index} {num}"))
        }
        fn set_vring_addr(
            &mut self,
            index: u32,
            _flags: VhostUserVringAddrFlags,
            desc: u64,
            used: u64,
            avail: u64,
            _log: u64,
        ) -> Result<()> {
            self.rec(format!(
                "SET_VRING_ADDR {index} {desc:#x} {avail:#x} {used:#x}"
            ))
        }
        fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
            self.rec(format!("SET_VRING_BASE {index} {base}"))
        }
        fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
            self.rec(format!("GET_VRING_BASE {index}"))?;
            Ok(VhostUserVringState::new(index, 7))
        }
        fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
            self.rec(format!(
                "SET_VRING_KICK {index} {}",
                if fd.is_some() { "fd" } else { "nofd" }
            ))
        }
        fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
            self.rec(format!(
                "SET_VRING_CALL {index} {}",
                if fd.is_some() { "fd" } else { "nofd" }
            ))
        }
        fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> Result<()> {
            self.rec(format!("SET_VRING_ERR {index}"))
        }
        fn get_protocol_features(&mut self) -> Result<P> {
            Ok(P::MQ | P::REPLY_ACK | P::CONFIG | P::INFLIGHT_SHMFD | P::BACKEND_REQ)
        }
        fn set_protocol_features(&mut self, features: u64) -> Result<()> {
            self.rec(format!("SET_PROTOCOL_FEATURES {features:#x}"))
        }
        fn get_queue_num(&mut self) -> Result<u64> {
            Ok(2)
        }
        fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
            self.rec(format!("SET_VRING_ENABLE {index} {}", u8::from(enable)))
        }
        fn get_config(
            &mut self,
            offset: u32,
            size: u32,
            flags: VhostUserConfigFlags,
        ) -> Result<Vec<u8>> {
            self.rec(format!("GET_CONFIG {offset} {size} {:#x}", flags.bits()))?;
            let mut config = vec![0u8; size as usize];
            config[..8].copy_from_slice(&4096u64.to_le_bytes());
            Ok(config)
        }
        fn set_config(
            &mut self,
            offset: u32,
            buf: &[u8],
            flags: VhostUserConfigFlags,
        ) -> Result<()> {
            self.rec(format!("SET_CONFIG {offset} {buf:?} {:#x}", flags.bits()))
        }
        fn set_backend_req_fd(&mut self, _backend: Backend) {
            self.log.push("SET_BACKEND_REQ_FD".into());
        }
        fn set_gpu_socket(&mut self, _gpu: GpuBackend) -> Result<()> {
            self.rec("SET_GPU_SOCKET".into())
        }
        fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> Result<File> {
            Ok(memfd())
        }
        fn get_inflight_fd(
            &mut self,
            want: &VhostUserInflight,
        ) -> Result<(VhostUserInflight, File)> {
            let file = memfd();
            let ino = file.metadata().unwrap().ino();
            self.rec(format!(
                "GET_INFLIGHT_FD q={} qs={} -> ino {ino}",
                want.num_queues, want.queue_size
            ))?;
            Ok((
                VhostUserInflight::new(0x1000, 0, want.num_queues, want.queue_size),
                file,
            ))
        }
        fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> Result<()> {
            let ino = file.metadata().unwrap().ino();
            let (size, q, qs) = (inflight.mmap_size, inflight.num_queues, inflight.queue_size);
            self.rec(format!("SET_INFLIGHT_FD {size:#x} q={q} qs={qs} ino {ino}"))
        }
        fn get_max_mem_slots(&mut self) -> Result<u64> {
            Ok(8)
        }
        fn add_mem_region(
            &mut self,
            _region: &VhostUserSingleMemoryRegion,
            _fd: File,
            _postcopy: Option<bool>,
        ) -> Result<Option<VhostUserMemoryRegionBase>> {
            self.rec("ADD_MEM_REG".into())?;
            Ok(None)
        }
        fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> Result<()> {
            self.rec("REM_MEM_REG".into())
        }
        fn set_device_state_fd(
            &mut self,
            _direction: VhostTransferStateDirection,
            _phase: VhostTransferStatePhase,
            _fd: File,
        ) -> Result<Option<File>> {
            Ok(None)
        }
        fn check_device_state(&mut self) -> Result<()> {
            Ok(())
        }
        fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
            Ok(VhostUserShMemConfig::default())
        }
        fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> Result<()> {
            self.rec("SET_LOG_BASE".into())
        }
    }

    /// Serves `socket` on a thread until the frontend hangs up.
    pub fn serve(socket: std::os::unix::net::UnixStream) -> Arc<Mutex<Recorder>> {
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let mut handler = BackendReqHandler::from_stream(socket, recorder.clone());
        std::thread::spawn(move || while handler.handle_request().is_ok() {});
        recorder
    }

    /// Takes the requests recorded so far.
    pub fn take(recorder: &Arc<Mutex<Recorder>>) -> Vec<String> {
        std::mem::take(&mut recorder.lock().unwrap().log)
    }
}

#[test]
fn vhost_user_frontend_requests_in_spec_order() {
    let (front, back) = UnixStream::pair().unwrap();
    let recorder = recording::serve(back);
    let mut dev = VhostUserDevice::connect("rec", front, VIRTIO_ID_BLOCK, 4).unwrap();
    let wanted = "0x1209"; // MQ | REPLY_ACK | CONFIG | INFLIGHT_SHMFD, not BACKEND_REQ
    assert_eq!(
        recording::take(&recorder),
        vec![
            "SET_OWNER".to_string(),
            format!("SET_PROTOCOL_FEATURES {wanted}"),
            "GET_CONFIG 0 60 0x0".into(),
        ]
    );
    assert_eq!(dev.state().num_queues, 2, "GET_QUEUE_NUM caps the hint");
    assert_eq!(dev.queue_max_sizes(), vec![256, 256]);
    assert_eq!(dev.features(), (1 << 32) | (1 << 6));
    let mut capacity = [0u8; 8];
    dev.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 4096);

    // A guest write to configuration space goes out with flags 0.
    dev.write_config(20, &[1]);
    assert_eq!(
        recording::take(&recorder),
        vec!["SET_CONFIG 20 [1] 0x0".to_string()]
    );
    let mut wce = [0u8; 1];
    dev.read_config(20, &mut wce);
    assert_eq!(wce, [1]);

    let ram = GuestRam::new(16 << 20).unwrap();
    let host = |gpa: u64| ram.memory().get_host_address(GuestAddress(gpa)).unwrap() as u64;
    let queue = |index: u16, base: u64, call: bool| QueueConfig {
        index,
        size: 64,
        desc_table: GuestAddress(base),
        avail_ring: GuestAddress(base + 0x1000),
        used_ring: GuestAddress(base + 0x2000),
        kick: EventFd::new(EFD_NONBLOCK).unwrap(),
        call: call.then(|| EventFd::new(EFD_NONBLOCK).unwrap()),
    };
    let set = |queues| QueueSet {
        memory: ram.memory().clone(),
        acked_features: VIRTIO_F_VERSION_1 | (1 << 26),
        queues,
        config_change: Some(EventFd::new(0).unwrap()),
    };
    let vring = |i: u16, base: u64, call: &str| {
        vec![
            format!("SET_VRING_NUM {i} 64"),
            format!(
                "SET_VRING_ADDR {i} {:#x} {:#x} {:#x}",
                host(base),
                host(base + 0x1000),
                host(base + 0x2000)
            ),
            format!("SET_VRING_BASE {i} 0"),
            format!("SET_VRING_CALL {i} {call}"),
            format!("SET_VRING_KICK {i} fd"),
        ]
    };

    dev.activate(set(vec![queue(0, 0x10000, true), queue(1, 0x20000, false)]))
        .unwrap();
    let log = recording::take(&recorder);
    assert_eq!(
        log[0], "SET_FEATURES 0x140000000",
        "VERSION_1 and bit 30; LOG_ALL dropped"
    );
    assert_eq!(log[1], "SET_MEM_TABLE n=1 fds=1 0x0+0x1000000@0x0");
    assert!(
        log[2].starts_with("GET_INFLIGHT_FD q=2 qs=256 -> ino "),
        "{}",
        log[2]
    );
    let ino = log[2].rsplit(' ').next().unwrap().to_string();
    assert_eq!(
        log[3],
        format!("SET_INFLIGHT_FD 0x1000 q=2 qs=256 ino {ino}"),
        "the same region"
    );
    let mut rest = vring(0, 0x10000, "fd");
    rest.extend(vring(1, 0x20000, "fd"));
    rest.extend([
        "SET_VRING_ENABLE 0 1".to_string(),
        "SET_VRING_ENABLE 1 1".to_string(),
    ]);
    assert_eq!(log[4..], rest[..]);
    assert_eq!(dev.state().vrings.len(), 2);
    assert!(dev.state().inflight.is_some() && dev.state().config_change.is_some());

    dev.reset().unwrap();
    assert_eq!(
        recording::take(&recorder),
        vec![
            "SET_VRING_ENABLE 0 0",
            "GET_VRING_BASE 0",
            "SET_VRING_ENABLE 1 0",
            "GET_VRING_BASE 1"
        ]
    );
    assert_eq!(dev.state().stopped_bases, vec![(0, 7), (1, 7)]);
    assert!(dev.state().inflight.is_none() && dev.state().config_change.is_none());

    // A ring outside guest RAM on queue 1 fails activation after queue 0
    // started: queue 0 is stopped again, and nothing is left running.
    let err = dev
        .activate(set(vec![queue(0, 0x10000, true), queue(1, 16 << 20, true)]))
        .unwrap_err();
    assert!(err.to_string().contains("queue 1"), "{err}");
    let log = recording::take(&recorder);
    assert!(
        log[2].starts_with("GET_INFLIGHT_FD"),
        "a new region after reset: {log:?}"
    );
    assert_eq!(
        log[log.len() - 2..],
        [
            "SET_VRING_ENABLE 0 0".to_string(),
            "GET_VRING_BASE 0".to_string()
        ]
    );
    assert!(dev.state().vrings.is_empty());

    // Queues the device does not have are refused before any request.
    let err = dev
        .activate(set(vec![queue(2, 0x10000, true)]))
        .unwrap_err();
    assert!(err.to_string().contains("queue 2 does not exist"), "{err}");
    assert!(recording::take(&recorder).is_empty());

    // Activated again without a reset (a transport bug): the old rings stop
    // and their inflight region is dropped, so that its entries are never
    // resubmitted on the new rings.
    dev.activate(set(vec![queue(0, 0x10000, true)])).unwrap();
    recording::take(&recorder);
    dev.activate(set(vec![queue(0, 0x30000, true)])).unwrap();
    let log = recording::take(&recorder);
    assert_eq!(
        log[..2],
        [
            "SET_VRING_ENABLE 0 0".to_string(),
            "GET_VRING_BASE 0".to_string()
        ]
    );
    assert!(
        log.iter().any(|l| l.starts_with("GET_INFLIGHT_FD")),
        "a fresh inflight region: {log:?}"
    );
}

/// A backend that never answers fails the negotiation in bounded time
/// instead of hanging the monitor.
#[test]
fn a_silent_backend_times_out_instead_of_hanging() {
    let (ours, _silent) = std::os::unix::net::UnixStream::pair().unwrap();
    let start = std::time::Instant::now();
    let result = vmm_monitor::vhost_user::VhostUserDevice::connect_timeout(
        "silent0",
        ours,
        2,
        1,
        std::time::Duration::from_millis(200),
    );
    assert!(result.is_err(), "negotiated with nobody");
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}
