//! The console of a VM in control mode: a dev-console process per built
//! VM, serving a virtio-console device over vhost-user and holding the pty
//! vmd made, with COM1's bytes forwarded to it over a side channel
//! (`ipc::console`), so that both merge into one console with one ring of
//! recent output.
//!
//! ```text
//! guest hvc0 ──virtio-console (vhost-user)──► dev-console ◄──► pty master ◄─ vmctl console
//! guest COM1 ──ComOutput packets (side channel)─┘   │ ring of recent output
//!           ◄──ComInput packets───────────────────────┘
//! ```
//!
//! # Invariants
//! - A vCPU never waits for the console: COM1's bytes go into a bounded
//!   queue (`devices::com_queue`) that a forwarder thread sends in
//!   packets of up to 4 KiB; what does not fit is dropped and counted.
//! - The monitor keeps the pty (master and slave) for its whole life; each
//!   dev-console gets dups. So the pty, and the terminal a client holds,
//!   survive a reboot (which starts a new dev-console) and a dev-console
//!   that dies, which its supervisor restarts on the same pty and side
//!   channel (told at once if a client is attached). The ring of recent
//!   output is the dead process's and goes with it.
//! - Whether a client is attached is remembered here, and a new
//!   dev-console is told at once, so output reaches an attached client
//!   across reboots.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipc::console::{Packet, Port, MAX_BYTES};

use crate::device_proc::sibling_binary;
use crate::devices::com_queue::ComQueue;
use crate::devices::serial::{ConsoleSink, Serial};
use crate::supervisor::{Recipe, Supervisor};
use crate::vm::{Vm, VmError};

use super::launch::ConsolePty;

/// The virtio device ID of a console (virtio 1.2 §5).
pub const VIRTIO_ID_CONSOLE: u32 = 3;
/// receiveq0 and transmitq0: port 0 only, no multiport.
const CONSOLE_QUEUES: u16 = 2;
/// How long input waits before trying a full COM1 FIFO again: about 6
/// characters at 9600 baud.
const FIFO_RETRY: Duration = Duration::from_millis(5);

/// The console for the monitor's life.
pub struct ConsoleLink {
    pty: ConsolePty,
    attached: AtomicBool,
    /// Where dev-console last said typed input goes (see [`Route`]), kept
    /// for its successor.
    route: Arc<Route>,
    /// The side channel of the current dev-console.
    side: Mutex<Option<Arc<OwnedFd>>>,
}

/// A side channel made before the VM (COM1 needs its sink), waiting for
/// its dev-console.
pub struct PendingConsole {
    ours: Arc<OwnedFd>,
    theirs: OwnedFd,
}

impl ConsoleLink {
    /// The console on `pty`, nobody attached.
    pub fn new(pty: ConsolePty) -> Self {
        Self {
            pty,
            attached: AtomicBool::new(false),
            route: Arc::new(Route::default()),
            side: Mutex::new(None),
        }
    }

    /// A new side channel, and the COM1 sink that feeds it.
    pub fn prepare(&self) -> io::Result<(ConsoleSink, PendingConsole)> {
        let (ours, theirs) = seqpacket_pair()?;
        let ours = Arc::new(ours);
        let sink = ConsoleSink::queued(ComQueue::start(ours.clone())?)?;
        Ok((sink, PendingConsole { ours, theirs }))
    }

