//! Linux bridges for vm.conf switches: created when missing (with a log
//! line saying so), taps added as ports. Plain ioctls on an AF_UNIX
//! socket, as brctl does.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SIOCBRADDBR: libc::c_ulong = 0x89a0;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// An ifreq big enough for the ioctls used here: name + an int.
#[repr(C)]
struct IfReqIndex {
    name: [u8; libc::IFNAMSIZ],
    index: libc::c_int,
    pad: [u8; 20],
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() with constant arguments; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn name_bytes(name: &str) -> io::Result<[u8; libc::IFNAMSIZ]> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{name}' is not an interface name"),
        ));
    }
    let mut bytes = [0u8; libc::IFNAMSIZ];
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    Ok(bytes)
}

/// The index of interface `name`, if it exists.
pub fn index_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// Makes sure bridge `name` exists; true if it was created now.
pub fn ensure(name: &str) -> io::Result<bool> {
    if index_of(name).is_some() {
        return Ok(false);
    }
    name_bytes(name)?;
    let c =
        std::ffi::CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let sock = control_socket()?;
    // SAFETY: SIOCBRADDBR takes a NUL-terminated name; `c` outlives it.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDBR, c.as_ptr()) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EEXIST) {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(true)
}

/// Adds interface `port` (by index) to bridge `bridge`.
pub fn add_port(bridge: &str, port: u32) -> io::Result<()> {
    let mut req = IfReqIndex {
        name: name_bytes(bridge)?,
        index: port as libc::c_int,
        pad: [0; 20],
    };
    let sock = control_socket()?;
    // SAFETY: SIOCBRADDIF reads an ifreq with the bridge's name and the
    // port's index; `req` is a live value of that layout.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDIF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
