//! Tests of the DHCP server: requests built byte by byte, replies parsed
//! back by an independent little parser, and a mutation loop.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::wire::{self, msg, opt};
use super::*;
use crate::mac::MacAddr;

const GUEST_MAC: [u8; 6] = [0xfe, 0xe1, 0xbb, 0xd1, 0xdc, 0x72];
const HOST_MAC: [u8; 6] = [0xfe, 0xe1, 0xba, 0xd1, 0x01, 0x02];
const OTHER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const HOST: Ipv4Addr = Ipv4Addr::new(100, 64, 5, 2);
const GUEST: Ipv4Addr = Ipv4Addr::new(100, 64, 5, 3);
const XID: u32 = 0x1234_5678;

fn config() -> DhcpConfig {
    let addrs = crate::addr::local_addrs(Ipv4Addr::new(100, 64, 0, 0), 10, 5, 0).unwrap();
    DhcpConfig::local(MacAddr(GUEST_MAC), MacAddr(HOST_MAC), &addrs)
}

fn server() -> DhcpServer {
    DhcpServer::new(config()).unwrap()
}

/// A request the way a client sends it.
#[derive(Clone)]
struct Req {
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    chaddr: [u8; 6],
    ip_dst: Ipv4Addr,
    ciaddr: Ipv4Addr,
    flags: u16,
    /// `None`: plain BOOTP with a zeroed 64-byte vendor area.
    options: Option<Vec<u8>>,
}

impl Req {
    fn dhcp(t: u8, extra: &[u8]) -> Req {
        let mut options = vec![opt::MESSAGE_TYPE, 1, t];
        options.extend_from_slice(extra);
        options.push(opt::END);
        Req {
            eth_src: GUEST_MAC,
            eth_dst: wire::ETH_BROADCAST,
            chaddr: GUEST_MAC,
            ip_dst: Ipv4Addr::BROADCAST,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            flags: 0,
            options: Some(options),
        }
    }

    fn bootp() -> Req {
        Req {
            options: None,
            ..Req::dhcp(0, &[])
        }
    }

    fn frame(&self) -> Vec<u8> {
        let mut bootp = vec![0u8; wire::BOOTP_FIXED_LEN];
        bootp[0] = wire::BOOTREQUEST;
        bootp[1] = wire::HTYPE_ETHER;
        bootp[2] = wire::HLEN_ETHER;
        bootp[4..8].copy_from_slice(&XID.to_be_bytes());
        bootp[10..12].copy_from_slice(&self.flags.to_be_bytes());
        bootp[12..16].copy_from_slice(&self.ciaddr.octets());
        bootp[28..34].copy_from_slice(&self.chaddr);
        match &self.options {
            Some(o) => {
                bootp.extend_from_slice(&wire::MAGIC_COOKIE);
                bootp.extend_from_slice(o);
            }
            None => bootp.extend_from_slice(&[0; 64]),
        }
        let src = if self.ciaddr.is_unspecified() {
            Ipv4Addr::UNSPECIFIED
        } else {
            self.ciaddr
        };
        let mut udp = Vec::new();
        udp.extend_from_slice(&wire::CLIENT_PORT.to_be_bytes());
        udp.extend_from_slice(&wire::SERVER_PORT.to_be_bytes());
        udp.extend_from_slice(&((8 + bootp.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&bootp);
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0, 0, 64, wire::IPPROTO_UDP, 0, 0]);
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&self.ip_dst.octets());
        let c = wire::checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut f = Vec::new();
        f.extend_from_slice(&self.eth_dst);
        f.extend_from_slice(&self.eth_src);
        f.extend_from_slice(&wire::ETHERTYPE_IPV4.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&udp);
        f
    }
}

/// A reply, parsed back without the server's own parser.
#[derive(Debug)]
struct Reply {
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    ip_src: Ipv4Addr,
    ip_dst: Ipv4Addr,
    op: u8,
    xid: u32,
    flags: u16,
    ciaddr: Ipv4Addr,
    yiaddr: Ipv4Addr,
    siaddr: Ipv4Addr,
    chaddr: [u8; 6],
    file: String,
    bootp_len: usize,
    options: BTreeMap<u8, Vec<u8>>,
    option_order: Vec<u8>,
}

