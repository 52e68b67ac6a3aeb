//! The console's I/O loop: one thread polling the pty master, the side
//! channel to the monitor, the ring's output wake-up and a stop eventfd.
//!
//! - Output: while a client is attached, the ring is written to the
//!   master from the client's cursor, as far as the pty takes it (the
//!   master is non-blocking; POLLOUT says when to go on). A client that
//!   falls a whole ring behind skips ahead; the skipped bytes are counted.
//!   While nobody is attached nothing is written to the pty.
//! - Side channel ([`ipc::console`]): ComOutput goes into the ring;
//!   Attach drops what the pty holds both ways (tcflush TCIOFLUSH) and
//!   replays the ring from its oldest byte; Detach stops output to the pty.
//! - Input: while attached, bytes read from the master go to the source
//!   that wrote output last ([`Shared::input_target`]): held for the
//!   virtio receive queue, or sent to the monitor as ComInput. When the
//!   side channel is full, the unsent packet waits and the master is not
//!   read until it is sent, so the pty buffers the typing meanwhile.
//!
//! Nothing here waits on the pty or the monitor: every fd is
//! non-blocking, and the queue workers only ever take the state's lock.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use ipc::console::{Packet, Port, MAX_BYTES};
use log::{debug, info, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::metrics::ConsoleMetrics;
use crate::ring::Cursor;
use crate::state::{Shared, Source};
use crate::sys::{self, Received};

/// Poll slot of the stop eventfd (the vhost-user side ended).
const SLOT_STOP: usize = 0;
/// Poll slot of the ring's output wake-up.
const SLOT_OUTPUT: usize = 1;
/// Most side-channel packets taken on the way out.
const DRAIN_PACKETS: usize = 1024;
/// Poll slot of the side channel.
const SLOT_SIDE: usize = 2;
/// Poll slot of the pty master.
const SLOT_MASTER: usize = 3;
/// Bytes moved to or from the pty per system call.
const CHUNK: usize = 4096;
/// Side-channel packets taken per wake-up before the pty gets a turn.
const PACKETS_PER_ROUND: usize = 64;

/// Why the I/O loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// poll(2) failed.
    #[error("polling the console fds")]
    Poll(#[source] io::Error),
}

/// How the I/O loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The monitor closed the side channel.
    SideChannelClosed,
    /// The stop eventfd was signalled (the vhost-user side ended).
    Stopped,
}

/// The pty: the master is read and written; the slave is only held so
/// that the pty never hangs up while no client has it open.
#[derive(Debug)]
pub struct Pty {
    /// The master, non-blocking.
    pub master: File,
    /// The slave, never read.
    pub slave: File,
}

/// The attached client.
#[derive(Debug)]
struct Client {
    cursor: Cursor,
    /// Bytes skipped since the client last caught up (logged once per
    /// episode, not per write).
    lagging: u64,
    /// The master failed (EIO): no more output or input until the next
    /// Attach.
    broken: bool,
}

/// The I/O loop's state.
///
/// # Invariants
/// - `client` is `Some` between Attach and Detach (always, without a
///   side channel: nobody could attach).
/// - `com_pending` holds at most one encoded ComInput packet; while it
///   does, the master is not read.
pub struct ConsoleLoop {
    shared: Arc<Shared>,
    pty: Pty,
    side: Option<OwnedFd>,
    stop: EventFd,
    client: Option<Client>,
    com_pending: Option<Vec<u8>>,
    /// Where the client of this process's predecessor was in the ring,
    /// for a Resume.
    resume_at: Option<u64>,
}

impl ConsoleLoop {
    /// A loop over `pty` (master already non-blocking) and the side
    /// channel `side`; it returns when `stop` is signalled.
    pub fn new(shared: Arc<Shared>, pty: Pty, side: Option<OwnedFd>, stop: EventFd) -> Self {
        Self::resuming(shared, pty, side, stop, None)
    }

    /// [`new`](Self::new), for the successor of a process whose client
    /// had read the ring up to `resume_at`: a Resume goes on from there.
    pub fn resuming(
        shared: Arc<Shared>,
        pty: Pty,
        side: Option<OwnedFd>,
        stop: EventFd,
        resume_at: Option<u64>,
    ) -> Self {
        let client = side.is_none().then(|| Client {
            cursor: shared.lock().ring().cursor_at_oldest(),
            lagging: 0,
            broken: false,
        });
        Self {
            shared,
            pty,
            side,
            stop,
            client,
            com_pending: None,
            resume_at,
        }
    }

