//! A guest's Ethernet frame → a validated BOOTP/DHCP request, or the reason
//! it is not one for us. Every length is checked before it is used; nothing
//! here indexes past a slice or panics on any input.

use std::net::Ipv4Addr;

use super::wire::{self, msg, off, opt};
use super::DhcpConfig;

/// Why a frame gets no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Well-formed, but not a request this server answers.
    Ignored(&'static str),
    /// Broken: a truncated or inconsistent header or option.
    Malformed(&'static str),
}

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// BOOTP: no DHCP message type option.
    Bootp,
    /// DHCP, with the message type of option 53.
    Dhcp(u8),
}

/// A request from the guest, every field checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// BOOTP or the DHCP message type.
    pub kind: Kind,
    /// Transaction id, echoed in the reply.
    pub xid: u32,
    /// BOOTP flags, echoed in the reply.
    pub flags: u16,
    /// The client's current address, unspecified when it has none.
    pub ciaddr: Ipv4Addr,
    /// Option 50, the address the client asks for.
    pub requested: Option<Ipv4Addr>,
    /// Option 54, the server the client chose.
    pub server_id: Option<Ipv4Addr>,
}

type Result<T> = std::result::Result<T, Rejected>;

fn malformed<T>(why: &'static str) -> Result<T> {
    Err(Rejected::Malformed(why))
}

fn ignored<T>(why: &'static str) -> Result<T> {
    Err(Rejected::Ignored(why))
}

/// Parses a whole Ethernet frame sent by the guest.
pub fn parse(frame: &[u8], cfg: &DhcpConfig) -> Result<Request> {
    let udp_payload = parse_headers(frame, cfg)?;
    parse_bootp(udp_payload, cfg)
}

/// Checks the Ethernet, IPv4 and UDP headers; returns the UDP payload.
fn parse_headers<'a>(frame: &'a [u8], cfg: &DhcpConfig) -> Result<&'a [u8]> {
    let Some(eth) = frame.get(..wire::ETH_HDR_LEN) else {
        return malformed("ethernet header truncated");
    };
    if eth[6..12] != cfg.guest_mac.0 {
        return ignored("ethernet source is not the guest's mac");
    }
    if eth[..6] != wire::ETH_BROADCAST && eth[..6] != cfg.host_mac.0 {
        return ignored("ethernet destination is neither broadcast nor the host");
    }
    if wire::be16(eth, 12) != Some(wire::ETHERTYPE_IPV4) {
        return ignored("not ipv4");
    }

    let ip = &frame[wire::ETH_HDR_LEN..];
    let Some(&ver_ihl) = ip.first() else {
        return malformed("ipv4 header truncated");
    };
    if ver_ihl >> 4 != 4 {
        return malformed("ipv4 version is not 4");
    }
    let ihl = usize::from(ver_ihl & 0xf) * 4;
    if ihl < wire::IPV4_MIN_HDR_LEN {
        return malformed("ipv4 ihl below 5");
    }
    let Some(hdr) = ip.get(..ihl) else {
        return malformed("ipv4 header truncated");
    };
    // Frames may carry Ethernet padding past the datagram: trust the total
    // length, bounded by what arrived.
    let total = usize::from(wire::be16(hdr, 2).unwrap_or(0));
    let Some(datagram) = ip.get(..total).filter(|_| total >= ihl) else {
        return malformed("ipv4 total length inconsistent");
    };
    if wire::checksum(hdr) != 0 {
        return malformed("ipv4 header checksum");
    }
    if hdr[9] != wire::IPPROTO_UDP {
        return ignored("not udp");
    }
    if wire::be16(hdr, 6).unwrap_or(0) & wire::IPV4_FRAG_MASK != 0 {
        return ignored("ipv4 fragment");
    }
    let dst = wire::ipv4(hdr, 16).unwrap_or(Ipv4Addr::UNSPECIFIED);
    if dst != Ipv4Addr::BROADCAST && dst != cfg.host_addr {
        return ignored("ipv4 destination is neither broadcast nor the host");
    }

    let udp = &datagram[ihl..];
    let (Some(sport), Some(dport), Some(ulen)) =
        (wire::be16(udp, 0), wire::be16(udp, 2), wire::be16(udp, 4))
    else {
        return malformed("udp header truncated");
    };
    if sport != wire::CLIENT_PORT || dport != wire::SERVER_PORT {
        return ignored("not udp 68 -> 67");
    }
    // The UDP checksum is not verified: the frame comes straight from the
    // guest's driver (no wire to corrupt it), and with checksum offload it
    // may hold only the pseudo-header sum.
    let ulen = usize::from(ulen);
    match udp.get(wire::UDP_HDR_LEN..ulen) {
        Some(payload) if ulen >= wire::UDP_HDR_LEN => Ok(payload),
        _ => malformed("udp length inconsistent"),
    }
}

