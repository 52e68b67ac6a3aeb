//! `net`: virtio-net and the guest's tiny IPv4 stack (`crate::net`).
//! Configures the address by DHCP (or `static=IP/ROUTER`), checks it
//! against `expect_ip=`/`expect_router=`, ARP-resolves and pings the
//! router (or `peer=IP`), optionally exchanges UDP datagrams with an echo
//! service (`udp=IP:PORT`, `count=N`) and runs a transmit or receive
//! benchmark (`bench=tx|rx`, `ms=`, `size=`); `spoof=MAC` first sends
//! one datagram `vmdt-spoof` from that forged source address (to test
//! `locked lladdr`). `echo=PORT` answers UDP datagrams to that port
//! (always, and for `linger=MS` at the end, for two guests testing each
//! other). `ping_ms=MS` waits that long between pings; `lossy=1` lets a
//! ping go unanswered (after 500 ms) instead of failing, and prints
//! `pings sent=N received=M` at the end (a device restarted under the
//! guest loses the frames in flight, as a real NIC would).

use super::{Ctx, Reason, Scenario};
use crate::cpu;
use crate::net::{dhcp, Event, Ip, Mac, Stack};
use crate::virtio::net::{Net, BUF};

/// The scenario.
pub const SCENARIO: Scenario = Scenario { name: "net", run };

/// DHCP: attempts, and the wait for each reply.
const DHCP_ATTEMPTS: u32 = 4;
const DHCP_TIMEOUT_MS: u64 = 3_000;
/// Bound of an ARP resolution (retried every 500 ms).
const ARP_TIMEOUT_MS: u64 = 10_000;
/// Wait for an echo reply or an echoed datagram.
const REPLY_TIMEOUT_MS: u64 = 3_000;
/// Wait for an echo reply that may be lost (`lossy=1`).
const LOSSY_TIMEOUT_MS: u64 = 500;
/// ICMP identifier of our pings; data bytes per ping.
const PING_ID: u16 = 0x564D;
const PING_DATA: usize = 56;
/// Our UDP source port.
const UDP_PORT: u16 = 40_000;
/// Subnet mask with `static=` when `mask=` gives none.
const STATIC_MASK: Ip = Ip([255, 255, 255, 0]);

/// An address argument.
fn ip_arg(ctx: &Ctx, key: &str) -> Result<Option<Ip>, Reason> {
    match ctx.boot.arg(key) {
        None => Ok(None),
        Some(s) => match Ip::parse(s) {
            Some(ip) => Ok(Some(ip)),
            None => crate::fail!("{key}= takes an address a.b.c.d"),
        },
    }
}

