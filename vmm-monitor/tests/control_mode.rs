//! Control mode end to end: the test plays vmd. It starts `vmm-monitor
//! --control-fd 3` with one end of a socketpair at fd 3, sends Launch (with
//! /dev/kvm, the test guest as kernel, a console pty and a listening
//! socket), Disk messages and Run, and then drives the VM: pause, unpause,
//! re-adoption through the listening socket, log level, stop, reboot,
//! console input.
//!
//! Needs /dev/kvm and the test guest (`cd tests/guest && cargo build
//! --release`, or `VMD_TEST_GUEST=path`); the disk tests also need the
//! dev-block binary next to vmm-monitor (`cargo build -p dev-block`), and
//! every test the dev-console binary (`cargo build -p dev-console`).
//! Without them a test prints a loud SKIPPED line and passes.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipc::monitor::{
    DiskAttach, DiskFormat, FromMonitor, Launch, LogLevel, ToMonitor, VmRecord, CONTROL_FD,
};
use ipc::Channel;

mod common;
use common::driver::scratch_image;

/// Longest wait for anything the guest does (CPL0 code is emulated on
/// the development hosts, and tests run in parallel).
const GUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for an answer from the monitor.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

const MONITOR: &str = env!("CARGO_BIN_EXE_vmm-monitor");

fn loud(message: &str) {
    let _ = std::io::stderr().write_all(format!("{message}\n").as_bytes());
}

/// The test guest, or None (after a loud SKIPPED line) without it or KVM.
fn guest_or_skip(test: &str) -> Option<PathBuf> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        loud(&format!("SKIPPED {test}: /dev/kvm cannot be opened ({e})"));
        return None;
    }
    let guest = std::env::var_os("VMD_TEST_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/guest/target/release/vmd-test-guest")
        });
    let dev_console = Path::new(MONITOR).with_file_name("dev-console");
    if !dev_console.is_file() {
        loud(&format!(
            "SKIPPED {test}: no dev-console at {} (cargo build -p dev-console)",
            dev_console.display()
        ));
        return None;
    }
    if !guest.is_file() {
        loud(&format!(
            "SKIPPED {test}: no test guest at {} (cd tests/guest && cargo build --release)",
            guest.display()
        ));
        return None;
    }
    Some(guest)
}

fn dev_block_or_skip(test: &str) -> bool {
    let path = Path::new(MONITOR).with_file_name("dev-block");
    if !path.is_file() {
        loud(&format!(
            "SKIPPED {test}: no dev-block at {} (cargo build -p dev-block)",
            path.display()
        ));
    }
    path.is_file()
}

fn record(name: &str, kernel: &Path) -> VmRecord {
    VmRecord {
        id: 7,
        name: name.into(),
        memory: 64 << 20,
        cpus: 2,
        kernel: kernel.to_owned(),
        disks: Vec::new(),
        owner_uid: None,
        owner_gid: None,
        owner: "root".into(),
        tty: Some("/dev/pts/x".into()),
        instance_of: None,
        configured: true,
    }
}

/// Text collected by a reader thread.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<String>>);

impl Collected {
    fn spawn(mut source: impl Read + Send + 'static) -> Self {
        let text = Self::default();
        let sink = text.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = source.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.0
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        text
    }

