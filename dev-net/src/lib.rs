//! The network device process of vmd-rs: one virtio-net device (virtio 1.2
//! §5.1) served over vhost-user, its frames going to and from a tap fd
//! that vmd opened and the monitor handed down.
//!
//! ```text
//!  guest transmitq ─► net-q1: tx ─► lladdr lock ─► FrameFilter ─► tap (writev)
//!                                                     │ reply
//!                                                     ▼
//!  guest receiveq ◄── net-q0: rx ◄── lladdr lock ◄── injected ◄┬─ tap (read)
//! ```
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | the command line → [`config::NetConfig`] |
//! | [`device`] | the virtio-net [`dev_backend::Device`]: features, config space, queues |
//! | [`tx`] / [`rx`] | guest → tap, tap → guest (mergeable receive buffers) |
//! | [`tap`] | the tap fd: ioctls, reads and writes, `Tap::create` |
//! | [`filter`] | `locked lladdr` |
//! | [`guest_frames`] | the [`guest_frames::FrameFilter`] hook (DHCP answers) |
//! | [`mac`] | MAC addresses |
//! | [`wire`] | the vnet header and the configuration space as bytes |
//! | [`metrics`] | the device's counters |
//!
//! Threads: `net-q0`, `net-q1` (dev-backend's queue workers) and the main
//! thread serving the vhost-user connection.

pub mod addr;
pub mod config;
pub mod device;
pub mod dhcp;
pub mod filter;
pub mod guest_frames;
pub mod mac;
pub mod metrics;
pub mod rx;
pub mod tap;
pub mod tx;
pub mod wire;

use std::sync::Arc;

use config::{NetConfig, TapSource};
use dev_backend::process::{take_passed_fd, FdError};
use dev_backend::Profile;
use device::NetDevice;
use tap::{Tap, TapError};

/// Why dev-net stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A passed fd is not open.
    #[error(transparent)]
    BadFd(#[from] FdError),
    /// The tap cannot be used.
    #[error("the tap")]
    Tap(#[from] TapError),
    /// The device could not be set up (eventfd, epoll).
    #[error("setting up the device")]
    Setup(#[source] std::io::Error),
    /// Serving failed.
    #[error("vhost-user")]
    Serve(#[from] dev_backend::serve::ServeError),
    /// The DHCP server's configuration is not usable.
    #[error("built-in DHCP")]
    Dhcp(#[source] dhcp::DhcpConfigError),
    /// The sandbox could not be entered.
    #[error("sandbox")]
    Sandbox(#[from] dev_backend::SandboxError),
}

/// Builds the device on the tap and serves it until the frontend hangs up
/// (monitor mode) or forever (standalone).
pub fn run(config: NetConfig) -> Result<(), RunError> {
    let tap = match &config.tap {
        TapSource::Fd(fd) => Tap::from_fd(take_passed_fd(*fd, "tap")?)?,
        TapSource::Create(name) => Tap::create(name)?,
    };
    log::info!(
        "serving {} on {:?}{} (offloads {:?})",
        config.mac,
        tap.kind(),
        if config.locked { ", locked lladdr" } else { "" },
        tap.offloads()
    );
    let (endpoint, metrics) = config.connection.open()?;
    let device = Arc::new(
        NetDevice::new(tap, config.mac, config.locked)
            .map_err(RunError::Setup)?
            .with_metrics(metrics),
    );
    if let Some(dhcp) = config.dhcp {
        log::info!(
            "built-in DHCP: {} for {} (router and DNS {})",
            dhcp.guest_addr,
            dhcp.guest_mac,
            dhcp.host_addr
        );
        let server = dhcp::DhcpServer::new(dhcp).map_err(RunError::Dhcp)?;
        device.set_frame_filter(Box::new(server));
    }
    // Standalone, serving returns only errors.
    config.sandbox.enter_for(&endpoint, Profile::DevNet)?;
    let result = endpoint
        .serve(Arc::clone(&device))
        .map(|()| log::info!("the frontend hung up"));
    log::info!("{}", device.net_metrics());
    Ok(result?)
}
