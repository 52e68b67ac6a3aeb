//! dev-net's queues driven over a real vhost-user connection by
//! dev-backend's test frontend, with a datagram socketpair standing in for
//! the tap: no root, no KVM, no other process.

use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dev_backend::testing::{TestFrontend, TestOptions, Used};
use dev_net::device::{NetDevice, RX_QUEUE, TX_QUEUE};
use dev_net::guest_frames::FrameFilter;
use dev_net::mac::MacAddr;
use dev_net::metrics::NetMetrics;
use dev_net::tap::Tap;
use dev_net::wire::VNET_HDR_LEN;
use vhost::VhostBackend;

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(200);
const OURS: MacAddr = MacAddr([0xfe, 0xe1, 0xbb, 0xd1, 0x23, 0x45]);
const PEER: MacAddr = MacAddr([0xfe, 0xe1, 0xbb, 0xd1, 0x23, 0x46]);
const BUF: u32 = 4096;

struct Net {
    fe: TestFrontend,
    dev: Arc<NetDevice>,
    /// The host's end of the "tap".
    wire: UnixDatagram,
}

fn setup(locked: bool) -> Net {
    setup_with(locked, TestOptions::default())
}

fn setup_with(locked: bool, opts: TestOptions) -> Net {
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    let tap = Tap::from_fd(OwnedFd::from(theirs)).unwrap();
    let dev = Arc::new(NetDevice::new(tap, OURS, locked).unwrap());
    let (sock, backend) = UnixStream::pair().unwrap();
    let served = Arc::clone(&dev);
    std::thread::spawn(move || dev_backend::serve::serve_connection(backend, served));
    let opts = TestOptions {
        num_queues: 2,
        queue_size: 32,
        ..opts
    };
    let fe = TestFrontend::connect(sock, opts).unwrap();
    ours.set_read_timeout(Some(QUIET)).unwrap();
    Net {
        fe,
        dev,
        wire: ours,
    }
}

fn frame(dst: MacAddr, src: MacAddr, ethertype: u16, payload_len: usize) -> Vec<u8> {
    let mut f = dst.0.to_vec();
    f.extend(src.0);
    f.extend(ethertype.to_be_bytes());
    f.extend((0..payload_len).map(|i| i as u8));
    f
}

fn with_hdr(frame: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; VNET_HDR_LEN];
    p.extend_from_slice(frame);
    p
}

