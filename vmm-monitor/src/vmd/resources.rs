//! What vmd opens for a VM before its monitor starts: /dev/kvm, the kernel
//! and initrd, the disks with their backing chains, and the console pty.
//!
//! Privilege flows downward: the monitor and its device processes open
//! nothing by path; every file reaches them as an fd from here.
//!
//! Disks are locked with flock(2) on the open file description that the
//! monitor and dev-block inherit: exclusive for a writable image, shared
//! for read-only images and backing files. So two VMs can share a base
//! image but never a writable disk, and the lock lives exactly as long as
//! some process of the VM holds the image — it outlives a vmd that dies,
//! and it is gone when the VM is.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use dev_block::disk::{open_image, Format, RecordingOpener};
use ipc::control::DiskFormat;

/// Why a VM's files could not be opened; nothing stays open or locked.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// A file could not be opened.
    #[error("cannot open {what} {path}")]
    Open {
        /// "kernel", "initrd", "disk".
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A disk is locked by another VM (or another program using flock).
    #[error("disk {path} is in use by another VM")]
    Locked {
        /// The image or backing file.
        path: PathBuf,
    },
    /// A disk image or its backing chain is not usable.
    #[error("disk {path}")]
    Image {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: dev_block::disk::OpenError,
    },
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm")]
    Kvm(#[source] std::io::Error),
    /// The console pty could not be made.
    #[error("cannot allocate a console pty")]
    Pty(#[source] nix::Error),
}

/// One disk, opened and locked.
pub struct OpenDisk {
    /// The path, for messages.
    pub path: PathBuf,
    /// The format found.
    pub format: DiskFormat,
    /// The image (read-write unless `readonly`).
    pub image: File,
    /// Its backing chain, top-down, read-only.
    pub backing: Vec<File>,
    /// The guest sees a read-only disk.
    pub readonly: bool,
}

/// The console: a pty pair, the slave in raw mode.
pub struct Console {
    /// The master side, for the monitor's COM1.
    pub master: OwnedFd,
    /// The slave side, kept open by the monitor so output is buffered
    /// while nobody is attached.
    pub slave: OwnedFd,
    /// The slave's path, shown as the VM's TTY.
    pub path: String,
}

/// Opens /dev/kvm read-write.
pub fn open_kvm() -> Result<File, ResourceError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(ResourceError::Kvm)
}

/// Opens a boot file (kernel or initrd) read-only.
pub fn open_boot_file(what: &'static str, path: &Path) -> Result<File, ResourceError> {
    File::open(path).map_err(|source| ResourceError::Open {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Opens and locks `path` (and its backing chain), detecting the format
/// unless `format` is given.
pub fn open_disk(
    path: &Path,
    format: Option<DiskFormat>,
    readonly: bool,
) -> Result<OpenDisk, ResourceError> {
    let open_err = |source| ResourceError::Open {
        what: "disk",
        path: path.to_owned(),
        source,
    };
    let image = OpenOptions::new()
        .read(true)
        .write(!readonly)
        .open(path)
        .map_err(open_err)?;
    lock(&image, !readonly, path)?;
    let want = format.map(|f| match f {
        DiskFormat::Raw => Format::Raw,
        DiskFormat::Qcow2 => Format::Qcow2,
    });
    let probe = image.try_clone().map_err(open_err)?;
    let mut opener = RecordingOpener::new(path);
    let opened =
        open_image(probe, want, true, &mut opener).map_err(|source| ResourceError::Image {
            path: path.to_owned(),
            source,
        })?;
    drop(opened);
    for file in &opener.files {
        lock(file, false, path)?;
    }
    let format = match format {
        Some(f) => f,
        None => match Format::probe(&image).map_err(open_err)? {
            Format::Raw => DiskFormat::Raw,
            Format::Qcow2 => DiskFormat::Qcow2,
        },
    };
    Ok(OpenDisk {
        path: path.to_owned(),
        format,
        image,
        backing: opener.files,
        readonly,
    })
}

/// flock(2), without waiting.
fn lock(file: &File, exclusive: bool, path: &Path) -> Result<(), ResourceError> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: flock on an fd we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(ResourceError::Locked {
            path: path.to_owned(),
        })
    } else {
        Err(ResourceError::Open {
            what: "disk (lock)",
            path: path.to_owned(),
            source: err,
        })
    }
}

/// A new pty pair, the slave in raw mode (no echo, no line editing, no
/// newline translation), so that the guest's bytes reach a reader as
/// they are.
pub fn open_console() -> Result<Console, ResourceError> {
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    let pty = nix::pty::openpty(None, None).map_err(ResourceError::Pty)?;
    let mut termios = tcgetattr(&pty.slave).map_err(ResourceError::Pty)?;
    cfmakeraw(&mut termios);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &termios).map_err(ResourceError::Pty)?;
    let path = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "?".into());
    Ok(Console {
        master: pty.master,
        slave: pty.slave,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmd-res-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_writable_disk_is_locked_to_one_vm() {
        let dir = temp("lock");
        let path = dir.join("d.img");
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let first = open_disk(&path, None, false).unwrap();
        assert_eq!(first.format, DiskFormat::Raw);
        match open_disk(&path, None, false) {
            Err(ResourceError::Locked { path: p }) => assert_eq!(p, path),
            other => panic!("second writer: {:?}", other.map(|d| d.path)),
        }
        assert!(matches!(
            open_disk(&path, None, true),
            Err(ResourceError::Locked { .. })
        ));
        drop(first);
        let ro1 = open_disk(&path, None, true).unwrap();
        let ro2 = open_disk(&path, None, true).unwrap();
        assert!(open_disk(&path, None, false).is_err());
        drop((ro1, ro2));
        open_disk(&path, None, false).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_disk_names_its_path() {
        let err = open_disk(Path::new("/nonexistent/x.img"), None, false)
            .err()
            .unwrap();
        assert_eq!(err.to_string(), "cannot open disk /nonexistent/x.img");
    }

    #[test]
    fn console_slave_is_a_raw_pty() {
        let console = open_console().unwrap();
        assert!(console.path.starts_with("/dev/pts/"), "{}", console.path);
        let t = nix::sys::termios::tcgetattr(&console.slave).unwrap();
        assert!(!t.local_flags.contains(nix::sys::termios::LocalFlags::ECHO));
    }
}
