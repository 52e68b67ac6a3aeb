//! The monitor's side of its vmd connections once the VM runs: requests,
//! events, and re-adoption by a restarted vmd.
//!
//! One connection is current at a time. Its reader thread (`vmd-conn`)
//! answers requests; the main thread sends events ([`Shared::send_event`])
//! through the same writer, under one lock, so a request's answer and an
//! event never interleave. The acceptor thread (`vmd-accept`) takes
//! connections on the listening socket; a peer of another uid than ours or
//! root's is refused, and one that sends [`ToMonitor::Hello`] within
//! [`HELLO_TIMEOUT`] becomes the current connection, replacing (and
//! shutting down) the old one.
//!
//! When the current connection closes or breaks (a malformed or oversized
//! frame), the monitor logs it and runs on with no vmd; events meanwhile
//! are logged only.
//!
//! # Invariants
//! - Lock order: `conn` before `vm`; the main thread never holds `vm`
//!   while taking `conn`.
//! - A Stop is answered (Done) before the Exited event it causes, since
//!   the answer is sent under the `conn` lock that Exited needs too.
//! - `vm.stop_requested` is set and tested under the `vm` lock, so a Stop
//!   that comes while no VM exists (between a reboot and the rebuild) is
//!   seen by [`Shared::set_vm`].

use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use ipc::monitor::{FromMonitor, ToMonitor, VmRecord};
use ipc::{error_chain, Channel, IpcError};

use super::pause::{PauseGate, PAUSE_TIMEOUT};
use crate::device_proc::LevelHandle;
use crate::exit::{VmEvent, VmEvents};
use crate::supervisor::Supervisor;

/// How long a new connection has to say Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a send to vmd may wait for room: a vmd that stopped reading
/// loses its connection instead of stalling the monitor.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a held restart may take to have its process stopped (within
/// vmd's wait for an answer).
const HOLD_ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause after a failed accept (say, out of fds) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

struct Conn {
    id: u64,
    writer: Channel,
}

#[derive(Default)]
struct VmSlot {
    events: Option<VmEvents>,
    devices: Vec<LevelHandle>,
    /// The device processes' supervisors (the VM owns them).
    supervisors: Vec<Weak<Supervisor>>,
    stop_requested: bool,
}

