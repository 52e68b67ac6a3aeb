//! Channel tests over socketpairs: round trips, fd passing, every rejected
//! frame (and that its fds are closed), credentials, EOF, timeouts, and
//! random bytes on the wire.
//!
//! Tests that count /proc/self/fd hold `FD_LOCK`, and so does every test
//! here that opens fds, so the counts are not disturbed by a test running
//! beside them.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fds::{is_cloexec, write_rights};
use crate::frame::{encode_payload, Header, HEADER_LEN, MAGIC};
use crate::{Channel, FrameError, IpcError, MAX_FDS, MAX_PAYLOAD, PROTOCOL_VERSION};

static FD_LOCK: Mutex<()> = Mutex::new(());

fn fd_lock() -> MutexGuard<'static, ()> {
    FD_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Disk {
    Raw { path: String, readonly: bool },
    Qcow2(String, Option<String>),
    None,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Request {
    Start {
        name: String,
        memory: u64,
        disks: Vec<Disk>,
        cpus: u8,
    },
    Stop(u32),
    Status,
}

fn sample() -> Request {
    Request::Start {
        name: "web".into(),
        memory: 1 << 30,
        disks: vec![
            Disk::Raw {
                path: "/var/vm/web.img".into(),
                readonly: false,
            },
            Disk::Qcow2("/var/vm/db.qcow2".into(), Some("base.qcow2".into())),
            Disk::None,
        ],
        cpus: 2,
    }
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded: both fds are new and ours alone.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// True when every write end of the pipe is closed (a read sees EOF).
fn writers_closed(read_end: &OwnedFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: reads at most one byte into a live local; the fd is open.
    let n = unsafe { libc::read(read_end.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
    n == 0
}

fn header(magic: u32, version: u16, flags: u16, len: u32, nfds: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(&magic.to_le_bytes());
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&nfds.to_le_bytes());
    h
}

/// Sends `bytes` with `fds` in one sendmsg (any number of fds: the
/// control buffer is sized for them), then the rest with write.
fn send_raw(stream: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    // u64 words: aligned for cmsghdr.
    let mut control = vec![0u64; 4 + fds.len()];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut _,
        iov_len: bytes.len(),
    };
    // SAFETY: all-zero is a valid empty msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len() * 8;
        write_rights(&mut msg, fds).expect("control buffer fits");
    }
    // SAFETY: msg points at live buffers that outlive the call.
    let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    assert!(
        n > 0 || bytes.is_empty(),
        "sendmsg: {}",
        std::io::Error::last_os_error()
    );
    let n = n.max(0) as usize;
    (&*stream).write_all(&bytes[n..]).expect("write rest");
}

#[test]
fn roundtrip_nested_message_arrives_equal() {
    let _g = fd_lock();
    let (mut a, mut b) = Channel::pair().unwrap();
    a.send(&sample(), &[]).unwrap();
    a.send(&Request::Stop(7), &[]).unwrap();
    a.send(&Request::Status, &[]).unwrap();
    let (m1, f1) = b.recv::<Request>().unwrap();
    assert_eq!(m1, sample());
    assert!(f1.is_empty());
    assert_eq!(b.recv::<Request>().unwrap().0, Request::Stop(7));
    assert_eq!(b.recv::<Request>().unwrap().0, Request::Status);
}

#[test]
fn roundtrip_large_payload_survives_short_reads_and_writes() {
    let _g = fd_lock();
    let (mut a, mut b) = Channel::pair().unwrap();
    let (r, w) = pipe();
    // Larger than the socket buffer: sendmsg and recvmsg each move it in parts.
    let big: Vec<u8> = (0..MAX_PAYLOAD - 16).map(|i| i as u8).collect();
    let expect = big.clone();
    let sender = std::thread::spawn(move || {
        a.send(&big, &[w.as_fd()]).unwrap();
        a
    });
    let (got, fds) = b.recv::<Vec<u8>>().unwrap();
    sender.join().unwrap();
    assert_eq!(got, expect);
    assert_eq!(fds.len(), 1);
    drop(fds);
    drop(r);
}

#[test]
fn fds_passed_arrive_usable_and_cloexec() {
    let _g = fd_lock();
    let (mut a, mut b) = Channel::pair().unwrap();
    let pipes: Vec<_> = (0..3).map(|_| pipe()).collect();
    let writers: Vec<_> = pipes.iter().map(|(_, w)| w.as_fd()).collect();
    a.send(&Request::Status, &writers).unwrap();
    let (_, fds) = b.recv::<Request>().unwrap();
    assert_eq!(fds.len(), 3);
    for (i, (fd, (r, _))) in fds.into_iter().zip(&pipes).enumerate() {
        assert!(is_cloexec(fd.as_fd()).unwrap(), "fd {i} not close-on-exec");
        let mut w = std::fs::File::from(fd);
        w.write_all(&[i as u8, 42]).unwrap();
        let mut buf = [0u8; 2];
        std::fs::File::from(r.try_clone().unwrap())
            .read_exact(&mut buf)
            .unwrap();
        assert_eq!(buf, [i as u8, 42]);
    }
}

#[test]
fn send_max_fds_accepted_one_more_refused_channel_usable() {
    let _g = fd_lock();
    let (mut a, mut b) = Channel::pair().unwrap();
    let (_r, w) = pipe();
    let many = vec![w.as_fd(); MAX_FDS + 1];
    let err = a.send(&Request::Status, &many).unwrap_err();
    assert!(matches!(err, IpcError::Frame(FrameError::TooManyFds { count }) if count == 17));
    assert!(!a.is_broken());
    a.send(&Request::Status, &many[..MAX_FDS]).unwrap();
    assert_eq!(b.recv::<Request>().unwrap().1.len(), MAX_FDS);
}

#[test]
fn send_oversized_message_refused_channel_usable() {
    let _g = fd_lock();
    let (mut a, mut b) = Channel::pair().unwrap();
    let err = a.send(&vec![0u8; MAX_PAYLOAD], &[]).unwrap_err();
    assert!(
        matches!(err, IpcError::Frame(FrameError::PayloadTooLarge { .. })),
        "{err:?}"
    );
    a.send(&Request::Stop(1), &[]).unwrap();
    assert_eq!(b.recv::<Request>().unwrap().0, Request::Stop(1));
}

/// One malformed frame: its bytes, how many fds go with it, and the check.
struct Bad {
    name: &'static str,
    bytes: Vec<u8>,
    nfds: usize,
    check: fn(&IpcError) -> bool,
}

fn bad_frames() -> Vec<Bad> {
    let good = encode_payload(&Request::Stop(3)).unwrap();
    let len = good.len() as u32;
    let with = |h: Vec<u8>, p: &[u8]| [h, p.to_vec()].concat();
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"junk");
    vec![
        Bad {
            name: "bad magic",
            bytes: with(header(0xdead_beef, PROTOCOL_VERSION, 0, len, 2), &good),
            nfds: 2,
            check: |e| {
                matches!(
                    e,
                    IpcError::Frame(FrameError::BadMagic { found: 0xdead_beef })
                )
            },
        },
        Bad {
            name: "wrong version",
            bytes: with(header(MAGIC, PROTOCOL_VERSION + 1, 0, len, 2), &good),
            nfds: 2,
            check: |e| matches!(e, IpcError::Frame(FrameError::VersionMismatch { .. })),
        },
        Bad {
            name: "unknown flags",
            bytes: with(header(MAGIC, PROTOCOL_VERSION, 0x8000, len, 1), &good),
            nfds: 1,
            check: |e| {
                matches!(
                    e,
                    IpcError::Frame(FrameError::UnknownFlags { flags: 0x8000 })
                )
            },
        },
        Bad {
            name: "oversized length",
            bytes: with(header(MAGIC, PROTOCOL_VERSION, 0, u32::MAX, 2), &good),
            nfds: 2,
            check: |e| matches!(e, IpcError::Frame(FrameError::PayloadTooLarge { len }) if *len == u64::from(u32::MAX)),
        },
        Bad {
            name: "too many fds declared",
            bytes: with(header(MAGIC, PROTOCOL_VERSION, 0, len, 17), &good),
            nfds: 3,
            check: |e| matches!(e, IpcError::Frame(FrameError::TooManyFds { count: 17 })),
        },
        Bad {
            name: "too many fds passed",
            bytes: with(header(MAGIC, PROTOCOL_VERSION, 0, len, 16), &good),
            nfds: MAX_FDS + 4,
            check: |e| matches!(e, IpcError::FdsTruncated { received: MAX_FDS }),
        },
        Bad {
            name: "fd count mismatch",
            bytes: with(header(MAGIC, PROTOCOL_VERSION, 0, len, 0), &good),
            nfds: 2,
            check: |e| {
                matches!(
                    e,
                    IpcError::Frame(FrameError::FdCountMismatch {
                        declared: 0,
                        received: 2
                    })
                )
            },
        },
        Bad {
            name: "truncated frame",
            bytes: with(header(MAGIC, PROTOCOL_VERSION, 0, 100, 2), &[7; 50]),
            nfds: 2,
            check: |e| {
                matches!(
                    e,
                    IpcError::TruncatedFrame {
                        expected: 100,
                        received: 50
                    }
                )
            },
        },
        Bad {
            name: "truncated payload",
            bytes: with(header(MAGIC, PROTOCOL_VERSION, 0, 1, 1), &good[..1]),
            nfds: 1,
            check: |e| matches!(e, IpcError::Frame(FrameError::TruncatedPayload { len: 1 })),
        },
        Bad {
            name: "trailing garbage",
            bytes: with(header(MAGIC, PROTOCOL_VERSION, 0, len + 4, 2), &trailing),
            nfds: 2,
            check: |e| {
                matches!(
                    e,
                    IpcError::Frame(FrameError::TrailingBytes { trailing: 4, .. })
                )
            },
        },
        Bad {
            name: "malformed payload",
            bytes: with(header(MAGIC, PROTOCOL_VERSION, 0, 1, 1), &[9]),
            nfds: 1,
            check: |e| matches!(e, IpcError::Frame(FrameError::Decode(_))),
        },
    ]
}

