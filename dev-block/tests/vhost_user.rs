//! dev-block's backend driven over a real vhost-user connection by
//! dev-backend's test frontend: no KVM, no other process.

use std::collections::BTreeSet;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use dev_backend::testing::{TestFrontend, TestOptions};
use dev_backend::MetricsPage;
use dev_block::backend::BlockBackend;
use dev_block::device::{BlockDevice, S_IOERR, S_OK};
use dev_block::disk::{DiskError, DiskImage, RawImage};
use dev_block::wire::RequestHeader;
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostBackend;
use vm_memory::ByteValued;

const WAIT: Duration = Duration::from_secs(5);

fn header(kind: u32, sector: u64) -> Vec<u8> {
    RequestHeader {
        kind,
        reserved: 0,
        sector,
    }
    .as_slice()
    .to_vec()
}

/// A backend over a 1 MiB raw image, served on a thread, and a frontend.
fn connect(read_only: bool) -> (TestFrontend, tempfile::NamedTempFile) {
    let image = tempfile::NamedTempFile::new().unwrap();
    image.as_file().set_len(1 << 20).unwrap();
    let file = image.reopen().unwrap();
    let disk: Arc<dyn DiskImage> = Arc::new(RawImage::new(file, read_only).unwrap());
    let backend = BlockBackend::new(
        BlockDevice::new(disk, "vu-test", 1, 16),
        16,
        4,
        MetricsPage::private(),
    )
    .unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    std::thread::spawn(move || dev_backend::serve::serve_connection(theirs, backend));
    let opts = TestOptions {
        num_queues: 1,
        queue_size: 16,
        ..TestOptions::default()
    };
    (TestFrontend::connect(ours, opts).unwrap(), image)
}

/// Submits one request and returns the bytes the device wrote.
fn request(fe: &mut TestFrontend, readable: &[u8], writable: u32) -> Vec<u8> {
    let head = fe.add_request(0, readable, writable).unwrap();
    fe.kick(0).unwrap();
    let used = fe.wait_used(0, 1, WAIT).unwrap();
    assert_eq!(used.len(), 1, "one completion");
    assert_eq!(used[0].id, head);
    fe.response(0, head, used[0].len).unwrap()
}

#[test]
fn write_then_read_through_vhost_user() {
    let (mut fe, image) = connect(false);
    let mut out = header(1, 2);
    out.extend(vec![0xab; 4096]);
    assert_eq!(request(&mut fe, &out, 1), vec![S_OK]);
    let reply = request(&mut fe, &header(0, 2), 4096 + 1);
    assert_eq!(reply.len(), 4097);
    assert!(reply[..4096].iter().all(|b| *b == 0xab));
    assert_eq!(reply[4096], S_OK);
    let on_disk = std::fs::read(image.path()).unwrap();
    assert!(on_disk[1024..1024 + 4096].iter().all(|b| *b == 0xab));
    assert_eq!(on_disk[1024 + 4096], 0);
}

#[test]
fn get_id_and_flush_through_vhost_user() {
    let (mut fe, _image) = connect(false);
    let reply = request(&mut fe, &header(8, 0), 21);
    assert_eq!(&reply[..7], b"vu-test");
    assert_eq!(reply[20], S_OK);
    assert_eq!(request(&mut fe, &header(4, 0), 1), vec![S_OK]);
}

#[test]
fn write_to_read_only_disk_fails_and_the_queue_goes_on() {
    let (mut fe, image) = connect(true);
    let mut out = header(1, 0);
    out.extend(vec![0x11; 512]);
    assert_eq!(request(&mut fe, &out, 1), vec![S_IOERR]);
    assert_eq!(request(&mut fe, &header(0, 0), 513)[512], S_OK);
    assert!(std::fs::read(image.path()).unwrap().iter().all(|b| *b == 0));
}

/// Gate key of a flush (other operations use their byte offset).
const FLUSH: u64 = u64::MAX;

#[derive(Default)]
struct GateState {
    /// Offsets whose operations wait.
    held: BTreeSet<u64>,
    /// Operations inside the disk, waiting or not.
    inside: usize,
    /// Operations done, in order.
    log: Vec<(&'static str, u64)>,
}

/// Holds chosen disk operations until the test releases them.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

impl Gate {
    fn run<T>(&self, op: &'static str, key: u64, f: impl FnOnce() -> T) -> T {
        let mut s = self.state.lock().unwrap();
        s.inside += 1;
        self.changed.notify_all();
        while s.held.contains(&key) {
            s = self.changed.wait(s).unwrap();
        }
        drop(s);
        let out = f();
        let mut s = self.state.lock().unwrap();
        s.inside -= 1;
        s.log.push((op, key));
        self.changed.notify_all();
        out
    }

