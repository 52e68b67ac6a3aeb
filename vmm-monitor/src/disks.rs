//! A VM's disks: each a virtio-blk device served over vhost-user, either by
//! a dev-block process the monitor starts or by an external backend.
//!
//! For an image disk the monitor opens the image itself (read-only when the
//! disk is) and, for a qcow2 image, its backing chain (read-only, found by
//! name relative to each image, at most 4 deep, through dev-block's own
//! qcow2 reader), makes a socketpair, and starts dev-block with its end of
//! the socket at fd 3, the image at fd 4 and the backing files from fd 5 up;
//! dev-block opens nothing by path.
//! For a disk vmd opened ([`DiskBackend::Files`], control mode) the monitor
//! passes dups of the image and backing fds it was given the same way,
//! opening nothing, and keeps its own for a rebuild after a guest reboot.
//! For `vhost-user=SOCKET` the monitor connects to a backend that is
//! already listening (qemu-storage-daemon, SPDK, a standalone dev-block).

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dev_block::disk::{open_image as open_disk, Format, RecordingOpener};

use crate::config::{DiskBackend, DiskFormat};
use crate::device_proc::{sibling_binary, DeviceProcessError};
use crate::exit::VmEvents;
use crate::supervisor::{Recipe, RestartPolicy, Supervisor, SupervisorError};
use crate::vhost_user::{self, VhostUserDevice};
use crate::virtio::VirtioDevice;

/// The virtio device ID of a block device (virtio 1.2 §5).
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Most request queues we ask a block backend for.
pub const MAX_BLOCK_QUEUES: u16 = 8;

