//! Starting a device process in namespaces of its own: new user, mount,
//! pid, ipc, uts and network namespaces (`clone3`), its user namespace's
//! root mapped to the VM's unprivileged uid and gid, so that outside it
//! is that uid and nothing more, and inside it may set up its empty root
//! (`sandbox_profiles::mount_ns`) before it drops every capability.
//!
//! Between `clone3` and `execve` the child runs raw system calls only:
//! it is a copy of one thread of a multi-threaded process, so glibc's
//! locks and its set-id broadcast to other threads must not be used.
//! Everything it needs (paths, argv, envp) is prepared before the clone.
//!
//! # Invariants
//! - The child waits for the parent to write its uid and gid maps before
//!   it takes root in its user namespace (which is the VM's uid outside)
//!   and execs; it never runs the device as the monitor's own uid.
//! - An exec that fails is reported through a close-on-exec pipe (the
//!   errno), and the child exits 127; a successful exec closes the pipe.

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Room for a pid's digits in the child's environment.
const PID_DIGITS_PLACEHOLDER: &str = "0000000000";

/// Most fds a device gets passed (3 and up).
pub const MAX_PASSED_FDS: usize = 32;
/// Namespaces a sandboxed device starts in.
const NAMESPACES: u64 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWNET) as u64;

/// `struct clone_args`, the first version (64 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in an argument"))
}

/// A close-on-exec pipe: (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just created and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What the child needs, prepared before the clone.
struct Prepared {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    sources: [RawFd; MAX_PASSED_FDS],
    count: usize,
    /// Its stdout and stderr, or -1 to keep the caller's.
    stdio: RawFd,
    /// Where the child writes its pid's digits: inside the NUL-terminated
    /// `VMD_LOG_PID=0000000000` entry the parent keeps alive.
    pid_digits: *mut u8,
    /// First fd number above every source: where they are moved first.
    high: RawFd,
}

/// How a device process is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpawnAs {
    /// In new namespaces, as this uid and gid outside them; `None`: in the
    /// caller's namespaces, as the caller's uid.
    pub namespaces: Option<(u32, u32)>,
    /// As the caller's sibling (`CLONE_PARENT`): the device launcher
    /// starts devices as children of the monitor, which reaps them.
    pub sibling: bool,
    /// Its stdout and stderr (a pipe the monitor reads), instead of the
    /// caller's own; its log then goes there, not to syslog.
    pub stdio: Option<RawFd>,
}

/// Starts `program args...` with `fds` at 3, 4, ... as `how` says;
/// returns its pid (in the caller's pid namespace). For namespaces, the
/// caller must be root or the very uid and gid (it writes the id maps:
/// see [`available`]). A sibling that failed to start is left for the
/// caller's parent to reap; the error then carries its pid.
pub fn spawn(
    program: &Path,
    args: &[String],
    fds: &[RawFd],
    how: SpawnAs,
) -> Result<libc::pid_t, SpawnError> {
    spawn_inner(program, args, fds, how)
}

/// A failed [`spawn`].
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct SpawnError {
    /// The OS error.
    #[source]
    pub source: io::Error,
    /// A sibling process that was created, then failed before its exec
    /// (the caller's parent must reap it).
    pub unreaped: Option<libc::pid_t>,
}

impl From<io::Error> for SpawnError {
    fn from(source: io::Error) -> Self {
        Self {
            source,
            unreaped: None,
        }
    }
}

