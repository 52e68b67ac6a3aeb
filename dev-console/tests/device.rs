//! dev-console's virtio side driven over a real vhost-user connection by
//! dev-backend's test frontend: no KVM, no other process.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use dev_backend::testing::{TestFrontend, TestOptions, Used};
use dev_backend::Device;
use dev_console::device::{ConsoleDevice, RX_QUEUE, TX_QUEUE};
use dev_console::ring::Ring;
use dev_console::state::{Shared, Source, MAX_HELD_INPUT};

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(200);

/// A console device served on a thread, and a frontend for it.
fn connect(first_input: Source) -> (TestFrontend, Arc<Shared>) {
    let shared = Arc::new(Shared::new(64 * 1024, first_input).unwrap());
    let device = Arc::new(ConsoleDevice::new(Arc::clone(&shared)));
    let (ours, theirs) = UnixStream::pair().unwrap();
    std::thread::spawn(move || dev_backend::serve::serve_connection(theirs, device));
    let opts = TestOptions {
        num_queues: 2,
        queue_size: 16,
        ..TestOptions::default()
    };
    (TestFrontend::connect(ours, opts).unwrap(), shared)
}

fn ring_contents(ring: &Ring) -> Vec<u8> {
    let mut cursor = ring.cursor_at_oldest();
    let mut out = vec![0; ring.capacity()];
    let n = ring.read_at(&mut cursor, &mut out).len;
    out.truncate(n);
    out
}

#[test]
fn device_tx_bytes_land_in_the_ring_in_order_and_complete_at_once() {
    let (mut fe, shared) = connect(Source::Com1);
    let heads: Vec<u16> = [&b"hello "[..], b"from ", b"hvc0\n"]
        .iter()
        .map(|data| fe.add_request(TX_QUEUE, data, 0).unwrap())
        .collect();
    fe.kick(TX_QUEUE).unwrap();
    let used = fe.wait_used(TX_QUEUE, 3, WAIT).unwrap();
    let expect: Vec<Used> = heads.iter().map(|&id| Used { id, len: 0 }).collect();
    assert_eq!(used, expect);
    assert_eq!(ring_contents(shared.lock().ring()), b"hello from hvc0\n");
    assert_eq!(
        shared.input_target(),
        Source::Virtio,
        "input follows hvc0 now"
    );
    let m = shared.metrics().snapshot();
    assert_eq!((m.virtio_out, m.com_out), (16, 0));
}

#[test]
fn device_tx_and_com_output_interleave_in_arrival_order() {
    let (mut fe, shared) = connect(Source::Com1);
    shared.push_output(Source::Com1, b"[com] ");
    fe.add_request(TX_QUEUE, b"[hvc] ", 0).unwrap();
    fe.kick(TX_QUEUE).unwrap();
    assert_eq!(fe.wait_used(TX_QUEUE, 1, WAIT).unwrap().len(), 1);
    shared.push_output(Source::Com1, b"[com]");
    assert_eq!(ring_contents(shared.lock().ring()), b"[com] [hvc] [com]");
    assert_eq!(shared.input_target(), Source::Com1);
}

#[test]
fn device_rx_delivers_input_when_buffers_exist() {
    let (mut fe, shared) = connect(Source::Virtio);
    let head = fe.add_request(RX_QUEUE, b"", 64).unwrap();
    fe.kick(RX_QUEUE).unwrap();
    // A kick with nothing held completes nothing.
    assert!(fe.wait_used(RX_QUEUE, 1, QUIET).unwrap().is_empty());
    shared.hold_input(b"typed");
    let used = fe.wait_used(RX_QUEUE, 1, WAIT).unwrap();
    assert_eq!(used, vec![Used { id: head, len: 5 }]);
    assert_eq!(fe.response(RX_QUEUE, head, 5).unwrap(), b"typed");
    assert!(shared.lock().held().is_empty());
    assert_eq!(shared.metrics().snapshot().virtio_in, 5);
}

#[test]
fn device_rx_holds_input_until_the_guest_posts_buffers() {
    let (mut fe, shared) = connect(Source::Virtio);
    shared.hold_input(b"0123456789");
    assert!(fe.wait_used(RX_QUEUE, 1, QUIET).unwrap().is_empty());
    assert_eq!(shared.lock().held(), b"0123456789");
    let a = fe.add_request(RX_QUEUE, b"", 4).unwrap();
    let b = fe.add_request(RX_QUEUE, b"", 4).unwrap();
    fe.kick(RX_QUEUE).unwrap();
    let used = fe.wait_used(RX_QUEUE, 2, WAIT).unwrap();
    assert_eq!(used, vec![Used { id: a, len: 4 }, Used { id: b, len: 4 }]);
    assert_eq!(fe.response(RX_QUEUE, a, 4).unwrap(), b"0123");
    assert_eq!(fe.response(RX_QUEUE, b, 4).unwrap(), b"4567");
    assert_eq!(shared.lock().held(), b"89");
    let c = fe.add_request(RX_QUEUE, b"", 4).unwrap();
    fe.kick(RX_QUEUE).unwrap();
    assert_eq!(
        fe.wait_used(RX_QUEUE, 1, WAIT).unwrap(),
        vec![Used { id: c, len: 2 }]
    );
    assert_eq!(fe.response(RX_QUEUE, c, 2).unwrap(), b"89");
}

#[test]
fn device_rx_hold_overflow_drops_and_counts() {
    let (_fe, shared) = connect(Source::Virtio);
    shared.hold_input(&vec![b'x'; MAX_HELD_INPUT + 100]);
    assert_eq!(shared.lock().held().len(), MAX_HELD_INPUT);
    assert_eq!(shared.metrics().snapshot().in_dropped, 100);
}

#[test]
fn device_offers_version_1_and_a_readable_config() {
    let shared = Arc::new(Shared::new(64 * 1024, Source::Com1).unwrap());
    let device = ConsoleDevice::new(shared);
    assert_eq!(device.num_queues(), 2);
    assert_eq!(
        device.features(),
        1 << 32,
        "VERSION_1 only: no SIZE, MULTIPORT, EMERG_WRITE"
    );
    assert_eq!(device.config(), [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
}