/// Why a disk could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image could not be opened.
    #[error("disk{index}: cannot open {path}")]
    Open {
        /// Disk index.
        index: usize,
        /// The image path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The image's fds could not be duplicated for its supervisor.
    #[error("disk{index}: cannot keep a copy of the image's fds")]
    Dup {
        /// Disk index.
        index: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The device process could not be started or connected.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// The device binary is missing.
    #[error(transparent)]
    Process(#[from] DeviceProcessError),
    /// The image or its backing chain is not usable.
    #[error("disk{index}: {path}")]
    Image {
        /// Disk index.
        index: usize,
        /// The image path.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: dev_block::disk::OpenError,
    },
    /// The vhost-user conversation failed.
    #[error(transparent)]
    VhostUser(#[from] vhost_user::Error),
}

/// A disk ready to be put on the PCI bus, with the process serving it (if
/// the monitor started one).
pub struct AttachedDisk {
    /// The vhost-user frontend.
    pub device: Box<dyn VirtioDevice>,
    /// The supervisor of its dev-block process, `None` for an external
    /// backend.
    pub supervisor: Option<Arc<Supervisor>>,
}

/// Connects disk number `index` as `disk` describes, asking for `queues`
/// request queues; its dev-block, sandboxed as `sandbox` says, is
/// restarted as `policy` says, and reports to `events`.
pub fn attach(
    index: usize,
    disk: &DiskBackend,
    queues: u16,
    events: &VmEvents,
    sandbox: &crate::config::DeviceSandbox,
    policy: RestartPolicy,
) -> Result<AttachedDisk, DiskError> {
    let name = format!("disk{index}");
    let queues = queues.clamp(1, MAX_BLOCK_QUEUES);
    match disk {
        DiskBackend::VhostUser { socket } => {
            let device = VhostUserDevice::connect_path(&name, socket, VIRTIO_ID_BLOCK, queues)?;
            log::info!("{name}: vhost-user backend at {}", socket.display());
            Ok(AttachedDisk {
                device: Box::new(device),
                supervisor: None,
            })
        }
        DiskBackend::Image {
            path,
            format,
            readonly,
        } => {
            let image = open_image(index, path, *readonly)?;
            let backing = backing_chain(index, path, &image, *format)?;
            let served = Served {
                index,
                path,
                image: &image,
                backing: &backing,
                format: *format,
                readonly: *readonly,
            };
            // The child gets its copies; ours close when attach returns.
            spawn_dev_block(&served, queues, events, sandbox, policy)
        }
        DiskBackend::Files(files) => {
            let served = Served {
                index,
                path: &files.path,
                image: &files.image,
                backing: &files.backing,
                format: Some(files.format),
                readonly: files.readonly,
            };
            // The files stay open in `files` for a rebuilt VM.
            spawn_dev_block(&served, queues, events, sandbox, policy)
        }
    }
}

/// An open image a dev-block process is to serve.
struct Served<'a> {
    index: usize,
    path: &'a Path,
    image: &'a File,
    backing: &'a [File],
    format: Option<DiskFormat>,
    readonly: bool,
}

/// Starts dev-block on `disk` (its fds duplicated into the child) and
/// connects to it.
fn spawn_dev_block(
    disk: &Served<'_>,
    queues: u16,
    events: &VmEvents,
    sandbox: &crate::config::DeviceSandbox,
    policy: RestartPolicy,
) -> Result<AttachedDisk, DiskError> {
    let index = disk.index;
    let name = format!("disk{index}");
    let program = sibling_binary("dev-block")?;
    let mut args = vec![
        "--socket-fd".to_string(),
        "3".into(),
        "--disk-fd".into(),
        "4".into(),
        "--queues".into(),
        queues.to_string(),
        "--serial".into(),
        name.clone(),
    ];
    if let Some(format) = disk.format {
        args.push("--format".into());
        args.push(match format {
            DiskFormat::Raw => "raw".into(),
            DiskFormat::Qcow2 => "qcow2".into(),
        });
    }
    if disk.readonly {
        args.push("--readonly".into());
    }
    // The supervisor keeps its own copies of the image and its backing
    // files, for every process it starts.
    let copy = |file: &File| {
        file.as_fd()
            .try_clone_to_owned()
            .map_err(|source| DiskError::Dup { index, source })
    };
    let mut resources = vec![copy(disk.image)?];
    for (i, file) in disk.backing.iter().enumerate() {
        args.push("--backing-fd".into());
        args.push((5 + i).to_string());
        resources.push(copy(file)?);
    }
    let recipe = Recipe {
        name: name.clone(),
        program,
        args,
        resources,
        after_restart: None,
    };
    let (supervisor, device) = Supervisor::start(
        recipe,
        sandbox,
        events.clone(),
        policy,
        VIRTIO_ID_BLOCK,
        queues,
    )?;
    log::info!(
        "{name}: {} served by dev-block pid {}",
        disk.path.display(),
        supervisor.pid().unwrap_or_default()
    );
    Ok(AttachedDisk {
        device: Box::new(device),
        supervisor: Some(supervisor),
    })
}

/// The backing chain of `image` (empty for raw images), opened read-only,
/// top-down. Opening the image read-only here changes nothing in it.
fn backing_chain(
    index: usize,
    path: &std::path::Path,
    image: &File,
    format: Option<DiskFormat>,
) -> Result<Vec<File>, DiskError> {
    let err = |source| DiskError::Image {
        index,
        path: path.to_owned(),
        source,
    };
    let copy = image.try_clone().map_err(|source| DiskError::Open {
        index,
        path: path.to_owned(),
        source,
    })?;
    let format = format.map(|f| match f {
        DiskFormat::Raw => Format::Raw,
        DiskFormat::Qcow2 => Format::Qcow2,
    });
    let mut opener = RecordingOpener::new(path);
    open_disk(copy, format, true, &mut opener).map_err(err)?;
    Ok(opener.files)
}

fn open_image(index: usize, path: &std::path::Path, readonly: bool) -> Result<File, DiskError> {
    OpenOptions::new()
        .read(true)
        .write(!readonly)
        .open(path)
        .map_err(|source| DiskError::Open {
            index,
            path: path.to_owned(),
            source,
        })
}
