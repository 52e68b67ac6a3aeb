//! UDP (RFC 768), checksummed both ways (a zero checksum is accepted).

use super::{checksum, ipv4, Ip};

/// Header bytes.
pub const HLEN: usize = 8;

/// The checksum's partial sum of the IPv4 pseudo-header.
fn pseudo(src: Ip, dst: Ip, len: usize) -> u32 {
    let mut sum = 0u32;
    for ip in [src, dst] {
        sum += u32::from(u16::from_be_bytes([ip.0[0], ip.0[1]]));
        sum += u32::from(u16::from_be_bytes([ip.0[2], ip.0[3]]));
    }
    sum + u32::from(ipv4::PROTO_UDP) + len as u32
}

/// Parses a datagram from `src` to `dst`: (source port, destination port,
/// data). None if short or the checksum is wrong.
pub fn parse(p: &[u8], src: Ip, dst: Ip) -> Option<(u16, u16, &[u8])> {
    if p.len() < HLEN {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([p[4], p[5]]));
    if len < HLEN || len > p.len() {
        return None;
    }
    let p = &p[..len];
    if p[6..8] != [0, 0] && checksum(p, pseudo(src, dst, len)) != 0 {
        return None;
    }
    let sport = u16::from_be_bytes([p[0], p[1]]);
    let dport = u16::from_be_bytes([p[2], p[3]]);
    Some((sport, dport, &p[HLEN..]))
}

/// Writes the header of a datagram whose `data_len` bytes of data are
/// already at `buf[HLEN..]`; returns the datagram length.
pub fn write(buf: &mut [u8], src: Ip, dst: Ip, sport: u16, dport: u16, data_len: usize) -> usize {
    let len = HLEN + data_len;
    buf[0..2].copy_from_slice(&sport.to_be_bytes());
    buf[2..4].copy_from_slice(&dport.to_be_bytes());
    buf[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    buf[6..8].copy_from_slice(&[0, 0]);
    let sum = match checksum(&buf[..len], pseudo(src, dst, len)) {
        0 => 0xFFFF,
        sum => sum,
    };
    buf[6..8].copy_from_slice(&sum.to_be_bytes());
    len
}
