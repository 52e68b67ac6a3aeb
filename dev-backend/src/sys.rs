//! The few raw system calls the layer needs that no dependency wraps.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

/// Creates an anonymous, close-on-exec memfd of `size` zeroed bytes.
pub fn memfd(name: &CStr, size: u64) -> io::Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string; the call has no
    // memory side effects and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

/// The host page size (mmap offsets must be multiples of it).
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory side effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}
