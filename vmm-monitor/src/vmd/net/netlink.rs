//! The few rtnetlink requests vmd makes: set a tap's alias, add an
//! address, set a link up or down, create a VRF, give a link a master,
//! delete a link; and one dump: the links under a master. One request per
//! socket, each acknowledged (NLM_F_ACK), errors as the kernel's errno.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDR: usize = 16;
const IFINFOMSG: usize = 16;
const IFADDRMSG: usize = 8;
const RTA_HDR: usize = 4;
/// `IFLA_IFNAME`: a link's name (NUL-terminated string).
const IFLA_IFNAME: u16 = 3;
/// `IFLA_MASTER`: the index of a link's master (u32).
const IFLA_MASTER: u16 = 10;
/// `IFLA_LINKINFO`: nested { `IFLA_INFO_KIND`, `IFLA_INFO_DATA` }.
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
/// `IFLA_INFO_KIND` in `IFLA_LINKINFO`: the link type's name.
const IFLA_INFO_KIND: u16 = 1;
/// `IFLA_INFO_DATA` in `IFLA_LINKINFO`: the type's own attributes.
const IFLA_INFO_DATA: u16 = 2;
/// `IFLA_VRF_TABLE` in a VRF's `IFLA_INFO_DATA`: its routing table (u32).
const IFLA_VRF_TABLE: u16 = 1;
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

    /// Opens a nested attribute; its contents follow until [`Self::end`]
    /// is given the returned offset.
    fn begin(&mut self, kind: u16) -> usize {
        let start = self.buf.len();
        self.attr(kind, &[]);
        start
    }

    /// Closes the nested attribute opened at `start`: its length now
    /// counts everything added since (already 4-aligned).
    fn end(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
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

/// A NETLINK_ROUTE socket with `request` sent on it.
fn send(request: &[u8]) -> io::Result<OwnedFd> {
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
    Ok(sock)
}

/// Sends `request` and waits for its acknowledgement.
fn transact(request: &[u8]) -> io::Result<()> {
    let sock = send(request)?;
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

/// The request creating VRF `name` on routing table `table`, failing if a
/// link of that name exists (NLM_F_EXCL): one created concurrently is
/// not taken for ours.
fn vrf_request(name: &str, table: u32) -> Vec<u8> {
    let flags = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut m = Message::new(libc::RTM_NEWLINK, flags);
    m.bytes(&ifinfo(0, 0, 0));
    m.attr(IFLA_IFNAME, &nul_terminated(name));
    let info = m.begin(IFLA_LINKINFO);
    m.attr(IFLA_INFO_KIND, b"vrf\0");
    let data = m.begin(IFLA_INFO_DATA);
    m.attr(IFLA_VRF_TABLE, &table.to_ne_bytes());
    m.end(data);
    m.end(info);
    m.finish()
}

/// The request making link `master` the master of link `index`.
fn master_request(index: u32, master: u32) -> Vec<u8> {
    let mut m = Message::new(libc::RTM_NEWLINK, 0);
    m.bytes(&ifinfo(index, 0, 0));
    m.attr(IFLA_MASTER, &master.to_ne_bytes());
    m.finish()
}

/// The request deleting link `index`.
fn delete_request(index: u32) -> Vec<u8> {
    let mut m = Message::new(libc::RTM_DELLINK, 0);
    m.bytes(&ifinfo(index, 0, 0));
    m.finish()
}

fn nul_terminated(name: &str) -> Vec<u8> {
    let mut bytes = name.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

/// Creates VRF device `name` on routing table `table` (left down).
/// EOPNOTSUPP: the kernel has no VRF driver; EEXIST: `name` exists.
pub fn create_vrf(name: &str, table: u32) -> io::Result<()> {
    transact(&vrf_request(name, table))
}

/// Makes link `master` (a bridge, a VRF) the master of link `index`; a
/// link already enslaved to `master` stays so (the kernel does nothing).
pub fn set_master(index: u32, master: u32) -> io::Result<()> {
    transact(&master_request(index, master))
}

/// Deletes link `index`.
pub fn delete_link(index: u32) -> io::Result<()> {
    transact(&delete_request(index))
}

/// Bytes a dump's reply is read in; the kernel fills at most about 32 KiB
/// per datagram, and a datagram longer than the buffer would be cut.
const DUMP_BUFFER: usize = 64 * 1024;

/// The names of the links whose master is link `master` (a bridge's
/// ports, a VRF's members), read from a dump of every link of this
/// network namespace (RTM_GETLINK, NLM_F_DUMP; the kernel filters it by
/// IFLA_MASTER where it can, and this checks each link anyway).
pub fn links_with_master(master: u32) -> io::Result<Vec<String>> {
    let mut m = Message::new(libc::RTM_GETLINK, libc::NLM_F_DUMP as u16);
    m.bytes(&ifinfo(0, 0, 0));
    m.attr(IFLA_MASTER, &master.to_ne_bytes());
    let sock = send(&m.finish())?;
    let mut buf = vec![0u8; DUMP_BUFFER];
    let mut names = Vec::new();
    loop {
        // SAFETY: recv writes at most `buf.len()` bytes into a live buffer.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut rest = buf.get(..n as usize).unwrap_or_default();
        while !rest.is_empty() {
            let (kind, payload, next) = split_message(rest).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "malformed netlink reply")
            })?;
            match kind {
                k if k == libc::NLMSG_DONE as u16 => return Ok(names),
                k if k == libc::NLMSG_ERROR as u16 => {
                    let errno = payload
                        .get(..4)
                        .map_or(0, |e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]));
                    if errno != 0 {
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                }
                k if k == libc::RTM_NEWLINK => {
                    if let Some((Some(m), name)) = link_master(payload) {
                        if m == master {
                            names.push(name);
                        }
                    }
                }
                _ => {}
            }
            rest = next;
        }
    }
}