/// What the connection threads and the main thread share.
pub struct Shared {
    record: VmRecord,
    gate: Arc<PauseGate>,
    conn: Mutex<Option<Conn>>,
    vm: Mutex<VmSlot>,
    next_id: AtomicU64,
    console: Option<Arc<super::console::ConsoleLink>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// State for the VM `record`, whose vCPUs park at `gate`.
    pub fn new(
        record: VmRecord,
        gate: Arc<PauseGate>,
        console: Option<Arc<super::console::ConsoleLink>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            record,
            gate,
            conn: Mutex::new(None),
            vm: Mutex::new(VmSlot::default()),
            next_id: AtomicU64::new(1),
            console,
        })
    }

    /// Makes the VM whose events are `events` (and devices `devices`) the
    /// one requests act on; false if a Stop came while there was none (then
    /// the VM must not run).
    pub fn set_vm(
        &self,
        events: VmEvents,
        devices: Vec<LevelHandle>,
        supervisors: Vec<Weak<Supervisor>>,
    ) -> bool {
        let mut vm = lock(&self.vm);
        vm.events = Some(events);
        vm.devices = devices;
        vm.supervisors = supervisors;
        !vm.stop_requested
    }

    /// The VM ended (a reboot's rebuild comes next, or the exit).
    pub fn clear_vm(&self) {
        let mut vm = lock(&self.vm);
        vm.events = None;
        vm.devices.clear();
        vm.supervisors.clear();
    }

    /// The running VM's device processes.
    fn device_list(&self) -> Vec<ipc::control::DeviceStatus> {
        lock(&self.vm)
            .supervisors
            .iter()
            .filter_map(Weak::upgrade)
            .map(|s| {
                let report = s.report();
                ipc::control::DeviceStatus {
                    name: s.name().to_string(),
                    pid: report.pid,
                    state: report.state,
                    restarts: report.restarts,
                    requests: report.metrics.requests,
                    bytes: report
                        .metrics
                        .bytes_read
                        .saturating_add(report.metrics.bytes_written),
                    errors: report.metrics.all_errors(),
                }
            })
            .collect()
    }

    /// The supervisor of device `name`, or the message saying there is
    /// none.
    fn supervisor(&self, name: &str) -> Result<Arc<Supervisor>, String> {
        lock(&self.vm)
            .supervisors
            .iter()
            .filter_map(Weak::upgrade)
            .find(|s| s.name() == name)
            .ok_or_else(|| format!("this VM has no device {name}"))
    }

    /// Kills device process `name`; its supervisor restarts it (held, and
    /// answered with the held pid, if `hold`).
    fn restart_device(&self, name: &str, hold: bool) -> FromMonitor {
        let supervisor = match self.supervisor(name) {
            Ok(s) => s,
            Err(none) => return FromMonitor::Failed(none),
        };
        if hold {
            return match supervisor.restart_held(HOLD_ANSWER_TIMEOUT) {
                Ok(pid) => {
                    log::warn!("{name}: restarted held for a debugger, as asked by vmd");
                    FromMonitor::Held { pid }
                }
                Err(e) => FromMonitor::Failed(e),
            };
        }
        if !supervisor.is_restarted() {
            return FromMonitor::Failed(Supervisor::never_restarted(name));
        }
        match supervisor.restart_now() {
            Some(pid) => {
                log::info!("{name}: restart of pid {pid} asked by vmd");
                FromMonitor::Done
            }
            None => FromMonitor::Failed(format!("{name} is being restarted already")),
        }
    }

    /// Sets device `name`'s log level (kept across its restarts).
    fn set_device_level(&self, name: &str, level: log::LevelFilter) -> FromMonitor {
        let supervisor = match self.supervisor(name) {
            Ok(s) => s,
            Err(none) => return FromMonitor::Failed(none),
        };
        match supervisor.set_level(level) {
            Ok(_) => {
                log::info!("{name}: log level set to {level} by vmd");
                FromMonitor::Done
            }
            Err(e) => FromMonitor::Failed(format!("cannot set the log level of {name}: {e}")),
        }
    }

    /// Sends `event` to the current vmd, if one is connected; a failed
    /// send drops that connection.
    pub fn send_event(&self, event: &FromMonitor) {
        let mut conn = lock(&self.conn);
        let Some(current) = conn.as_mut() else {
            log::info!("no vmd connected: {event:?} not reported");
            return;
        };
        if let Err(e) = current.writer.send(event, &[]) {
            log::warn!(
                "cannot report {event:?} to vmd: {}; dropping the connection",
                error_chain(&e)
            );
            *conn = None;
        }
    }

    /// Makes `stream` the current vmd connection (answering Identity first
    /// if it came by `hello`) and starts its reader thread.
    pub fn adopt(self: &Arc<Self>, stream: UnixStream, hello: bool) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let reader = match stream.try_clone() {
            Ok(r) => r,
            Err(e) => {
                log::warn!("vmd connection {id}: cannot clone the socket: {e}; closing it");
                return;
            }
        };
        // Timeouts apply to the socket, so to both clones: only writes
        // get one; the reader waits for requests forever.
        let _ = stream.set_write_timeout(Some(SEND_TIMEOUT));
        let _ = reader.set_read_timeout(None);
        let mut conn = lock(&self.conn);
        if let Some(old) = conn.take() {
            log::info!("vmd connection {id} replaces connection {}", old.id);
            let _ = old.writer.stream().shutdown(std::net::Shutdown::Both);
        }
        let mut writer = Channel::new(stream);
        if hello {
            if let Err(e) = writer.send(&self.identity(), &[]) {
                log::warn!(
                    "vmd connection {id}: cannot answer Hello: {}",
                    error_chain(&e)
                );
                return;
            }
        }
        *conn = Some(Conn { id, writer });
        drop(conn);
        log::info!("vmd connection {id} adopted");
        let shared = self.clone();
        let spawned = std::thread::Builder::new()
            .name("vmd-conn".into())
            .spawn(move || shared.serve(id, Channel::new(reader)));
        if let Err(e) = spawned {
            log::warn!("vmd connection {id}: cannot start its thread: {e}");
            self.forget(id);
        }
    }

    fn identity(&self) -> FromMonitor {
        FromMonitor::Identity {
            record: self.record.clone(),
            pid: std::process::id(),
            paused: self.gate.is_paused(),
        }
    }

    /// Reads and answers requests on connection `id` until it ends.
    fn serve(&self, id: u64, mut reader: Channel) {
        loop {
            match reader.recv::<ToMonitor>() {
                Ok((request, fds)) => {
                    if !fds.is_empty() {
                        log::warn!("vmd connection {id}: {} unexpected fd(s) closed", fds.len());
                    }
                    self.answer(id, request);
                }
                Err(IpcError::Closed) => {
                    log::warn!("vmd connection {id} closed; the VM runs on without vmd");
                    break;
                }
                Err(e) => {
                    log::warn!(
                        "vmd connection {id}: {}; closing it, the VM runs on",
                        error_chain(&e)
                    );
                    break;
                }
            }
        }
        self.forget(id);
    }

    /// Drops connection `id` if it is still the current one.
    fn forget(&self, id: u64) {
        let mut conn = lock(&self.conn);
        if conn.as_ref().is_some_and(|c| c.id == id) {
            if let Some(old) = conn.take() {
                let _ = old.writer.stream().shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Carries out `request` and answers it on connection `id` (if still
    /// current), all under the connection lock.
    fn answer(&self, id: u64, request: ToMonitor) {
        let mut conn = lock(&self.conn);
        let reply = self.carry_out(&request);
        match conn.as_mut() {
            Some(current) if current.id == id => {
                if let Err(e) = current.writer.send(&reply, &[]) {
                    log::warn!("vmd connection {id}: cannot answer: {}", error_chain(&e));
                    *conn = None;
                }
            }
            _ => log::info!("vmd connection {id} was replaced; answer to {request:?} dropped"),
        }
    }

    fn carry_out(&self, request: &ToMonitor) -> FromMonitor {
        match request {
            ToMonitor::Hello => self.identity(),
            ToMonitor::Pause => match self.gate.pause(crate::vcpu::kick_thread, PAUSE_TIMEOUT) {
                Ok(()) => {
                    log::info!("VM paused by vmd");
                    FromMonitor::Done
                }
                Err(e) => {
                    log::warn!("pause failed: {e}");
                    FromMonitor::Failed(e.to_string())
                }
            },
            ToMonitor::Unpause => {
                self.gate.unpause();
                log::info!("VM unpaused by vmd");
                FromMonitor::Done
            }
            ToMonitor::Stop => {
                let mut vm = lock(&self.vm);
                vm.stop_requested = true;
                if let Some(events) = &vm.events {
                    events.send(VmEvent::Stopped);
                }
                log::info!("VM stop requested by vmd");
                FromMonitor::Done
            }
            ToMonitor::SetLogLevel(level) => self.set_log_level(level.filter()),
            ToMonitor::ConsoleAttach | ToMonitor::ConsoleDetach => {
                let attach = matches!(request, ToMonitor::ConsoleAttach);
                match &self.console {
                    None => FromMonitor::Failed("this VM has no console".into()),
                    Some(console) => match console.set_attached(attach) {
                        Ok(()) => {
                            log::info!(
                                "console {} by vmd",
                                if attach { "attached" } else { "detached" }
                            );
                            FromMonitor::Done
                        }
                        Err(e) => FromMonitor::Failed(format!("cannot reach dev-console: {e}")),
                    },
                }
            }
            ToMonitor::Devices => FromMonitor::Devices(self.device_list()),
            ToMonitor::RestartDevice { name, hold } => self.restart_device(name, *hold),
            ToMonitor::DeviceLogLevel { name, level } => {
                self.set_device_level(name, level.filter())
            }
            ToMonitor::Launch(_) | ToMonitor::Disk(_) | ToMonitor::Nic(_) | ToMonitor::Run => {
                FromMonitor::Failed("the VM is already running".into())
            }
        }
    }

    fn set_log_level(&self, level: log::LevelFilter) -> FromMonitor {
        ipc::logger::set_level(level);
        log::info!("log level set to {level} by vmd");
        let mut failed = Vec::new();
        for device in &lock(&self.vm).devices {
            if let Err(e) = device.set_level(level) {
                failed.push(format!("{}: {e}", device.name()));
            }
        }
        if failed.is_empty() {
            FromMonitor::Done
        } else {
            FromMonitor::Failed(format!("cannot set the log level of {}", failed.join(", ")))
        }
    }

    /// Starts the acceptor thread on `listener`.
    pub fn spawn_acceptor(self: &Arc<Self>, listener: UnixListener) -> std::io::Result<()> {
        let shared = self.clone();
        std::thread::Builder::new()
            .name("vmd-accept".into())
            .spawn(move || shared.accept_loop(&listener))?;
        Ok(())
    }

    fn accept_loop(self: &Arc<Self>, listener: &UnixListener) {
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    let shared = self.clone();
                    let spawned = std::thread::Builder::new()
                        .name("vmd-hello".into())
                        .spawn(move || shared.handshake(stream));
                    if let Err(e) = spawned {
                        log::warn!("cannot start a thread for a new vmd connection: {e}");
                    }
                }
                Err(e) => {
                    log::warn!("accept on the monitor socket failed: {e}");
                    std::thread::sleep(ACCEPT_BACKOFF);
                }
            }
        }
    }

    /// A new connection: it must come from root or our uid and say Hello.
    fn handshake(self: &Arc<Self>, stream: UnixStream) {
        let mut chan = Channel::new(stream);
        match chan.peer_credentials() {
            // SAFETY: getuid has no preconditions.
            Ok(peer) if peer.uid == 0 || peer.uid == unsafe { libc::getuid() } => {}
            Ok(peer) => {
                log::warn!("refused a monitor connection from uid {}", peer.uid);
                return;
            }
            Err(e) => {
                log::warn!("cannot check a monitor connection's peer: {e}");
                return;
            }
        }
        let _ = chan.set_read_timeout(Some(HELLO_TIMEOUT));
        match chan.recv::<ToMonitor>() {
            Ok((ToMonitor::Hello, fds)) if fds.is_empty() => self.adopt(chan.into_inner(), true),
            Ok((other, _)) => log::warn!("new vmd connection sent {other:?} before Hello; closed"),
            Err(e) => log::warn!("new vmd connection: {}; closed", error_chain(&e)),
        }
    }
}