    /// Starts dev-console for `vm` on `pending`'s side channel, adds the
    /// virtio-console device, and feeds console input to COM1.
    pub fn attach_to(
        self: &Arc<Self>,
        vm: &mut Vm,
        pending: PendingConsole,
    ) -> Result<(), VmError> {
        let name = "console";
        let os = |what| move |source| VmError::Os { what, source };
        let args: Vec<String> = [
            "--socket-fd",
            "3",
            "--pty-fd",
            "4",
            "--pty-slave-fd",
            "5",
            "--com-fd",
            "6",
            "--ring-fd",
            "7",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // The supervisor keeps its own copies: the pty and the side
        // channel outlive a dev-console that dies, and its successor gets
        // them again (COM1 packets sent meanwhile wait in the socket).
        let keep = |fd: std::os::fd::BorrowedFd<'_>| {
            fd.try_clone_to_owned()
                .map_err(os("keep a copy of the console's fds"))
        };
        // The ring of recent output too: a successor replays what its
        // predecessors wrote, and an attached client goes on from where
        // it was (dev-console lays it out; the monitor never maps it).
        let ring = ipc::shm::create_sealed(
            "console-ring",
            ipc::console::RING_HEADER + ipc::console::RING_SIZE,
        )
        .map_err(|e| VmError::Os {
            what: "make the console's ring",
            source: std::io::Error::other(e.to_string()),
        })?;
        let resources = vec![
            keep(self.pty.master.as_fd())?,
            keep(self.pty.slave.as_fd())?,
            pending.theirs,
            ring,
        ];
        let link = Arc::downgrade(self);
        let recipe = Recipe {
            name: name.to_string(),
            program: sibling_binary("dev-console")?,
            args,
            resources,
            after_restart: Some(Box::new(move || {
                if let Some(link) = link.upgrade() {
                    link.tell_restarted();
                }
            })),
        };
        let (supervisor, device) = Supervisor::start(
            recipe,
            vm.device_sandbox(),
            vm.events(),
            vm.restart_policy(),
            VIRTIO_ID_CONSOLE,
            CONSOLE_QUEUES,
        )?;
        log::info!(
            "console: served by dev-console pid {}",
            supervisor.pid().unwrap_or_default()
        );
        let slot = vm.add_supervised_device(supervisor, device)?;
        log::info!("console: virtio-console at PCI 00:{slot:02x}.0");
        let com1 = vm.com1();
        let reader = pending.ours.clone();
        let route = self.route.clone();
        std::thread::Builder::new()
            .name("console-in".into())
            .spawn(move || feed_com1(&reader, &com1, &route))
            .map_err(os("start the console input thread"))?;
        *self.side.lock().unwrap_or_else(|p| p.into_inner()) = Some(pending.ours.clone());
        if self.attached.load(Ordering::Acquire) {
            send(&pending.ours, &Packet::Attach)
                .map_err(os("tell the new dev-console a client is attached"))?;
        }
        Ok(())
    }

    /// Tells a restarted dev-console where typed input went and whether a
    /// client is attached.
    fn tell_restarted(&self) {
        let side = self.side.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(side) = side else { return };
        let mut packets = Vec::new();
        packets.extend(self.route.get().map(Packet::InputTo));
        if self.attached.load(Ordering::Acquire) {
            packets.push(Packet::Resume);
        }
        for packet in packets {
            if let Err(e) = send(&side, &packet) {
                log::warn!("console: cannot tell the restarted dev-console {packet:?}: {e}");
            }
        }
    }

    /// A client attached (`true`) or left: tells the current dev-console.
    pub fn set_attached(&self, attached: bool) -> io::Result<()> {
        self.attached.store(attached, Ordering::Release);
        let side = self.side.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let packet = if attached {
            Packet::Attach
        } else {
            Packet::Detach
        };
        match side {
            Some(side) => send(&side, &packet),
            // Between a reset and the rebuild: the new one is told.
            None => Ok(()),
        }
    }

    /// The VM is gone (reset or end): its dev-console with it.
    pub fn clear(&self) {
        *self.side.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// A SOCK_SEQPACKET socketpair, close-on-exec.
fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array it is given.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends one packet, waiting for room (control packets are rare and small).
fn send(side: &OwnedFd, packet: &Packet) -> io::Result<()> {
    ipc::console::send(side.as_fd(), packet)
}

/// The input thread of one dev-console: ComInput packets into COM1's
/// receive FIFO, waiting while it is full, until the side channel closes.
/// Where typed input goes, as dev-console last said: 0 unknown, 1 the
/// virtio port, 2 COM1.
#[derive(Default)]
struct Route(std::sync::atomic::AtomicU8);

impl Route {
    fn set(&self, port: Port) {
        let value = match port {
            Port::Virtio => 1,
            Port::Com1 => 2,
        };
        self.0.store(value, Ordering::Release);
    }

    fn get(&self) -> Option<Port> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(Port::Virtio),
            2 => Some(Port::Com1),
            _ => None,
        }
    }
}

fn feed_com1(side: &OwnedFd, com1: &Mutex<Serial>, route: &Route) {
    let mut buf = vec![0u8; MAX_BYTES + 1];
    loop {
        // SAFETY: recv writes at most `buf.len()` bytes into a live buffer.
        let n = unsafe { libc::recv(side.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = match n {
            0 => return,
            n if n > 0 => n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::debug!("console input: {e}; input stops");
                return;
            }
        };
        let input = match Packet::decode(&buf[..n]) {
            Ok(Packet::ComInput(bytes)) => bytes,
            Ok(Packet::InputTo(port)) => {
                log::debug!("console: typed input goes to {port:?}");
                route.set(port);
                continue;
            }
            Ok(other) => {
                log::warn!("console: dev-console sent {other:?}, which only the monitor sends");
                continue;
            }
            Err(e) => {
                log::warn!("console: {e}");
                continue;
            }
        };
        let mut rest = &input[..];
        while !rest.is_empty() {
            let taken = com1
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .enqueue_input(rest);
            rest = &rest[taken..];
            if taken == 0 {
                std::thread::sleep(FIFO_RETRY);
            }
        }
    }
}
