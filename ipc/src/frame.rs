//! The frame: a fixed 16-byte header, then a bincode payload.
//!
//! ```text
//! offset size field
//!      0    4 magic          MAGIC, little-endian
//!      4    2 version        PROTOCOL_VERSION of the sender
//!      6    2 flags          no flag is defined yet: must be 0
//!      8    4 payload length bytes after the header, at most MAX_PAYLOAD
//!     12    4 fd count       fds carried by SCM_RIGHTS with the header, at most MAX_FDS
//!     16    … payload        bincode 2 (standard config) of one message
//! ```
//!
//! All integers are little-endian. The header is checked field by field
//! before anything is allocated for the payload, so a hostile peer can make
//! a reader allocate at most [`MAX_PAYLOAD`] bytes.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::PROTOCOL_VERSION;

/// First four bytes of every frame ("vmdI"): a stream that does not start
/// with it is not speaking this protocol, or has lost its frame boundary.
pub const MAGIC: u32 = u32::from_le_bytes(*b"vmdI");

/// Size of the fixed header that precedes every payload.
pub const HEADER_LEN: usize = 16;

/// Largest payload accepted or sent: 1 MiB.
///
/// The biggest control messages are a VM's whole configuration and a
/// status list of every VM, a few KiB each even on a large host; the cap
/// exists so a broken or hostile peer cannot make vmd allocate more than
/// this per connection.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Most file descriptors one frame may carry.
///
/// Starting a VM passes the most: /dev/kvm, up to four disks (vmd's
/// VM_MAX_DISKS_PER_VM), up to four taps (VM_MAX_NICS_PER_VM), a cdrom, a
/// kernel and a pty, which is 12; 16 leaves room and stays far below
/// Linux's SCM_MAX_FD (253).
pub const MAX_FDS: usize = 16;

/// The bincode configuration of every payload. The limit makes the decoder
/// refuse any length prefix inside the payload that would need more than
/// [`MAX_PAYLOAD`] bytes, before it allocates for it.
fn codec() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_PAYLOAD>,
> {
    bincode::config::standard().with_limit::<MAX_PAYLOAD>()
}

/// Why a frame was refused. Each variant is one broken rule of the format.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame does not start with [`MAGIC`].
    #[error("bad frame magic {found:#010x} (expected {MAGIC:#010x})")]
    BadMagic {
        /// The first four bytes read, as a little-endian u32.
        found: u32,
    },
    /// The peer speaks another version of the protocol.
    #[error("protocol version {found} from peer, this side speaks {PROTOCOL_VERSION}")]
    VersionMismatch {
        /// The version in the peer's header.
        found: u16,
    },
    /// The header sets flag bits this version does not know.
    #[error("unknown frame flags {flags:#06x}")]
    UnknownFlags {
        /// The flags field as read.
        flags: u16,
    },
    /// The payload is larger than [`MAX_PAYLOAD`].
    #[error("payload of {len} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    PayloadTooLarge {
        /// The length declared in the header (or produced by encoding).
        len: u64,
    },
    /// The frame declares or carries more than [`MAX_FDS`] descriptors.
    #[error("{count} file descriptors exceed the limit of {MAX_FDS}")]
    TooManyFds {
        /// The count declared in the header, or handed to `send`.
        count: u64,
    },
    /// The header's fd count differs from the descriptors that arrived.
    #[error("header declares {declared} file descriptors, {received} arrived")]
    FdCountMismatch {
        /// The count in the header.
        declared: u32,
        /// The descriptors actually received.
        received: usize,
    },
    /// The payload ended before the message it encodes was complete.
    #[error("payload truncated: the message needs more than its {len} bytes")]
    TruncatedPayload {
        /// The payload length.
        len: usize,
    },
    /// The message decoded without using the whole payload.
    #[error("{trailing} trailing bytes after the message in a {len}-byte payload")]
    TrailingBytes {
        /// Bytes left over.
        trailing: usize,
        /// The payload length.
        len: usize,
    },
    /// The payload is not a valid encoding of the expected message type.
    #[error("malformed payload")]
    Decode(#[source] bincode::error::DecodeError),
    /// The message could not be encoded (a serde impl refused it).
    #[error("cannot encode message")]
    Encode(#[source] bincode::error::EncodeError),
}

/// A checked frame header. Holding one means every field is within the
/// format's rules: right magic and version, no unknown flags, payload and
/// fd count within their limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    payload_len: u32,
    fd_count: u32,
}

