//! ARP for IPv4 over Ethernet (RFC 826).

use super::Ip;

/// Packet bytes.
pub const LEN: usize = 28;
/// Operations.
pub const OP_REQUEST: u16 = 1;
pub const OP_REPLY: u16 = 2;

/// A parsed packet (Ethernet/IPv4 only).
#[derive(Clone, Copy)]
pub struct Arp {
    pub op: u16,
    pub sha: [u8; 6],
    pub spa: Ip,
    pub tha: [u8; 6],
    pub tpa: Ip,
}

/// Parses an Ethernet/IPv4 ARP packet.
pub fn parse(p: &[u8]) -> Option<Arp> {
    if p.len() < LEN || p[0..6] != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    let mut sha = [0; 6];
    let mut tha = [0; 6];
    sha.copy_from_slice(&p[8..14]);
    tha.copy_from_slice(&p[18..24]);
    Some(Arp {
        op: u16::from_be_bytes([p[6], p[7]]),
        sha,
        spa: Ip::from_slice(&p[14..18]),
        tha,
        tpa: Ip::from_slice(&p[24..28]),
    })
}

/// Writes `arp` at the start of `buf`; returns its length.
pub fn write(buf: &mut [u8], arp: &Arp) -> usize {
    buf[0..6].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
    buf[6..8].copy_from_slice(&arp.op.to_be_bytes());
    buf[8..14].copy_from_slice(&arp.sha);
    buf[14..18].copy_from_slice(&arp.spa.0);
    buf[18..24].copy_from_slice(&arp.tha);
    buf[24..28].copy_from_slice(&arp.tpa.0);
    LEN
}