#[test]
fn rejected_frames_give_their_error_and_close_their_fds() {
    let _g = fd_lock();
    for bad in bad_frames() {
        let before = fd_count();
        let (a, b) = UnixStream::pair().unwrap();
        let mut rx = Channel::new(b);
        let (r, w) = pipe();
        send_raw(&a, &bad.bytes, &vec![w.as_fd(); bad.nfds]);
        drop(w);
        a.shutdown(std::net::Shutdown::Write).unwrap();
        let err = rx.recv::<Request>().unwrap_err();
        assert!((bad.check)(&err), "{}: got {err:?}", bad.name);
        assert!(
            writers_closed(&r),
            "{}: a received fd is still open",
            bad.name
        );
        // The channel refuses further use and the peer sees EOF.
        assert!(rx.is_broken(), "{}", bad.name);
        assert!(matches!(rx.recv::<Request>(), Err(IpcError::Broken)));
        let mut rest = Vec::new();
        (&a).read_to_end(&mut rest).unwrap();
        drop((a, rx, r));
        assert_eq!(fd_count(), before, "{}: fd count changed", bad.name);
    }
}

#[test]
fn peer_credentials_match_this_process() {
    let _g = fd_lock();
    let (a, b) = Channel::pair().unwrap();
    for ch in [&a, &b] {
        let cred = ch.peer_credentials().unwrap();
        // SAFETY: these getters cannot fail and touch no memory.
        let (pid, uid, gid) = unsafe { (libc::getpid(), libc::geteuid(), libc::getegid()) };
        assert_eq!((cred.pid, cred.uid, cred.gid), (pid, uid, gid));
    }
}

