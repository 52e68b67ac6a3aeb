//! DHCP client (RFC 2131/2132): DISCOVER → OFFER → REQUEST → ACK, all
//! broadcast (the BROADCAST flag asks the server to broadcast too), with
//! retries. Records the offered address, subnet mask, router, DNS server
//! and lease time.

use super::{eth, Event, Ip, Stack};
use crate::cpu;
use crate::scenarios::Reason;

const CLIENT_PORT: u16 = 68;
const SERVER_PORT: u16 = 67;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// BOOTP fixed part; the magic cookie follows, then the options.
const FIXED: usize = 236;

/// Message types (option 53).
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

/// Options.
const OPT_PAD: u8 = 0;
const OPT_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_LEASE: u8 = 51;
const OPT_MSG_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PARAMS: u8 = 55;
const OPT_CLIENT_ID: u8 = 61;
const OPT_END: u8 = 255;

/// What the server granted.
#[derive(Clone, Copy, Default)]
pub struct Lease {
    pub ip: Ip,
    pub mask: Ip,
    pub router: Ip,
    pub dns: Ip,
    /// Seconds.
    pub lease: u32,
    pub server: Ip,
}

/// A parsed server message.
struct Reply {
    msg_type: u8,
    lease: Lease,
}

/// Builds a client message into `buf`; returns its length.
fn build(buf: &mut [u8], mac: [u8; 6], xid: u32, msg_type: u8, offer: Option<&Lease>) -> usize {
    buf[..FIXED].fill(0);
    buf[0] = 1; // BOOTREQUEST
    buf[1] = 1; // Ethernet
    buf[2] = 6;
    buf[4..8].copy_from_slice(&xid.to_be_bytes());
    buf[10..12].copy_from_slice(&0x8000u16.to_be_bytes()); // BROADCAST
    buf[28..34].copy_from_slice(&mac);
    buf[FIXED..FIXED + 4].copy_from_slice(&MAGIC);
    let mut n = FIXED + 4;
    let mut opt = |code: u8, data: &[u8]| {
        buf[n] = code;
        buf[n + 1] = data.len() as u8;
        buf[n + 2..n + 2 + data.len()].copy_from_slice(data);
        n += 2 + data.len();
    };
    opt(OPT_MSG_TYPE, &[msg_type]);
    let mut client_id = [1u8; 7];
    client_id[1..].copy_from_slice(&mac);
    opt(OPT_CLIENT_ID, &client_id);
    if let Some(offer) = offer {
        opt(OPT_REQUESTED_IP, &offer.ip.0);
        opt(OPT_SERVER_ID, &offer.server.0);
    }
    opt(
        OPT_PARAMS,
        &[OPT_MASK, OPT_ROUTER, OPT_DNS, OPT_LEASE, OPT_SERVER_ID],
    );
    buf[n] = OPT_END;
    n + 1
}

/// Parses a server reply to our `xid` and `mac`.
fn parse(p: &[u8], mac: [u8; 6], xid: u32) -> Option<Reply> {
    if p.len() < FIXED + 4 || p[0] != 2 || p[4..8] != xid.to_be_bytes() || p[28..34] != mac {
        return None;
    }
    if p[FIXED..FIXED + 4] != MAGIC {
        return None;
    }
    let mut reply = Reply {
        msg_type: 0,
        lease: Lease {
            ip: Ip::from_slice(&p[16..20]),
            ..Lease::default()
        },
    };
    let mut i = FIXED + 4;
    while i < p.len() {
        let code = p[i];
        if code == OPT_END {
            break;
        }
        if code == OPT_PAD {
            i += 1;
            continue;
        }
        let len = usize::from(*p.get(i + 1)?);
        let data = p.get(i + 2..i + 2 + len)?;
        match (code, len) {
            (OPT_MSG_TYPE, 1) => reply.msg_type = data[0],
            (OPT_MASK, 4) => reply.lease.mask = Ip::from_slice(data),
            (OPT_ROUTER, 4..) => reply.lease.router = Ip::from_slice(data),
            (OPT_DNS, 4..) => reply.lease.dns = Ip::from_slice(data),
            (OPT_LEASE, 4) => {
                reply.lease.lease = u32::from_be_bytes([data[0], data[1], data[2], data[3]])
            }
            (OPT_SERVER_ID, 4) => reply.lease.server = Ip::from_slice(data),
            _ => {}
        }
        i += 2 + len;
    }
    Some(reply)
}

/// Sends one message and waits up to `timeout_ms` for a reply of type
/// `want` (or NAK).
fn exchange(
    stack: &mut Stack,
    xid: u32,
    msg_type: u8,
    offer: Option<&Lease>,
    want: u8,
    timeout_ms: u64,
) -> Result<Option<Reply>, Reason> {
    let mut msg = [0u8; 512];
    // Padded (zeroes) to the classic 300-byte BOOTP minimum.
    let len = build(&mut msg, stack.mac, xid, msg_type, offer).max(300);
    stack.send_udp(
        eth::BROADCAST,
        Ip::BROADCAST,
        CLIENT_PORT,
        SERVER_PORT,
        &msg[..len],
    )?;
    let end = stack.deadline(timeout_ms);
    while cpu::rdtsc() < end {
        let Some(Event::Udp {
            sport: SERVER_PORT,
            dport: CLIENT_PORT,
            off,
            len,
            ..
        }) = stack.poll()?
        else {
            continue;
        };
        let Some(reply) = parse(stack.rx_data(off, len), stack.mac, xid) else {
            continue;
        };
        if reply.msg_type == want || reply.msg_type == NAK {
            return Ok(Some(reply));
        }
    }
    Ok(None)
}

/// Runs DISCOVER/OFFER/REQUEST/ACK, `attempts` times at most, waiting
/// `timeout_ms` for each reply. The stack keeps address 0.0.0.0 (the
/// caller configures it from the lease).
pub fn run(stack: &mut Stack, attempts: u32, timeout_ms: u64) -> Result<Lease, Reason> {
    let mac = stack.mac;
    for attempt in 0..attempts {
        let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ (0x5644_0000 + attempt);
        let Some(offer) = exchange(stack, xid, DISCOVER, None, OFFER, timeout_ms)? else {
            continue;
        };
        if offer.msg_type != OFFER {
            continue;
        }
        let Some(ack) = exchange(stack, xid, REQUEST, Some(&offer.lease), ACK, timeout_ms)? else {
            continue;
        };
        if ack.msg_type != ACK {
            continue; // NAK: start over
        }
        let mut lease = ack.lease;
        if lease.server == Ip::UNSPECIFIED {
            lease.server = offer.lease.server;
        }
        return Ok(lease);
    }
    crate::fail!("DHCP: no lease after {attempts} attempts of {timeout_ms} ms")
}
