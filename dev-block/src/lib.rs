//! virtio-blk device logic of vmd-rs; `main.rs` only wires fds, the
//! image and the serve loop.
//!
//! - [`disk`]: disk images (raw, qcow2) behind the [`disk::DiskImage`] trait.
//! - [`wire`]: the virtio-blk structures in guest memory.
//! - [`request`]: descriptor chain → validated request.
//! - [`device`]: executing requests against a disk; the config space.
//! - [`backend`]: the vhost-user glue (dev-backend's `Device` trait).
//! - [`pool`], [`queue_io`]: the I/O threads that run requests, and each
//!   queue's requests in flight.
//! - [`metrics`]: counters the device reports.

pub mod backend;
pub mod config;
pub mod device;
pub mod disk;
pub mod metrics;
pub mod pool;
pub mod queue_io;
pub mod request;
pub mod wire;

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use config::{BlockConfig, Connection, ImageSource, DEFAULT_QUEUE_SIZE};
use disk::{open_image, FileListOpener, OpenError, PathOpener};

/// Why dev-block stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A passed fd is not open.
    #[error("fd {fd} ({what}) is not open")]
    BadFd {
        /// The fd.
        fd: i32,
        /// What it was for.
        what: &'static str,
    },
    /// The image could not be opened.
    #[error("cannot open the image {name}")]
    OpenPath {
        /// The path.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The image is not usable.
    #[error("the image cannot be served")]
    Image(#[from] OpenError),
    /// The backend (its I/O threads) could not be started.
    #[error("starting the device")]
    Backend(#[from] backend::BackendError),
    /// Serving failed.
    #[error("vhost-user")]
    Serve(#[from] dev_backend::serve::ServeError),
}

/// Takes ownership of passed fd `fd` after checking that it is open.
fn take_fd(fd: i32, what: &'static str) -> Result<File, RunError> {
    // SAFETY: F_GETFD only queries the fd's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(RunError::BadFd { fd, what });
    }
    // SAFETY: the fd is open, was passed to this process for this purpose,
    // and nothing else in the process owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens the image, builds the device and serves it until the frontend
/// hangs up (monitor mode) or forever (standalone).
pub fn run(config: BlockConfig) -> Result<(), RunError> {
    let image = match &config.image {
        ImageSource::Fds { image, backing } => {
            let file = take_fd(*image, "image")?;
            let chain = backing
                .iter()
                .map(|fd| take_fd(*fd, "backing image"))
                .collect::<Result<_, _>>()?;
            open_image(
                file,
                config.format,
                config.readonly,
                &mut FileListOpener::new(chain),
            )?
        }
        ImageSource::Path(path) => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(!config.readonly)
                .open(path)
                .map_err(|source| RunError::OpenPath {
                    name: path.display().to_string(),
                    source,
                })?;
            open_image(
                file,
                config.format,
                config.readonly,
                &mut PathOpener::new(path),
            )?
        }
    };
    let disk: Arc<dyn disk::DiskImage> = Arc::from(image);
    log::info!(
        "serving {} bytes{}",
        disk.size(),
        if disk.read_only() { ", read-only" } else { "" }
    );
    let device = device::BlockDevice::new(disk, &config.serial, config.queues, DEFAULT_QUEUE_SIZE);
    let backend = backend::BlockBackend::new(device, DEFAULT_QUEUE_SIZE, config.io_threads)?;
    log::info!("{} I/O threads", backend.io_threads());
    match config.connection {
        Connection::Fd(fd) => {
            let socket = take_fd(fd, "vhost-user socket")?;
            // SAFETY: `socket` owns a connected unix stream socket fd passed
            // by the monitor; ownership moves into the UnixStream.
            let stream =
                unsafe { UnixStream::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(socket)) };
            dev_backend::serve::serve_connection(stream, backend)?;
            log::info!("the frontend hung up");
            Ok(())
        }
        Connection::Listen(path) => Ok(dev_backend::serve::serve_path(&path, backend)?),
    }
}