impl Header {
    /// A header for a payload of `payload_len` bytes with `fd_count` fds.
    pub fn new(payload_len: usize, fd_count: usize) -> Result<Self, FrameError> {
        if payload_len > MAX_PAYLOAD {
            return Err(FrameError::PayloadTooLarge {
                len: payload_len as u64,
            });
        }
        if fd_count > MAX_FDS {
            return Err(FrameError::TooManyFds {
                count: fd_count as u64,
            });
        }
        // Both fit: MAX_PAYLOAD and MAX_FDS are far below u32::MAX.
        Ok(Self {
            payload_len: payload_len as u32,
            fd_count: fd_count as u32,
        })
    }

    /// Bytes of payload that follow the header.
    pub fn payload_len(&self) -> usize {
        self.payload_len as usize
    }

    /// File descriptors that travel with the frame.
    pub fn fd_count(&self) -> usize {
        self.fd_count as usize
    }

    /// The header's wire form, with this side's [`PROTOCOL_VERSION`].
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        out[6..8].copy_from_slice(&0u16.to_le_bytes());
        out[8..12].copy_from_slice(&self.payload_len.to_le_bytes());
        out[12..16].copy_from_slice(&self.fd_count.to_le_bytes());
        out
    }

    /// Parses and checks a header, in wire order: magic, version, flags,
    /// length, fd count. The first broken rule is the error.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, FrameError> {
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let magic = u32_at(0);
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let version = u16_at(4);
        if version != PROTOCOL_VERSION {
            return Err(FrameError::VersionMismatch { found: version });
        }
        let flags = u16_at(6);
        if flags != 0 {
            return Err(FrameError::UnknownFlags { flags });
        }
        let payload_len = u32_at(8);
        if payload_len as usize > MAX_PAYLOAD {
            return Err(FrameError::PayloadTooLarge {
                len: u64::from(payload_len),
            });
        }
        let fd_count = u32_at(12);
        if fd_count as usize > MAX_FDS {
            return Err(FrameError::TooManyFds {
                count: u64::from(fd_count),
            });
        }
        Ok(Self {
            payload_len,
            fd_count,
        })
    }
}

/// Encodes `msg` as a payload, refusing one larger than [`MAX_PAYLOAD`].
pub fn encode_payload<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let payload = bincode::serde::encode_to_vec(msg, codec()).map_err(FrameError::Encode)?;
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameError::PayloadTooLarge {
            len: payload.len() as u64,
        });
    }
    Ok(payload)
}

/// Decodes one message that must fill `payload` exactly.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let len = payload.len();
    match bincode::serde::decode_from_slice::<T, _>(payload, codec()) {
        Ok((msg, used)) if used == len => Ok(msg),
        Ok((_, used)) => Err(FrameError::TrailingBytes {
            trailing: len.saturating_sub(used),
            len,
        }),
        Err(bincode::error::DecodeError::UnexpectedEnd { .. }) => {
            Err(FrameError::TruncatedPayload { len })
        }
        Err(e) => Err(FrameError::Decode(e)),
    }
}

