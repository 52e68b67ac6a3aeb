//! An empty root: in its own mount namespace (the monitor started the
//! process in one), the process stacks an empty, read-only tmpfs over
//! the old root and detaches the old one, so that no path it could name
//! leads anywhere — not /proc, not /dev, not the host's files.
//!
//! Runs while the process still has CAP_SYS_ADMIN in its own user
//! namespace (it is that namespace's root), before it drops every
//! capability.

use std::ffi::CStr;
use std::io;

/// Where the new root is built (it exists on every Linux host we run on;
/// in this private mount namespace, mounting over it hides nothing of
/// anyone else's).
const BUILD_AT: &CStr = c"/tmp";

/// Why the empty root could not be entered.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct MountError {
    /// The step.
    pub what: &'static str,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

fn check(ret: libc::c_long, what: &'static str) -> Result<(), MountError> {
    if ret == 0 {
        Ok(())
    } else {
        Err(MountError {
            what,
            source: io::Error::last_os_error(),
        })
    }
}

fn mount(
    source: &CStr,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> libc::c_long {
    // SAFETY: NUL-terminated strings (or NULL) that outlive the call.
    libc::c_long::from(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.map_or(std::ptr::null(), CStr::as_ptr),
            flags,
            data.map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    })
}

/// Makes the mount namespace hold only an empty, read-only tmpfs as `/`.
pub fn enter_empty_root() -> Result<(), MountError> {
    // Nothing done here may reach the namespace it was copied from.
    let private = libc::MS_REC | libc::MS_PRIVATE;
    check(mount(c"none", c"/", None, private, None), "make / private")?;
    let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let options = c"size=4k,nr_inodes=2,mode=0555";
    let ret = mount(c"vmd-empty", BUILD_AT, Some(c"tmpfs"), nodev, Some(options));
    check(ret, "mount an empty tmpfs")?;
    // SAFETY: a NUL-terminated path.
    let ret = unsafe { libc::chdir(BUILD_AT.as_ptr()) };
    check(ret.into(), "chdir into it")?;
    // pivot_root(".", "."): the old root is stacked under the new one,
    // then detached.
    // SAFETY: two NUL-terminated paths.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    check(ret, "pivot_root")?;
    // SAFETY: a NUL-terminated path.
    let ret = unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) };
    check(ret.into(), "detach the old root")?;
    // SAFETY: a NUL-terminated path.
    let ret = unsafe { libc::chdir(c"/".as_ptr()) };
    check(ret.into(), "chdir to the new root")?;
    let readonly = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | nodev;
    check(
        mount(c"none", c"/", None, readonly, None),
        "make the new root read-only",
    )
}
