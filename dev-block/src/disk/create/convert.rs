//! Copying an image into a new one (`vmctl create -i`), skipping zeroes.

use std::fs::File;
use std::path::Path;

use super::{check_size, new_qcow2, new_raw, CreateError, NewFile};
use crate::disk::open::{open_image, Format, NoBacking, PathOpener};
use crate::disk::qcow2::create::DEFAULT_CLUSTER_BITS;
use crate::disk::{DiskImage, Qcow2Image, RawImage};

/// Bytes read from the input at a time: large enough that per-call costs
/// vanish, small enough that progress moves and memory stays small.
const CHUNK: usize = 1 << 20;
/// Zero-detection granularity of raw outputs: the usual file-system block,
/// the smallest hole a file can have.
const RAW_GRAIN: usize = 4096;
/// Zero-detection granularity of qcow2 outputs: their cluster, the unit
/// that stays unallocated.
const QCOW2_GRAIN: usize = 1 << DEFAULT_CLUSTER_BITS;

/// Copies the image at `input` (raw or qcow2, detected by its magic, with
/// its backing chain resolved as [`PathOpener`] does) into a new image of
/// `format` at `output`, flattening the chain.
///
/// The output has `size` bytes, by default the input's size; a `size`
/// smaller than the input is refused. All-zero blocks are not written: a
/// raw output keeps holes there, a qcow2 output leaves the clusters
/// unallocated. `progress(done, total)` is called after every chunk with
/// the input bytes handled so far. The output is created with `O_EXCL` and
/// removed again if anything fails.
pub fn convert(
    input: &Path,
    output: &Path,
    format: Format,
    size: Option<u64>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), CreateError> {
    let open_err = |source| CreateError::OpenInput {
        path: input.to_path_buf(),
        source,
    };
    let file = File::open(input).map_err(|source| {
        open_err(crate::disk::OpenError::Io {
            what: "opening the file",
            source,
        })
    })?;
    let img = open_image(file, None, true, &mut PathOpener::new(input)).map_err(open_err)?;
    convert_image(img.as_ref(), input, output, format, size, progress)
}

/// [`convert`] from an already open image `img`; `input` names it in
/// errors.
pub fn convert_image(
    img: &dyn DiskImage,
    input: &Path,
    output: &Path,
    format: Format,
    size: Option<u64>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), CreateError> {
    let input_size = img.size();
    let size = size.unwrap_or(input_size);
    if size < input_size {
        return Err(CreateError::SmallerThanInput {
            path: input.to_path_buf(),
            input_size,
            size,
        });
    }
    check_size(size)?;
    let out = NewFile::create(output)?;
    let dup = |o: &NewFile| o.file().try_clone().map_err(o.io_err("duplicate the fd"));
    let (dst, grain): (Box<dyn DiskImage>, usize) = match format {
        Format::Raw => {
            new_raw(&out, size)?;
            let raw = RawImage::new(dup(&out)?, false).map_err(out.io_err("stat"))?;
            (Box::new(raw), RAW_GRAIN)
        }
        Format::Qcow2 => {
            new_qcow2(&out, size, None)?;
            let q = Qcow2Image::open(dup(&out)?, false, &mut NoBacking).map_err(|source| {
                CreateError::OpenOutput {
                    path: output.to_path_buf(),
                    source,
                }
            })?;
            (Box::new(q), QCOW2_GRAIN)
        }
    };
    copy(img, dst.as_ref(), grain, progress).map_err(|e| match e {
        Side::Read(source) => CreateError::Read {
            path: input.to_path_buf(),
            source,
        },
        Side::Write(source) => CreateError::Write {
            path: output.to_path_buf(),
            source,
        },
    })?;
    drop(dst);
    out.file().sync_all().map_err(out.io_err("sync"))?;
    out.keep();
    Ok(())
}

/// Which side of a copy failed.
#[derive(Debug)]
enum Side {
    Read(crate::disk::DiskError),
    Write(crate::disk::DiskError),
}

/// Copies all of `src` to the start of `dst` (at least as large), writing
/// only the `grain`-sized blocks that are not all zero, then flushes
/// `dst`. `dst` must read as zeroes where nothing is written (a new image).
fn copy(
    src: &dyn DiskImage,
    dst: &dyn DiskImage,
    grain: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), Side> {
    let total = src.size();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    progress(0, total);
    while done < total {
        let n = (total - done).min(CHUNK as u64) as usize;
        let chunk = &mut buf[..n];
        src.read_at(chunk, done).map_err(Side::Read)?;
        for (start, len) in data_runs(chunk, grain) {
            dst.write_at(&chunk[start..start + len], done + start as u64)
                .map_err(Side::Write)?;
        }
        done += n as u64;
        progress(done, total);
    }
    dst.flush().map_err(Side::Write)
}

/// The `(start, len)` runs of `buf` made of consecutive `grain`-sized
/// blocks (the last may be shorter) that are not all zero.
fn data_runs(buf: &[u8], grain: usize) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, block) in buf.chunks(grain).enumerate() {
        if is_zero(block) {
            continue;
        }
        let start = i * grain;
        match runs.last_mut() {
            Some((s, l)) if *s + *l == start => *l += block.len(),
            _ => runs.push((start, block.len())),
        }
    }
    runs
}

/// True if every byte of `b` is zero. OR-folds 64-byte pieces, which the
/// compiler vectorises, and stops at the first non-zero piece.
fn is_zero(b: &[u8]) -> bool {
    let mut pieces = b.chunks_exact(64);
    let whole = pieces
        .by_ref()
        .all(|p| p.iter().fold(0u8, |acc, &x| acc | x) == 0);
    whole && pieces.remainder().iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_runs_merges_adjacent_and_skips_zero_blocks() {
        let mut b = vec![0u8; 10 * 16];
        b[0] = 1; // block 0
        b[16 + 15] = 1; // block 1
        b[4 * 16 + 3] = 1; // block 4
        b[9 * 16] = 1; // block 9
        assert_eq!(data_runs(&b, 16), vec![(0, 32), (64, 16), (144, 16)]);
        assert_eq!(data_runs(&b[..150], 16), vec![(0, 32), (64, 16), (144, 6)]);
        assert!(data_runs(&[0u8; 100], 16).is_empty());
    }

    #[test]
    fn is_zero_finds_a_byte_anywhere() {
        let mut b = vec![0u8; 200];
        assert!(is_zero(&b));
        for i in [0, 63, 64, 130, 199] {
            b[i] = 0x80;
            assert!(!is_zero(&b), "byte {i}");
            b[i] = 0;
        }
    }
}
