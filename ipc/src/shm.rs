//! Memory a device process shares with its supervisor's later processes
//! (and, for counters, with the monitor): an anonymous memfd, sealed at
//! its size so that no holder can shrink it under another's mapping.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// A memfd could not be made or mapped.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// A system call failed.
    #[error("shared memory: {what}")]
    Os {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The fd is smaller than its user needs.
    #[error("shared memory: the fd holds {size} bytes, fewer than {needed}")]
    TooSmall {
        /// Its size.
        size: u64,
        /// What was needed.
        needed: usize,
    },
}

fn last_os(what: &'static str) -> ShmError {
    ShmError::Os {
        what,
        source: io::Error::last_os_error(),
    }
}

/// Makes a zeroed memfd of `len` bytes named `name` (for /proc), sealed
/// against shrinking and growing; close-on-exec (pass it explicitly).
pub fn create_sealed(name: &str, len: usize) -> Result<OwnedFd, ShmError> {
    let name = std::ffi::CString::new(name).unwrap_or_else(|_| c"vmd-rs".to_owned());
    // SAFETY: memfd_create reads the NUL-terminated name only.
    let raw =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(last_os("memfd_create"));
    }
    // SAFETY: memfd_create returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let size = libc::off_t::try_from(len).map_err(|_| ShmError::TooSmall {
        size: 0,
        needed: len,
    })?;
    // SAFETY: ftruncate on the memfd just made; no memory is touched.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } < 0 {
        return Err(last_os("ftruncate"));
    }
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on our memfd takes an int argument.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(last_os("sealing"));
    }
    Ok(fd)
}

/// A shared, read-write mapping of a whole fd; unmapped on drop.
///
/// Its bytes may change under the mapping only by another holder of the
/// fd: users that share it with a process that runs at the same time
/// touch it through atomics only.
#[derive(Debug)]
pub struct SharedMemory {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; what may be
// done with it from several threads is up to the users of `as_ptr`.
unsafe impl Send for SharedMemory {}
// SAFETY: as for Send: `&SharedMemory` only hands out the pointer.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// Maps all of `fd`, which must hold at least `needed` bytes.
    pub fn map(fd: impl AsFd, needed: usize) -> Result<Self, ShmError> {
        let fd = fd.as_fd();
        // SAFETY: an all-zero stat is a valid value for fstat to fill.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat fills `stat`, which lives across the call.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } < 0 {
            return Err(last_os("fstat"));
        }
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        let len = usize::try_from(size).unwrap_or(0);
        if len < needed || len == 0 {
            return Err(ShmError::TooSmall { size, needed });
        }
        // SAFETY: a new shared mapping of the fd's `len` bytes, which it
        // has (fstat); no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(last_os("mmap"));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| last_os("mmap"))?;
        Ok(Self { ptr, len })
    }

    /// The start of the mapping (page-aligned), valid for [`len`](Self::len)
    /// bytes while `self` lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never: a mapping holds at least a byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `map` with `len` bytes, and no
        // reference into it outlives self (users borrow from self).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_memfd_cannot_shrink_and_maps_whole_in_two_places() {
        let fd = create_sealed("test", 8192).unwrap();
        // SAFETY: ftruncate on our own memfd.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 0) }, -1);
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EPERM));
        let one = SharedMemory::map(&fd, 8192).unwrap();
        let two = SharedMemory::map(&fd, 100).unwrap();
        assert_eq!((one.len(), two.len()), (8192, 8192));
        // SAFETY: both map 8192 bytes of the same memfd; nothing else
        // touches them.
        unsafe {
            one.as_ptr().add(8191).write(7);
            assert_eq!(two.as_ptr().add(8191).read(), 7);
        }
        let e = SharedMemory::map(&fd, 8193).unwrap_err();
        assert!(e.to_string().contains("8192 bytes, fewer than 8193"), "{e}");
    }
}
