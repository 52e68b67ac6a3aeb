//! IPv4 headers (RFC 791): no options sent, options skipped on receive,
//! fragments dropped.

use super::{checksum, Ip};

/// Header bytes (no options).
pub const HLEN: usize = 20;
/// Protocols handled.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_UDP: u8 = 17;
/// TTL of sent packets.
const TTL: u8 = 64;

/// A parsed header.
#[derive(Clone, Copy)]
pub struct Header {
    pub src: Ip,
    pub dst: Ip,
    pub proto: u8,
}

/// Validates a packet (version, lengths, header checksum, not a fragment)
/// and splits it into its header and payload (cut at the total length).
pub fn parse(p: &[u8]) -> Option<(Header, &[u8])> {
    if p.len() < HLEN || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0xF) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if ihl < HLEN || total < ihl || total > p.len() {
        return None;
    }
    if checksum(&p[..ihl], 0) != 0 {
        return None;
    }
    // MF set or a fragment offset: not reassembled.
    if u16::from_be_bytes([p[6], p[7]]) & 0x3FFF != 0 {
        return None;
    }
    let header = Header {
        src: Ip::from_slice(&p[12..16]),
        dst: Ip::from_slice(&p[16..20]),
        proto: p[9],
    };
    Some((header, &p[ihl..total]))
}

/// Writes a header (DF clear, TTL 64) for `payload_len` bytes at the start
/// of `buf`.
pub fn write(buf: &mut [u8], src: Ip, dst: Ip, proto: u8, id: u16, payload_len: usize) {
    let total = (HLEN + payload_len) as u16;
    buf[0] = 0x45;
    buf[1] = 0;
    buf[2..4].copy_from_slice(&total.to_be_bytes());
    buf[4..6].copy_from_slice(&id.to_be_bytes());
    buf[6..8].copy_from_slice(&[0, 0]);
    buf[8] = TTL;
    buf[9] = proto;
    buf[10..12].copy_from_slice(&[0, 0]);
    buf[12..16].copy_from_slice(&src.0);
    buf[16..20].copy_from_slice(&dst.0);
    let sum = checksum(&buf[..HLEN], 0);
    buf[10..12].copy_from_slice(&sum.to_be_bytes());
}
