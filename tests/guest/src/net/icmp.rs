//! ICMP echo request and reply (RFC 792).

use super::checksum;

/// Header bytes of an echo message.
pub const HLEN: usize = 8;
/// Message types.
pub const ECHO_REPLY: u8 = 0;
pub const ECHO_REQUEST: u8 = 8;

/// A parsed echo message.
#[derive(Clone, Copy)]
pub struct Echo {
    pub ty: u8,
    pub id: u16,
    pub seq: u16,
}

/// Parses an echo request or reply (checksum verified) into its header
/// and data.
pub fn parse_echo(p: &[u8]) -> Option<(Echo, &[u8])> {
    if p.len() < HLEN || checksum(p, 0) != 0 || p[1] != 0 {
        return None;
    }
    if p[0] != ECHO_REPLY && p[0] != ECHO_REQUEST {
        return None;
    }
    let echo = Echo {
        ty: p[0],
        id: u16::from_be_bytes([p[4], p[5]]),
        seq: u16::from_be_bytes([p[6], p[7]]),
    };
    Some((echo, &p[HLEN..]))
}

/// Writes the header of an echo message whose `data_len` bytes of data
/// are already at `buf[HLEN..]`; returns the message length.
pub fn write_echo(buf: &mut [u8], echo: Echo, data_len: usize) -> usize {
    let len = HLEN + data_len;
    buf[0] = echo.ty;
    buf[1] = 0;
    buf[2..4].copy_from_slice(&[0, 0]);
    buf[4..6].copy_from_slice(&echo.id.to_be_bytes());
    buf[6..8].copy_from_slice(&echo.seq.to_be_bytes());
    let sum = checksum(&buf[..len], 0);
    buf[2..4].copy_from_slice(&sum.to_be_bytes());
    len
}