/// The first message of `bytes`: its type, its payload and what follows
/// it; `None` if its header does not fit or lies about its length.
fn split_message(bytes: &[u8]) -> Option<(u16, &[u8], &[u8])> {
    let header = bytes.get(..NLMSG_HDR)?;
    let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let kind = u16::from_ne_bytes([header[4], header[5]]);
    let payload = bytes.get(NLMSG_HDR..len)?;
    let next = bytes.get(align4(len).min(bytes.len())..)?;
    Some((kind, payload, next))
}

/// An RTM_NEWLINK payload's master (IFLA_MASTER) and name (IFLA_IFNAME);
/// `None` without a name or when an attribute overruns the payload.
fn link_master(payload: &[u8]) -> Option<(Option<u32>, String)> {
    let mut attrs = payload.get(IFINFOMSG..)?;
    let (mut master, mut name) = (None, None);
    while attrs.len() >= RTA_HDR {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        // The top two bits are flags (NLA_F_NESTED, NLA_F_NET_BYTEORDER).
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        let data = attrs.get(RTA_HDR..len)?;
        match kind {
            IFLA_MASTER => {
                let b = data.get(..4)?;
                master = Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            }
            IFLA_IFNAME => {
                let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                name = Some(String::from_utf8_lossy(&data[..end]).into_owned());
            }
            _ => {}
        }
        attrs = attrs.get(align4(len).min(attrs.len())..)?;
    }
    Some((master, name?))
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

    fn u16_at(wire: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([wire[at], wire[at + 1]])
    }

    fn u32_at(wire: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([wire[at], wire[at + 1], wire[at + 2], wire[at + 3]])
    }

    #[test]
    fn vrf_request_nests_kind_and_table_under_linkinfo() {
        let wire = vrf_request("rdomain5", 1005);
        assert_eq!(u32_at(&wire, 0) as usize, wire.len());
        assert_eq!(wire.len() % 4, 0);
        assert_eq!(u16_at(&wire, 4), libc::RTM_NEWLINK);
        let flags = u16_at(&wire, 6);
        for flag in [
            libc::NLM_F_REQUEST,
            libc::NLM_F_ACK,
            libc::NLM_F_CREATE,
            libc::NLM_F_EXCL,
        ] {
            assert_ne!(flags & flag as u16, 0, "flag {flag:#x} missing");
        }
        // ifinfomsg: no index, no flags.
        assert_eq!(&wire[NLMSG_HDR..NLMSG_HDR + IFINFOMSG], &[0u8; IFINFOMSG]);
        // IFLA_IFNAME "rdomain5\0": 4 + 9 bytes, padded to 16.
        let name = NLMSG_HDR + IFINFOMSG;
        assert_eq!((u16_at(&wire, name), u16_at(&wire, name + 2)), (13, 3));
        assert_eq!(&wire[name + 4..name + 13], b"rdomain5\0");
        // IFLA_LINKINFO { KIND "vrf\0", DATA { VRF_TABLE 1005 } }.
        let info = name + 16;
        assert_eq!(u16_at(&wire, info + 2), IFLA_LINKINFO);
        assert_eq!(u16_at(&wire, info) as usize, wire.len() - info);
        let kind = info + RTA_HDR;
        assert_eq!((u16_at(&wire, kind), u16_at(&wire, kind + 2)), (8, 1));
        assert_eq!(&wire[kind + 4..kind + 8], b"vrf\0");
        let data = kind + 8;
        assert_eq!((u16_at(&wire, data), u16_at(&wire, data + 2)), (12, 2));
        let table = data + RTA_HDR;
        assert_eq!((u16_at(&wire, table), u16_at(&wire, table + 2)), (8, 1));
        assert_eq!(u32_at(&wire, table + 4), 1005);
        assert_eq!(table + 8, wire.len());
    }

    #[test]
    fn dumped_links_give_their_master_and_name_and_bad_ones_nothing() {
        // A reply built as the kernel builds one: ifinfomsg, IFNAME,
        // an attribute we skip, MASTER.
        let mut m = Message::new(libc::RTM_NEWLINK, 0);
        m.bytes(&ifinfo(12, 0, 0));
        m.attr(IFLA_IFNAME, b"vm1i0\0");
        m.attr(IFLA_IFALIAS, b"vm1-if0-web");
        m.attr(IFLA_MASTER, &7u32.to_ne_bytes());
        let wire = m.finish();
        let mut two = wire.clone();
        two.extend_from_slice(&wire);
        let (kind, payload, rest) = split_message(&two).unwrap();
        assert_eq!(kind, libc::RTM_NEWLINK);
        assert_eq!(rest, &wire[..]);
        assert_eq!(link_master(payload), Some((Some(7), "vm1i0".into())));
        // Without a master; cut short; lying about lengths.
        let mut m = Message::new(libc::RTM_NEWLINK, 0);
        m.bytes(&ifinfo(3, 0, 0));
        m.attr(IFLA_IFNAME, b"lo\0");
        let lo = m.finish();
        assert_eq!(link_master(&lo[NLMSG_HDR..]), Some((None, "lo".into())));
        for cut in 0..wire.len() - 1 {
            let _ = split_message(&wire[..cut]).map(|(_, p, _)| link_master(p));
        }
        assert_eq!(split_message(&wire[..wire.len() - 1]), None);
        let mut lying = wire.clone();
        lying[NLMSG_HDR + IFINFOMSG..NLMSG_HDR + IFINFOMSG + 2]
            .copy_from_slice(&200u16.to_ne_bytes());
        assert_eq!(link_master(&lying[NLMSG_HDR..]), None);
        assert_eq!(link_master(&lying[NLMSG_HDR..NLMSG_HDR + 3]), None);
    }

    #[test]
    fn master_and_delete_requests_name_the_link_by_index() {
        let wire = master_request(7, 42);
        assert_eq!(u32_at(&wire, 0) as usize, wire.len());
        assert_eq!(u16_at(&wire, 4), libc::RTM_NEWLINK);
        assert_eq!(u16_at(&wire, 6) & libc::NLM_F_CREATE as u16, 0);
        assert_eq!(u32_at(&wire, NLMSG_HDR + 4), 7, "ifi_index");
        let attr = NLMSG_HDR + IFINFOMSG;
        assert_eq!((u16_at(&wire, attr), u16_at(&wire, attr + 2)), (8, 10));
        assert_eq!(u32_at(&wire, attr + 4), 42);
        assert_eq!(wire.len(), attr + 8);

        let wire = delete_request(9);
        assert_eq!(u32_at(&wire, 0) as usize, wire.len());
        assert_eq!(u16_at(&wire, 4), libc::RTM_DELLINK);
        assert_eq!(u32_at(&wire, NLMSG_HDR + 4), 9, "ifi_index");
        assert_eq!(wire.len(), NLMSG_HDR + IFINFOMSG);
    }
}
