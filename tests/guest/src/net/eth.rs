//! Ethernet II framing (no FCS: the device adds and strips it).

/// Header bytes: destination, source, EtherType.
pub const HLEN: usize = 14;
/// EtherTypes handled.
pub const TYPE_IPV4: u16 = 0x0800;
pub const TYPE_ARP: u16 = 0x0806;
/// The broadcast address.
pub const BROADCAST: [u8; 6] = [0xFF; 6];

/// A parsed header.
#[derive(Clone, Copy)]
pub struct Header {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: u16,
}

/// Splits a frame into its header and payload.
pub fn parse(frame: &[u8]) -> Option<(Header, &[u8])> {
    if frame.len() < HLEN {
        return None;
    }
    let mut dst = [0; 6];
    let mut src = [0; 6];
    dst.copy_from_slice(&frame[0..6]);
    src.copy_from_slice(&frame[6..12]);
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    Some((
        Header {
            dst,
            src,
            ethertype,
        },
        &frame[HLEN..],
    ))
}

/// Writes a header at the start of `buf`.
pub fn write(buf: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    buf[0..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
}
