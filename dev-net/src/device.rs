//! The virtio-net device (virtio 1.2 §5.1) as a [`dev_backend::Device`]:
//! one receive queue (0) and one transmit queue (1) over a [`Tap`].
//!
//! Threads: `net-q0` runs [`crate::rx`] on kicks (new receive buffers),
//! on tap readiness and on injected frames; `net-q1` runs [`crate::tx`] on
//! kicks. Both are dev-backend's queue workers.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use dev_backend::{Device, HandleError, Metrics, MetricsPage, QueueContext};
use log::{debug, warn};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS,
};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::filter::{LladdrLock, ETH_HLEN};
use crate::guest_frames::FrameFilter;
use crate::mac::MacAddr;
use crate::metrics::NetMetrics;
use crate::rx::RxState;
use crate::tap::{offload, Tap};
use crate::wire::{config_space, EMPTY_VNET_HDR, VNET_HDR_LEN};

/// The receive queue (virtio 1.2 §5.1.2: receiveq1).
pub const RX_QUEUE: u16 = 0;
/// The transmit queue (transmitq1).
pub const TX_QUEUE: u16 = 1;
/// Descriptors per queue: 256 as QEMU's default rx/tx queue size.
pub const QUEUE_SIZE: u16 = 256;
/// Largest frame the filter may inject: an untagged Ethernet frame
/// without FCS (1500 + 14). DHCP replies are far smaller.
pub const MAX_INJECTED_FRAME: usize = 1514;
/// Injected frames waiting for receive buffers at most; more are dropped
/// (a guest that posts no buffers must not make us hoard its replies).
const MAX_INJECT_QUEUE: usize = 64;
/// Event ids in the receive queue's own epoll set.
const EVENT_TAP: u64 = 0;
/// See [`EVENT_TAP`].
const EVENT_INJECT: u64 = 1;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Frames the filter produced for the guest, waiting for the rx worker.
///
/// # Invariants
/// - Every queued frame is vnet header + Ethernet frame of
///   [`ETH_HLEN`]..=[`MAX_INJECTED_FRAME`] bytes; at most
///   [`MAX_INJECT_QUEUE`] wait. Each push signals `event`.
#[derive(Debug)]
pub(crate) struct Injector {
    queue: Mutex<VecDeque<Vec<u8>>>,
    event: EventFd,
}

impl Injector {
    /// Queues `frame` for the guest; `false` when it was dropped.
    pub(crate) fn push(&self, frame: &[u8]) -> bool {
        if !(ETH_HLEN..=MAX_INJECTED_FRAME).contains(&frame.len()) {
            return false;
        }
        let mut queue = lock(&self.queue);
        if queue.len() >= MAX_INJECT_QUEUE {
            return false;
        }
        let mut with_hdr = Vec::with_capacity(VNET_HDR_LEN + frame.len());
        with_hdr.extend_from_slice(&EMPTY_VNET_HDR);
        with_hdr.extend_from_slice(frame);
        queue.push_back(with_hdr);
        drop(queue);
        if let Err(e) = self.event.write(1) {
            warn!("waking the rx queue for an injected frame: {e}");
        }
        true
    }

    /// The oldest queued frame (with its vnet header).
    pub(crate) fn pop(&self) -> Option<Vec<u8>> {
        lock(&self.queue).pop_front()
    }
}

/// One virtio-net device on one tap.
///
/// # Invariants
/// - The receive queue's worker waits on `rx_events`, an epoll set with
///   the tap fd and the injector's eventfd, both edge-triggered; the rx
///   path empties that set's ready list before it reads either source, so
///   every later arrival wakes it again (dev-backend's `queue_event_fd`
///   contract).
/// - `rx` is only touched by the receive queue's worker (and by
///   `stop_queue`/`reset`, which run when the worker is stopped).
pub struct NetDevice {
    pub(crate) tap: Tap,
    mac: MacAddr,
    pub(crate) lock: LladdrLock,
    metrics: MetricsPage,
    pub(crate) net: NetMetrics,
    acked: AtomicU64,
    pub(crate) rx: Mutex<RxState>,
    pub(crate) tx_buf: Mutex<Vec<u8>>,
    pub(crate) filter: Mutex<Option<Box<dyn FrameFilter>>>,
    pub(crate) injector: Injector,
    rx_events: Epoll,
}

