//! The control socket: one thread per connection, one request per
//! connection.
//!
//! A connection that sends a malformed, oversized or unexpected frame is
//! logged and closed; nothing else is disturbed. A client has
//! [`REQUEST_TIMEOUT`] to send its request.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipc::control::{Request, Response};
use ipc::Channel;

use super::access::{socket_owner_ids, Peer};
use super::conf::Owner;
use super::daemon::Vmd;
use super::requests;

/// How long a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another vmd answers on the socket.
    #[error("vmd is already running (it answers on {0})")]
    AlreadyRunning(String),
    /// Creating, binding or setting up the socket failed.
    #[error("control socket {path}: cannot {what}")]
    Os {
        /// The socket's path.
        path: String,
        /// The step.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `socket owner` names someone unknown.
    #[error("socket owner")]
    Owner(#[from] super::access::OwnerError),
}

/// Binds the control socket at `path`: mode 0660, owned by root or by
/// `owner` (vm.conf's `socket owner`); a stale socket left by a vmd that
/// died is replaced, a live one is not.
pub fn bind(path: &Path, owner: Option<&Owner>) -> Result<UnixListener, SocketError> {
    let os = |what, source| SocketError::Os {
        path: path.display().to_string(),
        what,
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| os("create its directory", e))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(SocketError::AlreadyRunning(path.display().to_string()));
        }
        std::fs::remove_file(path).map_err(|e| os("remove the stale socket", e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| os("bind", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| os("set its mode", e))?;
    if let Some(owner) = owner {
        let (uid, gid) = socket_owner_ids(owner)?;
        nix::unistd::chown(path, uid, gid)
            .map_err(|e| os("set its owner", std::io::Error::from(e)))?;
    }
    Ok(listener)
}

/// Serves `listener` until it fails.
pub fn serve(vmd: Arc<Vmd>, listener: UnixListener) -> std::io::Error {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return e,
        };
        let vmd = vmd.clone();
        let spawned = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || connection(&vmd, stream));
        if let Err(e) = spawned {
            log::error!("cannot start a control connection thread: {e}");
        }
    }
}

fn connection(vmd: &Arc<Vmd>, stream: UnixStream) {
    let peer = match Peer::of(&stream) {
        Ok(peer) => peer,
        Err(e) => {
            log::warn!("control: cannot read the peer's credentials: {e}");
            return;
        }
    };
    let mut channel = Channel::new(stream);
    if channel.set_read_timeout(Some(REQUEST_TIMEOUT)).is_err() {
        return;
    }
    let request = match channel.recv::<Request>() {
        Ok((request, _fds)) => request,
        Err(ipc::IpcError::Closed) => return,
        Err(e) => {
            log::warn!(
                "control: closing the connection of uid {} pid {}: {}",
                peer.uid,
                peer.pid,
                ipc::error_chain(&e)
            );
            return;
        }
    };
    log::debug!("control: uid {} pid {}: {request:?}", peer.uid, peer.pid);
    if let Request::Console(vm) = &request {
        return console(vmd, &peer, vm, channel);
    }
    let mut reply = |response: Response| {
        if let Err(e) = channel.send(&response, &[]) {
            log::debug!(
                "control: cannot answer pid {}: {}",
                peer.pid,
                ipc::error_chain(&e)
            );
        }
    };
    requests::handle(vmd, &peer, request, &mut reply);
}

/// `vmctl console`: the pty's slave goes to the client with the answer;
/// the connection then stays open while the client is attached, and its
/// end (detach, or the client killed) detaches.
fn console(vmd: &Arc<Vmd>, peer: &Peer, vm: &ipc::control::VmRef, mut channel: Channel) {
    use std::os::fd::AsFd;
    let session = match super::console::attach(vmd, peer, vm) {
        Ok(session) => session,
        Err(r) => {
            let _ = channel.send(
                &Response::Error {
                    kind: r.kind,
                    message: r.message,
                },
                &[],
            );
            return;
        }
    };
    let answer = Response::Console {
        id: session.id,
        name: session.name.clone(),
        tty: session.tty.clone(),
    };
    let sent = channel.send(&answer, &[session.slave.as_fd()]);
    if sent.is_ok() && channel.set_read_timeout(None).is_ok() {
        // Whatever comes next, or the end, means the client is done.
        let _ = channel.recv::<Request>();
    }
    super::console::detach(vmd, session);
}
