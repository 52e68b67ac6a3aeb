//! Serving a device on a vhost-user connection.
//!
//! [`serve_connection`] serves the socket the monitor hands a device
//! process and returns when the frontend disconnects (the process then
//! exits; the monitor decides about restarts). [`serve_path`] listens on a
//! path for standalone use with other frontends (QEMU, Cloud Hypervisor)
//! and listens again after each disconnect; [`serve_listener`] does the
//! same on a socket bound already ([`listen`]), as a sandboxed standalone
//! device does.

use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use log::{debug, info, warn};
use vhost::vhost_user::message::FrontendReq;
use vhost::vhost_user::{BackendReqHandler, Error as VuError};

use crate::config::ConfigNotifier;
use crate::device::Device;
use crate::handler::BackendHandler;

/// Bytes of a vhost-user message header (request, flags, size).
const HEADER_SIZE: usize = 12;

/// Why serving stopped other than by a clean disconnect.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The frontend sent something the protocol layer refused, or the
    /// socket failed.
    #[error("vhost-user protocol")]
    Protocol(#[source] VuError),
    /// The listening socket failed.
    #[error("listening on the vhost-user socket")]
    Listen(#[source] std::io::Error),
    /// Held by the monitor, the release never came.
    #[error("waiting to be released by the monitor")]
    Hold(#[source] std::io::Error),
}

/// Serves `device` on a connected socket until the frontend disconnects.
pub fn serve_connection<D: Device>(stream: UnixStream, device: Arc<D>) -> Result<(), ServeError> {
    let notifier = ConfigNotifier::default();
    device.set_config_notifier(notifier.clone());
    let handler =
        BackendHandler::new(Arc::clone(&device), notifier.clone()).map_err(ServeError::Protocol)?;
    let handler = Arc::new(Mutex::new(handler));
    let peek = stream
        .try_clone()
        .map_err(|e| ServeError::Protocol(VuError::SocketError(e)))?;
    let mut requests = BackendReqHandler::from_stream(stream, Arc::clone(&handler));
    let result = loop {
        let code = peek_request(&peek, &notifier);
        if let Some(code) = code {
            match FrontendReq::try_from(code) {
                Ok(request) => debug!("{}: frontend request {request:?}", device.name()),
                Err(_) => debug!("{}: frontend request {code} (unknown)", device.name()),
            }
        }
        match requests.handle_request() {
            Ok(()) => {}
            Err(VuError::Disconnected) => break Ok(()),
            Err(e) if refused_and_answered(&e, code) => {
                debug!("{}: request {code:?} refused: {e}", device.name());
            }
            Err(e) => break Err(ServeError::Protocol(e)),
        }
    };
    debug!("{}: connection closed", device.name());
    handler.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
    notifier.clear();
    result
}

/// Binds a listening socket at `path`, replacing a stale socket there
/// (never a file of another kind).
pub fn listen(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ))
        }
        Err(_) => {}
    }
    UnixListener::bind(path)
}

/// Listens on `path` and serves one frontend at a time, forever; returns
/// only when the listening socket fails.
pub fn serve_path<D: Device>(path: &Path, device: Arc<D>) -> Result<(), ServeError> {
    let listener = listen(path).map_err(ServeError::Listen)?;
    serve_listener(&listener, path, device)
}

/// Serves one frontend at a time from `listener` (bound at `path`),
/// forever; returns only when accepting fails. Takes no path and makes no
/// socket: a sandboxed device (profile `*_standalone`) may run it.
pub fn serve_listener<D: Device>(
    listener: &UnixListener,
    path: &Path,
    device: Arc<D>,
) -> Result<(), ServeError> {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ServeError::Listen(e)),
        };
        info!(
            "{}: frontend connected on {}",
            device.name(),
            path.display()
        );
        match serve_connection(stream, Arc::clone(&device)) {
            Ok(()) => info!("{}: frontend disconnected, listening again", device.name()),
            Err(e) => warn!("{}: connection ended: {e}", device.name()),
        }
    }
}

/// Requests whose reply vhost's `BackendReqHandler` skips when the handler
/// fails: after such a failure the frontend would wait forever, so the
/// connection ends instead.
const REPLY_REQUIRED: [FrontendReq; 7] = [
    FrontendReq::GET_FEATURES,
    FrontendReq::GET_PROTOCOL_FEATURES,
    FrontendReq::GET_VRING_BASE,
    FrontendReq::GET_QUEUE_NUM,
    FrontendReq::GET_INFLIGHT_FD,
    FrontendReq::GET_MAX_MEM_SLOTS,
    FrontendReq::SET_LOG_BASE,
];

/// Whether `e` is the handler refusing a request whose failure the
/// frontend was told about (REPLY_ACK) or does not wait for, so that the
/// connection can go on. Framing and socket errors end it.
fn refused_and_answered(e: &VuError, code: Option<u32>) -> bool {
    let refusal = matches!(
        e,
        VuError::InvalidParam | VuError::InvalidOperation(_) | VuError::BackendInternalError
    );
    let needs_reply = code.is_some_and(|c| REPLY_REQUIRED.iter().any(|r| u32::from(*r) == c));
    refusal && code.is_some() && !needs_reply
}

/// Peeks the next request's code; if it is SET_BACKEND_REQ_FD, stages a
/// duplicate of its fd with the notifier (see [`crate::config`]). Peeking
/// leaves the message and its fd in the socket for the protocol handler.
fn peek_request(sock: &UnixStream, notifier: &ConfigNotifier) -> Option<u32> {
    let mut header = [0u8; HEADER_SIZE];
    // First peek without a control buffer: the kernel passes no fds.
    // SAFETY: `header` is valid for HEADER_SIZE bytes; recv writes at most
    // that many.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            header.as_mut_ptr().cast(),
            HEADER_SIZE,
            libc::MSG_PEEK,
        )
    };
    if n != HEADER_SIZE as isize {
        return None;
    }
    let code = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]);
    if code == u32::from(FrontendReq::SET_BACKEND_REQ_FD) {
        match peek_fd(sock.as_raw_fd()) {
            // SAFETY: the kernel just installed this fd for us; nothing
            // else owns it.
            Some(fd) => notifier.stage(unsafe { UnixStream::from_raw_fd(fd) }),
            None => warn!("SET_BACKEND_REQ_FD without a peekable fd; config changes disabled"),
        }
    }
    Some(code)
}

/// Peeks the header again with room for one SCM_RIGHTS fd.
fn peek_fd(sock: RawFd) -> Option<RawFd> {
    let mut header = [0u8; HEADER_SIZE];
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: header.as_mut_ptr().cast(),
        iov_len: HEADER_SIZE,
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&control);
    // SAFETY: `msg` points at `iov` and `control`, which outlive the call.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_PEEK | libc::MSG_CMSG_CLOEXEC) };
    if n <= 0 {
        return None;
    }
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR only reads it.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if cmsg.is_null() {
        return None;
    }
    // SAFETY: a non-null CMSG_FIRSTHDR points into `control`.
    let (level, kind, len) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len) };
    // SAFETY: CMSG_LEN is arithmetic on its argument.
    let one_fd = unsafe { libc::CMSG_LEN(mem::size_of::<RawFd>() as u32) } as usize;
    if level != libc::SOL_SOCKET || kind != libc::SCM_RIGHTS || len < one_fd {
        return None;
    }
    // SAFETY: the cmsg holds at least one fd (checked above); the data
    // may be unaligned, hence read_unaligned.
    let fd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>()) };
    Some(fd)
}
