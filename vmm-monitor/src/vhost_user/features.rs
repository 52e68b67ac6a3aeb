//! Which feature bits pass from a vhost-user backend to the guest, which
//! protocol features the frontend asks for, and how much configuration
//! space each device type has.
//!
//! # Invariants
//! - [`VHOST_USER_F_PROTOCOL_FEATURES`] (bit 30) never reaches the guest:
//!   vhost-user.rst, "Communication", reuses the UNUSED legacy bit 30 for
//!   protocol feature negotiation, and virtio drivers cannot negotiate it.
//! - Every transport feature (bits 24–49, virtio 1.2 §6 "Reserved Feature
//!   Bits") the guest sees is one this frontend and the virtio-pci
//!   transport both implement; device-type bits pass through untouched.

use vhost::vhost_user::VhostUserProtocolFeatures;
use virtio_bindings::virtio_config::{
    VIRTIO_F_IN_ORDER, VIRTIO_F_ORDER_PLATFORM, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// vhost-user.rst "Communication": the backend speaks
/// GET/SET_PROTOCOL_FEATURES. Sent to the backend, never to the guest.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// VIRTIO_F_VERSION_1 as a mask: the transport is modern-only, so a backend
/// must offer it.
pub const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;

/// Device-type feature bits (virtio 1.2 §2.2 "Feature Bits": 0 to 23 and
/// 50 to 127); they are the backend's business and pass through.
const DEVICE_TYPE_BITS: u64 = ((1 << 24) - 1) | !((1 << 50) - 1);

/// Transport feature bits the guest may see. Everything else in 24–49 is
/// withheld, each for a reason:
/// - 24 NOTIFY_ON_EMPTY, 27 ANY_LAYOUT: legacy-only; the transport is modern.
/// - 26 VHOST_F_LOG_ALL: dirty logging for migration, which we do not do.
/// - 30 VHOST_USER_F_PROTOCOL_FEATURES: vhost-user's own, see above.
/// - 33 ACCESS_PLATFORM: would need the IOTLB messages and an IOMMU.
/// - 34 RING_PACKED: the transport hands over split rings only, and the
///   state kept for a backend restart is split-ring state.
/// - 37 SR_IOV, 41 ADMIN_VQ: no virtual functions, no admin queue.
/// - 38 NOTIFICATION_DATA, 39 NOTIF_CONFIG_DATA: the kick is a KVM
///   ioeventfd, which drops the written value.
/// - 40 RING_RESET: per-queue reset is not in the transport nor here.
const TRANSPORT_PASS: u64 = (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | VERSION_1
    | (1 << VIRTIO_F_IN_ORDER)
    | (1 << VIRTIO_F_ORDER_PLATFORM);

/// The features offered to the guest, given what the backend offered
/// (VHOST_USER_GET_FEATURES).
pub fn guest_features(backend: u64) -> u64 {
    backend & (DEVICE_TYPE_BITS | TRANSPORT_PASS)
}

/// The features sent with VHOST_USER_SET_FEATURES: what the driver acked,
/// limited to what the guest was offered, plus bit 30 when the backend
/// offered it (vhost-user.rst "Ring states": with it, rings start disabled
/// and are enabled by VHOST_USER_SET_VRING_ENABLE).
pub fn backend_ack(backend: u64, driver_acked: u64) -> u64 {
    (driver_acked & guest_features(backend)) | (backend & VHOST_USER_F_PROTOCOL_FEATURES)
}

/// Protocol features the frontend asks for, out of those the backend offers.
///
/// - MQ: learn the backend's queue count (GET_QUEUE_NUM).
/// - REPLY_ACK: every request is acknowledged, so a failure is seen at the
///   request that caused it.
/// - CONFIG: the device configuration space lives in the backend.
/// - INFLIGHT_SHMFD: a restarted backend resubmits the requests in flight
///   when it crashed (vhost-user.rst "Inflight I/O tracking").
/// - CONFIGURE_MEM_SLOTS: not used yet (SET_MEM_TABLE covers our one or
///   two regions) but negotiated now, because protocol features cannot be
///   renegotiated on a live connection and memory hotplug will need it.
pub fn wanted_protocol_features(offered: VhostUserProtocolFeatures) -> VhostUserProtocolFeatures {
    offered
        & (VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
}

/// Bytes of device configuration space the frontend reads with
/// VHOST_USER_GET_CONFIG, by virtio device type (virtio 1.2 §5).
///
/// A backend must answer with exactly the size asked for and refuses sizes
/// larger than its structure, so this asks for the fields every backend we
/// meet has, not the newest layout:
/// - 1 net: mac, status, max_virtqueue_pairs, mtu (§5.1.4) = 12.
/// - 2 block: capacity through write_zeroes_may_unmap and its padding
///   (§5.2.4, without the secure-erase and zoned fields) = 60, the
///   `virtio_blk_config` of QEMU 7.2's backend.
/// - 3 console: cols, rows, max_nr_ports, emerg_wr (§5.3.4) = 12.
/// - anything else: none.
pub fn config_len(device_type: u32) -> usize {
    match device_type {
        1 => 12,
        2 => 60,
        3 => 12,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What QEMU 7.2's vhost-user-blk export offers: blk bits, libvhost-user's
    /// NOTIFY_ON_EMPTY, LOG_ALL, INDIRECT_DESC, EVENT_IDX, VERSION_1, bit 30.
    const QSD_BLK: u64 = 0x1_7000_0000 | (1 << 24) | (1 << 26) | 0x6e54;

    #[test]
    fn guest_features_protocol_bit_is_withheld() {
        assert_eq!(
            guest_features(VHOST_USER_F_PROTOCOL_FEATURES | VERSION_1),
            VERSION_1
        );
    }

    #[test]
    fn guest_features_unsupported_transport_bits_are_withheld() {
        for bit in [24, 26, 27, 30, 33, 34, 37, 38, 39, 40, 41, 42, 49] {
            assert_eq!(guest_features(1 << bit), 0, "bit {bit}");
        }
        for bit in [28, 29, 32, 35, 36] {
            assert_eq!(guest_features(1 << bit), 1 << bit, "bit {bit}");
        }
    }

    #[test]
    fn guest_features_device_bits_pass() {
        assert_eq!(guest_features(0x00ff_ffff), 0x00ff_ffff);
        assert_eq!(guest_features(1 << 50 | 1 << 63), 1 << 50 | 1 << 63);
        let blk = guest_features(QSD_BLK);
        assert_eq!(blk, 0x1_3000_0000 | 0x6e54);
    }

    #[test]
    fn backend_ack_adds_protocol_bit_and_drops_unoffered() {
        let acked = backend_ack(QSD_BLK, VERSION_1 | (1 << 34) | (1 << 26));
        assert_eq!(acked, VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES);
        // A backend without protocol features gets no bit 30.
        assert_eq!(backend_ack(VERSION_1, VERSION_1), VERSION_1);
    }

    #[test]
    fn wanted_protocol_features_ignores_the_rest() {
        let offered = VhostUserProtocolFeatures::all();
        let wanted = wanted_protocol_features(offered);
        assert!(wanted.contains(VhostUserProtocolFeatures::REPLY_ACK));
        assert!(!wanted.contains(VhostUserProtocolFeatures::BACKEND_REQ));
        assert!(!wanted.contains(VhostUserProtocolFeatures::INBAND_NOTIFICATIONS));
        assert_eq!(
            wanted_protocol_features(VhostUserProtocolFeatures::CONFIG),
            VhostUserProtocolFeatures::CONFIG
        );
    }
}