    fn hold(&self, key: u64) {
        self.state.lock().unwrap().held.insert(key);
    }

    fn release(&self, key: u64) {
        self.state.lock().unwrap().held.remove(&key);
        self.changed.notify_all();
    }

    /// Waits until `n` operations are inside the disk at once.
    fn wait_inside(&self, n: usize) {
        let s = self.state.lock().unwrap();
        let (s, timeout) = self
            .changed
            .wait_timeout_while(s, WAIT, |s| s.inside < n)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "{} of {n} operations arrived",
            s.inside
        );
    }

    fn log(&self) -> Vec<(&'static str, u64)> {
        self.state.lock().unwrap().log.clone()
    }
}

/// A raw image whose operations pass a [`Gate`].
struct GatedDisk {
    inner: RawImage,
    gate: Arc<Gate>,
}

impl DiskImage for GatedDisk {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        self.gate
            .run("read", offset, || self.inner.read_at(buf, offset))
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        self.gate
            .run("write", offset, || self.inner.write_at(buf, offset))
    }
    fn flush(&self) -> Result<(), DiskError> {
        self.gate.run("flush", FLUSH, || self.inner.flush())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), DiskError> {
        self.inner.write_zeroes(offset, len, unmap)
    }
}

/// A backend over a gated 1 MiB raw image whose sector `i` holds bytes
/// `i`, with `io_threads` I/O threads and a queue of `queue_size`.
fn connect_gated(io_threads: usize, queue_size: u16) -> (TestFrontend, Arc<Gate>) {
    let image = tempfile::tempfile().unwrap();
    let bytes: Vec<u8> = (0..1 << 20).map(|i: usize| (i / 512) as u8).collect();
    std::fs::write(
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&image)),
        &bytes,
    )
    .unwrap();
    let gate = Arc::new(Gate::default());
    let disk: Arc<dyn DiskImage> = Arc::new(GatedDisk {
        inner: RawImage::new(image, false).unwrap(),
        gate: Arc::clone(&gate),
    });
    let device = BlockDevice::new(disk, "gated", 1, queue_size);
    let backend =
        BlockBackend::new(device, queue_size, io_threads, MetricsPage::private()).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    std::thread::spawn(move || dev_backend::serve::serve_connection(theirs, backend));
    let opts = TestOptions {
        num_queues: 1,
        queue_size,
        ..TestOptions::default()
    };
    (TestFrontend::connect(ours, opts).unwrap(), gate)
}

/// Adds requests to queue 0 with `add` while the ring is disabled, then
/// enables it and kicks: the queue worker finds them all at once. (A
/// request it found alone on an idle queue it would run itself, and one
/// held by the gate would block it.)
fn all_at_once<T>(fe: &mut TestFrontend, add: impl FnOnce(&mut TestFrontend) -> T) -> T {
    fe.frontend().set_vring_enable(0, false).unwrap();
    let out = add(fe);
    fe.frontend().set_vring_enable(0, true).unwrap();
    fe.kick(0).unwrap();
    out
}

#[test]
fn many_reads_in_flight_complete_out_of_order() {
    const N: u64 = 24;
    let (mut fe, gate) = connect_gated(32, 64);
    let heads: Vec<u16> = all_at_once(&mut fe, |fe| {
        (0..N)
            .map(|sector| {
                gate.hold(sector * 512);
                fe.add_request(0, &header(0, sector), 512 + 1).unwrap()
            })
            .collect()
    });
    // All N reads are in the disk at the same time.
    gate.wait_inside(N as usize);
    assert!(fe.take_used(0).unwrap().is_empty());
    // Released last first, they complete in that order.
    for sector in (0..N).rev() {
        gate.release(sector * 512);
        let used = fe.wait_used(0, 1, WAIT).unwrap();
        assert_eq!(used.len(), 1, "sector {sector}");
        assert_eq!(used[0].id, heads[sector as usize]);
        let reply = fe.response(0, used[0].id, used[0].len).unwrap();
        assert_eq!(reply.len(), 513);
        assert!(reply[..512].iter().all(|b| *b == sector as u8));
        assert_eq!(reply[512], S_OK);
    }
}