/// Encodes a whole frame without fds: header then payload. For tests,
/// tools and fuzzing; [`crate::Channel`] sends the two parts itself.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let payload = encode_payload(msg)?;
    let header = Header::new(payload.len(), 0)?;
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&header.encode());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Decodes a whole frame held in memory (no fds may be declared): the
/// header, then a payload that must end exactly where `bytes` ends. A
/// short buffer is [`FrameError::TruncatedPayload`] — never a panic.
pub fn decode_frame<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    let Some((head, rest)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::TruncatedPayload { len: 0 });
    };
    let header = Header::decode(head)?;
    if header.fd_count() != 0 {
        return Err(FrameError::FdCountMismatch {
            declared: header.fd_count,
            received: 0,
        });
    }
    match rest.len().cmp(&header.payload_len()) {
        std::cmp::Ordering::Less => Err(FrameError::TruncatedPayload { len: rest.len() }),
        std::cmp::Ordering::Greater => Err(FrameError::TrailingBytes {
            trailing: rest.len() - header.payload_len(),
            len: rest.len(),
        }),
        std::cmp::Ordering::Equal => decode_payload(rest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Msg {
        Hello { name: String, ids: Vec<u32> },
        Bye(Option<u64>),
    }

    fn raw_header(magic: u32, version: u16, flags: u16, len: u32, nfds: u32) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&magic.to_le_bytes());
        h[4..6].copy_from_slice(&version.to_le_bytes());
        h[6..8].copy_from_slice(&flags.to_le_bytes());
        h[8..12].copy_from_slice(&len.to_le_bytes());
        h[12..16].copy_from_slice(&nfds.to_le_bytes());
        h
    }

    #[test]
    fn header_each_broken_rule_gives_its_error() {
        let v = PROTOCOL_VERSION;
        let d = |h| Header::decode(&h);
        assert!(matches!(
            d(raw_header(1, v, 0, 0, 0)),
            Err(FrameError::BadMagic { found: 1 })
        ));
        assert!(matches!(
            d(raw_header(MAGIC, v ^ 1, 0, 0, 0)),
            Err(FrameError::VersionMismatch { .. })
        ));
        assert!(matches!(
            d(raw_header(MAGIC, v, 2, 0, 0)),
            Err(FrameError::UnknownFlags { flags: 2 })
        ));
        let over = MAX_PAYLOAD as u32 + 1;
        assert!(matches!(
            d(raw_header(MAGIC, v, 0, over, 0)),
            Err(FrameError::PayloadTooLarge { .. })
        ));
        assert!(matches!(
            d(raw_header(MAGIC, v, 0, 0, 17)),
            Err(FrameError::TooManyFds { count: 17 })
        ));
        let ok = d(raw_header(MAGIC, v, 0, MAX_PAYLOAD as u32, MAX_FDS as u32)).unwrap();
        assert_eq!((ok.payload_len(), ok.fd_count()), (MAX_PAYLOAD, MAX_FDS));
    }

    #[test]
    fn decode_frame_roundtrip_and_trailing_and_short() {
        let msg = Msg::Hello {
            name: "vm1".into(),
            ids: vec![1, 2, 300],
        };
        let frame = encode_frame(&msg).unwrap();
        assert_eq!(decode_frame::<Msg>(&frame).unwrap(), msg);
        let mut long = frame.clone();
        long.push(0);
        assert!(matches!(
            decode_frame::<Msg>(&long),
            Err(FrameError::TrailingBytes { trailing: 1, .. })
        ));
        for cut in 0..frame.len() {
            assert!(
                decode_frame::<Msg>(&frame[..cut]).is_err(),
                "prefix of {cut} bytes accepted"
            );
        }
    }

    #[test]
    fn decode_payload_huge_length_prefix_refused_without_allocating() {
        // A Vec<u8> claiming u64::MAX / 2 elements: varint 0xfd then 8 bytes.
        let mut payload = vec![0xfd];
        payload.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        let err = decode_payload::<Vec<u8>>(&payload).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Decode(_) | FrameError::TruncatedPayload { .. }
            ),
            "{err:?}"
        );
    }

    /// xorshift64*, deterministic.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn decode_frame_random_and_mutated_bytes_never_panic() {
        let mut s = 0x0123_4567_89ab_cdefu64;
        let valid = encode_frame(&Msg::Hello {
            name: "web".into(),
            ids: vec![7; 9],
        })
        .unwrap();
        for i in 0..20_000 {
            let bytes: Vec<u8> = if i % 2 == 0 {
                let len = (next(&mut s) % 80) as usize;
                (0..len).map(|_| next(&mut s) as u8).collect()
            } else {
                // Flip a few bits of a valid frame, past the magic half the time.
                let mut m = valid.clone();
                for _ in 0..(1 + next(&mut s) % 4) {
                    let at = (next(&mut s) as usize) % m.len();
                    m[at] ^= 1 << (next(&mut s) % 8);
                }
                m
            };
            let _ = decode_frame::<Msg>(&bytes);
            let _ = decode_payload::<Msg>(&bytes);
            let _ = decode_payload::<Vec<String>>(&bytes);
        }
    }
}
