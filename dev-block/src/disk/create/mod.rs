//! New disk images for `vmctl create`: empty raw and qcow2 images, qcow2
//! images over a base, and copies of existing images ([`convert`]).
//!
//! Every function here creates its output with `O_CREAT|O_EXCL` (an
//! existing file is never overwritten) and removes the file again if
//! anything fails before the image is complete, so a half-written image
//! never remains. Sizes are bytes; [`round_size_mb`] applies vmctl's
//! rounding of `-s`.

mod convert;

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::open::{open_backing, Format, OpenError, PathOpener};
use super::qcow2::create::{self as qcow2_create, DEFAULT_CLUSTER_BITS};
use super::{DiskError, SECTOR_SIZE};
pub use convert::{convert, convert_image};

/// vmctl's size unit: `-s` is rounded up to whole mebibytes ("MB" in
/// vmctl(8)), and the smallest image is one of them.
pub const SIZE_UNIT: u64 = 1 << 20;

/// Why an image could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The output path already exists; it was left untouched.
    #[error("{}: file exists (refusing to overwrite it)", path.display())]
    Exists {
        /// The output path.
        path: PathBuf,
    },
    /// The output file could not be created.
    #[error("{}: cannot create", path.display())]
    CreateFile {
        /// The output path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Writing or syncing the output failed (ENOSPC, say); it was removed.
    #[error("{}: {op}", path.display())]
    Io {
        /// The output path.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// No size was given and there is no base or input to take it from.
    #[error("missing size argument")]
    MissingSize,
    /// A size of zero: vmctl's smallest image is 1 MB.
    #[error("size must be at least 1 MB")]
    SizeTooSmall,
    /// A size the image format cannot hold (not a multiple of 512 bytes,
    /// or too large for the qcow2 L1 table).
    #[error("invalid image size {0} bytes")]
    Size(u64),
    /// Laying out the new qcow2 image failed; the file was removed.
    #[error("{}: writing the qcow2 image", path.display())]
    Qcow2 {
        /// The output path.
        path: PathBuf,
        /// Why.
        #[source]
        source: qcow2_create::CreateError,
    },
    /// The base name is not UTF-8 or does not fit in a qcow2 header.
    #[error("base image name {0:?} cannot be stored in a qcow2 header")]
    BaseName(PathBuf),
    /// The base image could not be opened (with its own backing chain).
    #[error("base image {} (looked up as {})", base.display(), resolved.display())]
    OpenBase {
        /// The name as given, stored in the new image.
        base: PathBuf,
        /// Where it was looked for: relative names are relative to the new
        /// image's directory, as when the image is opened later.
        resolved: PathBuf,
        /// Why.
        #[source]
        source: OpenError,
    },
    /// `-s` was given with a base of a different virtual size.
    #[error("size {size} bytes does not match the {base_size} bytes of base image {}", base.display())]
    BaseSizeMismatch {
        /// The base as given.
        base: PathBuf,
        /// The base's virtual size.
        base_size: u64,
        /// The requested size.
        size: u64,
    },
    /// The input image could not be opened.
    #[error("input image {}", path.display())]
    OpenInput {
        /// The input path.
        path: PathBuf,
        /// Why.
        #[source]
        source: OpenError,
    },
    /// The requested size is smaller than the input image.
    #[error("size {size} bytes is smaller than the {input_size} bytes of input image {}", path.display())]
    SmallerThanInput {
        /// The input path.
        path: PathBuf,
        /// The input's virtual size.
        input_size: u64,
        /// The requested size.
        size: u64,
    },
    /// The new image did not open for writing (a bug: we just wrote it).
    #[error("{}: reopening the new image", path.display())]
    OpenOutput {
        /// The output path.
        path: PathBuf,
        /// Why.
        #[source]
        source: OpenError,
    },
    /// Reading the input failed mid-way; the output was removed.
    #[error("reading input image {}", path.display())]
    Read {
        /// The input path.
        path: PathBuf,
        /// Why.
        #[source]
        source: DiskError,
    },
    /// Writing the output failed mid-way; it was removed.
    #[error("writing {}", path.display())]
    Write {
        /// The output path.
        path: PathBuf,
        /// Why.
        #[source]
        source: DiskError,
    },
}

/// Rounds a user's size (`-s`) up to whole [`SIZE_UNIT`]s, as vmctl does.
/// Zero is refused ([`CreateError::SizeTooSmall`]), as is a size whose
/// rounding overflows.
pub fn round_size_mb(bytes: u64) -> Result<u64, CreateError> {
    if bytes == 0 {
        return Err(CreateError::SizeTooSmall);
    }
    bytes
        .checked_next_multiple_of(SIZE_UNIT)
        .ok_or(CreateError::Size(bytes))
}

/// A file this module created and removes again unless [`Self::keep`] is
/// called: the "no half-written image" guarantee.
///
/// # Invariants
/// `path` names a file that did not exist before `create` made it, so
/// removing it never destroys anything the user had.
#[derive(Debug)]
pub(crate) struct NewFile {
    path: PathBuf,
    file: File,
    keep: bool,
}

impl NewFile {
    /// Creates `path` read-write with `O_CREAT|O_EXCL`.
    pub(crate) fn create(path: &Path) -> Result<Self, CreateError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|source| match source.kind() {
                io::ErrorKind::AlreadyExists => CreateError::Exists {
                    path: path.to_path_buf(),
                },
                _ => CreateError::CreateFile {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            keep: false,
        })
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// An I/O error on this file.
    pub(crate) fn io_err(&self, op: &'static str) -> impl FnOnce(io::Error) -> CreateError + '_ {
        move |source| CreateError::Io {
            path: self.path.clone(),
            op,
            source,
        }
    }

    /// The image is complete: keep the file.
    pub(crate) fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if !self.keep {
            // Best effort: the error that got us here is the one to report.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Checks that `size` is a usable image size: non-zero and whole sectors.
fn check_size(size: u64) -> Result<(), CreateError> {
    match size {
        0 => Err(CreateError::SizeTooSmall),
        s if s % SECTOR_SIZE != 0 => Err(CreateError::Size(s)),
        _ => Ok(()),
    }
}

/// Creates an empty raw image of `size` bytes at `path`: a new sparse file
/// (`O_EXCL`, never overwriting) truncated to `size`, a non-zero multiple
/// of 512. On failure nothing is left at `path`.
pub fn create_raw(path: &Path, size: u64) -> Result<(), CreateError> {
    check_size(size)?;
    let out = NewFile::create(path)?;
    new_raw(&out, size)?;
    out.file().sync_all().map_err(out.io_err("sync"))?;
    out.keep();
    Ok(())
}

/// Sizes the freshly created `out` to `size` bytes, all holes.
pub(crate) fn new_raw(out: &NewFile, size: u64) -> Result<(), CreateError> {
    out.file().set_len(size).map_err(out.io_err("set the size"))
}

/// Writes an empty qcow2 v3 image of `size` bytes (64 KiB clusters,
/// 16-bit refcounts) into the freshly created `out`.
pub(crate) fn new_qcow2(
    out: &NewFile,
    size: u64,
    backing: Option<(&str, Format)>,
) -> Result<(), CreateError> {
    qcow2_create::create(out.file(), size, DEFAULT_CLUSTER_BITS, backing).map_err(|e| match e {
        qcow2_create::CreateError::Size(s) => CreateError::Size(s),
        source => CreateError::Qcow2 {
            path: out.path().to_path_buf(),
            source,
        },
    })
}

/// The directory relative backing names of the image at `image` resolve
/// from.
fn image_dir(image: &Path) -> &Path {
    match image.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A base image checked for use under a new image: its name as stored,
/// format and virtual size.
#[derive(Debug)]
struct Base<'a> {
    path: &'a Path,
    name: &'a str,
    format: Format,
    size: u64,
}

/// Opens `base` as the new image at `image` will see it (relative to the
/// image's directory, with its whole chain and the chain depth limit).
fn open_base<'a>(image: &Path, base: &'a Path) -> Result<Base<'a>, CreateError> {
    let name = base
        .to_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| CreateError::BaseName(base.to_path_buf()))?;
    let resolved = image_dir(image).join(base);
    let err = |source| CreateError::OpenBase {
        base: base.to_path_buf(),
        resolved: resolved.clone(),
        source,
    };
    let file = File::open(&resolved).map_err(|source| {
        err(OpenError::OpenBacking {
            name: name.to_owned(),
            source,
        })
    })?;
    let format = Format::probe(&file).map_err(|source| {
        err(OpenError::Io {
            what: "probing the base image's format",
            source,
        })
    })?;
    drop(file);
    let img =
        open_backing(name, Some(format.name()), &mut PathOpener::new(image), 0).map_err(err)?;
    Ok(Base {
        path: base,
        name,
        format,
        size: img.size(),
    })
}

/// Creates an empty qcow2 v3 image at `path` (64 KiB clusters; `O_EXCL`,
/// never overwriting; nothing left behind on failure).
///
/// With `backing`, the image is a copy-on-write overlay of that base: the
/// name is stored as given and, when relative, resolves from the new
/// image's directory (where [`PathOpener`] will look for it); its format
/// (qcow2 or raw, probed) is recorded too. The base must open with its
/// whole chain, the new image included no deeper than
/// [`super::open::MAX_CHAIN_DEPTH`]. `size` defaults to the base's virtual
/// size and, if given, must equal it. Without a base `size` is required.
pub fn create_qcow2(
    path: &Path,
    size: Option<u64>,
    backing: Option<&Path>,
) -> Result<(), CreateError> {
    let base = backing.map(|b| open_base(path, b)).transpose()?;
    let size = match (&base, size) {
        (None, None) => return Err(CreateError::MissingSize),
        (None, Some(s)) => s,
        (Some(b), None) => b.size,
        (Some(b), Some(s)) if s == b.size => s,
        (Some(b), Some(s)) => {
            return Err(CreateError::BaseSizeMismatch {
                base: b.path.to_path_buf(),
                base_size: b.size,
                size: s,
            })
        }
    };
    check_size(size)?;
    let out = NewFile::create(path)?;
    new_qcow2(&out, size, base.as_ref().map(|b| (b.name, b.format)))?;
    out.keep();
    Ok(())
}

#[cfg(test)]
mod tests;
