//! A pseudo-terminal for driving an interactive program (`vmctl console`)
//! as a user at a terminal would.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A program running on the slave side of a pty; the test holds the master.
pub struct Terminal {
    master: File,
    /// The program.
    pub child: Child,
    seen: Vec<u8>,
}

impl Terminal {
    /// Starts `command` with its stdin, stdout and stderr on a new pty
    /// (which becomes its controlling terminal).
    pub fn spawn(mut command: Command) -> Self {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes two fds; the name, termios and winsize
        // pointers may be null.
        let ret = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(ret, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both fds were just created and are owned by nobody else.
        let (master, slave) = unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) };
        // Only the test holds the master: a copy in the program would keep
        // the terminal from ever hanging up.
        // SAFETY: F_SETFD on an fd we own.
        unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        command
            .stdin(Stdio::from(slave.try_clone().expect("dup slave")))
            .stdout(Stdio::from(slave.try_clone().expect("dup slave")))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and TIOCSCTTY in the child before exec are
        // async-signal-safe; fd 0 is the slave by then.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = command.spawn().expect("start the program on the pty");
        // SAFETY: F_SETFL on an fd we own.
        unsafe {
            let flags = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(master.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        Self {
            master,
            child,
            seen: Vec::new(),
        }
    }

    /// Types `bytes`.
    pub fn type_bytes(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("type on the pty");
    }

    /// Everything the program printed so far, as text.
    pub fn seen(&mut self) -> String {
        self.pump();
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    fn pump(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match self.master.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                Err(_) => return,
            }
        }
    }

    /// Waits until the output contains `needle`.
    #[track_caller]
    pub fn expect(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.seen().contains(needle) {
            assert!(
                start.elapsed() < timeout,
                "{needle:?} never appeared; the terminal showed:\n{}",
                self.seen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Closes the terminal under the program, as when its window is
    /// closed: the program gets SIGHUP and its reads fail.
    pub fn hang_up(&mut self) {
        let null = File::open("/dev/null").expect("open /dev/null");
        // SAFETY: dup2 replaces the master's fd with /dev/null's, closing
        // the master; both fds are live.
        unsafe { libc::dup2(null.as_raw_fd(), self.master.as_raw_fd()) };
    }

    /// Waits for the program to end; returns its exit code.
    #[track_caller]
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            self.pump();
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                start.elapsed() < timeout,
                "the program did not end; it showed:\n{}",
                self.seen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
