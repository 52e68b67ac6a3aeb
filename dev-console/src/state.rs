//! What the queue workers (virtio side) and the I/O loop (pty and side
//! channel) share: the ring of output, where input goes, the input held
//! for the virtio port, and the eventfds by which each side wakes the
//! other.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Mutex, MutexGuard, OnceLock};

use log::debug;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::metrics::ConsoleMetrics;
use crate::ring::Ring;

/// Input held for the virtio port while the guest has no receive buffer
/// posted: a few lines of typing or a short paste. Beyond it input is
/// dropped and counted (the guest is not reading its console).
pub const MAX_HELD_INPUT: usize = 4096;

/// Where console bytes come from, or where input goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The virtio-console port (hvc0 in a Linux guest).
    Virtio,
    /// The monitor's COM1 UART (ttyS0).
    Com1,
}

/// The console state behind one lock.
///
/// # Invariants
/// - `ring` holds both sources' output in the order it arrived.
/// - `held.len() <= MAX_HELD_INPUT`.
#[derive(Debug)]
pub struct State {
    ring: Ring,
    last_output: Option<Source>,
    default_input: Source,
    held: VecDeque<u8>,
}

/// The shared console.
///
/// # Invariants
/// - `output_ready` is signalled after output reaches the ring from a
///   queue worker, so that the I/O loop writes it to an attached client.
/// - `rx_ready` is the receive queue's device fd
///   (`Device::queue_event_fd`): signalled after input is held, it makes
///   the receive queue's worker run and deliver it.
pub struct Shared {
    state: Mutex<State>,
    output_ready: EventFd,
    rx_ready: EventFd,
    metrics: ConsoleMetrics,
    /// Told where typed input goes whenever that changes, before the
    /// output that changed it is visible (see [`Shared::push_output`]).
    announce: OnceLock<Announce>,
}

/// Tells the monitor where typed input goes now.
pub type Announce = Box<dyn Fn(Source) + Send + Sync>;

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("state", &self.state)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// A console with a ring of `ring_size` bytes. Input goes to
    /// `default_input` until a source has written output.
    pub fn new(ring_size: usize, default_input: Source) -> io::Result<Self> {
        Self::with_ring(Ring::new(ring_size), default_input)
    }

    /// A console on `ring` (e.g. a predecessor's, in shared memory).
    pub fn with_ring(ring: Ring, default_input: Source) -> io::Result<Self> {
        Ok(Self {
            state: Mutex::new(State {
                ring,
                last_output: None,
                default_input,
                held: VecDeque::with_capacity(MAX_HELD_INPUT),
            }),
            output_ready: EventFd::new(EFD_NONBLOCK)?,
            rx_ready: EventFd::new(EFD_NONBLOCK)?,
            metrics: ConsoleMetrics::default(),
            announce: OnceLock::new(),
        })
    }

    /// Sets who is told where input goes (the monitor, which tells this
    /// process's successor should it die).
    pub fn set_announce(&self, announce: Announce) {
        let _ = self.announce.set(announce);
    }

    /// Locks the state. Holders do no I/O under the lock except copying.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The console's counters.
    pub fn metrics(&self) -> &ConsoleMetrics {
        &self.metrics
    }

    /// Appends output of `source` to the ring (no wake-up: see
    /// [`Shared::output_written`]).
    pub fn push_output(&self, source: Source, bytes: &[u8]) {
        let mut state = self.lock();
        // Announced before the output can reach a client: whatever a
        // client saw last, the monitor knows where its typing goes.
        if !bytes.is_empty() && state.last_output != Some(source) {
            if let Some(announce) = self.announce.get() {
                debug!("typed input goes to {source:?} from now on");
                announce(source);
            }
        }
        state.push_output(source, bytes);
        drop(state);
        let counter = match source {
            Source::Virtio => &self.metrics.virtio_out,
            Source::Com1 => &self.metrics.com_out,
        };
        ConsoleMetrics::add(counter, bytes.len() as u64);
    }

    /// Tells the I/O loop that the ring has new output.
    pub fn output_written(&self) {
        if let Err(e) = self.output_ready.write(1) {
            debug!("waking the console loop: {e}");
        }
    }

    /// The fd the I/O loop polls for [`Shared::output_written`].
    pub fn output_ready_fd(&self) -> RawFd {
        self.output_ready.as_raw_fd()
    }

    /// Consumes the output wake-up.
    pub fn clear_output_ready(&self) {
        // EAGAIN means nothing was pending.
        let _ = self.output_ready.read();
    }

    /// The receive queue's device fd.
    pub fn rx_ready_fd(&self) -> RawFd {
        self.rx_ready.as_raw_fd()
    }

    /// Consumes the receive wake-up (the worker polls it edge-triggered).
    pub fn clear_rx_ready(&self) {
        // EAGAIN means nothing was pending.
        let _ = self.rx_ready.read();
    }

    /// Where input goes now: to the source that wrote output last.
    pub fn input_target(&self) -> Source {
        self.lock().input_target()
    }

    /// Where input went before this process (the monitor says, after a
    /// restart): used until a source writes output here.
    pub fn set_inherited_input(&self, source: Source) {
        let mut state = self.lock();
        if state.last_output.is_none() {
            state.default_input = source;
        }
    }

    /// Holds `bytes` for the virtio port and wakes its receive queue;
    /// what does not fit in [`MAX_HELD_INPUT`] is dropped and counted.
    pub fn hold_input(&self, bytes: &[u8]) {
        let dropped = self.lock().hold(bytes);
        if dropped > 0 {
            debug!("virtio port not reading: {dropped} input bytes dropped");
            ConsoleMetrics::add(&self.metrics.in_dropped, dropped as u64);
        }
        if let Err(e) = self.rx_ready.write(1) {
            debug!("waking the receive queue: {e}");
        }
    }
}