    fn get(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    fn wait_for(&self, what: &str, log: &Collected) -> String {
        let deadline = Instant::now() + GUEST_TIMEOUT;
        loop {
            let text = self.get();
            if text.contains(what) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "no {what:?} within {GUEST_TIMEOUT:?}\n--- console ---\n{text}\n--- log ---\n{}",
                log.get()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn count(&self, what: &str) -> usize {
        self.get().matches(what).count()
    }
}

/// A pty: (master, slave).
fn openpty() -> (File, File) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two fds; the name, termios and winsize
    // pointers may be null.
    let ret = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(ret, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fds owned by nobody else.
    unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) }
}

/// The test's side of one monitor: vmd's connection, the console, the log.
struct FakeVmd {
    chan: Channel,
    child: Child,
    socket: PathBuf,
    console: Collected,
    /// Our own copy of the pty slave (to type on).
    slave: File,
    log: Collected,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl FakeVmd {
    /// Starts a monitor and sends it Launch (with a console), `disks` and
    /// Run; returns before reading the answer.
    fn launch(test: &str, kernel: &Path, cmdline: &str, disks: &[(DiskAttach, Vec<File>)]) -> Self {
        let dir = std::env::temp_dir().join(format!("vmm-control-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("vm.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (master, slave) = openpty();
        let kvm = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .unwrap();
        let kernel_file = File::open(kernel).unwrap();

        let source = theirs.as_raw_fd();
        let mut command = Command::new(MONITOR);
        command
            .args(["--control-fd", &CONTROL_FD.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the child before exec and only calls
        // dup2/fcntl on an fd the parent keeps open until spawn returns.
        unsafe {
            command.pre_exec(move || {
                if source == CONTROL_FD {
                    libc::fcntl(source, libc::F_SETFD, 0);
                } else if libc::dup2(source, CONTROL_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().expect("start vmm-monitor");
        drop(theirs);
        let log = Collected::spawn(child.stderr.take().unwrap());
        let console = Collected::spawn(slave.try_clone().unwrap());

        let mut chan = Channel::new(ours);
        chan.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
        let launch = Launch {
            record: record(test, kernel),
            cmdline: cmdline.into(),
            initrd: false,
            console: true,
            log_level: LogLevel::Info,
            sandbox_user: None,
            sandbox_off: false,
            device_restarts: None,
        };
        let fds = [
            kvm.as_fd(),
            kernel_file.as_fd(),
            master.as_fd(),
            slave.as_fd(),
            listener.as_fd(),
        ];
        chan.send(&ToMonitor::Launch(launch), &fds).unwrap();
        for (attach, files) in disks {
            let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
            chan.send(&ToMonitor::Disk(attach.clone()), &fds).unwrap();
        }
        chan.send(&ToMonitor::Run, &[]).unwrap();
        Self {
            chan,
            child,
            socket,
            console,
            slave,
            log,
            _dir: TempDir(dir),
        }
    }

    fn recv(&mut self) -> FromMonitor {
        match self.chan.recv::<FromMonitor>() {
            Ok((msg, _)) => msg,
            Err(e) => panic!(
                "no message from the monitor: {}\n--- console ---\n{}\n--- log ---\n{}",
                ipc::error_chain(&e),
                self.console.get(),
                self.log.get()
            ),
        }
    }

    /// Sends `request` and returns the answer.
    fn request(&mut self, request: ToMonitor) -> FromMonitor {
        self.chan.send(&request, &[]).unwrap();
        self.recv()
    }

    /// Expects Started, then attaches to the console as vmd does for
    /// `vmctl console`, so that dev-console writes to the pty the test
    /// reads (replaying what came before).
    fn expect_started(&mut self) {
        match self.recv() {
            FromMonitor::Started { pid } => assert_eq!(pid, self.child.id()),
            other => panic!("expected Started, got {other:?}\n{}", self.log.get()),
        }
        assert_eq!(self.request(ToMonitor::ConsoleAttach), FromMonitor::Done);
    }

    /// A new connection through the listening socket, after Hello.
    fn reconnect(&mut self) -> FromMonitor {
        let stream = UnixStream::connect(&self.socket).unwrap();
        self.chan = Channel::new(stream);
        self.chan.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
        self.request(ToMonitor::Hello)
    }

    /// Waits for the monitor to exit; its code.
    fn wait(&mut self) -> i32 {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "monitor did not exit\n{}",
                self.log.get()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FakeVmd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The highest `n=` the ticker printed.
fn last_tick(console: &str) -> Option<u64> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("VMDT ticker n="))
        .filter_map(|n| n.parse().ok())
        .max()
}

#[test]
fn pause_stops_the_guest_and_survives_losing_vmd_until_unpause_and_stop() {
    let test = "pause";
    let Some(guest) = guest_or_skip(test) else {
        return;
    };
    let mut vmd = FakeVmd::launch(test, &guest, "test=ticker ms=20", &[]);
    vmd.expect_started();
    vmd.console.wait_for("VMDT ticker n=3\n", &vmd.log);

    assert_eq!(vmd.request(ToMonitor::Pause), FromMonitor::Done);
    // Whatever was written before the pause took effect arrives soon.
    std::thread::sleep(Duration::from_millis(300));
    let frozen = vmd.console.get();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(vmd.console.get(), frozen, "the guest printed while paused");

    // vmd goes away; the monitor keeps the VM (paused) for the next one.
    drop(std::mem::replace(&mut vmd.chan, Channel::pair().unwrap().0));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        vmd.child.try_wait().unwrap().is_none(),
        "monitor died with vmd"
    );
    let record = record(test, &guest);
    let pid = vmd.child.id();
    assert_eq!(
        vmd.reconnect(),
        FromMonitor::Identity {
            record: record.clone(),
            pid,
            paused: true
        }
    );
    assert_eq!(vmd.console.get(), frozen, "the guest printed while paused");

    assert_eq!(vmd.request(ToMonitor::Unpause), FromMonitor::Done);
    let before = last_tick(&frozen).unwrap();
    let want = format!("VMDT ticker n={}\n", before + 5);
    vmd.console.wait_for(&want, &vmd.log);

    // A second vmd replaces the first; garbage on a third changes nothing.
    assert_eq!(
        vmd.reconnect(),
        FromMonitor::Identity {
            record,
            pid,
            paused: false
        }
    );
    let mut junk = UnixStream::connect(&vmd.socket).unwrap();
    junk.write_all(&[0xff; 64]).unwrap();
    junk.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    let mut buf = [0u8; 16];
    // Closed: EOF, or a reset as the monitor left the rest unread.
    match junk.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("a bad frame must close its connection: {other:?}"),
    }
    assert_eq!(
        vmd.request(ToMonitor::SetLogLevel(LogLevel::Debug)),
        FromMonitor::Done
    );

    // Stopping a paused VM releases its parked vCPUs.
    assert_eq!(vmd.request(ToMonitor::Pause), FromMonitor::Done);
    assert_eq!(vmd.request(ToMonitor::Stop), FromMonitor::Done);
    assert_eq!(
        vmd.recv(),
        FromMonitor::Exited {
            reason: "stopped by vmd".into(),
            code: 6
        }
    );
    assert_eq!(vmd.wait(), 6);
    let log = vmd.log.get();
    assert!(log.contains("closed; the VM runs on without vmd"), "{log}");
    assert!(log.contains("VM paused by vmd"), "{log}");
}

fn raw_attach(path: &Path, file: File) -> (DiskAttach, Vec<File>) {
    let attach = DiskAttach {
        path: path.to_owned(),
        format: DiskFormat::Raw,
        readonly: false,
        backing: 0,
    };
    (attach, vec![file])
}

#[test]
fn guest_reset_rebuilds_the_vm_in_place_with_its_disk_and_console() {
    let test = "reboot";
    let Some(guest) = guest_or_skip(test) else {
        return;
    };
    if !dev_block_or_skip(test) {
        return;
    }
    let (dir, path, file) = scratch_image(&format!("control-{test}"), 8 << 20);
    let disks = [raw_attach(&path, file)];
    let mut vmd = FakeVmd::launch(test, &guest, "test=reboot", &disks);
    drop(disks);
    std::fs::remove_dir_all(&dir).unwrap();
    vmd.expect_started();
    // The guest resets forever: each reset is a rebuild.
    for _ in 0..2 {
        assert_eq!(vmd.recv(), FromMonitor::Rebooted);
    }
    vmd.console.wait_for("VMDT reboot method=acpi\n", &vmd.log);
    assert!(
        vmd.console.count("VMDT BEGIN reboot\n") >= 2,
        "{}",
        vmd.console.get()
    );
    // The log line of each boot's dev-block precedes its Rebooted; the
    // reader thread may lag behind a little.
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    while vmd.log.count("served by dev-block") < 3 {
        assert!(
            Instant::now() < deadline,
            "dev-block is not restarted per boot:\n{}",
            vmd.log.get()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(vmd.request(ToMonitor::Stop), FromMonitor::Done);
    // Rebooted events may still be queued before the end.
    let exited = loop {
        match vmd.recv() {
            FromMonitor::Rebooted => continue,
            other => break other,
        }
    };
    assert_eq!(
        exited,
        FromMonitor::Exited {
            reason: "stopped by vmd".into(),
            code: 6
        }
    );
    assert_eq!(vmd.wait(), 6);
}

#[test]
fn disks_come_as_fds_and_a_guest_poweroff_is_reported() {
    let test = "blk";
    let Some(guest) = guest_or_skip(test) else {
        return;
    };
    if !dev_block_or_skip(test) {
        return;
    }
    let (dir, path, file) = scratch_image(&format!("control-{test}"), 4 << 20);
    let disks = [raw_attach(&path, file)];
    let mut vmd = FakeVmd::launch(test, &guest, "test=blk-rw", &disks);
    drop(disks);
    // vmd opened the image; the monitor and dev-block open nothing by path.
    std::fs::remove_dir_all(&dir).unwrap();
    vmd.expect_started();
    let exited = vmd.recv();
    let console = vmd.console.wait_for("VMDT PASS blk-rw\n", &vmd.log);
    assert_eq!(
        exited,
        FromMonitor::Exited {
            reason: "guest powered off".into(),
            code: 0
        },
        "{console}"
    );
    assert_eq!(vmd.wait(), 0);
}

#[test]
fn typing_on_the_console_pty_reaches_the_guest() {
    let test = "echo";
    let Some(guest) = guest_or_skip(test) else {
        return;
    };
    let mut vmd = FakeVmd::launch(test, &guest, "test=echo", &[]);
    vmd.expect_started();
    vmd.console.wait_for("VMDT echo ready=1\n", &vmd.log);
    vmd.slave.write_all(b"hi there\n").unwrap();
    vmd.console.wait_for("VMDT PASS echo\n", &vmd.log);
    assert!(
        vmd.console
            .get()
            .contains("VMDT echo line=hi_there len=8\n"),
        "{}",
        vmd.console.get()
    );
    assert_eq!(
        vmd.recv(),
        FromMonitor::Exited {
            reason: "guest powered off".into(),
            code: 0
        }
    );
    assert_eq!(vmd.wait(), 0);
}

#[test]
fn a_launch_with_missing_fds_is_answered_failed_and_the_monitor_exits_1() {
    // Needs neither KVM nor the guest: the fds are counted first.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let source = theirs.as_raw_fd();
    let mut command = Command::new(MONITOR);
    command
        .args(["--control-fd", "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: dup2 in the child before exec, on an fd the parent keeps open.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(source, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    drop(theirs);
    let mut chan = Channel::new(ours);
    chan.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    let launch = Launch {
        record: record("bad", Path::new("/k")),
        cmdline: String::new(),
        initrd: true,
        console: false,
        log_level: LogLevel::Info,
        sandbox_user: None,
        sandbox_off: false,
        device_restarts: None,
    };
    let null = File::open("/dev/null").unwrap();
    chan.send(&ToMonitor::Launch(launch), &[null.as_fd()])
        .unwrap();
    let (answer, _) = chan.recv::<FromMonitor>().unwrap();
    assert_eq!(
        answer,
        FromMonitor::Failed("Launch came with 1 fd(s), 4 expected".into())
    );
    assert_eq!(child.wait().unwrap().code(), Some(1));
}
