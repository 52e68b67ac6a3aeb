//! Holding a device process stopped before it serves, for a debugger or
//! tracer (`vmctl device restart -d`).
//!
//! The supervisor starts the device with `--hold-fd`, one end of a socket
//! pair. Once sandboxed, and before it reads its first vhost-user message,
//! the device writes [`AT_HOLD`] and waits to read a byte
//! ([`wait_released`]). The supervisor reads it, stops the process
//! (SIGSTOP: a device is the init of its pid namespace, which may not
//! stop itself) and only then writes [`RELEASE`] ([`hold`]). So the device
//! sits stopped at a known point — its next instruction returns from that
//! read — until whoever attached continues it (`kill -CONT`, a debugger's
//! continue); then it serves.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The device has reached its hold point.
pub const AT_HOLD: u8 = b'H';
/// The device may go on once it runs again.
pub const RELEASE: u8 = b'R';

/// The device's half: says it is at the hold point and waits for the
/// release (which comes once its supervisor has stopped it).
pub fn wait_released(stream: &mut UnixStream) -> io::Result<()> {
    stream.write_all(&[AT_HOLD])?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)?;
    if byte[0] != RELEASE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("hold: expected the release byte, got {:#04x}", byte[0]),
        ));
    }
    Ok(())
}

/// The supervisor's half: waits (at most `timeout`) for the device to
/// reach its hold point, calls `stop` (which must stop the process), then
/// releases it, so that it goes on only once continued.
pub fn hold(
    stream: &mut UnixStream,
    timeout: Duration,
    stop: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(timeout))?;
    let mut byte = [0u8; 1];
    match stream.read_exact(&mut byte) {
        Ok(()) if byte[0] == AT_HOLD => {}
        Ok(()) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("hold: expected the hold byte, got {:#04x}", byte[0]),
            ))
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the device did not reach its hold point within {timeout:?}"),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the device ended before its hold point",
            ))
        }
        Err(e) => return Err(e),
    }
    stop()?;
    stream.write_all(&[RELEASE])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_device_goes_on_only_after_it_was_stopped() {
        let (mut supervisor, mut device) = UnixStream::pair().unwrap();
        let stopped = Arc::new(AtomicBool::new(false));
        let seen = stopped.clone();
        let held = std::thread::spawn(move || {
            wait_released(&mut device).unwrap();
            seen.load(Ordering::SeqCst)
        });
        hold(&mut supervisor, Duration::from_secs(10), || {
            stopped.store(true, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        assert!(held.join().unwrap(), "released before the stop");
    }

    #[test]
    fn a_device_that_ends_first_or_never_arrives_is_told_apart() {
        let (mut supervisor, device) = UnixStream::pair().unwrap();
        drop(device);
        let e = hold(&mut supervisor, Duration::from_secs(10), || Ok(())).unwrap_err();
        assert!(e.to_string().contains("ended before"), "{e}");

        let (mut supervisor, _device) = UnixStream::pair().unwrap();
        let e = hold(&mut supervisor, Duration::from_millis(20), || {
            panic!("never stopped")
        })
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    }

    #[test]
    fn a_failed_stop_releases_nothing() {
        let (mut supervisor, mut device) = UnixStream::pair().unwrap();
        let waiter = std::thread::spawn(move || wait_released(&mut device));
        let e = hold(&mut supervisor, Duration::from_secs(10), || {
            Err(io::Error::other("no such process"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("no such process"));
        drop(supervisor);
        assert!(waiter.join().unwrap().is_err(), "the device saw no release");
    }
}
