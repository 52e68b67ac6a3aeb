//! The built dev-net binary, run as the monitor runs it: the vhost-user
//! socket on fd 3 (dev-backend's test frontend at the other end) and the
//! "tap" on fd 4 (a datagram socketpair; the test holds the host's end).

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dev_backend::testing::{TestFrontend, TestOptions};

const WAIT: Duration = Duration::from_secs(10);

fn dup_to(from: RawFd, to: RawFd) -> std::io::Result<()> {
    // SAFETY: dup2 on fds the child owns; runs between fork and exec.
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn process_sends_guest_frame_and_exits_on_hangup() {
    let (fe_sock, dev_sock) = UnixStream::pair().unwrap();
    let (wire, dev_tap) = UnixDatagram::pair().unwrap();
    let (sock_fd, tap_fd) = (dev_sock.as_raw_fd(), dev_tap.as_raw_fd());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dev-net"));
    cmd.args([
        "--socket-fd",
        "3",
        "--tap-fd",
        "4",
        "--mac",
        "fe:e1:bb:d1:23:45",
        "-v",
    ])
    .stdin(Stdio::null());
    // SAFETY: the closure only calls dup2, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            // Move both out of the way first, in case one is already 3 or 4.
            dup_to(sock_fd, 10)?;
            dup_to(tap_fd, 11)?;
            dup_to(10, 3)?;
            dup_to(11, 4)
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop((dev_sock, dev_tap));
    let opts = TestOptions {
        num_queues: 2,
        queue_size: 32,
        ..TestOptions::default()
    };
    let mut fe = TestFrontend::connect(fe_sock, opts).unwrap();
    let mut packet = vec![0u8; 12];
    packet.extend([0xff; 6]);
    packet.extend([0xfe, 0xe1, 0xbb, 0xd1, 0x23, 0x45, 0x08, 0x06]);
    packet.extend([0u8; 28]);
    fe.add_request(1, &packet, 0).unwrap();
    fe.kick(1).unwrap();
    assert_eq!(fe.wait_used(1, 1, WAIT).unwrap().len(), 1);
    wire.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 128];
    let n = wire.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &packet[..]);
    drop(fe);
    let end = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < end, "dev-net did not exit on hang-up");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn process_refuses_a_file_as_tap() {
    let out = Command::new(env!("CARGO_BIN_EXE_dev-net"))
        .args([
            "--socket-fd",
            "3",
            "--tap-fd",
            "0",
            "--mac",
            "fe:e1:bb:d1:23:45",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tap-fd: fd 0 is not a passed fd"), "{err}");
}