#[test]
fn peer_closing_mid_header_gives_truncated_frame() {
    let _g = fd_lock();
    let (a, b) = UnixStream::pair().unwrap();
    let mut rx = Channel::new(b);
    (&a).write_all(&header(MAGIC, PROTOCOL_VERSION, 0, 4, 0)[..8])
        .unwrap();
    drop(a);
    let err = rx.recv::<Request>().unwrap_err();
    assert!(
        matches!(
            err,
            IpcError::TruncatedFrame {
                expected: HEADER_LEN,
                received: 8
            }
        ),
        "{err:?}"
    );
}

#[test]
fn peer_closing_between_frames_gives_closed() {
    let _g = fd_lock();
    let (mut a, mut b) = Channel::pair().unwrap();
    a.send(&Request::Status, &[]).unwrap();
    drop(a);
    assert_eq!(b.recv::<Request>().unwrap().0, Request::Status);
    assert!(matches!(b.recv::<Request>(), Err(IpcError::Closed)));
}

#[test]
fn read_timeout_before_frame_keeps_channel_usable() {
    let _g = fd_lock();
    let (mut a, mut b) = Channel::pair().unwrap();
    b.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    assert!(matches!(b.recv::<Request>(), Err(IpcError::TimedOut)));
    assert!(!b.is_broken());
    a.send(&Request::Stop(9), &[]).unwrap();
    assert_eq!(b.recv::<Request>().unwrap().0, Request::Stop(9));
}

#[test]
fn read_timeout_mid_frame_gives_stalled_and_breaks() {
    let _g = fd_lock();
    let (a, b) = UnixStream::pair().unwrap();
    let mut rx = Channel::new(b);
    rx.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    (&a).write_all(&header(MAGIC, PROTOCOL_VERSION, 0, 10, 0))
        .unwrap();
    (&a).write_all(&[1, 2, 3]).unwrap();
    let err = rx.recv::<Request>().unwrap_err();
    assert!(
        matches!(
            err,
            IpcError::Stalled {
                expected: 10,
                done: 3
            }
        ),
        "{err:?}"
    );
    assert!(rx.is_broken());
}

#[test]
fn header_roundtrip_keeps_fields() {
    let _g = fd_lock();
    let h = Header::new(1234, 5).unwrap();
    let back = Header::decode(&h.encode()).unwrap();
    assert_eq!((back.payload_len(), back.fd_count()), (1234, 5));
}

/// xorshift64*: deterministic, good enough to make varied garbage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_bytes_on_the_wire_never_panic() {
    let _g = fd_lock();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for round in 0..300 {
        let (a, b) = UnixStream::pair().unwrap();
        let mut rx = Channel::new(b);
        let mut bytes = Vec::new();
        // Most rounds start with a valid header so the payload decoder is
        // reached too; the length is what actually follows, or not.
        let body_len = (rng.next() % 48) as usize;
        if round % 4 != 0 {
            let declared = if rng.next() % 3 == 0 {
                rng.next() as u32 % 64
            } else {
                body_len as u32
            };
            bytes.extend(header(MAGIC, PROTOCOL_VERSION, 0, declared, 0));
        }
        bytes.extend((0..body_len).map(|_| rng.next() as u8));
        (&a).write_all(&bytes).unwrap();
        drop(a);
        // Any outcome but a panic is fine; then the stream must end cleanly.
        while rx.recv::<Request>().is_ok() {}
    }
}
