//! The control-path pieces every vmd-rs process links.
//!
//! - [`logger`]: the one log facility of a process, its level switchable
//!   while it runs (today by SIGUSR1/SIGUSR2; `vmctl log` will send the
//!   level as a message over a [`Channel`]).
//! - [`log_forward`]: another process's output (a device's, read from
//!   its pipe) logged under its name, untrusted lines made safe.
//! - [`frame`]: the wire format of one message — a fixed 16-byte header
//!   (magic, [`PROTOCOL_VERSION`], flags, payload length, fd count) and a
//!   bincode 2 payload — with its limits ([`MAX_PAYLOAD`], [`MAX_FDS`]) and
//!   one [`FrameError`] variant per broken rule.
//! - [`channel`]: [`Channel`], typed `send`/`recv` over a unix stream with
//!   fds passed by SCM_RIGHTS in the same sendmsg/recvmsg as the header;
//!   [`IpcError`] for what can go wrong on the way.
//! - [`fds`]: packing and taking SCM_RIGHTS control messages (libc
//!   directly); received fds are owned and close-on-exec at once.
//! - [`hold`]: holding a device stopped before it serves, for a debugger.
//! - [`console`]: the monitor ↔ dev-console side channel (COM1 bytes, attach, detach).
//! - [`control`]: vmctl ↔ vmd messages; VM names and references.
//! - [`monitor`]: vmd ↔ monitor messages.
//! - [`metrics`]: the counters every device keeps, in a page it may share
//!   with its monitor.
//! - [`shm`]: sealed memfds a device's successive processes (and its
//!   monitor) share.
//! - [`size`]: sizes as users write them (`512M`, `1.5G`).
//! - [`peer`]: [`peer_credentials`] (SO_PEERCRED), which vmd checks every
//!   request against.

pub mod channel;
pub mod console;
pub mod control;
pub mod fds;
pub mod frame;
pub mod hold;
pub mod log_forward;
pub mod logger;
pub mod metrics;
pub mod monitor;
pub mod peer;
pub mod shm;
pub mod size;

#[cfg(test)]
mod tests;

pub use channel::{Channel, IpcError};
pub use frame::{FrameError, MAX_FDS, MAX_PAYLOAD};
pub use peer::{peer_credentials, PeerCred};

/// Version of the wire protocol, carried in every frame header and checked
/// on receipt: a frame of another version is refused
/// ([`FrameError::VersionMismatch`]).
///
/// Bump it on any incompatible change: to the frame header, or to any
/// message type sent over a [`Channel`] (a field added, removed, reordered
/// or retyped, an enum variant added or reordered — bincode encodes
/// positions, not names). vmd re-adopts monitors started by an earlier vmd,
/// so both ends may come from different builds.
pub const PROTOCOL_VERSION: u16 = 6;

/// An error and each of its causes, joined by ": ", for the one line a
/// process logs (and reports to its parent) before it exits.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}
