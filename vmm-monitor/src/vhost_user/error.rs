//! Errors of the vhost-user frontend: each names the device and, for a
//! protocol failure, the request that failed.

use std::path::PathBuf;

use vhost::vhost_user::message::FrontendReq;

use super::state::{MemTableError, RingError};
use crate::virtio::VirtioDeviceError;

/// A vhost-user frontend operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting to the backend's listening socket failed.
    #[error("{device}: cannot connect to vhost-user socket {path}")]
    Connect {
        /// Which device.
        device: String,
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The socket could not be duplicated for the requests the vhost crate
    /// cannot send itself.
    #[error("{device}: cannot duplicate the vhost-user socket")]
    DupSocket {
        /// Which device.
        device: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A device-wide request failed, or the backend refused it.
    #[error("{device}: vhost-user {request:?} failed")]
    Request {
        /// Which device.
        device: String,
        /// The request that failed.
        request: FrontendReq,
        /// What the vhost crate reported.
        #[source]
        source: vhost::Error,
    },
    /// A request about one vring failed, or the backend refused it.
    #[error("{device}: vhost-user {request:?} for queue {queue} failed")]
    Vring {
        /// Which device.
        device: String,
        /// The request that failed.
        request: FrontendReq,
        /// The queue index.
        queue: u16,
        /// What the vhost crate reported.
        #[source]
        source: vhost::Error,
    },
    /// The unread call eventfd of a polled queue could not be created.
    #[error("{device}: cannot create the call eventfd of polled queue {queue}")]
    PollCallFd {
        /// Which device.
        device: String,
        /// The queue index.
        queue: u16,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The backend does not offer VIRTIO_F_VERSION_1; the transport is modern-only.
    #[error("{device}: backend does not offer VIRTIO_F_VERSION_1 (features {offered:#x})")]
    NoVersion1 {
        /// Which device.
        device: String,
        /// The features the backend offered.
        offered: u64,
    },
    /// A restarted backend cannot take over from the previous one.
    #[error("{device}: the restarted backend cannot take over: {what}")]
    Incompatible {
        /// Which device.
        device: String,
        /// What differs.
        what: String,
    },
    /// The backend reported that it supports no queue at all.
    #[error("{device}: backend supports no queue")]
    NoQueues {
        /// Which device.
        device: String,
    },
    /// The transport handed over a queue the device does not have.
    #[error("{device}: queue {queue} does not exist ({num_queues} queues)")]
    NoSuchQueue {
        /// Which device.
        device: String,
        /// The queue index.
        queue: u16,
        /// How many queues the device has.
        num_queues: u16,
    },
    /// A queue size is zero, not a power of two, or above the maximum.
    #[error("{device}: queue {queue} size {size} is invalid (maximum {max})")]
    QueueSize {
        /// Which device.
        device: String,
        /// The queue index.
        queue: u16,
        /// The size the driver set.
        size: u16,
        /// The largest size allowed.
        max: u16,
    },
    /// A ring the driver set up is not inside one guest RAM region.
    #[error("{device}: queue {queue}")]
    Ring {
        /// Which device.
        device: String,
        /// The queue index.
        queue: u16,
        /// Which ring and why.
        #[source]
        source: RingError,
    },
    /// Guest memory cannot be described to a backend.
    #[error("{device}: cannot build the vhost-user memory table")]
    MemTable {
        /// Which device.
        device: String,
        /// Why.
        #[source]
        source: MemTableError,
    },
}

impl Error {
    /// The full chain of causes, for logs and for the transport's error.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(err) = cause {
            text.push_str(": ");
            text.push_str(&err.to_string());
            cause = err.source();
        }
        text
    }
}

impl From<Error> for VirtioDeviceError {
    fn from(err: Error) -> Self {
        let device = match &err {
            Error::Connect { device, .. }
            | Error::DupSocket { device, .. }
            | Error::Request { device, .. }
            | Error::Vring { device, .. }
            | Error::PollCallFd { device, .. }
            | Error::NoVersion1 { device, .. }
            | Error::NoQueues { device }
            | Error::Incompatible { device, .. }
            | Error::NoSuchQueue { device, .. }
            | Error::QueueSize { device, .. }
            | Error::Ring { device, .. }
            | Error::MemTable { device, .. } => device.clone(),
        };
        // The transport's error prints the device itself.
        let chain = err.chain();
        let what = chain
            .strip_prefix(&format!("{device}: "))
            .unwrap_or(&chain)
            .to_string();
        VirtioDeviceError::Backend { device, what }
    }
}
