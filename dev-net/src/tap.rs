//! The tap: a passed fd (or, standalone and in tests, one we create), with
//! the ioctls the device needs. Any datagram socket also serves in place of
//! a tap (tests use a socketpair: no root, and the vnet header is just
//! bytes then).
//!
//! Linux `Documentation/networking/tuntap.rst` and `include/uapi/linux/if_tun.h`.

use std::ffi::CStr;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::wire::VNET_HDR_LEN;

/// `_IOW('T', 202, int)`: attach to (create) a tun/tap interface.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOR('T', 210, unsigned int)`: the interface's name and flags.
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// `_IOW('T', 208, unsigned int)`: which offloads the kernel may hand us.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `_IOW('T', 216, int)`: bytes of the vnet header on each frame.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// TUNSETIFF flag: an Ethernet (tap) interface, not tun.
const IFF_TAP: libc::c_short = 0x0002;
/// TUNSETIFF flag: no packet-information prefix.
const IFF_NO_PI: libc::c_short = 0x1000;
/// TUNSETIFF flag: each frame carries a virtio-net header.
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// Bytes of an interface name, NUL included.
const IFNAMSIZ: usize = 16;
/// Bytes of `struct ifreq` on Linux (name + the largest union member).
const IFREQ_SIZE: usize = 40;

/// TUNSETOFFLOAD bits (if_tun.h), set from the driver's GUEST_* features.
pub mod offload {
    /// The kernel may hand us partially checksummed frames.
    pub const TUN_F_CSUM: u32 = 0x01;
    /// ... TCPv4 segmentation offload frames.
    pub const TUN_F_TSO4: u32 = 0x02;
    /// ... TCPv6 segmentation offload frames.
    pub const TUN_F_TSO6: u32 = 0x04;
    /// ... TSO frames with ECN (CWR) set.
    pub const TUN_F_TSO_ECN: u32 = 0x08;
    /// ... UDP fragmentation offload frames.
    pub const TUN_F_UFO: u32 = 0x10;
}
use offload::*;

/// What can fail setting up a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The fd is neither a tap nor a datagram socket.
    #[error("fd {0} is neither a tap nor a datagram socket")]
    NotTap(RawFd),
    /// The fd is a tun interface, or a tap without IFF_VNET_HDR.
    #[error("interface {name} is not a tap with IFF_VNET_HDR (flags {flags:#x})")]
    WrongFlags {
        /// The interface.
        name: String,
        /// Its TUNGETIFF flags.
        flags: i16,
    },
    /// The interface name is too long or has a NUL.
    #[error("'{0}' is not a usable interface name")]
    BadName(String),
    /// A system call failed.
    #[error("{what}")]
    Sys {
        /// What was done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn sys(what: &'static str) -> impl FnOnce(io::Error) -> TapError {
    move |source| TapError::Sys { what, source }
}

/// What stands behind the fd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapKind {
    /// A Linux tap interface with the vnet header on.
    Tap {
        /// Its name.
        name: String,
    },
    /// A datagram socket (tests): no ioctls, every offload "supported".
    Datagram,
}

/// Offloads the tap can hand to the guest (probed once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TapOffloads {
    /// TUN_F_CSUM, TSO4, TSO6 and TSO_ECN are accepted.
    pub tso: bool,
    /// TUN_F_UFO is accepted too.
    pub ufo: bool,
}

/// A non-blocking tap fd carrying frames prefixed by a 12-byte vnet header.
///
/// # Invariants
/// - The fd is non-blocking and, for a real tap, its vnet header size is
///   [`VNET_HDR_LEN`], so every read and write is one header + one frame.
/// - Once [`Tap::mark_gone`] returned `true` it stays gone: nothing reads
///   or writes the fd again.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    kind: TapKind,
    offloads: TapOffloads,
    gone: AtomicBool,
}

#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    pad: [u8; IFREQ_SIZE - IFNAMSIZ - 2],
}

impl IfReq {
    fn new() -> Self {
        Self {
            name: [0; IFNAMSIZ],
            flags: 0,
            pad: [0; IFREQ_SIZE - IFNAMSIZ - 2],
        }
    }
}

