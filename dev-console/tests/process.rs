//! The built dev-console binary, run as the monitor runs it: a vhost-user
//! socket on fd 3 (dev-backend's test frontend at the other end), a real
//! pty on fds 4 and 5, a SOCK_SEQPACKET side channel on fd 6.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dev_backend::testing::{TestFrontend, TestOptions};
use ipc::console::{Packet, Port, MAX_BYTES};

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);
const RX: u16 = 0;
const TX: u16 = 1;

/// Fds are made and handed to a child under this lock, so that no other
/// test's child inherits them (openpty's fds are not close-on-exec at
/// first), which would keep a closed channel open.
static SPAWN: Mutex<()> = Mutex::new(());

/// A running dev-console and the monitor's ends of its fds.
struct Console {
    child: Child,
    /// The client's end of the pty, raw mode.
    slave: File,
    /// The monitor's end of the side channel (blocking).
    side: Option<OwnedFd>,
    /// The vhost-user frontend.
    fe: Option<TestFrontend>,
}

fn cvt(ret: libc::c_int, what: &str) -> libc::c_int {
    assert!(ret >= 0, "{what}: {}", std::io::Error::last_os_error());
    ret
}

fn cloexec(fd: RawFd) {
    // SAFETY: F_SETFD on an fd this test owns.
    cvt(
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) },
        "F_SETFD",
    );
}

fn raw_pty() -> (File, File) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: two valid out-pointers; the other arguments may be null.
    cvt(
        unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        },
        "openpty",
    );
    cloexec(master);
    cloexec(slave);
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `slave` is a terminal; `tio` is valid for writes.
    cvt(unsafe { libc::tcgetattr(slave, &mut tio) }, "tcgetattr");
    // SAFETY: edits `tio` only.
    unsafe { libc::cfmakeraw(&mut tio) };
    // SAFETY: `slave` is a terminal; `tio` is a valid termios.
    cvt(
        unsafe { libc::tcsetattr(slave, libc::TCSANOW, &tio) },
        "tcsetattr",
    );
    // SAFETY: openpty made both fds; nothing else owns them.
    unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) }
}

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [-1; 2];
    // SAFETY: `fds` has room for the two fds socketpair writes.
    cvt(
        unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        },
        "socketpair",
    );
    // SAFETY: socketpair made both fds; nothing else owns them.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// In the child: `sources[i]` at fd 3 + i, inheritable.