fn count(c: &AtomicU64) -> u64 {
    NetMetrics::get(c)
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Net {
    fn send_from_guest(&mut self, packet: &[u8]) -> u16 {
        let head = self.fe.add_request(TX_QUEUE, packet, 0).unwrap();
        self.fe.kick(TX_QUEUE).unwrap();
        head
    }

    fn tap_recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70000];
        let n = self.wire.recv(&mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    fn post_rx_buffers(&mut self, n: usize) -> Vec<u16> {
        let heads = (0..n)
            .map(|_| self.fe.add_request(RX_QUEUE, &[], BUF).unwrap())
            .collect();
        self.fe.kick(RX_QUEUE).unwrap();
        heads
    }

    /// Reassembles what the used entries `used` hold.
    fn received(&self, used: &[Used]) -> Vec<u8> {
        used.iter()
            .flat_map(|u| self.fe.response(RX_QUEUE, u.id, u.len).unwrap())
            .collect()
    }
}

fn num_buffers(packet: &[u8]) -> u16 {
    u16::from_le_bytes([packet[10], packet[11]])
}

#[test]
fn features_offer_mrg_rxbuf_mac_status_and_offloads() {
    let mut net = setup(false);
    let f = net.fe.frontend().get_features().unwrap();
    for bit in [0, 1, 5, 7, 8, 9, 11, 12, 13, 15, 16, 32] {
        assert!(f & (1 << bit) != 0, "feature bit {bit} offered");
    }
    assert_eq!(f & (1 << 10 | 1 << 14), 0, "no UFO on a socket");
}

#[test]
fn tx_frame_reaches_tap_with_header() {
    let mut net = setup(false);
    let packet = with_hdr(&frame(PEER, OURS, 0x0800, 60));
    let head = net.send_from_guest(&packet);
    assert_eq!(
        net.fe.wait_used(TX_QUEUE, 1, WAIT).unwrap(),
        vec![Used { id: head, len: 0 }]
    );
    assert_eq!(net.tap_recv().unwrap(), packet);
    assert_eq!(count(&net.dev.net_metrics().tx_frames), 1);
    assert_eq!(count(&net.dev.net_metrics().tx_bytes), 74);
}

#[test]
fn tx_bad_chains_runts_and_oversize_dropped_and_completed() {
    let mut net = setup(false);
    net.send_from_guest(&[0u8; 5]);
    net.send_from_guest(&with_hdr(&[1u8; 13]));
    net.send_from_guest(&with_hdr(&vec![2u8; 65551]));
    let good = with_hdr(&frame(PEER, OURS, 0x0800, 10));
    net.send_from_guest(&good);
    assert_eq!(net.fe.wait_used(TX_QUEUE, 4, WAIT).unwrap().len(), 4);
    assert_eq!(net.tap_recv().unwrap(), good, "only the good frame");
    assert_eq!(net.tap_recv(), None);
    let m = net.dev.net_metrics();
    assert_eq!(
        [&m.tx_bad_chain, &m.tx_runt, &m.tx_oversize, &m.tx_frames].map(count),
        [1, 1, 1, 1]
    );
}

#[test]
fn rx_frame_fills_one_buffer_with_num_buffers_one() {
    let mut net = setup(false);
    net.post_rx_buffers(4);
    let packet = with_hdr(&frame(OURS, PEER, 0x0800, 100));
    net.wire.send(&packet).unwrap();
    let used = net.fe.wait_used(RX_QUEUE, 1, WAIT).unwrap();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].len as usize, packet.len());
    let got = net.received(&used);
    assert_eq!(num_buffers(&got), 1);
    assert_eq!(got[VNET_HDR_LEN..], packet[VNET_HDR_LEN..]);
    assert_eq!(count(&net.dev.net_metrics().rx_frames), 1);
}

#[test]
fn rx_big_frame_spreads_over_mergeable_buffers() {
    let mut net = setup(false);
    net.post_rx_buffers(4);
    let packet = with_hdr(&frame(OURS, PEER, 0x0800, 10000));
    net.wire.send(&packet).unwrap();
    let used = net.fe.wait_used(RX_QUEUE, 3, WAIT).unwrap();
    let lens: Vec<u32> = used.iter().map(|u| u.len).collect();
    assert_eq!(lens, [BUF, BUF, (packet.len() - 2 * BUF as usize) as u32]);
    let got = net.received(&used);
    assert_eq!(num_buffers(&got), 3);
    assert_eq!(got[VNET_HDR_LEN..], packet[VNET_HDR_LEN..]);
}

#[test]
fn rx_frame_waits_for_buffers_then_arrives() {
    let mut net = setup(false);
    let big = with_hdr(&frame(OURS, PEER, 0x0800, 9000));
    let small = with_hdr(&frame(OURS, PEER, 0x0800, 50));
    net.wire.send(&big).unwrap();
    net.wire.send(&small).unwrap();
    // Two buffers are not enough for the big frame: nothing completes.
    net.post_rx_buffers(2);
    std::thread::sleep(QUIET);
    assert!(net.fe.take_used(RX_QUEUE).unwrap().is_empty());
    net.post_rx_buffers(2);
    let used = net.fe.wait_used(RX_QUEUE, 4, WAIT).unwrap();
    assert_eq!(used.len(), 4);
    let first = net.received(&used[..3]);
    assert_eq!(num_buffers(&first), 3);
    assert_eq!(first[VNET_HDR_LEN..], big[VNET_HDR_LEN..]);
    let second = net.received(&used[3..]);
    assert_eq!(second[VNET_HDR_LEN..], small[VNET_HDR_LEN..]);
}

