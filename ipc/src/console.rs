//! The side channel between a monitor and its dev-console process.
//!
//! A SOCK_SEQPACKET socketpair; each packet is one tag byte and, for the
//! byte-stream tags, up to [`MAX_BYTES`] bytes of payload:
//!
//! | tag | direction | meaning |
//! | --- | --- | --- |
//! | [`Packet::ComOutput`] `0x01` | monitor → dev-console | bytes the guest wrote to COM1 |
//! | [`Packet::Attach`] `0x02` | monitor → dev-console | a client attaches: drop what is queued in the pty, replay the ring from its oldest byte, then follow live output |
//! | [`Packet::Detach`] `0x03` | monitor → dev-console | the client left: output goes to the ring only |
//! | [`Packet::ComInput`] `0x04` | dev-console → monitor | bytes typed at the console, for COM1's receive FIFO |
//! | [`Packet::InputTo`] `0x05` + port (0 virtio, 1 COM1) | both | dev-console: typed input goes there from now on (sent before the output that changed it shows); monitor: where it went before, to a restarted dev-console |
//! | [`Packet::Resume`] `0x06` | monitor → dev-console | a client was attached to the dev-console this one replaces: follow it, keep what it typed |
//!
//! The monitor sends without blocking and drops a packet the socket has no
//! room for (a vCPU never waits for the console); nothing else is lost on
//! the way, since a seqpacket socket keeps packets whole.

/// Most payload bytes in one packet.
pub const MAX_BYTES: usize = 4096;

/// Bytes before the ring in a console's ring memfd (`--ring-fd`): its
/// header, which dev-console lays out.
pub const RING_HEADER: usize = 64;
/// Bytes of ring the monitor gives a console: a few screens of boot
/// messages, replayed to a client that attaches late.
pub const RING_SIZE: usize = 64 * 1024;

/// One packet of the side channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Guest output on COM1.
    ComOutput(Vec<u8>),
    /// A client attaches.
    Attach,
    /// The client detached.
    Detach,
    /// Console input for COM1.
    ComInput(Vec<u8>),
    /// A client is attached already (to a restarted dev-console): send it
    /// output, keep what it typed (no flush).
    Resume,
    /// Where typed input goes: the port the guest wrote output on last.
    /// dev-console tells the monitor when it changes; the monitor tells a
    /// restarted dev-console, which has seen no output yet.
    InputTo(Port),
}

/// A console port of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The virtio-console port (hvc0).
    Virtio,
    /// COM1 (ttyS0).
    Com1,
}

/// Why a packet is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// No tag byte.
    #[error("empty console packet")]
    Empty,
    /// An unknown tag.
    #[error("unknown console packet tag {0:#04x}")]
    UnknownTag(u8),
    /// More payload than [`MAX_BYTES`], or payload on a tag without one.
    #[error("console packet of {len} bytes with tag {tag:#04x} is malformed")]
    BadLength {
        /// The tag.
        tag: u8,
        /// The packet's length.
        len: usize,
    },
}

const COM_OUTPUT: u8 = 0x01;
const ATTACH: u8 = 0x02;
const DETACH: u8 = 0x03;
const COM_INPUT: u8 = 0x04;
const INPUT_TO: u8 = 0x05;
const RESUME: u8 = 0x06;

impl Packet {
    /// The packet on the wire.
    ///
    /// # Panics
    /// Never for payloads of at most [`MAX_BYTES`]; callers split longer
    /// ones (see [`Packet::chunks`]).
    pub fn encode(&self) -> Vec<u8> {
        let (tag, payload): (u8, &[u8]) = match self {
            Packet::ComOutput(bytes) => (COM_OUTPUT, bytes),
            Packet::Attach => (ATTACH, &[]),
            Packet::Detach => (DETACH, &[]),
            Packet::ComInput(bytes) => (COM_INPUT, bytes),
            Packet::Resume => (RESUME, &[]),
            Packet::InputTo(Port::Virtio) => (INPUT_TO, &[0]),
            Packet::InputTo(Port::Com1) => (INPUT_TO, &[1]),
        };
        debug_assert!(payload.len() <= MAX_BYTES);
        let mut wire = Vec::with_capacity(1 + payload.len());
        wire.push(tag);
        wire.extend_from_slice(payload);
        wire
    }

    /// Reads a packet from the wire.
    pub fn decode(wire: &[u8]) -> Result<Self, PacketError> {
        let (&tag, payload) = wire.split_first().ok_or(PacketError::Empty)?;
        let bad = || PacketError::BadLength {
            tag,
            len: wire.len(),
        };
        match tag {
            COM_OUTPUT | COM_INPUT if payload.is_empty() || payload.len() > MAX_BYTES => Err(bad()),
            COM_OUTPUT => Ok(Packet::ComOutput(payload.to_vec())),
            COM_INPUT => Ok(Packet::ComInput(payload.to_vec())),
            ATTACH | DETACH | RESUME if !payload.is_empty() => Err(bad()),
            ATTACH => Ok(Packet::Attach),
            RESUME => Ok(Packet::Resume),
            DETACH => Ok(Packet::Detach),
            INPUT_TO => match payload {
                [0] => Ok(Packet::InputTo(Port::Virtio)),
                [1] => Ok(Packet::InputTo(Port::Com1)),
                _ => Err(bad()),
            },
            other => Err(PacketError::UnknownTag(other)),
        }
    }

    /// `bytes` as packets made by `make`, each at most [`MAX_BYTES`].
    pub fn chunks(bytes: &[u8], make: fn(Vec<u8>) -> Packet) -> impl Iterator<Item = Packet> + '_ {
        bytes.chunks(MAX_BYTES).map(move |c| make(c.to_vec()))
    }
}

/// Sends `packet` on the seqpacket socket `side` as one packet, waiting
/// for room (the monitor's callers send from threads that may wait, never
/// from a vCPU). SIGPIPE is not raised when the peer is gone: that is an
/// error (EPIPE).
pub fn send(side: std::os::fd::BorrowedFd<'_>, packet: &Packet) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let wire = packet.encode();
    loop {
        // SAFETY: send reads `wire.len()` bytes from a live buffer.
        let ret = unsafe {
            libc::send(
                side.as_raw_fd(),
                wire.as_ptr().cast(),
                wire.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if ret >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip() {
        for p in [
            Packet::ComOutput(b"hello".to_vec()),
            Packet::Attach,
            Packet::Detach,
            Packet::ComInput(vec![0; MAX_BYTES]),
            Packet::InputTo(Port::Virtio),
            Packet::InputTo(Port::Com1),
            Packet::Resume,
        ] {
            assert_eq!(Packet::decode(&p.encode()), Ok(p));
        }
    }

    #[test]
    fn malformed_packets_are_refused() {
        assert_eq!(Packet::decode(&[]), Err(PacketError::Empty));
        assert_eq!(Packet::decode(&[9]), Err(PacketError::UnknownTag(9)));
        assert!(Packet::decode(&[COM_OUTPUT]).is_err());
        assert!(Packet::decode(&[ATTACH, 1]).is_err());
        let mut big = vec![COM_INPUT];
        big.extend(vec![0; MAX_BYTES + 1]);
        assert!(Packet::decode(&big).is_err());
    }

    #[test]
    fn long_streams_split_into_full_packets() {
        let bytes = vec![7u8; MAX_BYTES * 2 + 1];
        let sizes: Vec<usize> = Packet::chunks(&bytes, Packet::ComOutput)
            .map(|p| p.encode().len() - 1)
            .collect();
        assert_eq!(sizes, [MAX_BYTES, MAX_BYTES, 1]);
    }
}