impl Reply {
    fn opt_u32(&self, code: u8) -> Option<u32> {
        let v = self.options.get(&code)?;
        Some(u32::from_be_bytes(v.as_slice().try_into().ok()?))
    }
    fn opt_addr(&self, code: u8) -> Option<Ipv4Addr> {
        self.opt_u32(code).map(Ipv4Addr::from)
    }
    fn msg_type(&self) -> Option<u8> {
        match self.options.get(&opt::MESSAGE_TYPE)?.as_slice() {
            [t] => Some(*t),
            _ => panic!("bad message type option"),
        }
    }
}

fn parse_reply(f: &[u8]) -> Reply {
    assert!(f.len() >= 14 + 20 + 8 + 240, "reply too short: {}", f.len());
    assert_eq!(&f[12..14], &[0x08, 0x00], "ethertype");
    let ip = &f[14..];
    assert_eq!(ip[0], 0x45, "version/ihl");
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    assert_eq!(total, ip.len(), "ip total length");
    assert_eq!(wire::checksum(&ip[..20]), 0, "ip header checksum");
    assert_eq!(ip[9], 17, "protocol");
    let ip_src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let ip_dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let udp = &ip[20..];
    assert_eq!(&udp[0..4], &[0, 67, 0, 68], "udp ports");
    assert_eq!(
        u16::from_be_bytes([udp[4], udp[5]]) as usize,
        udp.len(),
        "udp length"
    );
    if udp[6..8] != [0, 0] {
        // Verify: the pseudo-header sum over the whole datagram folds to 0.
        let mut s = wire::sum16(0, &ip_src.octets());
        s = wire::sum16(s, &ip_dst.octets());
        s += 17 + udp.len() as u32;
        s = wire::sum16(s, udp);
        assert_eq!(wire::fold(s), 0, "udp checksum");
    }
    let b = &udp[8..];
    assert!(b.len() >= 300, "bootp shorter than 300: {}", b.len());
    let addr = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
    assert_eq!(&b[236..240], &wire::MAGIC_COOKIE, "cookie");
    let mut options = BTreeMap::new();
    let mut option_order = Vec::new();
    let mut at = 240;
    loop {
        let code = b[at];
        if code == opt::END {
            break;
        }
        assert_ne!(code, opt::PAD, "pad before end");
        let len = b[at + 1] as usize;
        assert!(
            options
                .insert(code, b[at + 2..at + 2 + len].to_vec())
                .is_none(),
            "dup {code}"
        );
        option_order.push(code);
        at += 2 + len;
    }
    assert!(b[at + 1..].iter().all(|&x| x == 0), "padding after end");
    let file_end = b[108..236].iter().position(|&c| c == 0).expect("file NUL");
    Reply {
        eth_dst: f[0..6].try_into().unwrap(),
        eth_src: f[6..12].try_into().unwrap(),
        ip_src,
        ip_dst,
        op: b[0],
        xid: u32::from_be_bytes(b[4..8].try_into().unwrap()),
        flags: u16::from_be_bytes([b[10], b[11]]),
        ciaddr: addr(12),
        yiaddr: addr(16),
        siaddr: addr(20),
        chaddr: b[28..34].try_into().unwrap(),
        file: String::from_utf8(b[108..108 + file_end].to_vec()).unwrap(),
        bootp_len: b.len(),
        options,
        option_order,
    }
}

/// Checks the fields every non-NAK reply to the guest has.
fn assert_common(r: &Reply) {
    assert_eq!(r.eth_dst, GUEST_MAC);
    assert_eq!(r.eth_src, HOST_MAC);
    assert_eq!(r.ip_src, HOST);
    assert_eq!(r.op, wire::BOOTREPLY);
    assert_eq!(r.xid, XID);
    assert_eq!(r.chaddr, GUEST_MAC);
    assert_eq!(r.siaddr, HOST);
    assert_eq!(
        r.opt_addr(opt::SUBNET_MASK),
        Some(Ipv4Addr::new(255, 255, 255, 254))
    );
    assert_eq!(r.opt_addr(opt::ROUTER), Some(HOST));
    assert_eq!(r.opt_addr(opt::DNS), Some(HOST));
}

