//! The console device process of vmd-rs: the guest's virtio-console port
//! (over vhost-user) and its COM1 byte stream (from the monitor, over a
//! side channel) merged into one console on a pty, with a ring of recent
//! output replayed to each client that attaches.
//!
//! ```text
//!  guest hvc0 ──transmitq──► console-q1 ─┐            ┌─► pty master ─► client
//!                                        ├─► Ring ────┤   (while attached)
//!  monitor COM1 ──ComOutput──────────────┘  (Shared)  │
//!                                                     │
//!  guest hvc0 ◄──receiveq── console-q0 ◄── held ◄─────┤◄─ pty master (typing)
//!  monitor COM1 ◄──ComInput───────────────────────────┘   to the last writer
//! ```
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | the command line → [`config::ConsoleConfig`] |
//! | [`ring`] | the ring of recent output, absolute positions, cursors |
//! | [`state`] | what the queue workers and the I/O loop share; input routing |
//! | [`device`] | the virtio-console [`dev_backend::Device`] (queues, features, config) |
//! | [`console`] | the I/O loop: pty master, side channel, attach/detach |
//! | [`metrics`] | the console's counters |
//! | `sys` | pty and seqpacket system calls |
//!
//! Threads: `console-q0` / `console-q1` (dev-backend's queue workers),
//! `console-vu` (the vhost-user connection) and the main thread running
//! the I/O loop.