/// Checks the BOOTP message and its options.
fn parse_bootp(bootp: &[u8], cfg: &DhcpConfig) -> Result<Request> {
    let Some(fixed) = bootp.get(..wire::BOOTP_FIXED_LEN) else {
        return malformed("bootp message truncated");
    };
    if fixed[off::OP] != wire::BOOTREQUEST {
        return ignored("bootp op is not a request");
    }
    if fixed[off::HTYPE] != wire::HTYPE_ETHER || fixed[off::HLEN] != wire::HLEN_ETHER {
        return malformed("bootp hardware type is not ethernet");
    }
    if fixed[off::CHADDR..off::CHADDR + 6] != cfg.guest_mac.0 {
        return ignored("chaddr is not the guest's mac");
    }
    // A relay has no place on a point-to-point link to the guest.
    if fixed[off::HOPS] != 0 || wire::ipv4(fixed, off::GIADDR) != Some(Ipv4Addr::UNSPECIFIED) {
        return ignored("relayed request");
    }
    let mut req = Request {
        kind: Kind::Bootp,
        xid: wire::be32(fixed, off::XID).unwrap_or(0),
        flags: wire::be16(fixed, off::FLAGS).unwrap_or(0),
        ciaddr: wire::ipv4(fixed, off::CIADDR).unwrap_or(Ipv4Addr::UNSPECIFIED),
        requested: None,
        server_id: None,
    };

    let vendor = &bootp[wire::BOOTP_FIXED_LEN..];
    // RFC 951 clients may send an empty or zeroed vendor area: plain BOOTP.
    if vendor.iter().all(|&b| b == 0) {
        return Ok(req);
    }
    match vendor.get(..4) {
        Some(cookie) if cookie == wire::MAGIC_COOKIE => {}
        _ => return malformed("vendor area without the magic cookie"),
    }
    parse_options(&vendor[4..], &mut req)?;
    Ok(req)
}

/// Walks the options (RFC 2132 §2) into `req`; an option running past the
/// end or one of ours with a wrong length is malformed. A missing END is
/// tolerated when the last option ends exactly at the end.
fn parse_options(opts: &[u8], req: &mut Request) -> Result<()> {
    let mut at = 0;
    while let Some(&code) = opts.get(at) {
        match code {
            opt::PAD => {
                at += 1;
                continue;
            }
            opt::END => break,
            _ => {}
        }
        let Some(&len) = opts.get(at + 1) else {
            return malformed("option length past the end");
        };
        let start = at + 2;
        let end = start + usize::from(len);
        let Some(data) = opts.get(start..end) else {
            return malformed("option runs past the end");
        };
        match code {
            opt::MESSAGE_TYPE => match data {
                &[t] => req.kind = Kind::Dhcp(t),
                _ => return malformed("message type option length"),
            },
            opt::REQUESTED_IP => req.requested = Some(addr_option(data)?),
            opt::SERVER_ID => req.server_id = Some(addr_option(data)?),
            _ => {}
        }
        at = end;
    }
    if let Kind::Dhcp(t) = req.kind {
        if !(msg::DISCOVER..=msg::INFORM).contains(&t) {
            return malformed("unknown dhcp message type");
        }
    }
    Ok(())
}

fn addr_option(data: &[u8]) -> Result<Ipv4Addr> {
    match *data {
        [a, b, c, d] => Ok(Ipv4Addr::new(a, b, c, d)),
        _ => malformed("address option length"),
    }
}