fn requested(a: Ipv4Addr) -> Vec<u8> {
    let mut v = vec![opt::REQUESTED_IP, 4];
    v.extend_from_slice(&a.octets());
    v
}

fn server_id(a: Ipv4Addr) -> Vec<u8> {
    let mut v = vec![opt::SERVER_ID, 4];
    v.extend_from_slice(&a.octets());
    v
}

#[test]
fn discover_gets_offer_with_every_option() {
    let mut s = server();
    let r = parse_reply(&s.handle(&Req::dhcp(msg::DISCOVER, &[]).frame()).unwrap());
    assert_common(&r);
    assert_eq!(r.msg_type(), Some(msg::OFFER));
    assert_eq!(r.yiaddr, GUEST);
    assert_eq!(r.ciaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(r.ip_dst, GUEST, "no broadcast flag: unicast to the offer");
    assert_eq!(r.opt_addr(opt::SERVER_ID), Some(HOST));
    assert_eq!(r.opt_u32(opt::LEASE_TIME), Some(0xffff_ffff));
    assert_eq!(
        r.option_order,
        [
            opt::MESSAGE_TYPE,
            opt::SERVER_ID,
            opt::LEASE_TIME,
            opt::SUBNET_MASK,
            opt::ROUTER,
            opt::DNS
        ]
    );
    assert_eq!(r.file, "");
    assert_eq!(r.bootp_len, 300, "padded to the BOOTP minimum");
    assert_eq!(
        s.stats(),
        DhcpStats {
            offers: 1,
            ..DhcpStats::default()
        }
    );
}

#[test]
fn discover_with_broadcast_flag_gets_broadcast_offer() {
    let mut s = server();
    let mut req = Req::dhcp(msg::DISCOVER, &[]);
    req.flags = wire::FLAG_BROADCAST;
    let r = parse_reply(&s.handle(&req.frame()).unwrap());
    assert_eq!(r.ip_dst, Ipv4Addr::BROADCAST);
    assert_eq!(r.flags, wire::FLAG_BROADCAST, "flags echoed");
    assert_eq!(r.eth_dst, GUEST_MAC);
}

#[test]
fn request_for_guest_address_gets_ack() {
    let mut s = server();
    let mut extra = requested(GUEST);
    extra.extend(server_id(HOST));
    let r = parse_reply(&s.handle(&Req::dhcp(msg::REQUEST, &extra).frame()).unwrap());
    assert_common(&r);
    assert_eq!(r.msg_type(), Some(msg::ACK));
    assert_eq!(r.yiaddr, GUEST);
    assert_eq!(r.ip_dst, GUEST);
    assert_eq!(r.opt_addr(opt::SERVER_ID), Some(HOST));
    assert_eq!(r.opt_u32(opt::LEASE_TIME), Some(0xffff_ffff));
    assert!(!r.options.contains_key(&opt::HOST_NAME));
    assert!(!r.options.contains_key(&opt::BOOTFILE));
    assert_eq!(s.stats().acks, 1);
}

#[test]
fn renewal_by_ciaddr_gets_unicast_ack() {
    let mut s = server();
    let mut req = Req::dhcp(msg::REQUEST, &[]);
    req.ciaddr = GUEST;
    req.ip_dst = HOST;
    req.eth_dst = HOST_MAC;
    let r = parse_reply(&s.handle(&req.frame()).unwrap());
    assert_eq!(r.msg_type(), Some(msg::ACK));
    assert_eq!(r.ciaddr, GUEST);
    assert_eq!(r.ip_dst, GUEST);
}

#[test]
fn request_for_wrong_address_gets_nak() {
    let mut s = server();
    let wrong = Ipv4Addr::new(192, 168, 1, 77);
    let r = parse_reply(
        &s.handle(&Req::dhcp(msg::REQUEST, &requested(wrong)).frame())
            .unwrap(),
    );
    assert_eq!(r.msg_type(), Some(msg::NAK));
    assert_eq!(r.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(r.siaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(r.ip_dst, Ipv4Addr::BROADCAST);
    assert_eq!(r.eth_dst, GUEST_MAC);
    assert_eq!(r.option_order, [opt::MESSAGE_TYPE, opt::SERVER_ID]);
    // A renewal of a wrong address too.
    let mut req = Req::dhcp(msg::REQUEST, &[]);
    req.ciaddr = wrong;
    let r = parse_reply(&s.handle(&req.frame()).unwrap());
    assert_eq!(r.msg_type(), Some(msg::NAK));
    assert_eq!(s.stats().naks, 2);
}

#[test]
fn request_naming_another_server_is_ignored() {
    let mut s = server();
    let mut extra = requested(GUEST);
    extra.extend(server_id(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(s.handle(&Req::dhcp(msg::REQUEST, &extra).frame()), None);
    assert_eq!(s.stats().ignored, 1);
}

#[test]
fn hostname_and_bootfile_are_sent_when_configured() {
    let mut cfg = config();
    cfg.hostname = Some("vm-one".into());
    cfg.bootfile = Some("auto_install".into());
    let mut s = DhcpServer::new(cfg).unwrap();
    for t in [msg::DISCOVER, msg::REQUEST] {
        let r = parse_reply(&s.handle(&Req::dhcp(t, &requested(GUEST)).frame()).unwrap());
        assert_common(&r);
        assert_eq!(r.options.get(&opt::HOST_NAME).unwrap(), b"vm-one");
        assert_eq!(r.options.get(&opt::BOOTFILE).unwrap(), b"auto_install");
        assert_eq!(r.file, "auto_install");
    }
    let r = parse_reply(&s.handle(&Req::bootp().frame()).unwrap());
    assert_eq!(r.file, "auto_install");
    assert_eq!(r.options.get(&opt::HOST_NAME).unwrap(), b"vm-one");
}

#[test]
fn bootp_request_gets_bootp_reply() {
    let mut s = server();
    let r = parse_reply(&s.handle(&Req::bootp().frame()).unwrap());
    assert_common(&r);
    assert_eq!(r.msg_type(), None);
    assert_eq!(r.yiaddr, GUEST);
    assert_eq!(r.ip_dst, GUEST);
    assert_eq!(r.option_order, [opt::SUBNET_MASK, opt::ROUTER, opt::DNS]);
    // RFC 1497 BOOTP: the cookie but no message type.
    let mut req = Req::bootp();
    req.options = Some(vec![opt::PAD, opt::END]);
    let r = parse_reply(&s.handle(&req.frame()).unwrap());
    assert_eq!(r.msg_type(), None);
    assert_eq!(s.stats().bootp_replies, 2);
}

#[test]
fn inform_gets_ack_without_lease() {
    let mut s = server();
    let mut req = Req::dhcp(msg::INFORM, &[]);
    req.ciaddr = GUEST;
    let r = parse_reply(&s.handle(&req.frame()).unwrap());
    assert_eq!(r.msg_type(), Some(msg::ACK));
    assert_eq!(r.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(r.ip_dst, GUEST);
    assert!(!r.options.contains_key(&opt::LEASE_TIME));
    assert_eq!(s.stats().inform_acks, 1);
}

#[test]
fn release_and_decline_get_no_reply() {
    let mut s = server();
    assert_eq!(s.handle(&Req::dhcp(msg::RELEASE, &[]).frame()), None);
    assert_eq!(
        s.handle(&Req::dhcp(msg::DECLINE, &requested(GUEST)).frame()),
        None
    );
    assert_eq!(
        s.stats(),
        DhcpStats {
            ignored: 2,
            ..DhcpStats::default()
        }
    );
}

#[test]
fn frames_from_another_mac_are_ignored() {
    let mut s = server();
    let mut req = Req::dhcp(msg::DISCOVER, &[]);
    req.eth_src = OTHER_MAC;
    assert_eq!(s.handle(&req.frame()), None);
    let mut req = Req::dhcp(msg::DISCOVER, &[]);
    req.chaddr = OTHER_MAC;
    assert_eq!(s.handle(&req.frame()), None);
    let mut req = Req::dhcp(msg::DISCOVER, &[]);
    req.eth_dst = OTHER_MAC;
    assert_eq!(s.handle(&req.frame()), None);
    let mut req = Req::dhcp(msg::DISCOVER, &[]);
    req.ip_dst = Ipv4Addr::new(8, 8, 8, 8);
    assert_eq!(s.handle(&req.frame()), None);
    assert_eq!(
        s.stats(),
        DhcpStats {
            ignored: 4,
            ..DhcpStats::default()
        }
    );
}

#[test]
fn other_traffic_is_ignored() {
    let mut s = server();
    let good = Req::dhcp(msg::DISCOVER, &[]).frame();
    // ARP.
    let mut arp = good.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(s.handle(&arp), None);
    // UDP to another port (DNS), checksum fixed up.
    let mut dns = good.clone();
    dns[14 + 20 + 2..14 + 20 + 4].copy_from_slice(&53u16.to_be_bytes());
    assert_eq!(s.handle(&dns), None);
    // TCP.
    let mut tcp = good.clone();
    tcp[14 + 9] = 6;
    fix_ip_checksum(&mut tcp);
    assert_eq!(s.handle(&tcp), None);
    // A reply from the guest (op 2).
    let mut op = good;
    op[14 + 28] = wire::BOOTREPLY;
    assert_eq!(s.handle(&op), None);
    assert_eq!(
        s.stats(),
        DhcpStats {
            ignored: 4,
            ..DhcpStats::default()
        }
    );
}

fn fix_ip_checksum(f: &mut [u8]) {
    let ihl = usize::from(f[14] & 0xf) * 4;
    if f.len() < 14 + ihl.max(20) {
        return;
    }
    f[24..26].copy_from_slice(&[0, 0]);
    let c = wire::checksum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn malformed_frames_are_counted_and_dropped() {
    let mut s = server();
    let good = Req::dhcp(msg::DISCOVER, &[]).frame();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("short ethernet", good[..10].to_vec()));
    cases.push(("no ip header", good[..14].to_vec()));
    cases.push(("short ip header", good[..30].to_vec()));
    let mut ihl = good.clone();
    ihl[14] = 0x44;
    cases.push(("ihl 4", ihl));
    let mut ihl = good[..14 + 40].to_vec();
    ihl[14] = 0x4f;
    cases.push(("ihl 15 past the frame", ihl));
    let mut total = good.clone();
    total[16..18].copy_from_slice(&2000u16.to_be_bytes());
    fix_ip_checksum(&mut total);
    cases.push(("total length past the frame", total));
    let mut csum = good.clone();
    csum[24] ^= 0xff;
    cases.push(("ip checksum", csum));
    let mut ulen = good.clone();
    ulen[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&4000u16.to_be_bytes());
    cases.push(("udp length past the datagram", ulen));
    cases.push(("truncated bootp", {
        let mut r = Req::dhcp(msg::DISCOVER, &[]);
        r.options = Some(Vec::new());
        let mut f = r.frame();
        // Cut inside the fixed part and fix the lengths.
        f.truncate(14 + 20 + 8 + 100);
        f[16..18].copy_from_slice(&128u16.to_be_bytes());
        fix_ip_checksum(&mut f);
        f[14 + 24..14 + 26].copy_from_slice(&108u16.to_be_bytes());
        f
    }));
    let mut cookie = Req::dhcp(msg::DISCOVER, &[]);
    cookie.options = Some(vec![opt::MESSAGE_TYPE, 1, msg::DISCOVER, opt::END]);
    let mut f = cookie.frame();
    f[14 + 28 + 236] = 98;
    cases.push(("bad cookie", f));
    cases.push((
        "option past the end",
        Req::dhcp(msg::DISCOVER, &[opt::HOST_NAME, 200, b'x']).frame_without_end(),
    ));
    cases.push((
        "length byte missing",
        Req::dhcp(msg::DISCOVER, &[opt::HOST_NAME]).frame_without_end(),
    ));
    cases.push((
        "message type length 2",
        Req::dhcp(msg::DISCOVER, &[opt::MESSAGE_TYPE, 2, 1, 1]).frame(),
    ));
    cases.push((
        "requested ip length 3",
        Req::dhcp(msg::REQUEST, &[opt::REQUESTED_IP, 3, 1, 2, 3]).frame(),
    ));
    cases.push(("unknown message type", Req::dhcp(42, &[]).frame()));
    let n = cases.len() as u64;
    for (what, frame) in cases {
        assert_eq!(s.handle(&frame), None, "{what}");
    }
    assert_eq!(
        s.stats(),
        DhcpStats {
            malformed: n,
            ..DhcpStats::default()
        }
    );
}

impl Req {
    /// The frame with its options' END dropped (and lengths fixed).
    fn frame_without_end(&self) -> Vec<u8> {
        let mut r = self.clone();
        if let Some(o) = &mut r.options {
            assert_eq!(o.pop(), Some(opt::END));
        }
        r.frame()
    }
}

#[test]
fn ethernet_padding_after_datagram_is_accepted() {
    let mut s = server();
    let mut f = Req::dhcp(msg::DISCOVER, &[]).frame();
    f.extend_from_slice(&[0xaa; 20]);
    assert!(s.handle(&f).is_some());
}

#[test]
fn new_rejects_bad_configs() {
    let bad = |f: fn(&mut DhcpConfig)| {
        let mut c = config();
        f(&mut c);
        DhcpServer::new(c).unwrap_err()
    };
    assert!(matches!(
        bad(|c| c.guest_mac.0[0] = 0x01),
        DhcpConfigError::GuestMac(_)
    ));
    assert!(matches!(
        bad(|c| c.host_mac.0[0] = 0x00),
        DhcpConfigError::HostMac(_)
    ));
    assert!(matches!(
        bad(|c| c.host_mac = MacAddr(GUEST_MAC)),
        DhcpConfigError::HostMac(_)
    ));
    assert!(matches!(
        bad(|c| c.netmask = Ipv4Addr::new(255, 0, 255, 0)),
        DhcpConfigError::Netmask(_)
    ));
    assert!(matches!(
        bad(|c| c.guest_addr = Ipv4Addr::new(100, 64, 5, 5)),
        DhcpConfigError::Addresses { .. }
    ));
    assert!(matches!(
        bad(|c| c.guest_addr = HOST),
        DhcpConfigError::Addresses { .. }
    ));
    assert!(matches!(
        bad(|c| c.hostname = Some(String::new())),
        DhcpConfigError::Hostname(_)
    ));
    assert!(matches!(
        bad(|c| c.hostname = Some("a b".into())),
        DhcpConfigError::Hostname(_)
    ));
    assert!(matches!(
        bad(|c| c.hostname = Some("x".repeat(254))),
        DhcpConfigError::Hostname(_)
    ));
    assert!(matches!(
        bad(|c| c.bootfile = Some("f".repeat(128))),
        DhcpConfigError::Bootfile(_)
    ));
    assert!(matches!(
        bad(|c| c.bootfile = Some("a\0b".into())),
        DhcpConfigError::Bootfile(_)
    ));
    let mut c = config();
    c.hostname = Some(format!("{}.{}", "a".repeat(63), "b".repeat(63)));
    c.bootfile = Some("f".repeat(127));
    assert!(DhcpServer::new(c).is_ok());
}

#[test]
fn longest_hostname_and_bootfile_fit_one_frame() {
    let mut c = config();
    let label = "h".repeat(63);
    c.hostname = Some(format!("{label}.{label}.{label}.{}", "h".repeat(61)));
    assert_eq!(c.hostname.as_ref().unwrap().len(), MAX_HOSTNAME_LEN);
    c.bootfile = Some("b".repeat(MAX_BOOTFILE_LEN));
    let mut s = DhcpServer::new(c).unwrap();
    let f = s.handle(&Req::dhcp(msg::DISCOVER, &[]).frame()).unwrap();
    assert!(f.len() <= 1514);
    let r = parse_reply(&f);
    assert_eq!(r.options[&opt::HOST_NAME].len(), MAX_HOSTNAME_LEN);
    assert_eq!(r.file.len(), MAX_BOOTFILE_LEN);
}

/// xorshift64*: deterministic pseudo-random numbers for the mutation loop.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn mutated_and_truncated_frames_never_panic() {
    let mut cfg = config();
    cfg.hostname = Some("fuzz".into());
    cfg.bootfile = Some("auto_install".into());
    let mut s = DhcpServer::new(cfg).unwrap();
    let seeds = [
        Req::dhcp(msg::DISCOVER, &[]).frame(),
        Req::dhcp(msg::REQUEST, &requested(GUEST)).frame(),
        Req::dhcp(msg::REQUEST, &[opt::PAD, opt::PAD, 12, 3, b'a', b'b', b'c']).frame(),
        Req::bootp().frame(),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut replies = 0u64;
    for i in 0..20_000 {
        let mut f = seeds[i % seeds.len()].clone();
        // Truncate every prefix length of the first seed, then mutate.
        if i < f.len() {
            f.truncate(i);
        } else {
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(f.len());
                match rng.below(4) {
                    0 => f[at] = rng.next() as u8,
                    1 => f[at] ^= 1 << rng.below(8),
                    2 => f.truncate(at),
                    // Hit the option area, where lengths live.
                    _ => {
                        let o = 14 + 20 + 8 + 240;
                        if f.len() > o {
                            let at = o + rng.below(f.len() - o);
                            f[at] = rng.next() as u8;
                        }
                    }
                }
                if f.is_empty() {
                    break;
                }
            }
            if rng.below(2) == 0 && f.len() > 34 {
                fix_ip_checksum(&mut f);
            }
        }
        if let Some(reply) = s.handle(&f) {
            replies += 1;
            // Every reply is a well-formed frame to the guest.
            let r = parse_reply(&reply);
            assert_eq!(r.eth_dst, GUEST_MAC);
            assert_eq!(r.ip_src, HOST);
        }
    }
    let st = s.stats();
    let total = st.offers + st.acks + st.inform_acks + st.naks + st.bootp_replies;
    assert_eq!(total, replies);
    assert_eq!(total + st.ignored + st.malformed, 20_000);
    assert!(st.malformed > 1000, "{st:?}");
    assert!(replies > 100, "{st:?}");
}

/// The filter asks for the whole frame only for what may be DHCP; the
/// rest goes to the tap from guest memory uncopied.
#[test]
fn wants_ipv4_udp_to_port_67_or_what_it_cannot_tell() {
    use crate::guest_frames::{FrameFilter, PEEK_LEN};
    let s = server();
    let discover = Req::dhcp(msg::DISCOVER, &[]).frame();
    assert!(s.wants(&discover[..PEEK_LEN]));
    // The same datagram to another port (53): not for the server.
    let mut dns = discover.clone();
    dns[14 + 20 + 2..14 + 20 + 4].copy_from_slice(&53u16.to_be_bytes());
    assert!(!s.wants(&dns[..PEEK_LEN]));
    // IP options push the UDP header back: still found.
    let mut with_options = discover[..14].to_vec();
    with_options.push(0x46);
    with_options.extend_from_slice(&discover[15..34]);
    with_options.extend_from_slice(&[1, 1, 1, 0]);
    with_options.extend_from_slice(&discover[34..]);
    assert!(s.wants(&with_options[..PEEK_LEN]));
    // TCP, ARP: no.
    let mut tcp = discover.clone();
    tcp[14 + 9] = 6;
    assert!(!s.wants(&tcp[..PEEK_LEN]));
    let mut arp = discover.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert!(!s.wants(&arp[..PEEK_LEN]));
    // Cut before the port: it cannot tell, so it looks.
    assert!(s.wants(&discover[..14 + 20 + 1]));
}