fn run(ctx: &Ctx) -> Result<(), Reason> {
    let name = ctx.name;
    let pings = ctx.number("ping", 3)?;
    let ping_ms = ctx.number("ping_ms", 0)?;
    let lossy = ctx.number("lossy", 0)? != 0;
    let count = ctx.number("count", 3)?;
    let ms = ctx.number("ms", 1000)?;
    let size = ctx.number("size", 1024)? as usize;
    let linger = ctx.number("linger", 0)?;
    let expect_ip = ip_arg(ctx, "expect_ip")?;
    let expect_router = ip_arg(ctx, "expect_router")?;
    let peer = ip_arg(ctx, "peer")?;
    let udp = match ctx.boot.arg("udp") {
        None => None,
        Some(s) => match s
            .split_once(':')
            .and_then(|(ip, port)| Some((Ip::parse(ip)?, port.parse::<u16>().ok()?)))
        {
            Some(target) => Some(target),
            None => crate::fail!("udp= takes IP:PORT"),
        },
    };
    let spoof = match ctx.boot.arg("spoof") {
        None => None,
        Some(s) => match Mac::parse(s) {
            Some(mac) => Some(mac),
            None => crate::fail!("spoof= takes an Ethernet address aa:bb:cc:dd:ee:ff"),
        },
    };
    if spoof.is_some() && udp.is_none() {
        crate::fail!("spoof= needs udp=IP:PORT");
    }
    let bench = ctx.boot.arg("bench");
    if !matches!(bench, None | Some("tx") | Some("rx")) {
        crate::fail!("bench= takes tx or rx");
    }
    if bench == Some("tx") && udp.is_none() {
        crate::fail!("bench=tx needs udp=IP:PORT");
    }
    if size > Stack::MAX_UDP {
        crate::fail!("size= at most {}", Stack::MAX_UDP);
    }

    let rx_buf = ctx.number("rxbuf", BUF as u64)? as usize;
    let net = Net::open(ctx.boot, rx_buf)
        .map_err(|r| Reason::new(format_args!("virtio net: {}", r.as_str())))?;
    let func = net.t.func;
    let (rx_size, tx_size) = net.queue_sizes();
    let link = match net.link_up() {
        None => "unknown",
        Some(true) => "up",
        Some(false) => "down",
    };
    crate::println!(
        "VMDT {name} device={func} id={:04x}:{:04x} offered={:#x} features={:#x} queues={} rx_size={rx_size} tx_size={tx_size} rxbuf={rx_buf} link={link}",
        func.vendor,
        func.device,
        net.offered,
        net.features,
        net.t.num_queues(),
    );
    crate::println!("VMDT {name} mac={}", Mac(net.mac));
    let mut stack = Stack::new(net);
    if let Some(port) = ctx.boot.arg("echo") {
        let Ok(port) = port.parse::<u16>() else {
            crate::fail!("echo= takes a port");
        };
        stack.echo_port = Some(port);
    }

    // Address.
    if let Some(s) = ctx.boot.arg("static") {
        let Some((ip, router)) = s
            .split_once('/')
            .and_then(|(a, b)| Some((Ip::parse(a)?, Ip::parse(b)?)))
        else {
            crate::fail!("static= takes IP/ROUTER");
        };
        stack.ip = ip;
        stack.router = router;
        stack.mask = ip_arg(ctx, "mask")?.unwrap_or(STATIC_MASK);
        crate::println!(
            "VMDT {name} static ip={} mask={} router={}",
            stack.ip,
            stack.mask,
            stack.router
        );
    } else {
        let began = cpu::rdtsc();
        let lease = dhcp::run(&mut stack, DHCP_ATTEMPTS, DHCP_TIMEOUT_MS)?;
        crate::println!(
            "VMDT {name} dhcp ip={} mask={} router={} dns={} lease={} server={} ms={}",
            lease.ip,
            lease.mask,
            lease.router,
            lease.dns,
            lease.lease,
            lease.server,
            stack.us_since(began) / 1000
        );
        stack.ip = lease.ip;
        stack.mask = lease.mask;
        stack.router = lease.router;
    }
    if let Some(want) = expect_ip {
        if stack.ip != want {
            crate::fail!("ip {} != expected {want}", stack.ip);
        }
    }
    if let Some(want) = expect_router {
        if stack.router != want {
            crate::fail!("router {} != expected {want}", stack.router);
        }
    }

    // ARP and ping.
    let target = peer.unwrap_or(stack.router);
    if pings > 0 {
        if target == Ip::UNSPECIFIED {
            crate::fail!("no router to ping (give peer=)");
        }
        let began = cpu::rdtsc();
        let mac = stack.resolve(stack.next_hop(target), ARP_TIMEOUT_MS)?;
        crate::println!(
            "VMDT {name} arp ip={} mac={} ms={}",
            stack.next_hop(target),
            Mac(mac),
            stack.us_since(began) / 1000
        );
        let timeout = if lossy {
            LOSSY_TIMEOUT_MS
        } else {
            REPLY_TIMEOUT_MS
        };
        let mut received = 0u64;
        for seq in 1..=pings as u16 {
            if ping_ms > 0 && seq > 1 {
                let pause = stack.deadline(ping_ms);
                while cpu::rdtsc() < pause {
                    // Answer and drop what comes meanwhile (a late reply).
                    stack.poll()?;
                }
            }
            let sent = cpu::rdtsc();
            stack.send_ping(mac, target, PING_ID, seq, PING_DATA)?;
            let end = stack.deadline(timeout);
            let answered = loop {
                if let Some(Event::EchoReply { src, id, seq: s }) = stack.poll()? {
                    if src == target && id == PING_ID && s == seq {
                        break true;
                    }
                }
                if cpu::rdtsc() >= end {
                    break false;
                }
            };
            if answered {
                received += 1;
                crate::println!("VMDT {name} ping seq={seq} rtt_us={}", stack.us_since(sent));
            } else if lossy {
                crate::println!("VMDT {name} ping seq={seq} lost");
            } else {
                crate::fail!("no echo reply from {target} seq={seq} in {timeout} ms");
            }
        }
        if lossy {
            crate::println!("VMDT {name} pings sent={pings} received={received}");
            if received == 0 {
                crate::fail!("no ping was answered");
            }
        }
    }

    // UDP echo.
    let mut udp_mac = [0u8; 6];
    if let Some((ip, port)) = udp {
        udp_mac = stack.resolve(stack.next_hop(ip), ARP_TIMEOUT_MS)?;
        if let Some(forged) = spoof {
            // One datagram from a forged source address, before the
            // genuine ones (same queue: a receiver that got a genuine one
            // would have got this one first).
            stack.send_udp_from(forged, udp_mac, ip, UDP_PORT, port, b"vmdt-spoof")?;
            crate::println!("VMDT {name} spoof src={}", Mac(forged));
        }
        let mut received = 0u64;
        for k in 0..count {
            let mut text = [0u8; 32];
            let len = fmt_into(&mut text, format_args!("vmdt-udp-{k}"));
            stack.send_udp(udp_mac, ip, UDP_PORT, port, &text[..len])?;
            let end = stack.deadline(REPLY_TIMEOUT_MS);
            while cpu::rdtsc() < end {
                if let Some(Event::Udp {
                    src,
                    sport,
                    dport,
                    off,
                    len: n,
                }) = stack.poll()?
                {
                    if src == ip
                        && sport == port
                        && dport == UDP_PORT
                        && stack.rx_data(off, n) == &text[..len]
                    {
                        received += 1;
                        break;
                    }
                }
            }
        }
        crate::println!("VMDT {name} udp sent={count} received={received}");
        if received != count {
            crate::fail!(
                "{} of {count} UDP datagrams not echoed by {ip}:{port}",
                count - received
            );
        }
    }

    // Benchmarks.
    match (bench, udp) {
        (Some("tx"), Some((ip, port))) => {
            let mut data = [0u8; 2048];
            for (k, b) in data.iter_mut().enumerate() {
                *b = k as u8;
            }
            let began = cpu::rdtsc();
            let end = stack.deadline(ms);
            let (mut frames, mut bytes) = (0u64, 0u64);
            while cpu::rdtsc() < end {
                let tag = size.min(8);
                data[..tag].copy_from_slice(&frames.to_be_bytes()[..tag]);
                stack.send_udp(udp_mac, ip, UDP_PORT, port, &data[..size])?;
                frames += 1;
                bytes += size as u64;
                while stack.net.has_rx() {
                    stack.poll()?;
                }
            }
            stack.net.flush()?;
            crate::println!(
                "VMDT {name} bench tx frames={frames} bytes={bytes} ms={}",
                stack.us_since(began) / 1000
            );
        }
        (Some("rx"), _) => {
            crate::println!("VMDT {name} bench rx ready");
            let (frames0, bytes0) = (stack.rx_frames, stack.rx_bytes);
            let began = cpu::rdtsc();
            let end = stack.deadline(ms);
            while cpu::rdtsc() < end {
                stack.poll()?;
            }
            crate::println!(
                "VMDT {name} bench rx frames={} bytes={} ms={}",
                stack.rx_frames - frames0,
                stack.rx_bytes - bytes0,
                stack.us_since(began) / 1000
            );
        }
        _ => {}
    }

    // Keep answering ARP, pings and the echo port for a peer.
    if linger > 0 {
        let end = stack.deadline(linger);
        while cpu::rdtsc() < end {
            stack.poll()?;
        }
    }
    stack.net.flush()?;
    crate::println!(
        "VMDT {name} stats tx_frames={} rx_frames={} rx_dropped={} echoed={}",
        stack.net.tx_frames,
        stack.net.rx_frames,
        stack.net.rx_dropped,
        stack.echoed
    );
    Ok(())
}

/// Formats into `buf` (cut at its size); returns the length.
fn fmt_into(buf: &mut [u8], args: core::fmt::Arguments) -> usize {
    struct W<'a>(&'a mut [u8], usize);
    impl core::fmt::Write for W<'_> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let n = s.len().min(self.0.len() - self.1);
            self.0[self.1..self.1 + n].copy_from_slice(&s.as_bytes()[..n]);
            self.1 += n;
            Ok(())
        }
    }
    let mut w = W(buf, 0);
    let _ = core::fmt::Write::write_fmt(&mut w, args);
    w.1
}
