//! `locked lladdr` (vm.conf(5)): the guest may send only from its own MAC
//! and receives only unicast frames to its own MAC (group frames pass).

use crate::mac::{MacAddr, MAC_LEN};

/// Bytes of an Ethernet header (destination, source, ethertype).
pub const ETH_HLEN: usize = 14;
/// Offset of the source address in an Ethernet header.
const SRC_OFFSET: usize = MAC_LEN;

/// The lladdr lock of one interface.
///
/// # Invariants
/// - Unlocked, every frame passes; the checks never look past the first
///   [`ETH_HLEN`] bytes, and frames shorter than that never pass a locked
///   check (runts are dropped before filtering anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LladdrLock {
    mac: MacAddr,
    locked: bool,
}

impl LladdrLock {
    /// The lock for an interface with address `mac`.
    pub fn new(mac: MacAddr, locked: bool) -> Self {
        Self { mac, locked }
    }

    /// Whether the lock is on.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Whether the guest may send `frame` (an Ethernet frame, no vnet
    /// header): its source address must be the interface's.
    pub fn allows_tx(&self, frame: &[u8]) -> bool {
        !self.locked
            || MacAddr::from_slice(frame.get(SRC_OFFSET..).unwrap_or_default()) == Some(self.mac)
    }

    /// Whether the guest may receive `frame`: group destinations always,
    /// unicast only to the interface's address.
    pub fn allows_rx(&self, frame: &[u8]) -> bool {
        if !self.locked {
            return true;
        }
        match MacAddr::from_slice(frame) {
            Some(dst) => dst.is_group() || dst == self.mac,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: MacAddr = MacAddr([0xfe, 0xe1, 0xbb, 0xd1, 0x23, 0x45]);
    const OTHER: MacAddr = MacAddr([0xfe, 0xe1, 0xbb, 0xd1, 0x23, 0x46]);

    fn frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
        let mut f = dst.0.to_vec();
        f.extend(src.0);
        f.extend([0x08, 0x00]);
        f
    }

    #[test]
    fn lock_off_passes_everything() {
        let lock = LladdrLock::new(OURS, false);
        assert!(lock.allows_tx(&frame(OURS, OTHER)));
        assert!(lock.allows_rx(&frame(OTHER, OURS)));
        assert!(lock.allows_rx(&[]));
    }

    #[test]
    fn lock_on_tx_from_other_source_dropped() {
        let lock = LladdrLock::new(OURS, true);
        assert!(lock.allows_tx(&frame(OTHER, OURS)));
        assert!(!lock.allows_tx(&frame(OURS, OTHER)));
        assert!(!lock.allows_tx(&OURS.0));
    }

    #[test]
    fn lock_on_rx_unicast_to_other_dropped_group_passes() {
        let lock = LladdrLock::new(OURS, true);
        assert!(lock.allows_rx(&frame(OURS, OTHER)));
        assert!(!lock.allows_rx(&frame(OTHER, OURS)));
        assert!(lock.allows_rx(&frame(MacAddr::BROADCAST, OTHER)));
        assert!(lock.allows_rx(&frame(MacAddr([0x33, 0x33, 0, 0, 0, 1]), OTHER)));
    }
}
