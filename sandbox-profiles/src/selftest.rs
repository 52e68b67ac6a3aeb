//! The test-only trigger: a sandboxed process tries a call its profile
//! must refuse, so that a test can watch the refusal from outside (the
//! process killed with a report naming the call, or the call failing).

use std::io;

/// The calls a self-test may try.
pub const CALLS: &[&str] = &["openat", "execve", "socket", "ptrace"];

/// Tries `call` as an attacker in the process would: open /etc/passwd,
/// run /bin/sh, make an AF_INET socket, ask to be traced. Returns the
/// error it was refused with; `Ok` means the sandbox let it through. A
/// trapped call never returns (the reporter ends the process).
pub fn attempt(call: &str) -> io::Result<()> {
    let ret: i64 = match call {
        "openat" => {
            let path = c"/etc/passwd";
            // SAFETY: a valid C string; the fd, if any, is closed below.
            let fd = unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) };
            fd.into()
        }
        "execve" => {
            let sh = c"/bin/sh";
            let argv = [sh.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: NULL-terminated argv and envp of valid C strings.
            unsafe { libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr()) }.into()
        }
        // SAFETY: plain arguments; the fd, if any, is closed below.
        "socket" => unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) }.into(),
        // SAFETY: PTRACE_TRACEME takes no pointers.
        "ptrace" => unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) },
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no self-test for {other:?} (one of {CALLS:?})"),
            ))
        }
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    if call == "openat" || call == "socket" {
        // SAFETY: `ret` is an fd this call just opened.
        unsafe { libc::close(ret as i32) };
    }
    Ok(())
}
