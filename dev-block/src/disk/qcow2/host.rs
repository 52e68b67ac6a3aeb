//! The host file under a qcow2 image, and the internal error type.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::super::{DiskError, OpenError};

/// A failure inside the qcow2 layer, before the guest request it belongs to
/// is known; [`Fault::at`] turns it into a [`DiskError`].
#[derive(Debug)]
pub(crate) enum Fault {
    /// The host file failed.
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Inconsistent metadata.
    Corrupt(String),
    /// The backing image failed.
    Disk(DiskError),
}

impl Fault {
    /// The error for a guest request at `offset` of `len` bytes.
    pub(crate) fn at(self, offset: u64, len: u64) -> DiskError {
        match self {
            Fault::Io { op, source } => DiskError::Io {
                op,
                offset,
                len,
                source,
            },
            Fault::Corrupt(s) => DiskError::Corrupt(s),
            Fault::Disk(e) => e,
        }
    }
}

impl From<Fault> for OpenError {
    fn from(f: Fault) -> OpenError {
        match f {
            Fault::Io { op, source } => OpenError::Io { what: op, source },
            Fault::Corrupt(s) => OpenError::Corrupt(s),
            Fault::Disk(e) => OpenError::Corrupt(e.to_string()),
        }
    }
}

/// Shorthand for a [`Fault::Corrupt`].
pub(crate) fn corrupt(msg: impl Into<String>) -> Fault {
    Fault::Corrupt(msg.into())
}

/// The image file and its current length.
///
/// # Invariants
/// `len` is the file's length: every write through [`HostFile::write`]
/// extends it, and nothing else writes the file.
#[derive(Debug)]
pub(crate) struct HostFile {
    file: File,
    len: u64,
}

impl HostFile {
    /// Wraps `file`, reading its length.
    pub(crate) fn new(file: File) -> Result<Self, Fault> {
        let len = file
            .metadata()
            .map_err(|source| Fault::Io {
                op: "stat the image file",
                source,
            })?
            .len();
        Ok(Self { file, len })
    }

    /// The file's length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// True if `[offset, offset + len)` lies within the file.
    pub(crate) fn contains(&self, offset: u64, len: u64) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.len)
    }

    /// Fills `buf` from `offset`; fails on a short file.
    pub(crate) fn read(&self, buf: &mut [u8], offset: u64, op: &'static str) -> Result<(), Fault> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| Fault::Io { op, source })
    }

    /// Reads as much of `buf` as the file holds from `offset`; returns the
    /// bytes read.
    pub(crate) fn read_upto(
        &self,
        buf: &mut [u8],
        offset: u64,
        op: &'static str,
    ) -> Result<usize, Fault> {
        let mut got = 0;
        while got < buf.len() {
            let at = offset
                .checked_add(got as u64)
                .ok_or_else(|| corrupt("offset overflows"))?;
            match self.file.read_at(&mut buf[got..], at) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(Fault::Io { op, source }),
            }
        }
        Ok(got)
    }

    /// Writes all of `buf` at `offset`, extending the file if needed.
    pub(crate) fn write(&mut self, buf: &[u8], offset: u64, op: &'static str) -> Result<(), Fault> {
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| corrupt("offset overflows"))?;
        self.file
            .write_all_at(buf, offset)
            .map_err(|source| Fault::Io { op, source })?;
        self.len = self.len.max(end);
        Ok(())
    }

    /// Writes one big-endian u64 at `offset`.
    pub(crate) fn write_u64(
        &mut self,
        value: u64,
        offset: u64,
        op: &'static str,
    ) -> Result<(), Fault> {
        self.write(&value.to_be_bytes(), offset, op)
    }

    /// fdatasync.
    pub(crate) fn sync(&self) -> Result<(), Fault> {
        self.file.sync_data().map_err(|source| Fault::Io {
            op: "flush",
            source,
        })
    }

    /// Reads `count` big-endian u64s at `offset`.
    pub(crate) fn read_u64s(
        &self,
        offset: u64,
        count: usize,
        op: &'static str,
    ) -> Result<Vec<u64>, Fault> {
        let bytes = count
            .checked_mul(8)
            .ok_or_else(|| corrupt("table size overflows"))?;
        let mut buf = vec![0u8; bytes];
        self.read(&mut buf, offset, op)?;
        Ok(buf
            .chunks_exact(8)
            .map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                u64::from_be_bytes(a)
            })
            .collect())
    }
}
