//! Configuration-change notifications over the backend channel.
//!
//! vhost-user spec, "Back-end message types":
//! VHOST_USER_BACKEND_CONFIG_CHANGE_MSG (id 2, no payload) tells the
//! frontend that the device configuration space changed; the frontend
//! then raises the virtio configuration-change interrupt. vhost 0.18's
//! `Backend` cannot send this message and does not expose its socket, so
//! the connection loop captures a duplicate of the channel fd when
//! SET_BACKEND_REQ_FD arrives ([`crate::serve`]) and the message is
//! written here, in this one place.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::BackendReq;

/// The protocol version in the low bits of every header's flags.
const VHOST_USER_VERSION: u32 = 0x1;

/// Why a notification was not sent.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The frontend never sent SET_BACKEND_REQ_FD (or the connection is
    /// gone).
    #[error("no backend channel")]
    NoChannel,
    /// Writing to the channel failed.
    #[error("writing to the backend channel")]
    Write(#[source] io::Error),
}

/// A cloneable handle a device uses to raise configuration changes.
///
/// # Invariants
/// - Holds at most one channel: the one from the latest accepted
///   SET_BACKEND_REQ_FD of the current connection (vhost-user spec,
///   "Back-end communication").
#[derive(Debug, Clone, Default)]
pub struct ConfigNotifier {
    inner: Arc<Mutex<Channel>>,
}

#[derive(Debug, Default)]
struct Channel {
    pending: Option<UnixStream>,
    active: Option<UnixStream>,
}

impl ConfigNotifier {
    fn channel(&self) -> std::sync::MutexGuard<'_, Channel> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a channel fd seen (peeked) in a SET_BACKEND_REQ_FD message
    /// before the protocol handler accepted it.
    pub(crate) fn stage(&self, stream: UnixStream) {
        self.channel().pending = Some(stream);
    }

    /// The protocol handler accepted the staged channel.
    pub(crate) fn activate(&self) {
        let mut ch = self.channel();
        if let Some(stream) = ch.pending.take() {
            ch.active = Some(stream);
        }
    }

    /// Forgets the channel (connection closed).
    pub(crate) fn clear(&self) {
        let mut ch = self.channel();
        ch.pending = None;
        ch.active = None;
    }

    /// Whether a channel is active.
    pub fn is_connected(&self) -> bool {
        self.channel().active.is_some()
    }

    /// Sends VHOST_USER_BACKEND_CONFIG_CHANGE_MSG. No reply is requested,
    /// so the call never waits for the frontend.
    pub fn notify_config_changed(&self) -> Result<(), ConfigError> {
        let mut ch = self.channel();
        let stream = ch.active.as_mut().ok_or(ConfigError::NoChannel)?;
        let request: u32 = BackendReq::CONFIG_CHANGE_MSG.into();
        let mut msg = [0u8; 12];
        msg[0..4].copy_from_slice(&request.to_ne_bytes());
        msg[4..8].copy_from_slice(&VHOST_USER_VERSION.to_ne_bytes());
        // Payload size 0: bytes 8..12 stay zero.
        stream.write_all(&msg).map_err(ConfigError::Write)
    }
}