impl State {
    /// The ring of output.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Records where the attached client is, for a successor of this
    /// process (`None`: nobody is attached).
    pub fn note_client(&mut self, pos: Option<u64>) {
        self.ring.note_client(pos);
    }

    fn push_output(&mut self, source: Source, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.ring.push(bytes);
        self.last_output = Some(source);
    }

    fn input_target(&self) -> Source {
        self.last_output.unwrap_or(self.default_input)
    }

    fn hold(&mut self, bytes: &[u8]) -> usize {
        let room = MAX_HELD_INPUT - self.held.len();
        let take = bytes.len().min(room);
        self.held.extend(&bytes[..take]);
        bytes.len() - take
    }

    /// Input held for the virtio port, oldest first.
    pub fn held(&mut self) -> &[u8] {
        self.held.make_contiguous()
    }

    /// Removes the first `n` held bytes (delivered to the guest).
    pub fn consume_held(&mut self, n: usize) {
        self.held.drain(..n.min(self.held.len()));
    }

    /// The virtio driver went away: its held input is dropped, and input
    /// follows COM1 again unless virtio writes anew. Returns the bytes
    /// dropped.
    pub fn virtio_reset(&mut self) -> usize {
        if self.last_output == Some(Source::Virtio) {
            self.last_output = None;
        }
        let n = self.held.len();
        self.held.clear();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_input_follows_the_last_output_source() {
        let shared = Shared::new(64, Source::Com1).unwrap();
        assert_eq!(shared.input_target(), Source::Com1);
        shared.push_output(Source::Virtio, b"hvc");
        assert_eq!(shared.input_target(), Source::Virtio);
        shared.push_output(Source::Com1, b"ttyS");
        assert_eq!(shared.input_target(), Source::Com1);
        shared.push_output(Source::Virtio, b"");
        assert_eq!(
            shared.input_target(),
            Source::Com1,
            "empty output counts not"
        );
        shared.push_output(Source::Virtio, b"x");
        assert_eq!(shared.lock().virtio_reset(), 0);
        assert_eq!(shared.input_target(), Source::Com1);
    }

    #[test]
    fn state_held_input_is_bounded_and_counted() {
        let shared = Shared::new(64, Source::Virtio).unwrap();
        shared.hold_input(&vec![b'a'; MAX_HELD_INPUT - 1]);
        shared.hold_input(b"bcd");
        let mut st = shared.lock();
        assert_eq!(st.held().len(), MAX_HELD_INPUT);
        assert_eq!(st.held()[MAX_HELD_INPUT - 1], b'b');
        st.consume_held(MAX_HELD_INPUT - 1);
        assert_eq!(st.held(), b"b");
        drop(st);
        assert_eq!(shared.metrics().snapshot().in_dropped, 2);
    }
}