pub mod config;
pub mod console;
pub mod device;
pub mod metrics;
pub mod ring;
pub mod state;
mod sys;

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use config::{ConsoleConfig, PtySource, MIN_RING_SIZE};
use console::{ConsoleLoop, Exit, Pty};
use dev_backend::process::{take_passed_fd, FdError};
use device::ConsoleDevice;
use ipc::console::RING_HEADER;
use ipc::shm::SharedMemory;
use log::info;
use ring::Ring;
use state::{Shared, Source};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why dev-console stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A passed fd is not open.
    #[error(transparent)]
    BadFd(#[from] FdError),
    /// The sandbox could not be entered.
    #[error("sandbox")]
    Sandbox(#[from] dev_backend::SandboxError),
    /// A passed pty fd is not a terminal.
    #[error("fd {fd} ({what}) is not a terminal")]
    NotTty {
        /// The fd.
        fd: i32,
        /// What it was for.
        what: &'static str,
    },
    /// The side channel is not a SOCK_SEQPACKET socket.
    #[error("fd {0} (side channel) is not a SOCK_SEQPACKET socket")]
    NotSeqpacket(i32),
    /// A new pty (standalone) could not be opened.
    #[error("opening a pty")]
    OpenPty(#[source] io::Error),
    /// Setting up fds or threads failed.
    #[error("setting up the console: {what}")]
    Setup {
        /// What failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The I/O loop failed.
    #[error("console I/O")]
    Loop(#[from] console::LoopError),
    /// Serving vhost-user failed.
    #[error("vhost-user")]
    Serve(#[from] dev_backend::serve::ServeError),
    /// The vhost-user thread panicked.
    #[error("the vhost-user thread panicked")]
    ServePanicked,
    /// The ring's memfd cannot be used.
    #[error("--ring-fd: {0}")]
    Ring(String),
}

fn setup(what: &'static str) -> impl FnOnce(io::Error) -> RunError {
    move |source| RunError::Setup { what, source }
}

/// Takes ownership of passed fd `fd` after checking that it is open.
fn take_fd(fd: i32, what: &'static str) -> Result<File, FdError> {
    take_passed_fd(fd, what).map(File::from)
}

/// Takes passed fd `fd`, which must be a terminal.
fn take_tty(fd: i32, what: &'static str) -> Result<File, RunError> {
    let file = take_fd(fd, what)?;
    if !sys::is_tty(fd) {
        return Err(RunError::NotTty { fd, what });
    }
    Ok(file)
}

fn take_pty(source: &PtySource) -> Result<Pty, RunError> {
    let pty = match *source {
        PtySource::Fds { master, slave } => Pty {
            master: take_tty(master, "pty master")?,
            slave: take_tty(slave, "pty slave")?,
        },
        PtySource::Open => {
            let (master, slave) = sys::open_pty().map_err(RunError::OpenPty)?;
            let fd = slave.as_raw_fd();
            match std::fs::read_link(format!("/proc/self/fd/{fd}")) {
                Ok(name) => info!("console on {}", name.display()),
                Err(e) => info!("console on a new pty (its name: {e})"),
            }
            Pty { master, slave }
        }
    };
    sys::set_nonblocking(&pty.master).map_err(setup("making the pty master non-blocking"))?;
    Ok(pty)
}

fn take_side_channel(fd: i32) -> Result<OwnedFd, RunError> {
    let file = take_fd(fd, "side channel")?;
    match sys::socket_type(fd) {
        Ok(libc::SOCK_SEQPACKET) => Ok(OwnedFd::from(file)),
        _ => Err(RunError::NotSeqpacket(fd)),
    }
}

/// Serves the console until the monitor closes the side channel or the
/// vhost-user connection (monitor mode), or forever (standalone).
pub fn run(config: ConsoleConfig) -> Result<(), RunError> {
    let pty = take_pty(&config.pty)?;
    let side = config.side_channel.map(take_side_channel).transpose()?;
    let (endpoint, metrics) = config.connection.open()?;
    // Before the vhost-user thread starts (landlock binds this thread and
    // those it starts later; seccomp binds them all).
    config
        .sandbox
        .enter_for(&endpoint, dev_backend::Profile::DevConsole)?;
    // Before any output, input goes to COM1 if there is one.
    let first_input = if side.is_some() {
        Source::Com1
    } else {
        Source::Virtio
    };
    let (ring, resume_at) = match config.ring_fd {
        Some(fd) => {
            let memory = take_fd(fd, "ring memfd")?;
            let memory = SharedMemory::map(&memory, RING_HEADER + MIN_RING_SIZE)
                .map_err(|e| RunError::Ring(e.to_string()))?;
            let (ring, resume_at) =
                Ring::in_shared(memory).map_err(|e| RunError::Ring(e.to_string()))?;
            if ring.head() > 0 {
                info!(
                    "kept {} bytes of output from before a restart",
                    ring.head() - ring.oldest()
                );
            }
            (ring, resume_at)
        }
        None => (Ring::new(config.ring_size), None),
    };
    let ring_size = ring.capacity();
    let shared = Shared::with_ring(ring, first_input).map_err(setup("eventfds"))?;
    if let Some(side) = &side {
        // The monitor keeps where typed input goes, for a successor.
        let side = side
            .try_clone()
            .map_err(setup("a copy of the side channel"))?;
        shared.set_announce(Box::new(move |source| {
            let port = match source {
                Source::Virtio => ipc::console::Port::Virtio,
                Source::Com1 => ipc::console::Port::Com1,
            };
            let packet = ipc::console::Packet::InputTo(port).encode();
            if let Err(e) = sys::send_packet(side.as_raw_fd(), &packet) {
                log::debug!("telling the monitor where input goes: {e}");
            }
        }));
    }
    let shared = Arc::new(shared);
    let device = Arc::new(ConsoleDevice::new(Arc::clone(&shared)).with_metrics(metrics));
    let stop = EventFd::new(EFD_NONBLOCK).map_err(setup("the stop eventfd"))?;
    let stopper = stop.try_clone().map_err(setup("the stop eventfd"))?;
    let serve = std::thread::Builder::new()
        .name("console-vu".into())
        .spawn(move || {
            let result = endpoint.serve(device);
            if let Err(e) = stopper.write(1) {
                log::error!("stopping the console loop: {e}");
            }
            result
        })
        .map_err(setup("the vhost-user thread"))?;
    info!("serving a {ring_size} byte ring");
    let exit = ConsoleLoop::resuming(Arc::clone(&shared), pty, side, stop, resume_at).run();
    info!("{}", shared.metrics().snapshot());
    match exit? {
        Exit::SideChannelClosed => {
            info!("the monitor closed the side channel");
            Ok(())
        }
        Exit::Stopped => {
            serve.join().map_err(|_| RunError::ServePanicked)??;
            info!("the frontend hung up");
            Ok(())
        }
    }
}
