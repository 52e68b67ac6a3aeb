//! The shared vhost-user backend layer of vmd-rs device processes.
//!
//! Every device process (dev-block, dev-net, dev-console) implements
//! [`Device`] and calls [`serve_connection`]; this crate does the rest of
//! the vhost-user protocol (QEMU docs/interop/vhost-user.rst) once.
//!
//! | module | owns |
//! | --- | --- |
//! | [`device`] | the [`Device`] trait and [`QueueContext`] (pop, complete, notify) |
//! | [`serve`] | [`serve_connection`] (monitor-handed socket) and [`serve_path`]/[`serve_listener`] (standalone, re-listens) |
//! | [`handler`] | the protocol handler: features, memory table, vrings, inflight fds |
//! | [`memory`] | the memory table: regions mapped from the frontend's fds |
//! | [`vring`] | one ring's state, its start (with inflight recovery) and stop |
//! | [`worker`] | one epoll thread per started queue, `<dev>-q<n>` |
//! | [`chain`] | descriptor chains walked and validated before a device sees them |
//! | [`iov`] | a chain's guest buffers as `iovec`s for one syscall, without a bounce copy |
//! | [`inflight`] | the shared inflight region (split rings): mark, complete, recover |
//! | [`config`] | configuration-change messages over the backend channel |
//! | [`metrics`] | the counters each device keeps |
//! | [`process`] | the device process's `--socket-fd` / `--socket` connection and passed fds |
//! | [`sandbox`] | the device process's sandbox options; entering its profile before serving |
//! | `testing` | (feature `test-driver`) an in-process frontend and an echo device |
//!
//! What vhost-user-backend 0.24 lacks and this layer adds: inflight I/O
//! tracking (GET/SET_INFLIGHT_FD, resubmission on reconnect) and
//! VHOST_USER_BACKEND_CONFIG_CHANGE_MSG. It is built on vhost's lower
//! layer (`BackendReqHandler`, `VhostUserBackendReqHandlerMut`).
//!
//! Guest mistakes (bad descriptors, bad ring indices) never panic: they are
//! logged at debug level, counted in [`Metrics::guest_errors`], and stop
//! that queue, signalling its error eventfd so that the frontend can set
//! NEEDS_RESET.

pub mod chain;
pub mod config;
pub mod device;
pub mod handler;
pub mod inflight;
pub mod iov;
pub mod memory;
pub mod metrics;
pub mod process;
pub mod sandbox;
pub mod serve;
mod sys;
pub mod vring;
pub mod worker;

#[cfg(any(test, feature = "test-driver"))]
pub mod testing;

pub use chain::{ChainError, DescChain, Segment};
pub use config::{ConfigError, ConfigNotifier};
pub use device::{Device, HandleError, QueueContext};
pub use iov::GuestIoVecs;
pub use memory::GuestMemoryMmap;
pub use metrics::{Metrics, MetricsPage, MetricsSnapshot};
pub use process::{Connection, ConnectionArgs, Endpoint, FdError};
pub use sandbox::SandboxArgs;
pub use sandbox_profiles::{Profile, SandboxError};
pub use serve::{listen, serve_connection, serve_listener, serve_path, ServeError};
