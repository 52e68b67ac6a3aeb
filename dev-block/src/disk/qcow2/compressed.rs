//! Compressed clusters: raw deflate streams (compression type 0, zlib,
//! without the zlib header), one per guest cluster.

use miniz_oxide::inflate::decompress_slice_iter_to_slice;

use super::host::{corrupt, Fault, HostFile};
use super::table::COMPRESSED_SECTOR;

/// Host byte range `(start, len)` that a compressed cluster's descriptor
/// covers, for refcounting: from the sector holding `host`, `sectors`
/// sectors.
pub fn span(host: u64, sectors: u64) -> Result<(u64, u64), Fault> {
    let start = host - host % COMPRESSED_SECTOR;
    let len = sectors
        .checked_mul(COMPRESSED_SECTOR)
        .filter(|l| start.checked_add(*l).is_some())
        .ok_or_else(|| corrupt("compressed cluster size overflows"))?;
    Ok((start, len))
}

/// Reads and inflates the compressed cluster at `host` into `out` (one
/// cluster). The stream may end short of the descriptor's last sector, and
/// the last one in the file may be cut short by the end of the file.
pub fn read_cluster(
    host_file: &HostFile,
    host: u64,
    sectors: u64,
    out: &mut [u8],
) -> Result<(), Fault> {
    let (start, len) = span(host, sectors)?;
    let avail = len - (host - start);
    let len = usize::try_from(avail).map_err(|_| corrupt("compressed cluster too large"))?;
    // A compressed cluster never needs more than the cluster plus deflate's
    // worst-case overhead; anything far larger is corrupt.
    if len > out.len().saturating_mul(2).saturating_add(4096) {
        return Err(corrupt(format!(
            "compressed cluster at {host:#x} spans {len} bytes"
        )));
    }
    let mut input = vec![0u8; len];
    let got = host_file.read_upto(&mut input, host, "read a compressed cluster")?;
    input.truncate(got);
    inflate(&input, out)
}

/// Inflates the raw deflate stream `input` into exactly `out.len()` bytes.
pub fn inflate(input: &[u8], out: &mut [u8]) -> Result<(), Fault> {
    let n = decompress_slice_iter_to_slice(out, std::iter::once(input), false, true)
        .map_err(|e| corrupt(format!("compressed cluster does not inflate: {e:?}")))?;
    if n != out.len() {
        return Err(corrupt(format!(
            "compressed cluster inflates to {n} bytes, not {}",
            out.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use miniz_oxide::deflate::compress_to_vec;

    #[test]
    fn inflate_roundtrip_with_trailing_garbage_succeeds() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let mut z = compress_to_vec(&data, 6);
        z.extend_from_slice(&[0xaa; 100]);
        let mut out = vec![0u8; 4096];
        inflate(&z, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn inflate_short_output_is_corrupt() {
        let z = compress_to_vec(&[1u8; 100], 6);
        let mut out = vec![0u8; 4096];
        assert!(matches!(inflate(&z, &mut out), Err(Fault::Corrupt(_))));
    }

    #[test]
    fn inflate_garbage_is_corrupt() {
        let mut out = vec![0u8; 512];
        assert!(inflate(&[0xff; 64], &mut out).is_err());
    }

    #[test]
    fn span_starts_at_sector_of_offset() {
        assert_eq!(span(1000, 3).unwrap(), (512, 1536));
        assert!(span(u64::MAX - 10, 1 << 60).is_err());
    }
}
