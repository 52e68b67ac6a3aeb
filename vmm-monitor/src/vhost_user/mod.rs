//! The vhost-user frontend: virtio devices whose backend is another process.
//!
//! Each virtio device of a VM runs in its own process, which serves the
//! vhost-user protocol (QEMU's docs/interop/vhost-user.rst) on a socket the
//! monitor holds. The monitor negotiates features and configuration, and
//! when the guest driver starts the device it hands the backend the guest
//! RAM memfd (a memory table), each ring's addresses, and the KVM
//! ioeventfd/irqfd pair of each queue. From then on the data path runs
//! between the guest and the backend without the monitor.
//!
//! Map of the module:
//! - [`device`]: [`VhostUserDevice`], the [`crate::virtio::VirtioDevice`]
//!   the transport drives.
//! - [`state`]: [`NegotiatedState`], everything told to the backend, kept
//!   for replay to a restarted one; the memory table and ring translation.
//! - [`replay`]: [`VhostUserDevice::reconnect`], a restarted backend
//!   brought to where its predecessor was.
//! - [`shared`]: [`SharedDevice`], the device as the transport and its
//!   supervisor both hold it.
//! - [`features`]: which feature bits reach the guest, which protocol
//!   features we ask for, configuration space sizes.
//! - [`error`]: the module's error type.

pub mod device;
pub mod error;
pub mod features;
pub mod replay;
pub mod shared;
pub mod state;

pub use device::{VhostUserDevice, QUEUE_MAX_SIZE};
pub use error::Error;
pub use replay::REPLAY_TIMEOUT;
pub use shared::SharedDevice;
pub use state::{InflightRegion, MemRegion, MemTable, NegotiatedState, RingAddrs, VringState};
