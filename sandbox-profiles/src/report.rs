//! What happens when a sandboxed thread makes a call its profile does not
//! allow: the filter traps (SIGSYS), and this handler writes one line
//! naming the profile, the thread and the call — to the report fd the
//! parent passed, if any, and to stderr — then ends the process with
//! [`EXIT_SANDBOX_VIOLATION`]. The parent reads the report fd after it
//! reaps the process and logs the line as its own ([`read_report`]).
//!
//! # Invariants
//! - The handler calls only `write` and `exit_group`, both in every
//!   profile, and touches only its own stack and statics written before
//!   the filter was installed: it is async-signal-safe.
//! - Installed before the filter ([`install`]); a trap without it would
//!   kill the process with SIGSYS and no word of which call it was.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicUsize, Ordering};

use crate::syscall_names;

/// Exit status of a process its sandbox stopped (128 + SIGSYS, as a shell
/// would show a death by that signal).
pub const EXIT_SANDBOX_VIOLATION: i32 = 128 + libc::SIGSYS;
/// The report fd, or -1.
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);
/// The profile's name (a `&'static str`, as pointer and length).
static PROFILE_PTR: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static PROFILE_LEN: AtomicUsize = AtomicUsize::new(0);
/// Longest report line.
const LINE: usize = 192;
/// `si_syscall`'s offset in siginfo_t for SIGSYS on x86_64 (after
/// si_signo, si_errno, si_code, padding: `_sigsys { void *_call_addr;
/// int _syscall; unsigned int _arch; }`).
const SI_SYSCALL_OFFSET: usize = 24;

/// Writes `bytes` at `*at` in `buf`, as far as they fit.
fn put(buf: &mut [u8; LINE], at: &mut usize, bytes: &[u8]) {
    let n = bytes.len().min(LINE - *at);
    buf[*at..*at + n].copy_from_slice(&bytes[..n]);
    *at += n;
}

/// Writes `n` in decimal.
fn put_num(buf: &mut [u8; LINE], at: &mut usize, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    put(buf, at, &digits[i..]);
}

/// The report line for call `nr` in thread `thread` under `profile`:
/// `sandbox: profile dev_net: thread net-q1 made syscall openat (257), which it does not allow`.
pub fn format_line(profile: &[u8], thread: &[u8], nr: i64, buf: &mut [u8; LINE]) -> usize {
    let mut at = 0;
    put(buf, &mut at, b"sandbox: profile ");
    put(buf, &mut at, profile);
    put(buf, &mut at, b": thread ");
    put(buf, &mut at, thread);
    put(buf, &mut at, b" made syscall ");
    match syscall_names::name(nr) {
        Some(name) => {
            put(buf, &mut at, name.as_bytes());
            put(buf, &mut at, b" (");
            put_num(buf, &mut at, nr as u64);
            put(buf, &mut at, b")");
        }
        None => {
            put(buf, &mut at, b"number ");
            put_num(buf, &mut at, nr as u64);
        }
    }
    put(buf, &mut at, b", which its profile does not allow\n");
    at
}

extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS (SA_SIGINFO);
    // si_syscall is an int at SI_SYSCALL_OFFSET within it.
    let nr =
        unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>()) };
    let mut thread = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into `thread`. prctl is
    // not in every profile: if it is refused this returns an error (it
    // cannot trap again: SIGSYS is blocked while its handler runs, and a
    // trap then kills the process, which is the outcome anyway).
    let named = unsafe { libc::prctl(libc::PR_GET_NAME, thread.as_mut_ptr()) } == 0;
    let thread_len = if named {
        thread.iter().position(|&b| b == 0).unwrap_or(thread.len())
    } else {
        0
    };
    let profile_ptr = PROFILE_PTR.load(Ordering::Relaxed);
    let profile: &[u8] = if profile_ptr.is_null() {
        b"?"
    } else {
        // SAFETY: PROFILE_PTR/LEN describe a &'static str set by install().
        unsafe { std::slice::from_raw_parts(profile_ptr, PROFILE_LEN.load(Ordering::Relaxed)) }
    };
    let mut line = [0u8; LINE];
    let len = format_line(profile, &thread[..thread_len], i64::from(nr), &mut line);
    for fd in [REPORT_FD.load(Ordering::Relaxed), libc::STDERR_FILENO] {
        if fd >= 0 {
            // SAFETY: write from a live stack buffer; async-signal-safe.
            unsafe { libc::write(fd, line.as_ptr().cast(), len) };
        }
    }
    // SAFETY: ends the whole process at once; async-signal-safe.
    unsafe { libc::syscall(libc::SYS_exit_group, EXIT_SANDBOX_VIOLATION) };
}

/// Installs the SIGSYS handler for `profile`, reporting to `report_fd`
/// (kept open for the process's life) as well as stderr.
pub fn install(profile: &'static str, report_fd: Option<RawFd>) -> std::io::Result<()> {
    PROFILE_PTR.store(profile.as_ptr().cast_mut(), Ordering::Relaxed);
    PROFILE_LEN.store(profile.len(), Ordering::Relaxed);
    REPORT_FD.store(report_fd.unwrap_or(-1), Ordering::Relaxed);
    // SAFETY: an all-zero sigaction is a valid starting value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_sigsys;
    action.sa_sigaction = handler as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: sa_mask is a valid sigset_t to empty.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: installs a handler that only calls async-signal-safe code.
    if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // A thread that blocked SIGSYS would die silently on a trap.
    // SAFETY: an all-zero sigset_t is valid; sigaddset/pthread_sigmask on it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGSYS);
    }
    // SAFETY: unblocks SIGSYS in this thread; `set` is valid.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    Ok(())
}

/// In the parent: the report a process wrote before its sandbox ended it,
/// if any (the read end of its report pipe, after the process is reaped).
pub fn read_report(read_end: &OwnedFd) -> Option<String> {
    let mut buf = [0u8; 4 * LINE];
    let mut file = std::fs::File::from(read_end.try_clone().ok()?);
    // SAFETY: F_SETFL O_NONBLOCK on our own fd; no memory is touched.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let n = file.read(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_line_names_profile_thread_and_call() {
        let mut buf = [0u8; LINE];
        let n = format_line(b"dev_net", b"net-q1", 257, &mut buf);
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            "sandbox: profile dev_net: thread net-q1 made syscall openat (257), which its profile does not allow\n"
        );
        let n = format_line(b"p", b"t", 9999, &mut buf);
        assert!(std::str::from_utf8(&buf[..n])
            .unwrap()
            .contains("syscall number 9999,"));
        // A long thread name is cut, never overflows.
        let n = format_line(&[b'x'; 300], b"t", 0, &mut buf);
        assert_eq!(n, LINE);
    }
}