impl std::fmt::Debug for NetDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDevice")
            .field("tap", &self.tap)
            .field("mac", &self.mac)
            .field("lock", &self.lock)
            .finish_non_exhaustive()
    }
}

impl NetDevice {
    /// A device with address `mac` on `tap`; `locked` turns on the
    /// lladdr lock.
    pub fn new(tap: Tap, mac: MacAddr, locked: bool) -> io::Result<Self> {
        let event = EventFd::new(EFD_NONBLOCK)?;
        let rx_events = Epoll::new()?;
        let edge = EventSet::IN | EventSet::EDGE_TRIGGERED;
        rx_events.ctl(
            ControlOperation::Add,
            tap.raw_fd(),
            EpollEvent::new(edge, EVENT_TAP),
        )?;
        rx_events.ctl(
            ControlOperation::Add,
            event.as_raw_fd(),
            EpollEvent::new(edge, EVENT_INJECT),
        )?;
        Ok(Self {
            tap,
            mac,
            lock: LladdrLock::new(mac, locked),
            metrics: MetricsPage::private(),
            net: NetMetrics::default(),
            acked: AtomicU64::new(0),
            rx: Mutex::new(RxState::new()),
            tx_buf: Mutex::new(Vec::new()),
            filter: Mutex::new(None),
            injector: Injector {
                queue: Mutex::new(VecDeque::new()),
                event,
            },
            rx_events,
        })
    }

    /// Installs the filter that sees every guest frame (the DHCP server).
    pub fn set_frame_filter(&self, filter: Box<dyn FrameFilter>) {
        *lock(&self.filter) = Some(filter);
    }

    /// Counts in `metrics` (the page its monitor shares) instead of its
    /// own memory.
    pub fn with_metrics(mut self, metrics: MetricsPage) -> Self {
        self.metrics = metrics;
        self
    }

    /// The device's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The network counters.
    pub fn net_metrics(&self) -> &NetMetrics {
        &self.net
    }

    /// The tap.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// Whether the driver accepted feature bit `bit`.
    pub(crate) fn acked(&self, bit: u32) -> bool {
        self.acked.load(Ordering::Relaxed) & (1u64 << bit) != 0
    }

    /// Empties the receive queue's epoll ready list, so that the next
    /// arrival on the tap or the injector raises a new edge, and the
    /// injector's counter when it fired.
    pub(crate) fn rearm_rx_events(&self) {
        let mut events = [EpollEvent::default(); 2];
        let fired = match self.rx_events.wait(0, &mut events) {
            Ok(n) => &events[..n],
            Err(e) => {
                debug!("draining the rx epoll set: {e}");
                &events[..0]
            }
        };
        if fired.iter().any(|e| e.data() == EVENT_INJECT) {
            // A failed read means the counter was already read.
            let _ = self.injector.event.read();
        }
    }

    /// Starts or stops waking the receive queue on tap readiness. While
    /// the guest has no receive buffers the tap is not read, and each
    /// frame the kernel queues meanwhile would wake the worker for
    /// nothing; a kick (new buffers) wakes it instead.
    pub(crate) fn listen_to_tap(&self, on: bool) {
        let events = if on {
            EventSet::IN | EventSet::EDGE_TRIGGERED
        } else {
            EventSet::EDGE_TRIGGERED
        };
        let event = EpollEvent::new(events, EVENT_TAP);
        if let Err(e) = self
            .rx_events
            .ctl(ControlOperation::Modify, self.tap.raw_fd(), event)
        {
            warn!("changing the tap's rx events: {e}");
        }
    }

