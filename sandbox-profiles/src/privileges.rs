//! Privileges a sandboxed process gives up, in this order: resource
//! limits, the capability bounding set (while it still may), its uid and
//! gids, every capability left, and the right to gain any back on exec
//! (no_new_privs).

use std::io;

/// Resource limits of a sandboxed process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// RLIMIT_NOFILE: descriptors it may hold (passed fds, eventfds of its
    /// queues, memory regions, epoll sets).
    pub open_files: u64,
    /// RLIMIT_NPROC: processes and threads of its uid (new processes are
    /// refused by seccomp anyway; this bounds threads).
    pub threads: u64,
}

/// Why a privilege could not be given up.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// A system call failed.
    #[error("{what}")]
    Call {
        /// The step.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn check(ret: libc::c_int, what: &'static str) -> Result<(), PrivilegeError> {
    if ret == 0 {
        Ok(())
    } else {
        Err(PrivilegeError::Call {
            what,
            source: io::Error::last_os_error(),
        })
    }
}

fn set_limit(
    resource: libc::__rlimit_resource_t,
    value: u64,
    what: &'static str,
) -> Result<(), PrivilegeError> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    check(unsafe { libc::setrlimit(resource, &limit) }, what)
}

/// Sets RLIMIT_NOFILE, RLIMIT_NPROC and RLIMIT_CORE (0: a crashed
/// sandboxed process leaves no core with guest data in it).
pub fn set_limits(limits: Limits) -> Result<(), PrivilegeError> {
    set_limit(
        libc::RLIMIT_NOFILE,
        limits.open_files,
        "setrlimit(RLIMIT_NOFILE)",
    )?;
    set_limit(
        libc::RLIMIT_NPROC,
        limits.threads,
        "setrlimit(RLIMIT_NPROC)",
    )?;
    set_limit(libc::RLIMIT_CORE, 0, "setrlimit(RLIMIT_CORE)")
}

/// Empties the capability bounding set (needs CAP_SETPCAP, which root
/// has; without it there is nothing to drop that could be regained).
pub fn drop_bounding_set() -> Result<(), PrivilegeError> {
    for cap in 0..=63 {
        // SAFETY: PR_CAPBSET_DROP takes the capability by value.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            match io::Error::last_os_error().raw_os_error() {
                // Past the last capability this kernel knows.
                Some(libc::EINVAL) => break,
                // Not privileged: the set cannot be used to gain anything.
                Some(libc::EPERM) => return Ok(()),
                _ => {
                    return Err(PrivilegeError::Call {
                        what: "prctl(PR_CAPBSET_DROP)",
                        source: io::Error::last_os_error(),
                    })
                }
            }
        }
    }
    Ok(())
}

/// Becomes `uid`:`gid` with no supplementary groups (only root may).
pub fn become_user(uid: u32, gid: u32) -> Result<(), PrivilegeError> {
    // SAFETY: setgroups with an empty list reads no memory.
    let ret = unsafe { libc::setgroups(0, std::ptr::null()) };
    check(ret, "setgroups([])")?;
    // SAFETY: plain id arguments.
    check(unsafe { libc::setresgid(gid, gid, gid) }, "setresgid")?;
    // SAFETY: plain id arguments.
    check(unsafe { libc::setresuid(uid, uid, uid) }, "setresuid")
}

/// Clears every capability set (effective, permitted, inheritable,
/// ambient).
pub fn drop_capabilities() -> Result<(), PrivilegeError> {
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    check(ret, "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")?;
    /// `struct __user_cap_header_struct`.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    /// `struct __user_cap_data_struct`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    /// _LINUX_CAPABILITY_VERSION_3: two data structs (64 capabilities).
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads a v3 header and two data structs, all live.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    check(ret as libc::c_int, "capset(0)")
}

/// Sets no_new_privs: no exec can grant privileges again (and seccomp
/// filters may be installed without CAP_SYS_ADMIN).
pub fn no_new_privs() -> Result<(), PrivilegeError> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes values, no pointers.
    check(
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
        "prctl(PR_SET_NO_NEW_PRIVS)",
    )
}
