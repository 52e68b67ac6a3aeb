//! The few rtnetlink requests vmd makes on a tap: set its alias, add an
//! address, set it up or down. One request per socket, each acknowledged
//! (NLM_F_ACK), errors as the kernel's errno.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDR: usize = 16;
const IFINFOMSG: usize = 16;
const IFADDRMSG: usize = 8;
const RTA_HDR: usize = 4;
const IFLA_IFALIAS: u16 = 20;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A netlink request under construction.
struct Message {
    buf: Vec<u8>,
}

impl Message {
    fn new(kind: u16, flags: u16) -> Self {
        let mut buf = vec![0u8; NLMSG_HDR];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        let flags = flags | libc::NLM_F_REQUEST as u16 | libc::NLM_F_ACK as u16;
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        buf[8..12].copy_from_slice(&1u32.to_ne_bytes());
        Self { buf }
    }

    fn bytes(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = (RTA_HDR + data.len()) as u16;
        let mut head = [0u8; RTA_HDR];
        head[..2].copy_from_slice(&len.to_ne_bytes());
        head[2..].copy_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&head);
        self.bytes(data);
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// An `ifinfomsg` for interface `index` with `flags` under `change`.
fn ifinfo(index: u32, flags: u32, change: u32) -> [u8; IFINFOMSG] {
    let mut m = [0u8; IFINFOMSG];
    m[0] = libc::AF_UNSPEC as u8;
    m[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

/// Sends `request` and waits for its acknowledgement.
fn transact(request: &[u8]) -> io::Result<()> {
    // SAFETY: socket() with constant arguments; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: send reads `request.len()` bytes from a live buffer; the
    // kernel is the default destination of an unbound netlink socket.
    let sent = unsafe { libc::send(sock.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 1024];
    // SAFETY: recv writes at most `reply.len()` bytes into a live buffer.
    let n = unsafe { libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    if n < NLMSG_HDR + 4 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short netlink reply",
        ));
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected netlink reply",
        ));
    }
    let errno = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
    if errno == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(-errno))
    }
}

/// Sets the alias (ifalias) of interface `index`.
pub fn set_alias(index: u32, alias: &str) -> io::Result<()> {
    let mut m = Message::new(libc::RTM_NEWLINK, 0);
    m.bytes(&ifinfo(index, 0, 0));
    m.attr(IFLA_IFALIAS, alias.as_bytes());
    transact(&m.finish())
}

/// Brings interface `index` up or down.
pub fn set_up(index: u32, up: bool) -> io::Result<()> {
    let flag = libc::IFF_UP as u32;
    let mut m = Message::new(libc::RTM_NEWLINK, 0);
    m.bytes(&ifinfo(index, if up { flag } else { 0 }, flag));
    transact(&m.finish())
}

/// Adds `addr/prefix_len` to interface `index`.
pub fn add_address(index: u32, addr: IpAddr, prefix_len: u8) -> io::Result<()> {
    let (family, bytes): (u8, Vec<u8>) = match addr {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let flags = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut m = Message::new(libc::RTM_NEWADDR, flags);
    let mut ifa = [0u8; IFADDRMSG];
    ifa[0] = family;
    ifa[1] = prefix_len;
    ifa[4..8].copy_from_slice(&index.to_ne_bytes());
    m.bytes(&ifa);
    m.attr(IFA_LOCAL, &bytes);
    m.attr(IFA_ADDRESS, &bytes);
    transact(&m.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_aligned_and_sized() {
        let mut m = Message::new(libc::RTM_NEWLINK, 0);
        m.bytes(&ifinfo(7, 0, 0));
        m.attr(IFLA_IFALIAS, b"vm1-if0-web");
        let wire = m.finish();
        assert_eq!(wire.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(wire[..4].try_into().unwrap()) as usize,
            wire.len()
        );
        // The attribute's length counts its header and data, not padding.
        let attr = &wire[NLMSG_HDR + IFINFOMSG..];
        assert_eq!(u16::from_ne_bytes([attr[0], attr[1]]), 4 + 11);
        assert_eq!(&attr[4..15], b"vm1-if0-web");
    }
}
