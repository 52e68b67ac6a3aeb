//! Who is at the other end of a unix socket: SO_PEERCRED.
//!
//! vmd checks every request against these credentials (root may do
//! anything, a VM's owner may drive that VM, others may read status). The
//! kernel records them when the peer called connect(2) or socketpair(2),
//! so the peer cannot forge them by what it writes.

use std::io;
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// The process credentials of a socket's peer, as of its connect(2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id of the peer (in this process's pid namespace; 0 if the
    /// peer lives in a namespace this one cannot see).
    pub pid: libc::pid_t,
    /// Effective user id of the peer.
    pub uid: libc::uid_t,
    /// Effective group id of the peer.
    pub gid: libc::gid_t,
}

/// Reads the peer's credentials with getsockopt(SO_PEERCRED).
pub fn peer_credentials(stream: &UnixStream) -> io::Result<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are live locals of the size we declare;
    // getsockopt writes at most `len` bytes into `cred` and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != size_of::<libc::ucred>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("SO_PEERCRED returned {len} bytes"),
        ));
    }
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}
