//! A tiny polled IPv4 stack over the virtio network driver, for the `net`
//! scenario: Ethernet (`eth`), ARP (`arp`: answers requests for our
//! address, resolves next hops into a small cache), IPv4 (`ipv4`), ICMP
//! echo (`icmp`: requests answered, replies reported), UDP (`udp`) and a
//! DHCP client (`dhcp`). No fragmentation, no routing beyond "same subnet
//! or the router", no IP options sent.
//!
//! [`Stack::poll`] handles one received frame: ARP and echo requests are
//! answered there, datagrams for a UDP echo port (`echo_port`) are sent
//! back; what a caller waits for (echo replies, UDP datagrams) is returned
//! as an [`Event`].

pub mod arp;
pub mod dhcp;
pub mod eth;
pub mod icmp;
pub mod ipv4;
pub mod udp;

use core::fmt;

use crate::cpu;
use crate::scenarios::Reason;
use crate::virtio::net::{Net, BUF, MAX_TX_FRAME};

/// An IPv4 address.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Ip(pub [u8; 4]);

impl Ip {
    /// 0.0.0.0.
    pub const UNSPECIFIED: Ip = Ip([0; 4]);
    /// 255.255.255.255.
    pub const BROADCAST: Ip = Ip([255; 4]);

    /// The first four bytes of `b`.
    pub fn from_slice(b: &[u8]) -> Ip {
        Ip([b[0], b[1], b[2], b[3]])
    }

    /// As a big-endian number.
    pub fn to_u32(self) -> u32 {
        u32::from_be_bytes(self.0)
    }

    /// Parses dotted decimal `a.b.c.d`.
    pub fn parse(s: &str) -> Option<Ip> {
        let mut ip = [0u8; 4];
        let mut parts = s.split('.');
        for b in ip.iter_mut() {
            *b = parts.next()?.parse().ok()?;
        }
        parts.next().is_none().then_some(Ip(ip))
    }
}

impl fmt::Display for Ip {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a}.{b}.{c}.{d}")
    }
}

/// A MAC address, displayed as `aa:bb:cc:dd:ee:ff`.
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Parses `aa:bb:cc:dd:ee:ff` (hex, one or two digits per octet).
    pub fn parse(s: &str) -> Option<[u8; 6]> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for b in mac.iter_mut() {
            let part = parts.next()?;
            if part.is_empty() || part.len() > 2 {
                return None;
            }
            *b = u8::from_str_radix(part, 16).ok()?;
        }
        parts.next().is_none().then_some(mac)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// The Internet checksum (RFC 1071) of `data`, `sum` a partial sum to add