/// The driver is asked not to kick the receive queue while dev-net still
/// has buffers to fill (a guest's kick is a VM exit), and asked again
/// once they run out, so a frame waiting for buffers is not stranded.
#[test]
fn rx_kicks_wanted_only_when_buffers_run_out() {
    let opts = TestOptions {
        event_idx: false,
        ..TestOptions::default()
    };
    let mut net = setup_with(false, opts);
    net.post_rx_buffers(4);
    let frames: Vec<Vec<u8>> = (0..5)
        .map(|i| with_hdr(&frame(OURS, PEER, 0x0800, 100 + i)))
        .collect();
    net.wire.send(&frames[0]).unwrap();
    let used = net.fe.wait_used(RX_QUEUE, 1, WAIT).unwrap();
    assert_eq!(used.len(), 1);
    std::thread::sleep(QUIET);
    assert!(
        !net.fe.kicks_wanted(RX_QUEUE).unwrap(),
        "three buffers are left: the device should not want kicks"
    );
    // Three frames take the last three buffers; the fifth finds none.
    for f in &frames[1..] {
        net.wire.send(f).unwrap();
    }
    let used = net.fe.wait_used(RX_QUEUE, 3, WAIT).unwrap();
    assert_eq!(used.len(), 3);
    wait_until("the device to want kicks again", || {
        net.fe.kicks_wanted(RX_QUEUE).unwrap()
    });
    net.post_rx_buffers(1);
    let used = net.fe.wait_used(RX_QUEUE, 1, WAIT).unwrap();
    assert_eq!(used.len(), 1);
    let last = net.received(&used);
    assert_eq!(last[VNET_HDR_LEN..], frames[4][VNET_HDR_LEN..]);
}

#[test]
fn rx_runt_dropped_and_counted() {
    let mut net = setup(false);
    net.post_rx_buffers(2);
    net.wire.send(&with_hdr(&[0xff; 13])).unwrap();
    let good = with_hdr(&frame(OURS, PEER, 0x0806, 28));
    net.wire.send(&good).unwrap();
    let used = net.fe.wait_used(RX_QUEUE, 1, WAIT).unwrap();
    assert_eq!(used.len(), 1);
    assert_eq!(net.received(&used)[VNET_HDR_LEN..], good[VNET_HDR_LEN..]);
    assert_eq!(count(&net.dev.net_metrics().rx_runt), 1);
}

#[test]
fn locked_drops_foreign_source_and_foreign_unicast() {
    let mut net = setup(true);
    net.send_from_guest(&with_hdr(&frame(PEER, PEER, 0x0800, 20)));
    let ok = with_hdr(&frame(PEER, OURS, 0x0800, 20));
    net.send_from_guest(&ok);
    assert_eq!(net.fe.wait_used(TX_QUEUE, 2, WAIT).unwrap().len(), 2);
    assert_eq!(net.tap_recv().unwrap(), ok);
    assert_eq!(net.tap_recv(), None);
    net.post_rx_buffers(4);
    net.wire
        .send(&with_hdr(&frame(PEER, PEER, 0x0800, 20)))
        .unwrap();
    let bcast = with_hdr(&frame(MacAddr::BROADCAST, PEER, 0x0806, 28));
    net.wire.send(&bcast).unwrap();
    let used = net.fe.wait_used(RX_QUEUE, 1, WAIT).unwrap();
    assert_eq!(used.len(), 1);
    assert_eq!(net.received(&used)[VNET_HDR_LEN..], bcast[VNET_HDR_LEN..]);
    let m = net.dev.net_metrics();
    assert_eq!([&m.tx_locked, &m.rx_locked].map(count), [1, 1]);
}