fn place_fds(sources: &[RawFd]) -> std::io::Result<()> {
    let mut high = Vec::with_capacity(sources.len());
    for &fd in sources {
        // SAFETY: dup above every target, so no dup2 below overwrites a
        // source still needed.
        let h = unsafe { libc::fcntl(fd, libc::F_DUPFD, 100) };
        if h < 0 {
            return Err(std::io::Error::last_os_error());
        }
        high.push(h);
    }
    for (i, &h) in high.iter().enumerate() {
        // SAFETY: dup2 on fds this child owns; the result is not
        // close-on-exec.
        if unsafe { libc::dup2(h, 3 + i as RawFd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn spawn(args: &[&str]) -> Console {
    let guard = SPAWN.lock().unwrap_or_else(|p| p.into_inner());
    let (master, slave) = raw_pty();
    let child_slave = slave.try_clone().unwrap();
    let (vu_ours, vu_theirs) = UnixStream::pair().unwrap();
    let (side_ours, side_theirs) = seqpacket_pair();
    let sources = [
        vu_theirs.as_raw_fd(),
        master.as_raw_fd(),
        child_slave.as_raw_fd(),
        side_theirs.as_raw_fd(),
    ];
    let mut command = Command::new(env!("CARGO_BIN_EXE_dev-console"));
    command
        .args([
            "--socket-fd",
            "3",
            "--pty-fd",
            "4",
            "--pty-slave-fd",
            "5",
            "--com-fd",
            "6",
        ])
        .args(args)
        .stdin(Stdio::null());
    // DEV_CONSOLE_TEST_LOG=1 shows the process's log (info level).
    if std::env::var_os("DEV_CONSOLE_TEST_LOG").is_some() {
        command.arg("-vv");
    } else {
        command.stderr(Stdio::null());
    }
    // SAFETY: the closure only calls async-signal-safe fcntl and dup2 on
    // fds the parent keeps open until spawn returns.
    unsafe {
        command.pre_exec(move || place_fds(&sources));
    }
    let child = command.spawn().unwrap();
    drop((master, child_slave, vu_theirs, side_theirs));
    drop(guard);
    let opts = TestOptions {
        num_queues: 2,
        queue_size: 16,
        ..TestOptions::default()
    };
    let fe = TestFrontend::connect(vu_ours, opts).unwrap();
    Console {
        child,
        slave,
        side: Some(side_ours),
        fe: Some(fe),
    }
}

impl Console {
    fn side(&self) -> RawFd {
        self.side.as_ref().unwrap().as_raw_fd()
    }

    fn fe(&mut self) -> &mut TestFrontend {
        self.fe.as_mut().unwrap()
    }

    fn send_raw(&self, wire: &[u8]) {
        // SAFETY: `wire` is valid for reads of its length.
        let n = unsafe { libc::send(self.side(), wire.as_ptr().cast(), wire.len(), 0) };
        assert_eq!(
            n,
            wire.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    fn send(&self, packet: Packet) {
        self.send_raw(&packet.encode());
    }

    fn com_output(&self, bytes: &[u8]) {
        for p in Packet::chunks(bytes, Packet::ComOutput) {
            self.send(p);
        }
    }

    /// Waits for the next packet from dev-console.
    fn recv(&self) -> Option<Packet> {
        if !readable(self.side(), WAIT) {
            return None;
        }
        let mut buf = [0u8; 1 + MAX_BYTES];
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(self.side(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(n > 0, "recv: {}", std::io::Error::last_os_error());
        Some(Packet::decode(&buf[..n as usize]).unwrap())
    }

    /// ComInput packets until `want` bytes came (InputTo packets, which
    /// tell the monitor where input goes, are skipped).
    fn com_input(&self, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < want {
            match self.recv() {
                Some(Packet::ComInput(bytes)) => got.extend(bytes),
                Some(Packet::InputTo(_)) => {}
                other => panic!("expected ComInput, got {other:?} after {got:?}"),
            }
        }
        got
    }

    /// Reads the pty until what came ends with `tail`.
    fn read_until(&mut self, tail: &[u8]) -> Vec<u8> {
        let end = Instant::now() + WAIT;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(tail) {
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                readable(self.slave.as_raw_fd(), left),
                "timed out waiting for {:?}; got {} bytes ending {:?}",
                String::from_utf8_lossy(tail),
                got.len(),
                String::from_utf8_lossy(&got[got.len().saturating_sub(64)..])
            );
            let n = self.slave.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    fn assert_quiet(&self) {
        assert!(
            !readable(self.slave.as_raw_fd(), QUIET),
            "the pty got output"
        );
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.slave.write_all(keys).unwrap();
    }

    /// Waits for the process to end; its exit status.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let end = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < end, "dev-console did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Resident memory of the process, from /proc/PID/status.
    fn rss_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field} in /proc status"));
        line[field.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap()
    }

    /// Guest writes on hvc0: `data` in requests of at most 4 KiB, at most
    /// 8 outstanding (the test frontend's 16 descriptors, two per request).
    fn guest_output(&mut self, data: &[u8]) {
        for batch in data.chunks(8 * 4096) {
            let mut n = 0;
            for chunk in batch.chunks(4096) {
                self.fe().add_request(TX, chunk, 0).unwrap();
                n += 1;
            }
            self.fe().kick(TX).unwrap();
            let used = self.fe().wait_used(TX, n, WAIT).unwrap();
            assert_eq!(used.len(), n, "the guest's output was not consumed");
            assert!(used.iter().all(|u| u.len == 0));
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn readable(fd: RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0
}

#[test]
fn process_com1_output_is_replayed_on_attach_and_input_goes_to_com1() {
    let mut c = spawn(&[]);
    c.com_output(b"boot: early\n");
    c.assert_quiet();
    c.send(Packet::Attach);
    assert_eq!(c.read_until(b"early\n"), b"boot: early\n");
    c.type_keys(b"ls\n");
    assert_eq!(c.com_input(3), b"ls\n");

    c.send(Packet::Detach);
    c.com_output(b"while away\n");
    c.assert_quiet();
    c.send(Packet::Attach);
    assert_eq!(c.read_until(b"away\n"), b"boot: early\nwhile away\n");

    // Malformed packets are dropped; the console goes on.
    c.send_raw(&[0x09]);
    c.send_raw(&[0x04, b'x']);
    c.send_raw(&[0x02, 0]);
    c.com_output(b"still here\n");
    assert_eq!(c.read_until(b"here\n"), b"still here\n");

    // The monitor closes the side channel: a clean exit.
    c.side = None;
    assert!(c.wait_exit().success());
}

#[test]
fn process_virtio_and_com1_merge_and_input_follows_the_last_writer() {
    let mut c = spawn(&[]);
    c.send(Packet::Attach);
    c.guest_output(b"hvc: hello\n");
    assert_eq!(c.read_until(b"hello\n"), b"hvc: hello\n");
    // The monitor was told, before that output showed, where input goes.
    assert_eq!(c.recv(), Some(Packet::InputTo(Port::Virtio)));

    // Input goes to hvc0 now: held until the guest posts a buffer.
    c.type_keys(b"v");
    std::thread::sleep(QUIET);
    let head = c.fe().add_request(RX, b"", 64).unwrap();
    c.fe().kick(RX).unwrap();
    let used = c.fe().wait_used(RX, 1, WAIT).unwrap();
    assert_eq!((used.len(), used[0].id, used[0].len), (1, head, 1));
    assert_eq!(c.fe().response(RX, head, 1).unwrap(), b"v");
    // With a buffer posted, input is delivered as it comes.
    let head = c.fe().add_request(RX, b"", 64).unwrap();
    c.fe().kick(RX).unwrap();
    c.type_keys(b"w");
    let used = c.fe().wait_used(RX, 1, WAIT).unwrap();
    assert_eq!(c.fe().response(RX, used[0].id, used[0].len).unwrap(), b"w");
    assert_eq!(used[0].id, head);

    // COM1 writes: input goes to COM1, and the monitor is told first.
    c.com_output(b"com: login\n");
    assert_eq!(c.read_until(b"login\n"), b"com: login\n");
    assert_eq!(c.recv(), Some(Packet::InputTo(Port::Com1)));
    c.type_keys(b"c");
    assert_eq!(c.com_input(1), b"c");

    // Replay on a new attach has both, in arrival order.
    c.send(Packet::Attach);
    assert_eq!(c.read_until(b"login\n"), b"hvc: hello\ncom: login\n");

    // The monitor closes the vhost-user connection: a clean exit.
    c.fe = None;
    assert!(c.wait_exit().success());
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| b'a' + ((i / 7 + usize::from(seed)) % 26) as u8)
        .collect()
}

#[test]
fn process_output_flood_stays_bounded_and_keeps_serving() {
    const FLOOD: usize = 1 << 20;
    let mut c = spawn(&[]);
    // The client attaches and then reads nothing while the guest floods.
    c.send(Packet::Attach);
    // Warm up: fill the ring and touch every buffer slot of guest memory
    // the test frontend uses, so that what is measured is growth.
    c.guest_output(&pattern(512 * 1024, 0));
    c.com_output(&pattern(128 * 1024, 1));
    c.guest_output(b"sync\n");
    let rss0 = c.rss_kib("VmRSS:");
    let anon0 = c.rss_kib("RssAnon:");

    c.com_output(&pattern(FLOOD, 2));
    let virtio = pattern(FLOOD, 3);
    c.guest_output(&virtio);
    let rss1 = c.rss_kib("VmRSS:");
    let anon1 = c.rss_kib("RssAnon:");
    eprintln!("VmRSS {rss0} -> {rss1} KiB, RssAnon {anon0} -> {anon1} KiB after 2 MiB of output");
    // 2 MiB went through; an unbounded buffer would grow by that much.
    assert!(rss1 < rss0 + 512, "VmRSS grew from {rss0} to {rss1} KiB");

    // Still serving: the client reads now and gets the newest output;
    // what it missed was skipped, not queued.
    c.com_output(b"\nalive\n");
    let got = c.read_until(b"\nalive\n");
    eprintln!("the client read {} bytes after the flood", got.len());
    let before = &got[..got.len() - 7];
    assert!(before.ends_with(&virtio[virtio.len() - 4096..]));
    assert!(
        got.len() < 1024 * 1024,
        "the client got {} bytes, more than a pty and a ring hold",
        got.len()
    );
    c.type_keys(b"q");
    assert_eq!(c.com_input(1), b"q");
    c.side = None;
    assert!(c.wait_exit().success());
}
