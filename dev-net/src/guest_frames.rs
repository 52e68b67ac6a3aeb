//! The hook through which the device answers some guest frames itself
//! (the built-in DHCP server of local interfaces, `vmctl start -L`).

/// Bytes of a frame's start that [`FrameFilter::wants`] sees: Ethernet
/// (14), the longest IPv4 header (60) and a UDP or TCP port pair (4), so a
/// filter can tell a protocol and a destination port apart.
pub const PEEK_LEN: usize = 78;

/// Sees the frames the guest sends that it [`wants`](Self::wants), after
/// validation and the lladdr lock, before they go to the tap.
///
/// # Invariants
/// - `frame` is a whole Ethernet frame (no virtio-net header), at least
///   14 bytes long; it comes from the guest and is untrusted: an
///   implementation checks every field it reads.
/// - A returned frame is injected toward the guest (with a virtio-net
///   header of no offloads) on the rx queue, as if it came from the tap;
///   it must be an Ethernet frame of 14 to 1514 bytes, or it is dropped
///   and counted. Injected frames pass the lladdr lock's rx check too.
/// - Runs on the tx queue's worker thread: it must not block.
pub trait FrameFilter: Send {
    /// Whether [`on_guest_frame`](Self::on_guest_frame) should see the
    /// frame that starts with `start` (its first [`PEEK_LEN`] bytes, or
    /// all of a shorter frame). Frames it does not want go to the tap
    /// straight from guest memory, without a copy; by default it wants
    /// every frame.
    fn wants(&self, _start: &[u8]) -> bool {
        true
    }

    /// A reply for the guest, if this frame is one the filter answers.
    fn on_guest_frame(&mut self, frame: &[u8]) -> Option<Vec<u8>>;

    /// Whether a frame this filter answered still goes to the tap too.
    /// By default it does not: the answer stands for the host's.
    fn forward_answered(&self) -> bool {
        false
    }
}
