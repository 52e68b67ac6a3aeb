//! Wire constants and helpers of Ethernet, IPv4, UDP and BOOTP/DHCP
//! (RFC 894, RFC 791, RFC 768, RFC 951, RFC 2131, RFC 2132).

use std::net::Ipv4Addr;

/// Ethernet header: destination, source, EtherType.
pub const ETH_HDR_LEN: usize = 14;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// The Ethernet broadcast address.
pub const ETH_BROADCAST: [u8; 6] = [0xff; 6];

/// An IPv4 header without options (IHL 5).
pub const IPV4_MIN_HDR_LEN: usize = 20;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// Mask of the more-fragments flag and the fragment offset.
pub const IPV4_FRAG_MASK: u16 = 0x3fff;
/// TTL of our replies (the usual default; the guest is one hop away).
pub const REPLY_TTL: u8 = 64;

/// A UDP header.
pub const UDP_HDR_LEN: usize = 8;
/// The BOOTP/DHCP server port.
pub const SERVER_PORT: u16 = 67;
/// The BOOTP/DHCP client port.
pub const CLIENT_PORT: u16 = 68;

/// The fixed part of a BOOTP message, up to the vendor/options area.
pub const BOOTP_FIXED_LEN: usize = 236;
/// Smallest BOOTP message a server sends (RFC 951's 64-byte vendor area):
/// old clients drop shorter replies, so replies are padded to it.
pub const BOOTP_MIN_LEN: usize = 300;
/// BOOTP `op` of a request.
pub const BOOTREQUEST: u8 = 1;
/// BOOTP `op` of a reply.
pub const BOOTREPLY: u8 = 2;
/// BOOTP `htype` of Ethernet.
pub const HTYPE_ETHER: u8 = 1;
/// BOOTP `hlen` of Ethernet.
pub const HLEN_ETHER: u8 = 6;
/// The BROADCAST bit of BOOTP `flags` (RFC 2131 §2): the client cannot
/// receive unicast IP before it is configured.
pub const FLAG_BROADCAST: u16 = 0x8000;
/// Length of the `file` field (a NUL-terminated string).
pub const FILE_LEN: usize = 128;
/// The DHCP magic cookie opening the options area (RFC 2131 §3).
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];

/// Offsets of the BOOTP fields used here.
pub mod off {
    /// `op`.
    pub const OP: usize = 0;
    /// `htype`.
    pub const HTYPE: usize = 1;
    /// `hlen`.
    pub const HLEN: usize = 2;
    /// `hops`.
    pub const HOPS: usize = 3;
    /// `xid`.
    pub const XID: usize = 4;
    /// `flags`.
    pub const FLAGS: usize = 10;
    /// `ciaddr`.
    pub const CIADDR: usize = 12;
    /// `yiaddr`.
    pub const YIADDR: usize = 16;
    /// `siaddr`.
    pub const SIADDR: usize = 20;
    /// `giaddr`.
    pub const GIADDR: usize = 24;
    /// `chaddr`.
    pub const CHADDR: usize = 28;
    /// `file`.
    pub const FILE: usize = 108;
}

/// Option codes (RFC 2132).
pub mod opt {
    /// Padding.
    pub const PAD: u8 = 0;
    /// Subnet mask.
    pub const SUBNET_MASK: u8 = 1;
    /// Routers.
    pub const ROUTER: u8 = 3;
    /// Domain name servers.
    pub const DNS: u8 = 6;
    /// Host name.
    pub const HOST_NAME: u8 = 12;
    /// Requested IP address.
    pub const REQUESTED_IP: u8 = 50;
    /// IP address lease time.
    pub const LEASE_TIME: u8 = 51;
    /// DHCP message type.
    pub const MESSAGE_TYPE: u8 = 53;
    /// Server identifier.
    pub const SERVER_ID: u8 = 54;
    /// Bootfile name.
    pub const BOOTFILE: u8 = 67;
    /// End of options.
    pub const END: u8 = 255;
}

/// DHCP message types (option 53, RFC 2132 §9.6).
pub mod msg {
    /// DHCPDISCOVER.
    pub const DISCOVER: u8 = 1;
    /// DHCPOFFER.
    pub const OFFER: u8 = 2;
    /// DHCPREQUEST.
    pub const REQUEST: u8 = 3;
    /// DHCPDECLINE.
    pub const DECLINE: u8 = 4;
    /// DHCPACK.
    pub const ACK: u8 = 5;
    /// DHCPNAK.
    pub const NAK: u8 = 6;
    /// DHCPRELEASE.
    pub const RELEASE: u8 = 7;
    /// DHCPINFORM.
    pub const INFORM: u8 = 8;
}

/// Lease time meaning "infinite" (RFC 2131 §3.3): the address of a local
/// interface never changes, so neither does the lease.
pub const LEASE_INFINITE: u32 = 0xffff_ffff;

/// Big-endian u16 at `at`; `None` past the end.
pub fn be16(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// Big-endian u32 at `at`; `None` past the end.
pub fn be32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// IPv4 address at `at`; `None` past the end.
pub fn ipv4(buf: &[u8], at: usize) -> Option<Ipv4Addr> {
    be32(buf, at).map(Ipv4Addr::from)
}

/// Ones' complement sum of `data` (RFC 1071), added to `sum`, unfolded.
pub fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Folds a ones' complement sum to 16 bits and complements it.
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum16(0, data))
}

/// The UDP checksum of `udp` (header with a zero checksum field, and
/// payload) between `src` and `dst`; 0 is sent as 0xffff (RFC 768).
pub fn udp_checksum(src: Ipv4Addr, dst: Ipv4Addr, udp: &[u8]) -> u16 {
    let mut sum = sum16(0, &src.octets());
    sum = sum16(sum, &dst.octets());
    sum += u32::from(IPPROTO_UDP);
    // A UDP datagram in an Ethernet frame is far below 4 GiB.
    sum += udp.len() as u32;
    sum = sum16(sum, udp);
    match fold(sum) {
        0 => 0xffff,
        c => c,
    }
}