fn spawn_inner(
    program: &Path,
    args: &[String],
    fds: &[RawFd],
    how: SpawnAs,
) -> Result<libc::pid_t, SpawnError> {
    if fds.len() > MAX_PASSED_FDS {
        return Err(
            io::Error::new(io::ErrorKind::InvalidInput, "too many fds for a device").into(),
        );
    }
    let mut argv = vec![cstring(program.as_os_str().as_bytes())?];
    for a in args {
        argv.push(cstring(a.as_bytes())?);
    }
    let envp = std::env::vars_os()
        .filter(|(k, _)| k != ipc::logger::HOST_PID_ENV)
        .filter(|(k, _)| how.stdio.is_none() || k != ipc::logger::SYSLOG_ENV)
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstring(&kv)
        })
        .collect::<io::Result<Vec<_>>>()?;
    // The child's pid as the host sees it, filled in by the child from
    // what the parent sends (its own getpid() says 1): its log lines then
    // name the process an operator can find. Digits are written over the
    // zeroes; the NUL after them stays.
    let mut pid_env: Vec<u8> =
        format!("{}={PID_DIGITS_PLACEHOLDER}\0", ipc::logger::HOST_PID_ENV).into_bytes();
    // The child writes through this pointer (never through a reference).
    let pid_env_ptr = pid_env.as_mut_ptr();
    let pid_digits_at = pid_env.len() - 1 - PID_DIGITS_PLACEHOLDER.len();
    let mut sources = [-1; MAX_PASSED_FDS];
    sources[..fds.len()].copy_from_slice(fds);
    let prepared = Prepared {
        program: cstring(program.as_os_str().as_bytes())?,
        argv,
        envp,
        sources,
        count: fds.len(),
        stdio: how.stdio.unwrap_or(-1),
        high: fds.iter().copied().max().unwrap_or(2).max(2) + 1,
        // SAFETY: pid_digits_at + 10 digits lie inside `pid_env`.
        pid_digits: unsafe { pid_env_ptr.add(pid_digits_at) },
    };
    let argv_ptrs: Vec<*const libc::c_char> = prepared
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let envp_ptrs: Vec<*const libc::c_char> = prepared
        .envp
        .iter()
        .map(|a| a.as_ptr())
        .chain([pid_env_ptr as *const libc::c_char, std::ptr::null()])
        .collect();
    let (go_read, go_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    let mut flags = if how.namespaces.is_some() {
        NAMESPACES
    } else {
        0
    };
    if how.sibling {
        flags |= libc::CLONE_PARENT as u64;
    }
    let mut args = CloneArgs {
        flags,
        // A sibling's exit signal is its parent's choice (clone3 refuses
        // one with CLONE_PARENT): SIGCHLD, as std started the launcher.
        exit_signal: if how.sibling { 0 } else { libc::SIGCHLD as u64 },
        ..CloneArgs::default()
    };
    // SAFETY: clone3 with a valid, initialised clone_args of the first
    // version's size and no stack (fork semantics); the child only runs
    // child_main, which never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error().into());
    }
    if pid == 0 {
        child_main(
            &prepared,
            how.namespaces.is_some(),
            &argv_ptrs,
            &envp_ptrs,
            go_read.as_raw_fd(),
            go_write.as_raw_fd(),
            err_write.as_raw_fd(),
        );
    }
    let pid = pid as libc::pid_t;
    drop(go_read);
    drop(err_write);
    let mapped = match how.namespaces {
        Some((uid, gid)) => write_maps(pid, uid, gid),
        None => Ok(()),
    };
    // Let the child go on even if a map failed: it then cannot become the
    // VM's uid (setresuid fails), reports that and exits.
    let mut go = std::fs::File::from(go_write);
    let mut message = [0u8; 5];
    message[0] = u8::from(mapped.is_ok());
    message[1..].copy_from_slice(&pid.to_ne_bytes());
    let _ = go.write_all(&message);
    drop(go);
    let mut errno = [0u8; 4];
    let mut err = std::fs::File::from(err_read);
    let exec_failed = err
        .read(&mut errno)
        .map(|n| n == errno.len())
        .unwrap_or(false);
    let failed = |source| {
        if how.sibling {
            SpawnError {
                source,
                unreaped: Some(pid),
            }
        } else {
            reap(pid);
            SpawnError::from(source)
        }
    };
    if let Err(e) = mapped {
        return Err(failed(e));
    }
    if exec_failed {
        let errno = i32::from_ne_bytes(errno);
        return Err(failed(io::Error::from_raw_os_error(errno)));
    }
    Ok(pid)
}

fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid status pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

/// Maps root of `pid`'s user namespace to `uid`:`gid` (one id each).
fn write_maps(pid: libc::pid_t, uid: u32, gid: u32) -> io::Result<()> {
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/{pid}/{file}"), text)
            .map_err(|e| io::Error::new(e.kind(), format!("/proc/{pid}/{file}: {e}")))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("0 {uid} 1"))?;
    write("gid_map", format!("0 {gid} 1"))
}

/// Raw `syscall`, for the child.
macro_rules! sys {
    ($($arg:expr),+ $(,)?) => {
        // SAFETY: a raw system call with plain or valid pointer arguments;
        // see each call site.
        unsafe { libc::syscall($($arg),+) }
    };
}