/// Answers frames of ethertype 0x88b5 with a frame back to the sender.
/// Answers frames of ethertype 0x88b5 (local experimental) and counts
/// the frames it was shown.
struct Responder(Arc<AtomicU64>);

impl FrameFilter for Responder {
    fn wants(&self, start: &[u8]) -> bool {
        start[12..14] == [0x88, 0xb5]
    }

    fn on_guest_frame(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if frame[12..14] != [0x88, 0xb5] {
            return None;
        }
        let src = MacAddr::from_slice(&frame[6..])?;
        Some(self::frame(src, PEER, 0x88b5, 40))
    }
}

#[test]
fn filter_reply_injected_to_guest_and_not_forwarded() {
    let mut net = setup(true);
    let shown = Arc::new(AtomicU64::new(0));
    net.dev
        .set_frame_filter(Box::new(Responder(Arc::clone(&shown))));
    net.post_rx_buffers(2);
    net.send_from_guest(&with_hdr(&frame(MacAddr::BROADCAST, OURS, 0x88b5, 30)));
    // Large enough to go out in several pieces, from guest memory.
    let passed = with_hdr(&frame(PEER, OURS, 0x0800, 3000));
    net.send_from_guest(&passed);
    let used = net.fe.wait_used(RX_QUEUE, 1, WAIT).unwrap();
    assert_eq!(used.len(), 1);
    let got = net.received(&used);
    assert_eq!(got[..VNET_HDR_LEN], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(got[VNET_HDR_LEN..], frame(OURS, PEER, 0x88b5, 40));
    assert_eq!(
        net.tap_recv().unwrap(),
        passed,
        "the answered frame stays here"
    );
    let m = net.dev.net_metrics();
    assert_eq!([&m.tx_answered, &m.rx_injected].map(count), [1, 1]);
    assert_eq!(count(&shown), 1, "the filter saw a frame it did not want");
}

#[test]
fn tap_gone_tx_dropped_and_queue_keeps_going() {
    let mut net = setup(false);
    let Net { fe, dev, wire } = &mut net;
    drop(std::mem::replace(wire, UnixDatagram::unbound().unwrap()));
    for _ in 0..3 {
        fe.add_request(TX_QUEUE, &with_hdr(&frame(PEER, OURS, 0x0800, 20)), 0)
            .unwrap();
    }
    fe.kick(TX_QUEUE).unwrap();
    assert_eq!(fe.wait_used(TX_QUEUE, 3, WAIT).unwrap().len(), 3);
    wait_until("the drops counted", || {
        count(&dev.net_metrics().tx_tap_gone) == 3
    });
    assert!(dev.tap().is_gone());
    assert_eq!(
        dev_backend::Device::metrics(&**dev).snapshot().guest_errors,
        0
    );
}

#[test]
fn rx_without_mrg_rxbuf_one_chain_per_frame_too_big_dropped() {
    let mut net = setup(false);
    let offered = net.fe.frontend().get_features().unwrap();
    net.fe
        .frontend()
        .set_features(offered & !(1 << 15))
        .unwrap();
    // A request with a reply: SET_FEATURES has been handled after it.
    net.fe.frontend().get_features().unwrap();
    net.post_rx_buffers(2);
    let big = with_hdr(&frame(OURS, PEER, 0x0800, 5000));
    let small = with_hdr(&frame(OURS, PEER, 0x0800, 500));
    net.wire.send(&big).unwrap();
    net.wire.send(&small).unwrap();
    let used = net.fe.wait_used(RX_QUEUE, 1, WAIT).unwrap();
    assert_eq!(used.len(), 1, "the big frame took no buffer");
    let got = net.received(&used);
    assert_eq!(num_buffers(&got), 1);
    assert_eq!(got[VNET_HDR_LEN..], small[VNET_HDR_LEN..]);
    assert_eq!(count(&net.dev.net_metrics().rx_too_big), 1);
}
