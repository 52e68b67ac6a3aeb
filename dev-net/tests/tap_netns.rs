//! A real tap, created in a new network namespace (needs root and
//! /dev/net/tun; skipped loudly otherwise): frames from the guest come out
//! of the interface, frames sent on the interface reach the guest. An
//! AF_PACKET socket on the interface plays the host's network.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dev_backend::testing::{TestFrontend, TestOptions};
use dev_net::device::{NetDevice, RX_QUEUE, TX_QUEUE};
use dev_net::mac::MacAddr;
use dev_net::metrics::NetMetrics;
use dev_net::tap::{Tap, TapKind};
use dev_net::wire::VNET_HDR_LEN;
use vhost::VhostBackend;

const OURS: MacAddr = MacAddr([0xfe, 0xe1, 0xbb, 0xd1, 0x23, 0x45]);
const HOST: MacAddr = MacAddr([0xfe, 0xe1, 0xbb, 0xd1, 0x23, 0x44]);
/// IEEE 802 local experimental ethertype: nothing else sends it.
const ETHERTYPE: u16 = 0x88b5;
const TAP_NAME: &str = "vmdnet0";
const WAIT: Duration = Duration::from_secs(5);

fn cvt(ret: libc::c_int, what: &str) -> std::io::Result<libc::c_int> {
    if ret < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(ret)
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    pad: [u8; 22],
}

/// Brings `name` up, from a socket in the current thread's namespace.
fn link_up(name: &str) -> std::io::Result<()> {
    // SAFETY: socket() makes a new fd, owned right after.
    let ret = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let raw = cvt(ret, "socket")?;
    // SAFETY: `raw` is a new fd nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = IfReq {
        name: [0; 16],
        flags: 0,
        pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: SIOCGIFFLAGS reads and writes a struct ifreq, which `req` is.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    cvt(ret, "SIOCGIFFLAGS")?;
    req.flags |= libc::IFF_UP as libc::c_short;
    // SAFETY: as above, SIOCSIFFLAGS reads a struct ifreq.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) };
    cvt(ret, "SIOCSIFFLAGS")?;
    Ok(())
}

/// An AF_PACKET socket bound to interface `name`, all protocols.
fn packet_socket(name: &str) -> std::io::Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket() makes a new fd, owned right after.
    let ret = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    let raw = cvt(ret, "packet socket")?;
    // SAFETY: `raw` is a new fd nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: `cname` is a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index as i32;
    // SAFETY: `addr` is a sockaddr_ll of the length given.
    let ret = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    cvt(ret, "bind")?;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval of the size given.
    let ret = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    cvt(ret, "SO_RCVTIMEO")?;
    Ok(sock)
}

/// In a thread moved to a new network namespace: the tap, up, and a packet
/// socket on it. The fds keep their namespace wherever they are used.
fn tap_in_new_netns() -> Result<(Tap, OwnedFd), String> {
    std::thread::spawn(|| {
        // SAFETY: unshare changes only this thread's namespace.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        cvt(ret, "unshare(CLONE_NEWNET)").map_err(|e| e.to_string())?;
        let tap =
            Tap::create(TAP_NAME).map_err(|e| format!("Tap::create: {}", ipc::error_chain(&e)))?;
        link_up(TAP_NAME).map_err(|e| e.to_string())?;
        let sock = packet_socket(TAP_NAME).map_err(|e| e.to_string())?;
        Ok((tap, sock))
    })
    .join()
    .unwrap()
}

fn frame(dst: MacAddr, src: MacAddr, tag: u8) -> Vec<u8> {
    let mut f = dst.0.to_vec();
    f.extend(src.0);
    f.extend(ETHERTYPE.to_be_bytes());
    f.extend(std::iter::repeat_n(tag, 100));
    f
}

fn recv_ours(sock: &OwnedFd) -> Option<Vec<u8>> {
    let end = Instant::now() + WAIT;
    let mut buf = vec![0u8; 2048];
    while Instant::now() < end {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 14 && buf[12..14] == ETHERTYPE.to_be_bytes() {
            return Some(buf[..n as usize].to_vec());
        }
    }
    None
}

#[test]
fn real_tap_frames_flow_both_ways() {
    let (tap, sock) = match tap_in_new_netns() {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("SKIPPED real_tap_frames_flow_both_ways: no tap in a new netns here ({e})");
            return;
        }
    };
    assert_eq!(
        tap.kind(),
        &TapKind::Tap {
            name: TAP_NAME.into()
        }
    );
    assert!(tap.offloads().tso, "a tap takes TSO offloads");
    let dev = Arc::new(NetDevice::new(tap, OURS, true).unwrap());
    let (fe_sock, backend) = UnixStream::pair().unwrap();
    let served = Arc::clone(&dev);
    std::thread::spawn(move || dev_backend::serve::serve_connection(backend, served));
    let opts = TestOptions {
        num_queues: 2,
        queue_size: 64,
        ..TestOptions::default()
    };
    let mut fe = TestFrontend::connect(fe_sock, opts).unwrap();
    let offered = fe.frontend().get_features().unwrap();
    assert!(offered & (1 << 7) != 0, "GUEST_TSO4 offered on a real tap");

    // Guest → tap → the interface's receive path.
    let out = frame(HOST, OURS, 0xa5);
    let mut packet = vec![0u8; VNET_HDR_LEN];
    packet.extend(&out);
    fe.add_request(TX_QUEUE, &packet, 0).unwrap();
    fe.kick(TX_QUEUE).unwrap();
    assert_eq!(fe.wait_used(TX_QUEUE, 1, WAIT).unwrap().len(), 1);
    assert_eq!(recv_ours(&sock).expect("the frame on the interface"), out);
    assert_eq!(NetMetrics::get(&dev.net_metrics().tx_frames), 1);

    // The interface's transmit path → tap → guest.
    for _ in 0..16 {
        fe.add_request(RX_QUEUE, &[], 2048).unwrap();
    }
    fe.kick(RX_QUEUE).unwrap();
    let back = frame(OURS, HOST, 0x5a);
    // SAFETY: `back` is valid for reads of its length.
    let sent = unsafe { libc::send(sock.as_raw_fd(), back.as_ptr().cast(), back.len(), 0) };
    assert_eq!(
        sent,
        back.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
    let end = Instant::now() + WAIT;
    let mut found = false;
    while !found && Instant::now() < end {
        for used in fe
            .wait_used(RX_QUEUE, 1, Duration::from_millis(100))
            .unwrap()
        {
            let got = fe.response(RX_QUEUE, used.id, used.len).unwrap();
            found |= got[VNET_HDR_LEN..] == back[..];
        }
    }
    assert!(found, "the frame reached the guest");
}