/// In the child, after clone3: waits for the id maps, becomes root of its
/// user namespace (when `namespaced`), places the fds, resets the signal mask and execs.
/// Never returns.
fn child_main(
    prepared: &Prepared,
    namespaced: bool,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    go_read: RawFd,
    go_write: RawFd,
    err_write: RawFd,
) -> ! {
    // Above the fds about to be placed, so that placing them cannot close
    // it (close-on-exec, like the original).
    let err_fd = sys!(
        libc::SYS_fcntl,
        err_write,
        libc::F_DUPFD_CLOEXEC,
        prepared.high + MAX_PASSED_FDS as RawFd
    );
    let err_fd = if err_fd < 0 {
        err_write
    } else {
        err_fd as RawFd
    };
    let fail = |errno: i64| -> ! {
        let bytes = (errno as i32).to_ne_bytes();
        // Pointer to a live stack array of 4 bytes.
        sys!(libc::SYS_write, err_fd, bytes.as_ptr(), bytes.len());
        sys!(libc::SYS_exit_group, 127);
        unreachable!("exit_group returned")
    };
    let errno = || -> i64 {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
            .into()
    };
    sys!(libc::SYS_close, go_write);
    let mut go = [0u8; 5];
    // Pointer to a live 5-byte stack array.
    if sys!(libc::SYS_read, go_read, go.as_mut_ptr(), go.len()) != 5 || go[0] != 1 {
        fail(libc::EPERM.into());
    }
    write_pid_digits(prepared, i32::from_ne_bytes([go[1], go[2], go[3], go[4]]));
    sys!(libc::SYS_close, go_read);
    if namespaced
        && (sys!(libc::SYS_setresgid, 0, 0, 0) != 0 || sys!(libc::SYS_setresuid, 0, 0, 0) != 0)
    {
        fail(errno());
    }
    if prepared.stdio >= 0
        && (sys!(libc::SYS_dup2, prepared.stdio, 1) < 0
            || sys!(libc::SYS_dup2, prepared.stdio, 2) < 0)
    {
        fail(errno());
    }
    // The sources go above the target range first, then down to 3, 4, ...
    let count = prepared.count;
    for i in 0..count {
        if sys!(
            libc::SYS_dup2,
            prepared.sources[i],
            prepared.high + i as RawFd
        ) < 0
        {
            fail(errno());
        }
    }
    for i in 0..count {
        let high = prepared.high + i as RawFd;
        if sys!(libc::SYS_dup2, high, (3 + i) as RawFd) < 0 {
            fail(errno());
        }
        sys!(libc::SYS_close, high);
    }
    // Nothing else of the monitor's crosses the exec.
    if sys!(
        libc::SYS_close_range,
        (3 + count) as u32,
        u32::MAX,
        libc::CLOSE_RANGE_CLOEXEC
    ) != 0
    {
        fail(errno());
    }
    // An empty mask: the monitor's threads block signals the device must get.
    let empty: u64 = 0;
    // Pointer to a live 8-byte sigset.
    sys!(
        libc::SYS_rt_sigprocmask,
        libc::SIG_SETMASK,
        &empty as *const u64,
        0usize,
        8usize
    );
    // Pointers to NUL-terminated strings and NULL-terminated arrays that
    // live until the exec.
    sys!(
        libc::SYS_execve,
        prepared.program.as_ptr(),
        argv.as_ptr(),
        envp.as_ptr()
    );
    fail(errno())
}

/// In the child: writes `pid` in decimal over the placeholder digits of
/// its `VMD_LOG_PID=0000000000` entry (zero-padded; the logger parses it
/// as a number). No allocation, no reference: a raw write.
fn write_pid_digits(prepared: &Prepared, pid: i32) {
    let mut n = pid.max(0) as u32;
    for i in (0..PID_DIGITS_PLACEHOLDER.len()).rev() {
        // SAFETY: `pid_digits` points at the placeholder's digits inside a
        // buffer the parent keeps alive past the clone (this child has its
        // own copy); nothing holds a reference to it, and i < 10.
        unsafe { *prepared.pid_digits.add(i) = b'0' + (n % 10) as u8 };
        n /= 10;
    }
}

/// Whether this process may start devices in namespaces mapped to `ids`:
/// as root (any ids), or as those very ids (the monitor vmd started as the
/// VM's user: a process may map its own uid and gid into a user namespace
/// it created).
pub fn available(ids: (u32, u32)) -> bool {
    // SAFETY: geteuid and getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    euid == 0 || (euid, egid) == ids
}