#[test]
fn flush_waits_for_earlier_requests_only() {
    let (mut fe, gate) = connect_gated(4, 16);
    // Reads of the gated disk always go to the pool (no try_read_at);
    // writes run on the queue worker.
    gate.hold(8 * 512);
    let (slow, write, flush, read) = all_at_once(&mut fe, |fe| {
        let slow = fe.add_request(0, &header(0, 8), 513).unwrap();
        let mut out = header(1, 9);
        out.extend(vec![0x5a; 512]);
        let write = fe.add_request(0, &out, 1).unwrap();
        let flush = fe.add_request(0, &header(4, 0), 1).unwrap();
        let read = fe.add_request(0, &header(0, 3), 513).unwrap();
        (slow, write, flush, read)
    });
    // The write and the read popped after the flush do not wait for it.
    let mut ids: Vec<u16> = Vec::new();
    let end = Instant::now() + WAIT;
    while ids.len() < 2 && Instant::now() < end {
        ids.extend(fe.wait_used(0, 1, WAIT).unwrap().iter().map(|u| u.id));
    }
    assert_eq!(ids, vec![write, read]);
    std::thread::sleep(Duration::from_millis(100));
    assert!(fe.take_used(0).unwrap().is_empty());
    assert_eq!(
        gate.log(),
        vec![("write", 9 * 512), ("read", 3 * 512)],
        "no flush yet"
    );
    gate.release(8 * 512);
    let used = fe.wait_used(0, 2, WAIT).unwrap();
    assert_eq!(
        used.iter().map(|u| u.id).collect::<Vec<_>>(),
        vec![slow, flush]
    );
    assert_eq!(fe.response(0, flush, used[1].len).unwrap(), vec![S_OK]);
    assert_eq!(
        gate.log(),
        vec![
            ("write", 9 * 512),
            ("read", 3 * 512),
            ("read", 8 * 512),
            ("flush", FLUSH)
        ]
    );
}

#[test]
fn stopping_the_ring_waits_for_requests_in_flight() {
    let (mut fe, gate) = connect_gated(4, 16);
    gate.hold(0);
    all_at_once(&mut fe, |fe| {
        fe.add_request(0, &header(0, 0), 513).unwrap();
        fe.add_request(0, &header(0, 1), 513).unwrap();
    });
    let used = fe.wait_used(0, 1, WAIT).unwrap();
    assert_eq!(used.len(), 1, "the read of sector 1 completes");
    gate.wait_inside(1);
    let release = {
        let gate = Arc::clone(&gate);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            gate.release(0);
        })
    };
    let start = Instant::now();
    assert_eq!(fe.frontend().get_vring_base(0).unwrap(), 2);
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "GET_VRING_BASE waited"
    );
    assert_eq!(gate.log(), vec![("read", 512), ("read", 0)]);
    // Finished after the ring stopped: not in the used ring (it stays in
    // the inflight region).
    assert!(fe.take_used(0).unwrap().is_empty());
    release.join().unwrap();
}

/// CPU clock ticks used so far by this process's threads named `name`.
fn thread_ticks(name: &str) -> u64 {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the ")" closing the name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 12 {
            ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        }
    }
    ticks
}

#[test]
fn completion_on_a_disabled_ring_waits_for_enable_without_spinning() {
    let (mut fe, gate) = connect_gated(4, 16);
    gate.hold(0);
    let (a, b) = all_at_once(&mut fe, |fe| {
        let a = fe.add_request(0, &header(0, 0), 513).unwrap();
        let b = fe.add_request(0, &header(0, 1), 513).unwrap();
        (a, b)
    });
    assert_eq!(fe.wait_used(0, 1, WAIT).unwrap()[0].id, b);
    fe.frontend().set_vring_enable(0, false).unwrap();
    // A request with a reply: the backend has handled the one before.
    fe.frontend().get_features().unwrap();
    let before = thread_ticks("blk-q0");
    gate.release(0);
    std::thread::sleep(Duration::from_millis(300));
    let spent = thread_ticks("blk-q0") - before;
    assert!(spent < 10, "the queue worker spun: {spent} ticks");
    assert!(fe.take_used(0).unwrap().is_empty());
    fe.frontend().set_vring_enable(0, true).unwrap();
    let used = fe.wait_used(0, 1, WAIT).unwrap();
    assert_eq!(used.iter().map(|u| u.id).collect::<Vec<_>>(), vec![a]);
    assert_eq!(fe.response(0, a, used[0].len).unwrap()[512], S_OK);
}
