//! Builds the reply frame: Ethernet, IPv4, UDP 67 → 68 and the BOOTP
//! message with its options, per RFC 2131 §4.1 and table 3.

use std::net::Ipv4Addr;

use super::request::Request;
use super::wire::{self, msg, off, opt};
use super::DhcpConfig;

/// The kind of reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// DHCPOFFER to a DISCOVER.
    Offer,
    /// DHCPACK to a REQUEST for the guest's address.
    Ack,
    /// DHCPACK to an INFORM: configuration only, no address, no lease.
    InformAck,
    /// DHCPNAK to a REQUEST for another address.
    Nak,
    /// BOOTREPLY to a plain BOOTP request.
    Bootp,
}

impl ReplyKind {
    /// The DHCP message type, `None` for BOOTP.
    fn message_type(self) -> Option<u8> {
        match self {
            ReplyKind::Offer => Some(msg::OFFER),
            ReplyKind::Ack | ReplyKind::InformAck => Some(msg::ACK),
            ReplyKind::Nak => Some(msg::NAK),
            ReplyKind::Bootp => None,
        }
    }
}

/// Appends option `code` with `data`. Callers pass at most 255 bytes (the
/// config's hostname and bootfile are checked in `DhcpServer::new`).
fn push_opt(out: &mut Vec<u8>, code: u8, data: &[u8]) {
    debug_assert!(data.len() <= usize::from(u8::MAX));
    out.push(code);
    out.push(data.len() as u8);
    out.extend_from_slice(data);
}

/// The BOOTP message (fixed part, cookie, options, padding).
fn bootp_message(cfg: &DhcpConfig, req: &Request, kind: ReplyKind) -> Vec<u8> {
    let mut m = vec![0u8; wire::BOOTP_FIXED_LEN];
    m[off::OP] = wire::BOOTREPLY;
    m[off::HTYPE] = wire::HTYPE_ETHER;
    m[off::HLEN] = wire::HLEN_ETHER;
    m[off::XID..off::XID + 4].copy_from_slice(&req.xid.to_be_bytes());
    m[off::FLAGS..off::FLAGS + 2].copy_from_slice(&req.flags.to_be_bytes());
    let (ciaddr, yiaddr, siaddr) = match kind {
        ReplyKind::Offer | ReplyKind::Bootp => {
            (Ipv4Addr::UNSPECIFIED, cfg.guest_addr, cfg.host_addr)
        }
        ReplyKind::Ack => (req.ciaddr, cfg.guest_addr, cfg.host_addr),
        ReplyKind::InformAck => (req.ciaddr, Ipv4Addr::UNSPECIFIED, cfg.host_addr),
        ReplyKind::Nak => (
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
        ),
    };
    m[off::CIADDR..off::CIADDR + 4].copy_from_slice(&ciaddr.octets());
    m[off::YIADDR..off::YIADDR + 4].copy_from_slice(&yiaddr.octets());
    m[off::SIADDR..off::SIADDR + 4].copy_from_slice(&siaddr.octets());
    m[off::CHADDR..off::CHADDR + 6].copy_from_slice(&cfg.guest_mac.0);
    let bootfile = cfg.bootfile.as_deref().filter(|_| kind != ReplyKind::Nak);
    if let Some(file) = bootfile {
        // Checked shorter than the field, so it stays NUL-terminated.
        m[off::FILE..off::FILE + file.len()].copy_from_slice(file.as_bytes());
    }

    m.extend_from_slice(&wire::MAGIC_COOKIE);
    let host = cfg.host_addr.octets();
    if let Some(t) = kind.message_type() {
        push_opt(&mut m, opt::MESSAGE_TYPE, &[t]);
        push_opt(&mut m, opt::SERVER_ID, &host);
    }
    if matches!(kind, ReplyKind::Offer | ReplyKind::Ack) {
        push_opt(&mut m, opt::LEASE_TIME, &wire::LEASE_INFINITE.to_be_bytes());
    }
    if kind != ReplyKind::Nak {
        push_opt(&mut m, opt::SUBNET_MASK, &cfg.netmask.octets());
        push_opt(&mut m, opt::ROUTER, &host);
        push_opt(&mut m, opt::DNS, &host);
        if let Some(name) = &cfg.hostname {
            push_opt(&mut m, opt::HOST_NAME, name.as_bytes());
        }
        if let Some(file) = bootfile {
            push_opt(&mut m, opt::BOOTFILE, file.as_bytes());
        }
    }
    m.push(opt::END);
    if m.len() < wire::BOOTP_MIN_LEN {
        m.resize(wire::BOOTP_MIN_LEN, opt::PAD);
    }
    m
}

/// Where the reply goes (RFC 2131 §4.1, no relay): a NAK is broadcast; an
/// ACK to a client with an address goes to that address; otherwise to
/// the broadcast address if the client set the BROADCAST flag, else to the
/// address offered.
fn destination(cfg: &DhcpConfig, req: &Request, kind: ReplyKind) -> Ipv4Addr {
    match kind {
        ReplyKind::Nak => Ipv4Addr::BROADCAST,
        _ if !req.ciaddr.is_unspecified() => req.ciaddr,
        _ if req.flags & wire::FLAG_BROADCAST != 0 => Ipv4Addr::BROADCAST,
        ReplyKind::InformAck => Ipv4Addr::BROADCAST,
        _ => cfg.guest_addr,
    }
}

/// The whole reply frame. The Ethernet destination is the guest's MAC even
/// for an IP broadcast: the link is point to point and the guest is the
/// only station on it.
pub fn build(cfg: &DhcpConfig, req: &Request, kind: ReplyKind) -> Vec<u8> {
    let bootp = bootp_message(cfg, req, kind);
    let dst = destination(cfg, req, kind);
    let udp_len = wire::UDP_HDR_LEN + bootp.len();
    let ip_len = wire::IPV4_MIN_HDR_LEN + udp_len;
    // At most a few hundred bytes: hostname and bootfile are bounded.
    let ip_len16 = u16::try_from(ip_len).unwrap_or(u16::MAX);
    let udp_len16 = u16::try_from(udp_len).unwrap_or(u16::MAX);

    let mut f = Vec::with_capacity(wire::ETH_HDR_LEN + ip_len);
    f.extend_from_slice(&cfg.guest_mac.0);
    f.extend_from_slice(&cfg.host_mac.0);
    f.extend_from_slice(&wire::ETHERTYPE_IPV4.to_be_bytes());

    let mut ip = [0u8; wire::IPV4_MIN_HDR_LEN];
    ip[0] = 0x45; // version 4, IHL 5
    ip[2..4].copy_from_slice(&ip_len16.to_be_bytes());
    ip[8] = wire::REPLY_TTL;
    ip[9] = wire::IPPROTO_UDP;
    ip[12..16].copy_from_slice(&cfg.host_addr.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let csum = wire::checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);

    let udp_at = f.len();
    f.extend_from_slice(&wire::SERVER_PORT.to_be_bytes());
    f.extend_from_slice(&wire::CLIENT_PORT.to_be_bytes());
    f.extend_from_slice(&udp_len16.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&bootp);
    let csum = wire::udp_checksum(cfg.host_addr, dst, &f[udp_at..]);
    f[udp_at + 6..udp_at + 8].copy_from_slice(&csum.to_be_bytes());
    f
}
