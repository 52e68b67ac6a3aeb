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
use std::sync::Arc;

use config::{BlockConfig, ImageSource, DEFAULT_QUEUE_SIZE};
use dev_backend::process::{take_passed_fd, FdError};
use disk::{open_image, FileListOpener, OpenError, PathOpener};

/// Why dev-block stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A passed fd is not open.
    #[error(transparent)]
    BadFd(#[from] FdError),
    /// The sandbox could not be entered.
    #[error("sandbox")]
    Sandbox(#[from] dev_backend::SandboxError),
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
fn take_fd(fd: i32, what: &'static str) -> Result<File, FdError> {
    take_passed_fd(fd, what).map(File::from)
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
    // The sandbox before the I/O threads start: landlock binds the calling
    // thread and those it starts later (seccomp binds them all).
    let (endpoint, metrics) = config.connection.open()?;
    config
        .sandbox
        .enter_for(&endpoint, dev_backend::Profile::DevBlock)?;
    let device = device::BlockDevice::new(disk, &config.serial, config.queues, DEFAULT_QUEUE_SIZE);
    let backend =
        backend::BlockBackend::new(device, DEFAULT_QUEUE_SIZE, config.io_threads, metrics)?;
    log::info!("{} I/O threads", backend.io_threads());
    // Standalone, serving returns only errors.
    endpoint.serve(backend)?;
    log::info!("the frontend hung up");
    Ok(())
}
