//! Raw disk images: the guest's bytes at the same offsets in a host file.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use super::{DiskError, DiskImage, SECTOR_SIZE};

/// Size of the zero buffer used when neither `fallocate` mode is available.
const ZERO_CHUNK: usize = 64 * 1024;

/// A raw image over a host file the caller opened.
///
/// # Invariants
/// - `size` is the file's length at open rounded down to [`SECTOR_SIZE`];
///   requests beyond it are refused, so the file never grows.
/// - With `read_only`, nothing is ever written to the file.
#[derive(Debug)]
pub struct RawImage {
    file: File,
    size: u64,
    read_only: bool,
}

impl RawImage {
    /// Wraps `file`; its length (rounded down to 512 bytes) is the disk size.
    pub fn new(file: File, read_only: bool) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            size: len - len % SECTOR_SIZE,
            read_only,
        })
    }

    fn io_err(op: &'static str, offset: u64, len: u64) -> impl FnOnce(io::Error) -> DiskError {
        move |source| DiskError::Io {
            op,
            offset,
            len,
            source,
        }
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        DiskError::check_range(offset, len, self.size)
    }

    /// `fallocate(mode)` over the range; the OS error on failure.
    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let off = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let n = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: fallocate on an fd we own; it touches no memory of ours.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, n) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    fn write_zero_bytes(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeroes = vec![0u8; ZERO_CHUNK];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZERO_CHUNK as u64) as usize;
            self.file.write_all_at(&zeroes[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// True if `e` means "this file system cannot do that fallocate mode".
fn not_supported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

impl DiskImage for RawImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        let len = buf.len() as u64;
        DiskError::check_range(offset, len, self.size)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(Self::io_err("read", offset, len))
    }

    fn try_read_at(&self, buf: &mut [u8], offset: u64) -> Result<bool, DiskError> {
        let len = buf.len() as u64;
        DiskError::check_range(offset, len, self.size)?;
        let Ok(off) = libc::off_t::try_from(offset) else {
            return Ok(false);
        };
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: `iov` describes `buf`, which is valid for writes of its
        // length and exclusively borrowed for the call; the fd is ours.
        let n = unsafe { libc::preadv2(self.file.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
        // EAGAIN (not cached), a short read (partly cached), EOPNOTSUPP (no
        // RWF_NOWAIT here) or a real error: `read_at` will tell.
        Ok(u64::try_from(n).is_ok_and(|n| n == len))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        let len = buf.len() as u64;
        self.check_write(offset, len)?;
        self.file
            .write_all_at(buf, offset)
            .map_err(Self::io_err("write", offset, len))
    }

    fn flush(&self) -> Result<(), DiskError> {
        if self.read_only {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(Self::io_err("flush", 0, self.size))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.check_write(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        match self.punch_hole(offset, len) {
            // Discard is advisory: a file system without hole punching
            // keeps the data, which the trait allows.
            Err(e) if not_supported(&e) => Ok(()),
            r => r.map_err(Self::io_err("discard", offset, len)),
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), DiskError> {
        self.check_write(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let err = Self::io_err("write zeroes", offset, len);
        if unmap {
            match self.punch_hole(offset, len) {
                Err(e) if not_supported(&e) => {}
                r => return r.map_err(err),
            }
        }
        match self.fallocate(libc::FALLOC_FL_ZERO_RANGE, offset, len) {
            Err(e) if not_supported(&e) => {}
            r => return r.map_err(err),
        }
        match self.punch_hole(offset, len) {
            Err(e) if not_supported(&e) => {}
            r => return r.map_err(err),
        }
        self.write_zero_bytes(offset, len).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn image(len: usize, fill: u8) -> (tempfile::NamedTempFile, RawImage) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![fill; len]).unwrap();
        let img = RawImage::new(f.reopen().unwrap(), false).unwrap();
        (f, img)
    }

    #[test]
    fn raw_try_read_reads_cached_data_and_checks_the_range() {
        let (_f, img) = image(4096, 0x3c);
        let mut buf = [0u8; 512];
        // Just written, so in the page cache.
        assert!(img.try_read_at(&mut buf, 1024).unwrap());
        assert!(buf.iter().all(|b| *b == 0x3c));
        assert!(matches!(
            img.try_read_at(&mut buf, 4096),
            Err(DiskError::OutOfRange { .. })
        ));
    }

    #[test]
    fn raw_size_unaligned_file_rounds_down() {
        let (_f, img) = image(1000, 0);
        assert_eq!(img.size(), 512);
    }

    #[test]
    fn raw_write_then_read_roundtrips() {
        let (_f, img) = image(4096, 0);
        img.write_at(&[7u8; 100], 1000).unwrap();
        let mut buf = [0u8; 200];
        img.read_at(&mut buf, 950).unwrap();
        assert!(buf[..50].iter().all(|&b| b == 0));
        assert!(buf[50..150].iter().all(|&b| b == 7));
        assert!(buf[150..].iter().all(|&b| b == 0));
    }

    #[test]
    fn raw_read_past_end_is_out_of_range() {
        let (_f, img) = image(4096, 0);
        let mut buf = [0u8; 2];
        assert!(matches!(
            img.read_at(&mut buf, 4095),
            Err(DiskError::OutOfRange { .. })
        ));
        assert!(matches!(
            img.read_at(&mut buf, u64::MAX),
            Err(DiskError::OutOfRange { .. })
        ));
    }

    #[test]
    fn raw_read_only_write_is_refused() {
        let (f, _) = image(4096, 0);
        let img = RawImage::new(f.reopen().unwrap(), true).unwrap();
        assert!(matches!(img.write_at(&[1], 0), Err(DiskError::ReadOnly)));
        assert!(matches!(img.discard(0, 512), Err(DiskError::ReadOnly)));
        assert!(matches!(
            img.write_zeroes(0, 512, true),
            Err(DiskError::ReadOnly)
        ));
    }

    #[test]
    fn raw_write_zeroes_reads_zero() {
        for unmap in [false, true] {
            let (_f, img) = image(65536, 0xee);
            img.write_zeroes(4096, 8192, unmap).unwrap();
            let mut buf = vec![0u8; 65536];
            img.read_at(&mut buf, 0).unwrap();
            assert!(buf[..4096].iter().all(|&b| b == 0xee));
            assert!(buf[4096..12288].iter().all(|&b| b == 0));
            assert!(buf[12288..].iter().all(|&b| b == 0xee));
        }
    }

    #[test]
    fn raw_discard_then_flush_succeeds() {
        let (_f, img) = image(65536, 0xee);
        img.discard(0, 4096).unwrap();
        img.flush().unwrap();
        assert_eq!(img.size(), 65536);
    }
}
