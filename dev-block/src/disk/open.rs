//! Opening an image: format detection and qcow2 backing chains.
//!
//! The device process opens nothing by path: the image and every backing
//! file of its chain arrive as opened files. A [`BackingOpener`] hands them
//! out by the names written in the qcow2 headers; the monitor's opener
//! returns passed fds ([`FileListOpener`]), tests open by path
//! ([`PathOpener`]).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::qcow2::{Qcow2Image, QCOW2_MAGIC};
use super::raw::RawImage;
use super::DiskImage;

/// Most images in a chain, the top image included: vmd's "backing chains up
/// to 4 deep" (its `VM_MAX_BASE_PER_DISK` counts the disk itself), so a
/// disk and up to three bases.
pub const MAX_CHAIN_DEPTH: usize = 4;

/// An image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The guest's bytes as they are.
    Raw,
    /// QEMU copy-on-write version 2 or 3.
    Qcow2,
}

impl Format {
    /// The format named by a qcow2 backing-format extension or a config.
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "raw" => Some(Format::Raw),
            "qcow2" => Some(Format::Qcow2),
            _ => None,
        }
    }

    /// Its name as qemu-img and vm.conf spell it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }

    /// Qcow2 if `file` starts with the qcow2 magic, else raw.
    pub fn probe(file: &File) -> io::Result<Format> {
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < magic.len() {
            match file.read_at(&mut magic[got..], got as u64)? {
                0 => return Ok(Format::Raw),
                n => got += n,
            }
        }
        Ok(if u32::from_be_bytes(magic) == QCOW2_MAGIC {
            Format::Qcow2
        } else {
            Format::Raw
        })
    }
}

/// Why an image could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The image file failed while reading its metadata.
    #[error("{what}")]
    Io {
        /// What was being read.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Not a qcow2 image.
    #[error("not a qcow2 image (magic {0:#010x})")]
    BadMagic(u32),
    /// A feature this reader does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Inconsistent metadata.
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// The qcow2 dirty bit is set (lazy refcounts were in use and the image
    /// was not closed cleanly): its refcounts cannot be trusted for
    /// writing. We refuse rather than repair; read-only opens are fine.
    #[error("the image is dirty (lazy refcounts): repair it with `qemu-img check -r all` or open it read-only")]
    Dirty,
    /// The backing chain has more than [`MAX_CHAIN_DEPTH`] images.
    #[error("backing chain of {name:?} is deeper than {MAX_CHAIN_DEPTH} images")]
    ChainTooDeep {
        /// The backing file name that would exceed the limit.
        name: String,
    },
    /// The opener could not produce a backing file.
    #[error("opening backing file {name:?}")]
    OpenBacking {
        /// The name in the image header.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The backing image itself failed to open.
    #[error("backing file {name:?}")]
    Backing {
        /// The name in the image header.
        name: String,
        /// Why.
        #[source]
        source: Box<OpenError>,
    },
}

/// Resolves backing file names of a qcow2 chain to opened files.
pub trait BackingOpener {
    /// Opens `name`, the backing file named by the image at chain position
    /// `depth - 1` (the top image is depth 0, its backing file depth 1).
    /// A relative name is relative to the naming image's directory. The
    /// file is only read.
    fn open_backing(&mut self, name: &str, depth: usize) -> io::Result<File>;
}

/// An opener for images without backing files: every request fails.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoBacking;

impl BackingOpener for NoBacking {
    fn open_backing(&mut self, name: &str, _depth: usize) -> io::Result<File> {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no backing files were passed (wanted {name:?})"),
        ))
    }
}

/// Opens backing files by path, each relative to the directory of the
/// image that names it.
///
/// # Invariants
/// `dirs[d]` is the directory of the image at chain depth `d`; the chain is
/// opened top-down, so depth `d + 1` is asked for only after depth `d`.
#[derive(Debug, Clone)]
pub struct PathOpener {
    dirs: Vec<PathBuf>,
}

