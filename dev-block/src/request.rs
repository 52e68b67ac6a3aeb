//! A descriptor chain → a typed, validated virtio-blk request (§5.2.6).
//!
//! A request is a device-readable part (the 16-byte header, then the data
//! of a write or the segments of a discard) followed by a device-writable
//! part (the data of a read or of GET_ID, then one status byte, last). The
//! parser checks the shape before anything acts on it; the executor in
//! [`crate::device`] takes only what this module returns.

use dev_backend::chain::DescChain;
use dev_backend::memory::GuestMemoryMmap;
use vm_memory::{ByteValued, GuestAddress};

use crate::wire::{DiscardSegment, RequestHeader, SECTOR_SIZE, SEGMENT_FLAG_UNMAP};

/// Request types (VIRTIO_BLK_T_*).
pub const T_IN: u32 = 0;
/// Write.
pub const T_OUT: u32 = 1;
/// Flush.
pub const T_FLUSH: u32 = 4;
/// Get the device ID string.
pub const T_GET_ID: u32 = 8;
/// Discard.
pub const T_DISCARD: u32 = 11;
/// Write zeroes.
pub const T_WRITE_ZEROES: u32 = 13;

/// Most segments of one DISCARD / WRITE_ZEROES request.
pub const MAX_SEGMENTS: usize = 16;

/// Largest data transfer of one request we accept (the config's seg_max
/// times a page would be smaller; this only bounds the bounce buffer).
pub const MAX_TRANSFER: usize = 4 << 20;

/// What the driver asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Read `len` bytes from `sector` into the writable data area.
    Read {
        /// First sector.
        sector: u64,
        /// Bytes (a multiple of the sector size).
        len: u32,
    },
    /// Write the readable data area (`len` bytes) at `sector`.
    Write {
        /// First sector.
        sector: u64,
        /// Bytes (a multiple of the sector size).
        len: u32,
    },
    /// Make completed writes durable.
    Flush,
    /// Return the ID string.
    GetId,
    /// Deallocate the ranges.
    Discard(Vec<DiscardSegment>),
    /// Zero the ranges (deallocating where a segment has the unmap flag).
    WriteZeroes(Vec<DiscardSegment>),
    /// A type we do not implement: completes with UNSUPP.
    Unsupported(u32),
}

/// A request the driver got wrong; it completes with IOERR (the variant
/// says why, for the debug log and the error counter).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// Fewer than 16 readable bytes for the header.
    #[error("header is {0} bytes, 16 needed")]
    ShortHeader(usize),
    /// Data length not a multiple of the sector size.
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(usize),
    /// Data in the wrong direction (readable data on a read, or writable on a write).
    #[error("data descriptors in the wrong direction for request type {0}")]
    WrongDirection(u32),
    /// More data than we handle in one request.
    #[error("data length {0} exceeds {MAX_TRANSFER}")]
    TooLarge(usize),
    /// Discard/write-zeroes segments not a whole number, or reserved flags set.
    #[error("malformed discard/write-zeroes segments")]
    BadSegments,
}

/// Why a chain cannot even be answered with a status.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// Guest memory could not be read or written.
    #[error("descriptor chain: {0}")]
    Chain(#[from] dev_backend::chain::ChainError),
    /// No device-writable byte for the status.
    #[error("no writable status byte")]
    NoStatus,
}

/// A parsed request: what was asked, or why it is refused.
#[derive(Debug)]
pub struct ParsedRequest {
    /// The request, or why it is refused.
    pub request: Result<Request, BadRequest>,
    /// Where the status byte goes: the last writable byte of the chain.
    pub status: GuestAddress,
    /// Bytes of device-writable data before the status byte.
    pub writable_len: usize,
}

/// Size of the request header.
pub const HEADER_LEN: usize = std::mem::size_of::<RequestHeader>();

/// Parses `chain` (already walked and bounds-checked by dev-backend). An
/// `Err` means the request cannot be completed with a status at all (the
/// caller returns the chain with used length 0).
pub fn parse(mem: &GuestMemoryMmap, chain: &DescChain) -> Result<ParsedRequest, ChainError> {
    let status = chain
        .writable()
        .iter()
        .rev()
        .find(|s| s.len > 0)
        .map(|s| GuestAddress(s.addr.0 + u64::from(s.len) - 1))
        .ok_or(ChainError::NoStatus)?;
    let readable_len = chain.readable_len() as usize;
    let writable_len = chain.writable_len() as usize - 1;
    let request = if readable_len < HEADER_LEN {
        Err(BadRequest::ShortHeader(readable_len))
    } else {
        let bytes = chain.read_to_vec(mem, HEADER_LEN)?;
        let header = RequestHeader::from_slice(&bytes)
            .copied()
            .unwrap_or_default();
        classify(header, readable_len - HEADER_LEN, writable_len)
    };
    Ok(ParsedRequest {
        request,
        status,
        writable_len,
    })
}