    /// The TUN_F_* flags matching the driver's GUEST_* features. The kernel
    /// refuses TSO without CSUM, and virtio requires GUEST_CSUM for them
    /// (§5.1.3.1), so a driver that acked TSO without CSUM gets nothing.
    fn tun_offload_flags(&self) -> u32 {
        if !self.acked(VIRTIO_NET_F_GUEST_CSUM) {
            return 0;
        }
        let mut flags = offload::TUN_F_CSUM;
        let tso4 = self.acked(VIRTIO_NET_F_GUEST_TSO4);
        let tso6 = self.acked(VIRTIO_NET_F_GUEST_TSO6);
        if tso4 {
            flags |= offload::TUN_F_TSO4;
        }
        if tso6 {
            flags |= offload::TUN_F_TSO6;
        }
        if (tso4 || tso6) && self.acked(VIRTIO_NET_F_GUEST_ECN) {
            flags |= offload::TUN_F_TSO_ECN;
        }
        if self.acked(VIRTIO_NET_F_GUEST_UFO) {
            flags |= offload::TUN_F_UFO;
        }
        flags
    }
}

impl Device for NetDevice {
    fn name(&self) -> &str {
        "net"
    }

    fn num_queues(&self) -> u16 {
        2
    }

    fn max_queue_size(&self) -> u16 {
        QUEUE_SIZE
    }

    /// VERSION_1, MAC, MRG_RXBUF, STATUS; CSUM, HOST_TSO4/6 and HOST_ECN
    /// always (a tap accepts checksum and GSO requests on write);
    /// GUEST_CSUM, GUEST_TSO4/6 and GUEST_ECN when the tap accepted those
    /// offloads; HOST_UFO and GUEST_UFO only when it accepted TUN_F_UFO.
    fn features(&self) -> u64 {
        let bit = |b: u32| 1u64 << b;
        let offloads = self.tap.offloads();
        let mut f = bit(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_NET_F_MAC)
            | bit(VIRTIO_NET_F_MRG_RXBUF)
            | bit(VIRTIO_NET_F_STATUS)
            | bit(VIRTIO_NET_F_CSUM)
            | bit(VIRTIO_NET_F_HOST_TSO4)
            | bit(VIRTIO_NET_F_HOST_TSO6)
            | bit(VIRTIO_NET_F_HOST_ECN);
        if offloads.tso {
            f |= bit(VIRTIO_NET_F_GUEST_CSUM)
                | bit(VIRTIO_NET_F_GUEST_TSO4)
                | bit(VIRTIO_NET_F_GUEST_TSO6)
                | bit(VIRTIO_NET_F_GUEST_ECN);
        }
        if offloads.ufo {
            f |= bit(VIRTIO_NET_F_HOST_UFO) | bit(VIRTIO_NET_F_GUEST_UFO);
        }
        f
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
    }

    fn set_acked_features(&self, features: u64) {
        self.acked.store(features, Ordering::Relaxed);
        let flags = self.tun_offload_flags();
        if let Err(e) = self.tap.set_offload(flags) {
            warn!("TUNSETOFFLOAD {flags:#x}: {e}; the guest gets no offloaded frames");
            // Without offloads the kernel segments and checksums itself.
            let _ = self.tap.set_offload(0);
        }
    }

    fn config(&self) -> Vec<u8> {
        config_space(self.mac).to_vec()
    }

    fn handle_queue(&self, queue: u16, ctx: &mut QueueContext<'_>) -> Result<(), HandleError> {
        match queue {
            RX_QUEUE => crate::rx::handle_rx(self, ctx),
            TX_QUEUE => crate::tx::handle_tx(self, ctx),
            _ => Err(HandleError::Guest {
                queue,
                what: "no such queue".into(),
            }),
        }
    }

    fn queue_event_fd(&self, queue: u16) -> Option<RawFd> {
        (queue == RX_QUEUE).then(|| self.rx_events.as_raw_fd())
    }

    fn stop_queue(&self, queue: u16) {
        if queue == RX_QUEUE {
            lock(&self.rx).forget_chains();
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn reset(&self) {
        lock(&self.rx).forget_chains();
        self.acked.store(0, Ordering::Relaxed);
        if let Err(e) = self.tap.set_offload(0) {
            debug!("clearing tap offloads: {e}");
        }
    }
}