impl PathOpener {
    /// An opener for the chain of the image at `image`.
    pub fn new(image: &Path) -> Self {
        Self {
            dirs: vec![parent_dir(image)],
        }
    }
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl BackingOpener for PathOpener {
    fn open_backing(&mut self, name: &str, depth: usize) -> io::Result<File> {
        let dir = depth
            .checked_sub(1)
            .and_then(|d| self.dirs.get(d))
            .ok_or_else(|| io::Error::other("backing chain opened out of order"))?;
        let path = dir.join(name);
        let file = File::open(&path)?;
        self.dirs.truncate(depth);
        self.dirs.push(parent_dir(&path));
        Ok(file)
    }
}

/// Opens backing files by path, as [`PathOpener`] does, and keeps a
/// duplicate of each: the monitor uses it to open an image's whole chain
/// (read-only) and pass the files to dev-block as fds, top-down.
#[derive(Debug)]
pub struct RecordingOpener {
    paths: PathOpener,
    /// The backing files opened so far, top-down.
    pub files: Vec<File>,
}

impl RecordingOpener {
    /// An opener for the chain of the image at `image`.
    pub fn new(image: &Path) -> Self {
        Self {
            paths: PathOpener::new(image),
            files: Vec::new(),
        }
    }
}

impl BackingOpener for RecordingOpener {
    fn open_backing(&mut self, name: &str, depth: usize) -> io::Result<File> {
        let file = self.paths.open_backing(name, depth)?;
        self.files.push(file.try_clone()?);
        Ok(file)
    }
}

/// Hands out already opened files in chain order (the monitor passes one fd
/// per backing image, top-down), whatever their names.
///
/// # Invariants
/// Each file is handed out once, in the order given.
#[derive(Debug, Default)]
pub struct FileListOpener {
    files: VecDeque<File>,
}

impl FileListOpener {
    /// An opener returning `files` in order.
    pub fn new(files: Vec<File>) -> Self {
        Self {
            files: files.into(),
        }
    }
}

impl BackingOpener for FileListOpener {
    fn open_backing(&mut self, name: &str, _depth: usize) -> io::Result<File> {
        self.files.pop_front().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no passed file left for backing file {name:?}"),
            )
        })
    }
}

/// Opens `file` as a disk; without `format`, qcow2 is detected by its magic
/// and anything else is raw. Backing files come from `opener`.
pub fn open_image(
    file: File,
    format: Option<Format>,
    read_only: bool,
    opener: &mut dyn BackingOpener,
) -> Result<Box<dyn DiskImage>, OpenError> {
    open_at_depth(file, format, read_only, opener, 0)
}

/// [`open_image`] for the image at chain position `depth`.
pub(crate) fn open_at_depth(
    file: File,
    format: Option<Format>,
    read_only: bool,
    opener: &mut dyn BackingOpener,
    depth: usize,
) -> Result<Box<dyn DiskImage>, OpenError> {
    let format = match format {
        Some(f) => f,
        None => Format::probe(&file).map_err(|source| OpenError::Io {
            what: "probing the image format",
            source,
        })?,
    };
    Ok(match format {
        Format::Raw => {
            Box::new(
                RawImage::new(file, read_only).map_err(|source| OpenError::Io {
                    what: "reading the raw image's size",
                    source,
                })?,
            )
        }
        Format::Qcow2 => Box::new(Qcow2Image::open_at_depth(file, read_only, opener, depth)?),
    })
}

/// Opens the backing file `name` (format `format` if the header said) of
/// the image at chain position `depth`, read-only.
pub(crate) fn open_backing(
    name: &str,
    format: Option<&str>,
    opener: &mut dyn BackingOpener,
    depth: usize,
) -> Result<Box<dyn DiskImage>, OpenError> {
    let child = depth + 1;
    if child >= MAX_CHAIN_DEPTH {
        return Err(OpenError::ChainTooDeep {
            name: name.to_owned(),
        });
    }
    let format = match format {
        None => None,
        Some(f) => Some(
            Format::from_name(f)
                .ok_or_else(|| OpenError::Unsupported(format!("backing file format {f:?}")))?,
        ),
    };
    let file = opener
        .open_backing(name, child)
        .map_err(|source| OpenError::OpenBacking {
            name: name.to_owned(),
            source,
        })?;
    open_at_depth(file, format, true, opener, child).map_err(|e| match e {
        // Keep the innermost "too deep" visible as such.
        e @ OpenError::ChainTooDeep { .. } => e,
        e => OpenError::Backing {
            name: name.to_owned(),
            source: Box::new(e),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn probe_short_file_is_raw() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"QF").unwrap();
        assert_eq!(Format::probe(&f).unwrap(), Format::Raw);
    }

    #[test]
    fn probe_qcow2_magic_is_qcow2() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&QCOW2_MAGIC.to_be_bytes()).unwrap();
        assert_eq!(Format::probe(&f).unwrap(), Format::Qcow2);
    }

    #[test]
    fn path_opener_relative_name_resolves_from_naming_image() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/base"), b"x").unwrap();
        std::fs::write(dir.path().join("sub/base2"), b"y").unwrap();
        let mut o = PathOpener::new(&dir.path().join("top"));
        o.open_backing("sub/base", 1).unwrap();
        // The second level resolves from sub/, not from the top's dir.
        o.open_backing("base2", 2).unwrap();
        assert!(o.open_backing("base2", 4).is_err());
    }

    #[test]
    fn file_list_opener_runs_out_errors() {
        let mut o = FileListOpener::new(vec![tempfile::tempfile().unwrap()]);
        assert!(o.open_backing("a", 1).is_ok());
        assert!(o.open_backing("b", 2).is_err());
    }
}