/// The request a header describes, given the sizes of the readable bytes
/// after it and of the writable bytes before the status.
pub fn classify(
    header: RequestHeader,
    readable: usize,
    writable: usize,
) -> Result<Request, BadRequest> {
    let data = |len: usize, other: usize| {
        if other != 0 {
            Err(BadRequest::WrongDirection(header.kind))
        } else if len > MAX_TRANSFER {
            Err(BadRequest::TooLarge(len))
        } else if len as u64 % SECTOR_SIZE != 0 {
            Err(BadRequest::Unaligned(len))
        } else {
            Ok(len as u32)
        }
    };
    match header.kind {
        T_IN => Ok(Request::Read {
            sector: header.sector,
            len: data(writable, readable)?,
        }),
        T_OUT => Ok(Request::Write {
            sector: header.sector,
            len: data(readable, writable)?,
        }),
        T_FLUSH => Ok(Request::Flush),
        T_GET_ID => Ok(Request::GetId),
        T_DISCARD | T_WRITE_ZEROES => {
            let size = std::mem::size_of::<DiscardSegment>();
            if readable == 0 || readable % size != 0 || writable != 0 {
                return Err(BadRequest::BadSegments);
            }
            Ok(if header.kind == T_DISCARD {
                Request::Discard(Vec::new())
            } else {
                Request::WriteZeroes(Vec::new())
            })
        }
        other => Ok(Request::Unsupported(other)),
    }
}

/// Reads the segments of a DISCARD or WRITE_ZEROES request from the
/// chain's readable bytes after the header, checking their flags (only
/// WRITE_ZEROES may set unmap).
pub fn read_segments(
    request: &mut Request,
    mem: &GuestMemoryMmap,
    chain: &DescChain,
) -> Result<(), BadRequest> {
    let (segments, allowed_flags) = match request {
        Request::Discard(s) => (s, 0),
        Request::WriteZeroes(s) => (s, SEGMENT_FLAG_UNMAP),
        _ => return Ok(()),
    };
    let size = std::mem::size_of::<DiscardSegment>();
    let max = HEADER_LEN + MAX_SEGMENTS * size;
    let bytes = chain
        .read_to_vec(mem, max)
        .map_err(|_| BadRequest::BadSegments)?;
    if chain.readable_len() as usize > max {
        return Err(BadRequest::BadSegments);
    }
    for raw in bytes[HEADER_LEN..].chunks_exact(size) {
        let segment = DiscardSegment::from_slice(raw)
            .copied()
            .ok_or(BadRequest::BadSegments)?;
        if segment.flags & !allowed_flags != 0 {
            return Err(BadRequest::BadSegments);
        }
        segments.push(segment);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u32, sector: u64) -> RequestHeader {
        RequestHeader {
            kind,
            reserved: 0,
            sector,
        }
    }

    #[test]
    fn classify_read_takes_writable_length() {
        assert_eq!(
            classify(header(T_IN, 8), 0, 4096),
            Ok(Request::Read {
                sector: 8,
                len: 4096
            })
        );
    }

    #[test]
    fn classify_write_takes_readable_length() {
        assert_eq!(
            classify(header(T_OUT, 1), 1024, 0),
            Ok(Request::Write {
                sector: 1,
                len: 1024
            })
        );
    }

    #[test]
    fn classify_data_in_wrong_direction_is_refused() {
        assert_eq!(
            classify(header(T_IN, 0), 512, 512),
            Err(BadRequest::WrongDirection(T_IN))
        );
        assert_eq!(
            classify(header(T_OUT, 0), 512, 512),
            Err(BadRequest::WrongDirection(T_OUT))
        );
    }

    #[test]
    fn classify_partial_sector_is_refused() {
        assert_eq!(
            classify(header(T_IN, 0), 0, 513),
            Err(BadRequest::Unaligned(513))
        );
    }

    #[test]
    fn classify_oversized_transfer_is_refused() {
        let len = MAX_TRANSFER + 512;
        assert_eq!(
            classify(header(T_OUT, 0), len, 0),
            Err(BadRequest::TooLarge(len))
        );
    }

    #[test]
    fn classify_discard_needs_whole_segments() {
        assert_eq!(
            classify(header(T_DISCARD, 0), 32, 0),
            Ok(Request::Discard(Vec::new()))
        );
        assert_eq!(
            classify(header(T_DISCARD, 0), 20, 0),
            Err(BadRequest::BadSegments)
        );
        assert_eq!(
            classify(header(T_WRITE_ZEROES, 0), 0, 0),
            Err(BadRequest::BadSegments)
        );
    }

    #[test]
    fn classify_unknown_type_is_unsupported() {
        assert_eq!(classify(header(2, 0), 0, 0), Ok(Request::Unsupported(2)));
        assert_eq!(classify(header(T_FLUSH, 0), 0, 0), Ok(Request::Flush));
        assert_eq!(classify(header(T_GET_ID, 0), 0, 20), Ok(Request::GetId));
    }
}