fn ioctl_ptr<T>(fd: RawFd, request: libc::c_ulong, arg: *mut T) -> io::Result<()> {
    // SAFETY: every caller passes a request whose argument is `*arg`'s
    // type (struct ifreq or int), and `arg` points at a live value of it.
    if unsafe { libc::ioctl(fd, request, arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ioctl_val(fd: RawFd, request: libc::c_ulong, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is touched.
    if unsafe { libc::ioctl(fd, request, arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL only reads the fd's status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL changes only the status flags of an fd we own.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a read or write error means the interface is gone for good
/// (deleted, or the peer of a test socket closed).
pub fn is_gone_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EBADFD
                | libc::EIO
                | libc::ENODEV
                | libc::ENXIO
                | libc::EPIPE
                | libc::ECONNREFUSED
        )
    )
}

impl Tap {
    /// Creates (or attaches to) tap `name` with IFF_VNET_HDR, as vmd does
    /// before handing the fd down. Needs CAP_NET_ADMIN.
    pub fn create(name: &str) -> Result<Self, TapError> {
        let bad_name = || TapError::BadName(name.to_owned());
        if name.len() >= IFNAMSIZ || name.contains('\0') {
            return Err(bad_name());
        }
        let path = c"/dev/net/tun";
        // SAFETY: `path` is a NUL-terminated string; open makes a new fd.
        let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(sys("opening /dev/net/tun")(io::Error::last_os_error()));
        }
        // SAFETY: `raw` was just opened and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq::new();
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req.flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        ioctl_ptr(fd.as_raw_fd(), TUNSETIFF, &mut req).map_err(sys("TUNSETIFF"))?;
        Self::from_fd(fd)
    }

    /// The fd, for handing down (vmd: the tap goes to the monitor).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Takes a passed fd: a tap with IFF_VNET_HDR (made non-blocking, its
    /// header size set, its offloads probed and cleared until the driver
    /// acks features), or a datagram socket.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, TapError> {
        let raw = fd.as_raw_fd();
        let mut req = IfReq::new();
        let kind = match ioctl_ptr(raw, TUNGETIFF, &mut req) {
            Ok(()) => {
                let name = CStr::from_bytes_until_nul(&req.name)
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let want = IFF_TAP | IFF_VNET_HDR;
                if req.flags & want != want {
                    return Err(TapError::WrongFlags {
                        name,
                        flags: req.flags,
                    });
                }
                let mut size = VNET_HDR_LEN as libc::c_int;
                ioctl_ptr(raw, TUNSETVNETHDRSZ, &mut size).map_err(sys("TUNSETVNETHDRSZ"))?;
                TapKind::Tap { name }
            }
            Err(_) => match ipc::fds::socket_type(raw).ok() {
                Some(libc::SOCK_DGRAM | libc::SOCK_SEQPACKET) => TapKind::Datagram,
                _ => return Err(TapError::NotTap(raw)),
            },
        };
        set_nonblocking(raw).map_err(sys("making the tap non-blocking"))?;
        let mut tap = Self {
            fd,
            kind,
            offloads: TapOffloads::default(),
            gone: AtomicBool::new(false),
        };
        tap.offloads = tap.probe_offloads()?;
        Ok(tap)
    }

    fn probe_offloads(&self) -> Result<TapOffloads, TapError> {
        if self.kind == TapKind::Datagram {
            return Ok(TapOffloads {
                tso: true,
                ufo: false,
            });
        }
        let tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
        let offloads = if self.set_offload(tso | TUN_F_UFO).is_ok() {
            TapOffloads {
                tso: true,
                ufo: true,
            }
        } else {
            TapOffloads {
                tso: self.set_offload(tso).is_ok(),
                ufo: false,
            }
        };
        // Nothing until the driver says what it takes.
        self.set_offload(0).map_err(sys("TUNSETOFFLOAD"))?;
        Ok(offloads)
    }

    /// Tells the kernel which offloads it may hand us (TUN_F_* bits); a
    /// no-op on a datagram socket.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        match self.kind {
            TapKind::Tap { .. } => ioctl_val(
                self.fd.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            ),
            TapKind::Datagram => Ok(()),
        }
    }

    /// What stands behind the fd.
    pub fn kind(&self) -> &TapKind {
        &self.kind
    }

    /// The offloads the tap accepts.
    pub fn offloads(&self) -> TapOffloads {
        self.offloads
    }

    /// The fd, for readiness polling.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads one vnet header + frame; `WouldBlock` when there is none.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Writes one vnet header + frame, gathered from `parts`.
    pub fn write(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: IoSlice is ABI-compatible with iovec (std guarantees it
        // on Unix), and `parts` holds live slices.
        let iovecs = unsafe { std::slice::from_raw_parts(parts.as_ptr().cast(), parts.len()) };
        self.writev(iovecs)
    }

    /// Writes one vnet header + frame gathered from `iovecs` (guest memory
    /// included: the kernel copies it during the call).
    pub fn writev(&self, iovecs: &[libc::iovec]) -> io::Result<usize> {
        let count = libc::c_int::try_from(iovecs.len()).unwrap_or(libc::c_int::MAX);
        loop {
            // SAFETY: `iovecs` holds `count` entries; the kernel only reads
            // through them (a bad pointer is EFAULT, not memory corruption)
            // and keeps none after the call.
            let n = unsafe { libc::writev(self.fd.as_raw_fd(), iovecs.as_ptr(), count) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Whether the interface has gone away.
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    /// Records that the interface has gone away; `true` the first time
    /// (the caller logs it once).
    pub fn mark_gone(&self) -> bool {
        !self.gone.swap(true, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn tap_from_datagram_socket_is_datagram_kind() {
        let (a, _b) = UnixDatagram::pair().unwrap();
        let tap = Tap::from_fd(OwnedFd::from(a)).unwrap();
        assert_eq!(tap.kind(), &TapKind::Datagram);
        assert!(tap.offloads().tso);
        let mut buf = [0u8; 16];
        assert_eq!(
            tap.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn tap_from_regular_file_is_refused() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert!(matches!(
            Tap::from_fd(OwnedFd::from(file)),
            Err(TapError::NotTap(_))
        ));
    }

    #[test]
    fn tap_create_long_name_is_refused() {
        assert!(matches!(
            Tap::create("a-name-far-too-long"),
            Err(TapError::BadName(_))
        ));
    }

    #[test]
    fn tap_gone_is_reported_once() {
        let (a, _b) = UnixDatagram::pair().unwrap();
        let tap = Tap::from_fd(OwnedFd::from(a)).unwrap();
        assert!(tap.mark_gone());
        assert!(!tap.mark_gone());
        assert!(tap.is_gone());
        assert!(is_gone_error(&io::Error::from_raw_os_error(libc::EBADFD)));
        assert!(!is_gone_error(&io::Error::from_raw_os_error(libc::EAGAIN)));
    }
}
