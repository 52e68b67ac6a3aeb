//! virtio-net structures as bytes (virtio 1.2 §5.1.4, §5.1.6).

use crate::mac::MacAddr;
use virtio_bindings::bindings::virtio_net::VIRTIO_NET_S_LINK_UP;

/// Bytes of `struct virtio_net_hdr_v1`: with VIRTIO_F_VERSION_1 the header
/// always includes `num_buffers` (§5.1.6), whatever MRG_RXBUF says. The tap
/// is set to the same size (TUNSETVNETHDRSZ), so headers pass through.
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` (le16) in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// Bytes of the configuration space we expose: mac[6], status (le16),
/// max_virtqueue_pairs (le16), mtu (le16, unused without VIRTIO_NET_F_MTU)
/// (§5.1.4): the 12 bytes a frontend reads for a network card.
pub const CONFIG_LEN: usize = 12;

/// A header with no offload: what injected frames carry.
pub const EMPTY_VNET_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// The configuration space: our MAC, link up, one queue pair.
pub fn config_space(mac: MacAddr) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    c[..6].copy_from_slice(&mac.0);
    c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    c[8..10].copy_from_slice(&1u16.to_le_bytes());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_has_mac_link_up_one_pair() {
        let c = config_space(MacAddr([1, 2, 3, 4, 5, 6]));
        assert_eq!(c, [1, 2, 3, 4, 5, 6, 1, 0, 1, 0, 0, 0]);
    }
}