    /// Runs until the side channel closes or `stop` is signalled.
    pub fn run(&mut self) -> Result<Exit, LoopError> {
        loop {
            self.write_out();
            let mut fds = self.poll_set();
            sys::poll(&mut fds, -1).map_err(LoopError::Poll)?;
            if fds[SLOT_STOP].revents != 0 {
                self.drain_side();
                return Ok(Exit::Stopped);
            }
            if fds[SLOT_OUTPUT].revents != 0 {
                self.shared.clear_output_ready();
            }
            let side = fds[SLOT_SIDE].revents;
            if side & libc::POLLOUT != 0 {
                self.flush_com();
            }
            if side & libc::POLLIN != 0 {
                if self.read_side(side & libc::POLLHUP != 0) {
                    return Ok(Exit::SideChannelClosed);
                }
            } else if side & (libc::POLLHUP | libc::POLLERR) != 0 {
                return Ok(Exit::SideChannelClosed);
            }
            let master = fds[SLOT_MASTER].revents;
            if master & libc::POLLIN != 0 {
                self.read_input();
            } else if master & (libc::POLLHUP | libc::POLLERR) != 0 {
                self.master_failed(&io::Error::from_raw_os_error(libc::EIO));
            }
        }
    }

    /// On the way out (the VM is gone): takes what the monitor already
    /// sent on the side channel (a guest's last COM1 lines before it
    /// powered off) and writes it to an attached client, as far as the pty
    /// takes it without waiting.
    fn drain_side(&mut self) {
        for _ in 0..DRAIN_PACKETS {
            let Some(side) = &self.side else { break };
            let mut pfd = [libc::pollfd {
                fd: side.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            if sys::poll(&mut pfd, 0).is_err() || pfd[0].revents & libc::POLLIN == 0 {
                break;
            }
            if self.read_side(pfd[0].revents & libc::POLLHUP != 0) {
                break;
            }
        }
        self.write_out();
    }

    fn poll_set(&self) -> [libc::pollfd; 4] {
        let pfd = |fd, events| libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let mut fds = [
            pfd(self.stop.as_raw_fd(), libc::POLLIN),
            pfd(self.shared.output_ready_fd(), libc::POLLIN),
            pfd(-1, 0),
            pfd(-1, 0),
        ];
        if let Some(side) = &self.side {
            let out = if self.com_pending.is_some() {
                libc::POLLOUT
            } else {
                0
            };
            fds[SLOT_SIDE] = pfd(side.as_raw_fd(), libc::POLLIN | out);
        }
        if let Some(client) = self.client.as_ref().filter(|c| !c.broken) {
            let mut events = 0;
            if self.com_pending.is_none() {
                events |= libc::POLLIN;
            }
            if !client.cursor.caught_up(self.shared.lock().ring()) {
                events |= libc::POLLOUT;
            }
            if events != 0 {
                fds[SLOT_MASTER] = pfd(self.pty.master.as_raw_fd(), events);
            }
        }
        fds
    }

    /// Writes the ring to the attached client until it has everything or
    /// the pty is full.
    fn write_out(&mut self) {
        let Some(client) = self.client.as_mut().filter(|c| !c.broken) else {
            return;
        };
        let metrics = self.shared.metrics();
        let mut buf = [0u8; CHUNK];
        let error = loop {
            let pending = self
                .shared
                .lock()
                .ring()
                .read_at(&mut client.cursor, &mut buf);
            if pending.skipped > 0 {
                if client.lagging == 0 {
                    debug!("console client too slow: skipping output");
                }
                client.lagging += pending.skipped;
                ConsoleMetrics::add(&metrics.out_dropped, pending.skipped);
            }
            if pending.len == 0 {
                if client.lagging > 0 {
                    debug!("console client caught up, {} bytes skipped", client.lagging);
                    client.lagging = 0;
                }
                return;
            }
            match (&self.pty.master).write(&buf[..pending.len]) {
                Ok(n) => {
                    client.cursor.advance(n);
                    ConsoleMetrics::add(&metrics.pty_out, n as u64);
                    self.shared.lock().note_client(Some(client.cursor.pos()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break e,
            }
        };
        self.master_failed(&error);
    }

    fn master_failed(&mut self, error: &io::Error) {
        warn!("console pty: {error}; the client gets nothing more until it attaches again");
        if let Some(client) = self.client.as_mut() {
            client.broken = true;
        }
    }

    /// Reads what the client typed and routes it.
    fn read_input(&mut self) {
        let mut buf = [0u8; CHUNK];
        let n = match (&self.pty.master).read(&mut buf) {
            Ok(0) => {
                return self.master_failed(&io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return
            }
            Err(e) => return self.master_failed(&e),
        };
        let input = &buf[..n];
        let metrics = self.shared.metrics();
        debug!("{n} bytes typed, for {:?}", self.shared.input_target());
        match (self.shared.input_target(), &self.side) {
            (Source::Virtio, _) => self.shared.hold_input(input),
            (Source::Com1, Some(_)) => self.send_com(input),
            (Source::Com1, None) => ConsoleMetrics::add(&metrics.in_dropped, n as u64),
        }
    }

    /// Sends console input to the monitor for COM1; at most [`CHUNK`]
    /// (= [`MAX_BYTES`]) bytes, so one packet.
    fn send_com(&mut self, input: &[u8]) {
        debug_assert!(input.len() <= MAX_BYTES);
        self.com_pending = Some(Packet::ComInput(input.to_vec()).encode());
        self.flush_com();
    }

    /// Sends the pending ComInput packet if the side channel has room.
    fn flush_com(&mut self) {
        let (Some(side), Some(packet)) = (&self.side, &self.com_pending) else {
            return;
        };
        let metrics = self.shared.metrics();
        let len = packet.len() as u64 - 1;
        match sys::send_packet(side.as_raw_fd(), packet) {
            Ok(true) => ConsoleMetrics::add(&metrics.com_in, len),
            Ok(false) => return,
            Err(e) => {
                warn!("sending console input to the monitor: {e}");
                ConsoleMetrics::add(&metrics.in_dropped, len);
            }
        }
        self.com_pending = None;
    }

    /// Takes queued side-channel packets; returns whether the monitor
    /// closed the channel. `hung_up`: poll saw POLLHUP, so a zero-length
    /// read is the end of the stream rather than an empty packet.
    fn read_side(&mut self, hung_up: bool) -> bool {
        let Some(side) = self.side.as_ref().map(AsRawFd::as_raw_fd) else {
            return false;
        };
        let mut buf = [0u8; 1 + MAX_BYTES];
        for _ in 0..PACKETS_PER_ROUND {
            let packet = match sys::recv_packet(side, &mut buf) {
                Ok(Received::Packet(n)) => Packet::decode(&buf[..n]),
                Ok(Received::Truncated(n)) => {
                    self.bad_packet(&format!("a packet of {n} bytes"));
                    continue;
                }
                Ok(Received::Empty) => return false,
                Ok(Received::Zero) if hung_up => return true,
                Ok(Received::Zero) => Packet::decode(&[]),
                Err(e) => {
                    warn!("reading the side channel: {e}");
                    return true;
                }
            };
            match packet {
                Ok(packet) => self.handle_packet(packet),
                Err(e) => self.bad_packet(&e.to_string()),
            }
        }
        false
    }

    fn bad_packet(&self, what: &str) {
        warn!("side channel: {what}; dropped");
        ConsoleMetrics::add(&self.shared.metrics().bad_packets, 1);
    }

    fn handle_packet(&mut self, packet: Packet) {
        match packet {
            Packet::ComOutput(bytes) => self.shared.push_output(Source::Com1, &bytes),
            Packet::Attach => self.attach(true),
            Packet::Resume => self.attach(false),
            Packet::Detach => {
                if self.client.take().is_some() {
                    info!("console client detached");
                }
                self.shared.lock().note_client(None);
            }
            Packet::ComInput(_) => self.bad_packet("ComInput from the monitor"),
            Packet::InputTo(port) => {
                let source = match port {
                    Port::Virtio => Source::Virtio,
                    Port::Com1 => Source::Com1,
                };
                self.shared.set_inherited_input(source);
                info!("typed input goes to {source:?}, as before");
            }
        }
    }

    /// A client attaches (`new`): the ring is replayed from its oldest
    /// byte. Or it was attached to this process's predecessor: then what
    /// it typed meanwhile stays, and the ring follows from where that
    /// client was (if the predecessor's ring was kept, else all of it).
    fn attach(&mut self, new: bool) {
        if new {
            if let Err(e) = sys::flush_pty(&self.pty.master) {
                warn!("flushing the console pty: {e}");
            }
        }
        let resume_at = if new { None } else { self.resume_at.take() };
        let cursor = {
            let mut state = self.shared.lock();
            let cursor = match resume_at {
                Some(pos) => state.ring().cursor_at(pos),
                None => state.ring().cursor_at_oldest(),
            };
            state.note_client(Some(cursor.pos()));
            cursor
        };
        info!(
            "console client {}; replaying {} bytes",
            if new { "attached" } else { "still attached" },
            self.shared.lock().ring().head() - cursor.pos()
        );
        self.client = Some(Client {
            cursor,
            lagging: 0,
            broken: false,
        });
    }
}