/// (a pseudo-header). Over data carrying a correct checksum it is 0.
pub fn checksum(data: &[u8], mut sum: u32) -> u16 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        if sum >= 0x8000_0000 {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// What [`Stack::poll`] hands to its caller.
#[derive(Clone, Copy)]
pub enum Event {
    /// A frame handled (or ignored) inside the stack.
    Handled,
    /// An ICMP echo reply.
    EchoReply { src: Ip, id: u16, seq: u16 },
    /// A UDP datagram for us (not for the echo port): its data is
    /// `Stack::rx_data(off, len)`.
    Udp {
        src: Ip,
        sport: u16,
        dport: u16,
        off: usize,
        len: usize,
    },
}

/// Entries of the ARP cache.
const ARP_ENTRIES: usize = 8;
/// Interval of ARP request retries.
const ARP_RETRY_MS: u64 = 500;
/// Longest frame received (longer ones are dropped).
const MAX_RX_FRAME: usize = BUF;

/// The stack: the device, our addresses, the ARP cache, frame buffers.
pub struct Stack {
    pub net: Net,
    pub mac: [u8; 6],
    /// Our address (0.0.0.0 until configured), subnet mask, router
    /// (0.0.0.0: none).
    pub ip: Ip,
    pub mask: Ip,
    pub router: Ip,
    /// UDP port whose datagrams are echoed back to their sender.
    pub echo_port: Option<u16>,
    /// Frames and bytes received (every frame the device returned).
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Datagrams echoed on `echo_port`.
    pub echoed: u64,
    arp: [(Ip, [u8; 6]); ARP_ENTRIES],
    arp_next: usize,
    ip_id: u16,
    rx: [u8; MAX_RX_FRAME],
    tx: [u8; MAX_TX_FRAME],
    /// TSC ticks per millisecond.
    pub tsc_ms: u64,
}

impl Stack {
    /// A stack over `net`, unconfigured (address 0.0.0.0).
    pub fn new(net: Net) -> Stack {
        Stack {
            mac: net.mac,
            net,
            ip: Ip::UNSPECIFIED,
            mask: Ip::UNSPECIFIED,
            router: Ip::UNSPECIFIED,
            echo_port: None,
            rx_frames: 0,
            rx_bytes: 0,
            echoed: 0,
            arp: [(Ip::UNSPECIFIED, [0; 6]); ARP_ENTRIES],
            arp_next: 0,
            ip_id: 1,
            rx: [0; MAX_RX_FRAME],
            tx: [0; MAX_TX_FRAME],
            tsc_ms: cpu::tsc_per_ms(),
        }
    }

    /// A TSC deadline `ms` from now.
    pub fn deadline(&self, ms: u64) -> u64 {
        cpu::rdtsc().saturating_add(ms.saturating_mul(self.tsc_ms))
    }

    /// Microseconds since TSC value `since`.
    pub fn us_since(&self, since: u64) -> u64 {
        cpu::rdtsc().saturating_sub(since) * 1000 / self.tsc_ms.max(1)
    }

    /// Bytes `off..off + len` of the last received frame (see [`Event::Udp`]).
    pub fn rx_data(&self, off: usize, len: usize) -> &[u8] {
        &self.rx[off..off + len]
    }

    /// The cached MAC of `ip`.
    pub fn arp_lookup(&self, ip: Ip) -> Option<[u8; 6]> {
        self.arp
            .iter()
            .find(|(a, _)| *a == ip && ip != Ip::UNSPECIFIED)
            .map(|&(_, mac)| mac)
    }

    fn arp_learn(&mut self, ip: Ip, mac: [u8; 6]) {
        if ip == Ip::UNSPECIFIED {
            return;
        }
        if let Some(entry) = self.arp.iter_mut().find(|(a, _)| *a == ip) {
            entry.1 = mac;
            return;
        }
        self.arp[self.arp_next] = (ip, mac);
        self.arp_next = (self.arp_next + 1) % ARP_ENTRIES;
    }

    /// Whether `ip` is on our subnet (or we have no mask).
    pub fn on_link(&self, ip: Ip) -> bool {
        let mask = self.mask.to_u32();
        ip.to_u32() & mask == self.ip.to_u32() & mask
    }

    /// The address to resolve to reach `dst`: itself on the subnet, else
    /// the router.
    pub fn next_hop(&self, dst: Ip) -> Ip {
        if self.on_link(dst) || self.router == Ip::UNSPECIFIED {
            dst
        } else {
            self.router
        }
    }

    /// Sends an Ethernet frame whose `len` payload bytes are already at
    /// `tx[eth::HLEN..]`.
    fn send_eth(&mut self, dst: [u8; 6], ethertype: u16, len: usize) -> Result<(), Reason> {
        self.send_eth_from(self.mac, dst, ethertype, len)
    }

    /// [`Stack::send_eth`] with source address `src` (ours, or a forged
    /// one for `spoof=`).
    fn send_eth_from(
        &mut self,
        src: [u8; 6],
        dst: [u8; 6],
        ethertype: u16,
        len: usize,
    ) -> Result<(), Reason> {
        eth::write(&mut self.tx, dst, src, ethertype);
        self.net.send(&self.tx[..eth::HLEN + len])
    }

    fn send_arp(&mut self, op: u16, dst_mac: [u8; 6], tha: [u8; 6], tpa: Ip) -> Result<(), Reason> {
        let packet = arp::Arp {
            op,
            sha: self.mac,
            spa: self.ip,
            tha,
            tpa,
        };
        let len = arp::write(&mut self.tx[eth::HLEN..], &packet);
        self.send_eth(dst_mac, eth::TYPE_ARP, len)
    }

    /// Sends an IPv4 packet whose `len` payload bytes are already at
    /// `tx[eth::HLEN + ipv4::HLEN..]`.
    fn send_ip(&mut self, dst_mac: [u8; 6], dst: Ip, proto: u8, len: usize) -> Result<(), Reason> {
        self.send_ip_from(self.mac, dst_mac, dst, proto, len)
    }

    /// [`Stack::send_ip`] in a frame from Ethernet address `src_mac`.
    fn send_ip_from(
        &mut self,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        dst: Ip,
        proto: u8,
        len: usize,
    ) -> Result<(), Reason> {
        let id = self.ip_id;
        self.ip_id = self.ip_id.wrapping_add(1);
        ipv4::write(&mut self.tx[eth::HLEN..], self.ip, dst, proto, id, len);
        self.send_eth_from(src_mac, dst_mac, eth::TYPE_IPV4, ipv4::HLEN + len)
    }

    /// Longest UDP payload one frame carries.
    pub const MAX_UDP: usize = MAX_TX_FRAME - eth::HLEN - ipv4::HLEN - udp::HLEN;

    /// Sends a UDP datagram to `dst` (whose next hop is `dst_mac`).
    pub fn send_udp(
        &mut self,
        dst_mac: [u8; 6],
        dst: Ip,
        sport: u16,
        dport: u16,
        data: &[u8],
    ) -> Result<(), Reason> {
        self.send_udp_from(self.mac, dst_mac, dst, sport, dport, data)
    }

    /// [`Stack::send_udp`] in a frame from Ethernet address `src_mac`
    /// (not necessarily ours).
    pub fn send_udp_from(
        &mut self,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        dst: Ip,
        sport: u16,
        dport: u16,
        data: &[u8],
    ) -> Result<(), Reason> {
        if data.len() > Self::MAX_UDP {
            crate::fail!("UDP payload of {} bytes > {}", data.len(), Self::MAX_UDP);
        }
        const AT: usize = eth::HLEN + ipv4::HLEN;
        self.tx[AT + udp::HLEN..AT + udp::HLEN + data.len()].copy_from_slice(data);
        let len = udp::write(&mut self.tx[AT..], self.ip, dst, sport, dport, data.len());
        self.send_ip_from(src_mac, dst_mac, dst, ipv4::PROTO_UDP, len)
    }

    /// Sends an ICMP echo request to `dst` with `data_len` bytes of a
    /// fixed pattern.
    pub fn send_ping(
        &mut self,
        dst_mac: [u8; 6],
        dst: Ip,
        id: u16,
        seq: u16,
        data_len: usize,
    ) -> Result<(), Reason> {
        const AT: usize = eth::HLEN + ipv4::HLEN;
        for (k, b) in self.tx[AT + icmp::HLEN..AT + icmp::HLEN + data_len]
            .iter_mut()
            .enumerate()
        {
            *b = k as u8;
        }
        let echo = icmp::Echo {
            ty: icmp::ECHO_REQUEST,
            id,
            seq,
        };
        let len = icmp::write_echo(&mut self.tx[AT..], echo, data_len);
        self.send_ip(dst_mac, dst, ipv4::PROTO_ICMP, len)
    }

    /// Resolves `ip` to a MAC (cache, else ARP requests every 500 ms for
    /// up to `timeout_ms`), handling other frames meanwhile (events other
    /// than ARP are dropped).
    pub fn resolve(&mut self, ip: Ip, timeout_ms: u64) -> Result<[u8; 6], Reason> {
        if ip == Ip::BROADCAST {
            return Ok(eth::BROADCAST);
        }
        let end = self.deadline(timeout_ms);
        loop {
            if let Some(mac) = self.arp_lookup(ip) {
                return Ok(mac);
            }
            self.send_arp(arp::OP_REQUEST, eth::BROADCAST, [0; 6], ip)?;
            let retry = self.deadline(ARP_RETRY_MS).min(end);
            while cpu::rdtsc() < retry {
                self.poll()?;
                if let Some(mac) = self.arp_lookup(ip) {
                    return Ok(mac);
                }
            }
            if cpu::rdtsc() >= end {
                crate::fail!("no ARP reply from {ip} in {timeout_ms} ms");
            }
        }
    }

    /// Whether an IPv4 destination is ours: our address, a broadcast, or
    /// anything while we have none (DHCP may unicast the offer).
    fn for_us(&self, dst: Ip) -> bool {
        let bcast = Ip((self.ip.to_u32() | !self.mask.to_u32()).to_be_bytes());
        dst == self.ip || dst == Ip::BROADCAST || dst == bcast || self.ip == Ip::UNSPECIFIED
    }

    /// Handles the next received frame, if any: None when none was there.
    pub fn poll(&mut self) -> Result<Option<Event>, Reason> {
        let Some(n) = self.net.recv(&mut self.rx)? else {
            return Ok(None);
        };
        self.rx_frames += 1;
        self.rx_bytes += n as u64;
        let Some((eh, payload)) = eth::parse(&self.rx[..n]) else {
            return Ok(Some(Event::Handled));
        };
        if eh.dst != self.mac && eh.dst != eth::BROADCAST {
            return Ok(Some(Event::Handled));
        }
        match eh.ethertype {
            eth::TYPE_ARP => {
                let Some(a) = arp::parse(payload) else {
                    return Ok(Some(Event::Handled));
                };
                self.arp_learn(a.spa, a.sha);
                if a.op == arp::OP_REQUEST && a.tpa == self.ip && self.ip != Ip::UNSPECIFIED {
                    self.send_arp(arp::OP_REPLY, a.sha, a.sha, a.spa)?;
                }
                Ok(Some(Event::Handled))
            }
            eth::TYPE_IPV4 => {
                let Some((ih, l4)) = ipv4::parse(payload) else {
                    return Ok(Some(Event::Handled));
                };
                if !self.for_us(ih.dst) {
                    return Ok(Some(Event::Handled));
                }
                match ih.proto {
                    ipv4::PROTO_ICMP => {
                        let Some((echo, data)) = icmp::parse_echo(l4) else {
                            return Ok(Some(Event::Handled));
                        };
                        if echo.ty == icmp::ECHO_REPLY {
                            return Ok(Some(Event::EchoReply {
                                src: ih.src,
                                id: echo.id,
                                seq: echo.seq,
                            }));
                        }
                        if self.ip == Ip::UNSPECIFIED || ih.dst != self.ip {
                            return Ok(Some(Event::Handled));
                        }
                        // Echo request: the same data back, to the sender's MAC.
                        const AT: usize = eth::HLEN + ipv4::HLEN + icmp::HLEN;
                        let len = data.len().min(MAX_TX_FRAME - AT);
                        self.tx[AT..AT + len].copy_from_slice(&data[..len]);
                        let reply = icmp::Echo {
                            ty: icmp::ECHO_REPLY,
                            ..echo
                        };
                        let len = icmp::write_echo(&mut self.tx[AT - icmp::HLEN..], reply, len);
                        self.send_ip(eh.src, ih.src, ipv4::PROTO_ICMP, len)?;
                        Ok(Some(Event::Handled))
                    }
                    ipv4::PROTO_UDP => {
                        let Some((sport, dport, data)) = udp::parse(l4, ih.src, ih.dst) else {
                            return Ok(Some(Event::Handled));
                        };
                        let off = data.as_ptr() as usize - self.rx.as_ptr() as usize;
                        let len = data.len();
                        if self.echo_port == Some(dport) && self.ip != Ip::UNSPECIFIED {
                            let len = len.min(Self::MAX_UDP);
                            const AT: usize = eth::HLEN + ipv4::HLEN + udp::HLEN;
                            self.tx[AT..AT + len].copy_from_slice(&self.rx[off..off + len]);
                            let ulen = udp::write(
                                &mut self.tx[AT - udp::HLEN..],
                                self.ip,
                                ih.src,
                                dport,
                                sport,
                                len,
                            );
                            self.send_ip(eh.src, ih.src, ipv4::PROTO_UDP, ulen)?;
                            self.echoed += 1;
                            return Ok(Some(Event::Handled));
                        }
                        Ok(Some(Event::Udp {
                            src: ih.src,
                            sport,
                            dport,
                            off,
                            len,
                        }))
                    }
                    _ => Ok(Some(Event::Handled)),
                }
            }
            _ => Ok(Some(Event::Handled)),
        }
    }
}
