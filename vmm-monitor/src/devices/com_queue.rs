//! COM1's bytes on their way to dev-console: a bounded queue the vCPU
//! fills without ever waiting, and a forwarder thread that sends it as
//! `ipc::console` `ComOutput` packets of up to 4 KiB.
//!
//! The guest writes COM1 one byte per port exit; sending a packet per
//! byte would fill the side channel's buffer with tiny packets and lose
//! output whenever dev-console lags. Batching here keeps packets few and
//! full.
//!
//! # Invariants
//! - [`ComQueue::push`] never blocks beyond a short mutex hold: when
//!   [`QUEUE_BYTES`] are waiting, further bytes are dropped and counted.
//! - The forwarder ends once the queue is closed (its sink dropped with
//!   the VM) and drained, or once the side channel fails (dev-console gone).

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};

use ipc::console::{Packet, MAX_BYTES};

/// Most bytes waiting for the forwarder.
pub const QUEUE_BYTES: usize = 64 << 10;

#[derive(Default)]
struct State {
    bytes: VecDeque<u8>,
    closed: bool,
    dropped: u64,
}

/// The queue between COM1 and its forwarder.
#[derive(Default)]
pub struct ComQueue {
    state: Mutex<State>,
    ready: Condvar,
}

impl ComQueue {
    /// A queue and its forwarder thread, sending to `side`.
    pub fn start(side: Arc<OwnedFd>) -> std::io::Result<Arc<Self>> {
        let queue = Arc::new(Self::default());
        let forwarder = queue.clone();
        std::thread::Builder::new()
            .name("com1-out".into())
            .spawn(move || forwarder.forward(&side))?;
        Ok(queue)
    }

    /// Queues `bytes`, dropping what does not fit.
    pub fn push(&self, bytes: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let room = QUEUE_BYTES.saturating_sub(state.bytes.len());
        let take = bytes.len().min(room);
        state.bytes.extend(&bytes[..take]);
        if take < bytes.len() {
            if state.dropped == 0 {
                log::debug!("console: COM1 output dropped (dev-console is not keeping up)");
            }
            state.dropped += (bytes.len() - take) as u64;
        }
        drop(state);
        self.ready.notify_one();
    }

    /// No more bytes will come: the forwarder drains and ends.
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.ready.notify_one();
    }

    /// Bytes dropped so far.
    pub fn dropped(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).dropped
    }

    /// The next batch (up to one packet), or `None` once closed and empty.
    fn next_batch(&self) -> Option<Vec<u8>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while state.bytes.is_empty() {
            if state.closed {
                return None;
            }
            state = self.ready.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        let n = state.bytes.len().min(MAX_BYTES);
        Some(state.bytes.drain(..n).collect())
    }

    fn forward(&self, side: &OwnedFd) {
        while let Some(batch) = self.next_batch() {
            if let Err(e) = ipc::console::send(side.as_fd(), &Packet::ComOutput(batch)) {
                log::debug!("console: COM1 forwarding ends: {e}");
                // Later pushes are dropped once the queue is full.
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd};

    fn pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two fds into the array.
        let ret =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) };
        assert_eq!(ret, 0);
        // SAFETY: both fds are new and ours.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn recv(fd: &OwnedFd) -> Packet {
        let mut buf = vec![0u8; MAX_BYTES + 1];
        // SAFETY: recv writes at most buf.len() bytes into a live buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(n > 0);
        Packet::decode(&buf[..n as usize]).unwrap()
    }

    #[test]
    fn bytes_pushed_one_at_a_time_arrive_in_order_in_few_packets() {
        let (ours, theirs) = pair();
        let queue = ComQueue::start(Arc::new(ours)).unwrap();
        let text: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        for b in &text {
            queue.push(std::slice::from_ref(b));
        }
        let mut got = Vec::new();
        let mut packets = 0;
        while got.len() < text.len() {
            match recv(&theirs) {
                Packet::ComOutput(bytes) => got.extend(bytes),
                other => panic!("{other:?}"),
            }
            packets += 1;
        }
        assert_eq!(got, text);
        assert!(packets < 10_000, "{packets} packets for 10000 bytes");
        assert_eq!(queue.dropped(), 0);
        queue.close();
    }

    #[test]
    fn a_full_queue_drops_instead_of_waiting() {
        let (ours, _theirs) = pair();
        let queue = Arc::new(ComQueue::default());
        // No forwarder: nothing drains.
        queue.push(&vec![1u8; QUEUE_BYTES]);
        queue.push(b"more");
        assert_eq!(queue.dropped(), 4);
        drop(ours);
    }
}
