//! SCM_RIGHTS: packing fds into a control message and taking ownership of
//! the ones that arrive, with libc directly (no nix).
//!
//! Every descriptor the kernel installs for us becomes an [`OwnedFd`] at
//! once, before anything checks it, so a frame that is then rejected closes
//! them when its `Vec<OwnedFd>` drops: no path leaks one.

use std::io;
use std::mem::{align_of, size_of};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::frame::MAX_FDS;

/// Bytes of one fd in an SCM_RIGHTS payload.
const FD_SIZE: usize = size_of::<libc::c_int>();

/// Control-buffer bytes for one SCM_RIGHTS message of [`MAX_FDS`] fds.
/// A sender that passes more makes the kernel set MSG_CTRUNC (and close
/// the excess itself), which the receiver reports as an error.
// SAFETY: CMSG_SPACE is pure arithmetic on its argument; it touches no memory.
const CMSG_BUF_LEN: usize =
    unsafe { libc::CMSG_SPACE((MAX_FDS * FD_SIZE) as libc::c_uint) } as usize;

// The buffer below is aligned to 8; cmsghdr must not need more.
const _: () = assert!(align_of::<libc::cmsghdr>() <= 8);

/// A control-message buffer aligned for `cmsghdr`, as CMSG_FIRSTHDR needs.
#[repr(C, align(8))]
pub(crate) struct CmsgBuf([u8; CMSG_BUF_LEN]);

impl CmsgBuf {
    /// A zeroed buffer.
    pub(crate) fn new() -> Self {
        Self([0; CMSG_BUF_LEN])
    }

    /// Pointer for `msghdr.msg_control`.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        self.0.as_mut_ptr().cast()
    }

    /// Capacity for `msghdr.msg_controllen`.
    pub(crate) fn capacity(&self) -> usize {
        CMSG_BUF_LEN
    }
}

/// `msg_controllen` as usize: it is size_t on glibc but u32 on musl.
#[allow(clippy::unnecessary_cast)]
fn control_len(msg: &libc::msghdr) -> usize {
    msg.msg_controllen as usize
}

/// Writes one SCM_RIGHTS control message carrying `fds` into the control
/// buffer `msg` points at, and sets `msg.msg_controllen` to its size.
/// Nothing is written for no fds. Returns `None` (leaving `msg` alone) if
/// the buffer is too small; the [`MAX_FDS`] limit is the caller's check.
pub(crate) fn write_rights(msg: &mut libc::msghdr, fds: &[BorrowedFd<'_>]) -> Option<()> {
    if fds.is_empty() {
        msg.msg_controllen = 0;
        return Some(());
    }
    let data_len = libc::c_uint::try_from(fds.len().checked_mul(FD_SIZE)?).ok()?;
    // SAFETY: pure arithmetic.
    let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
    if msg.msg_control.is_null() || control_len(msg) < space {
        return None;
    }
    // SAFETY: pure arithmetic.
    let cmsg_len = unsafe { libc::CMSG_LEN(data_len) } as usize;
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at a buffer of at least `space` bytes
    // (checked above), aligned for cmsghdr (CmsgBuf); CMSG_FIRSTHDR only
    // reads msg's control pointer and length.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    if cmsg.is_null() {
        return None;
    }
    // SAFETY: cmsg points at the start of our buffer, which has room for a
    // cmsghdr (space >= CMSG_LEN(0)) and is aligned for it.
    let header = unsafe { &mut *cmsg };
    header.cmsg_len = cmsg_len as _;
    header.cmsg_level = libc::SOL_SOCKET;
    header.cmsg_type = libc::SCM_RIGHTS;
    // SAFETY: cmsg is a valid cmsghdr inside the buffer; CMSG_DATA only
    // adds the aligned header size to it.
    let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<libc::c_int>();
    for (i, fd) in fds.iter().enumerate() {
        // SAFETY: data + i * FD_SIZE + FD_SIZE <= cmsg + cmsg_len <= the
        // buffer's end, since cmsg_len = CMSG_LEN(fds.len() * FD_SIZE).
        // The data may be unaligned for c_int on some ABIs: write_unaligned.
        unsafe { data.add(i).write_unaligned(fd.as_raw_fd()) };
    }
    Some(())
}

/// Takes ownership of every descriptor in the SCM_RIGHTS messages of a
/// `msg` that recvmsg just filled, appending them to `out`. Other control
/// messages are skipped. Call it exactly once per successful recvmsg:
/// the fds in the buffer are ours and nobody else's until then.
pub(crate) fn take_rights(msg: &libc::msghdr, out: &mut Vec<OwnedFd>) {
    if msg.msg_control.is_null() || control_len(msg) == 0 {
        return;
    }
    // SAFETY: msg was filled by recvmsg, so its control pointer and the
    // length the kernel set describe valid control messages.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return either null or a pointer
        // to a whole cmsghdr inside the control buffer.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: pure arithmetic.
            let data_offset = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (header.cmsg_len as usize).saturating_sub(data_offset) / FD_SIZE;
            // SAFETY: cmsg is a valid cmsghdr; CMSG_DATA adds its size.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<libc::c_int>();
            for i in 0..count {
                // SAFETY: the kernel wrote `count` fds after the header,
                // within cmsg_len; unaligned read as in write_rights.
                let raw: RawFd = unsafe { data.add(i).read_unaligned() };
                // SAFETY: the kernel has just installed `raw` in our fd
                // table for this message; nothing else refers to it, so
                // this OwnedFd is its only owner.
                out.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: msg is the header recvmsg filled and cmsg one of its
        // control messages; CMSG_NXTHDR bounds-checks against msg_controllen.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
}

/// Whether `fd` has FD_CLOEXEC set (every fd a [`crate::Channel`] receives
/// does, so an exec'd child inherits none by accident).
pub fn is_cloexec(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: F_GETFD on a borrowed, open fd reads its flags and touches no memory.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags & libc::FD_CLOEXEC != 0)
}

/// The type of socket `fd` is (SOCK_STREAM, SOCK_SEQPACKET, ...); an
/// error if it is not an open socket.
pub fn socket_type(fd: RawFd) -> io::Result<libc::c_int> {
    let mut kind: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `kind`, a live
    // c_int; on a closed or non-socket fd it fails without side effects.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(kind)
}
