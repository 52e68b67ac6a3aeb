//! vCPU threads: run KVM_RUN and dispatch each exit.
//!
//! Each vCPU runs on its own thread (`vcpu<N>`). Port and MMIO exits go to
//! the buses; everything that ends the VM becomes a [`VmEvent`] for the
//! monitor's main thread. A vCPU thread never stops the process itself.
//!
//! Stopping: whoever sends a [`VmEvent`] raises the stop flag (see
//! [`VmEvents`]), so the vCPU that caused it never re-enters the guest; the
//! main thread then sends [`kick_signal`] to each vCPU thread until it has
//! returned. The signal
//! interrupts KVM_RUN (EINTR); the thread sees the flag and returns. A kick
//! that lands just before KVM_RUN is entered is covered by the repetition.
//!
//! # Invariants
//! - Exactly one thread calls KVM_RUN on a given vCPU fd.
//! - After the stop flag is set, a vCPU thread enters KVM_RUN at most once
//!   more before it returns.
//! - Every KVM_RUN follows a pass through the VM's
//!   [`PauseGate`](crate::control::pause::PauseGate) checkpoint, so a
//!   paused VM has no vCPU in the guest.

use std::sync::Arc;

use kvm_bindings::{
    KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_SIMUL_EX,
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::bus::Bus;
use crate::control::pause::PauseGate;
use crate::exit::{VcpuFault, VmEvent, VmEvents};

/// Signal used to knock a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// Sends the kick signal to `thread` (a vCPU thread that is still seated
/// at its [`PauseGate`], so its pthread_t is valid).
pub fn kick_thread(thread: libc::pthread_t) {
    // SAFETY: the caller guarantees `thread` is a live (unjoined) thread of
    // this process; the signal's handler does nothing.
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}

/// Installs the (empty) handler for [`kick_signal`]; without a handler the
/// signal would kill the process. Call once before starting vCPU threads.
pub fn install_kick_handler() -> std::io::Result<()> {
    extern "C" fn on_kick(_: libc::c_int) {}
    // SAFETY: an all-zero sigaction is a valid starting point; the handler
    // and flags are set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as usize;
    // No SA_RESTART: KVM_RUN must return EINTR.
    action.sa_flags = 0;
    // SAFETY: installs a handler that does nothing; `action` is valid.
    if unsafe { libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What a single exit means for the run loop.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Handled: run the vCPU again.
    Continue,
    /// The VM must end.
    Stop(VmEvent),
}

/// What the loop needs to know of an exit once the borrow of the vCPU's
/// run area has ended.
enum ExitKind {
    Handled,
    Interrupted,
    Shutdown,
    SystemEvent(u32),
    InternalError,
    FailEntry(u64, u32),
    Unhandled(String),
}

/// One vCPU, ready to run on its own thread.
pub struct Vcpu {
    index: usize,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    events: VmEvents,
}

impl Vcpu {
    /// A vCPU whose exits go to `pio` and `mmio`, reporting to `events`.
    pub fn new(index: usize, fd: VcpuFd, buses: (Arc<Bus>, Arc<Bus>), events: VmEvents) -> Self {
        let (pio, mmio) = buses;
        Self {
            index,
            fd,
            pio,
            mmio,
            events,
        }
    }

    /// Runs the vCPU until the VM ends (the events' stop flag is raised),
    /// parking at `gate` while it is paused.
    pub fn run(mut self, gate: &PauseGate) {
        let _seat = gate.enter();
        while !self.events.is_stopping() {
            gate.checkpoint(|| self.events.is_stopping());
            if self.events.is_stopping() {
                return;
            }
            if let Outcome::Stop(event) = self.run_once() {
                // Stop this vCPU at once; the main thread stops the others.
                self.events.send(event);
                return;
            }
        }
    }

    fn run_once(&mut self) -> Outcome {
        let kind = match self.fd.run() {
            Ok(exit) => dispatch(self.index, &self.pio, &self.mmio, exit),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                ExitKind::Interrupted
            }
            Err(e) => {
                return Outcome::Stop(VmEvent::HostError(format!(
                    "vcpu {}: KVM_RUN failed: {e}",
                    self.index
                )))
            }
        };
        let reason = match kind {
            ExitKind::Handled | ExitKind::Interrupted => return Outcome::Continue,
            ExitKind::Shutdown => "triple fault (KVM_EXIT_SHUTDOWN)".to_string(),
            ExitKind::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN) => {
                return Outcome::Stop(VmEvent::Poweroff)
            }
            ExitKind::SystemEvent(KVM_SYSTEM_EVENT_RESET) => return Outcome::Stop(VmEvent::Reboot),
            ExitKind::SystemEvent(KVM_SYSTEM_EVENT_CRASH) => {
                "guest reported a crash (KVM_SYSTEM_EVENT_CRASH)".into()
            }
            ExitKind::SystemEvent(other) => {
                format!("unknown system event {other} (KVM_EXIT_SYSTEM_EVENT)")
            }
            ExitKind::InternalError => self.internal_error_reason(),
            ExitKind::FailEntry(hw, cpu) => {
                format!("VM entry failed, hardware reason {hw:#x} on host cpu {cpu} (KVM_EXIT_FAIL_ENTRY)")
            }
            ExitKind::Unhandled(what) => format!("unhandled exit {what}"),
        };
        let rip = self.fd.get_regs().ok().map(|r| r.rip);
        Outcome::Stop(VmEvent::Crash(VcpuFault {
            vcpu: self.index,
            reason,
            rip,
        }))
    }

    fn internal_error_reason(&mut self) -> String {
        // SAFETY: KVM filled the `internal` member of the exit union for a
        // KVM_EXIT_INTERNAL_ERROR exit, which is the exit we are handling.
        let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
        let what = match internal.suberror {
            KVM_INTERNAL_ERROR_EMULATION => "instruction emulation failed",
            KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
            KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failed",
            KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected exit reason",
            _ => "unknown suberror",
        };
        let n = (internal.ndata as usize).min(internal.data.len());
        format!(
            "KVM internal error: {what} (suberror {}, data {:x?}) (KVM_EXIT_INTERNAL_ERROR)",
            internal.suberror,
            &internal.data[..n]
        )
    }
}

/// Handles port and MMIO exits on the buses; classifies the rest.
fn dispatch(index: usize, pio: &Bus, mmio: &Bus, exit: VcpuExit<'_>) -> ExitKind {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !pio.read(u64::from(port), data) {
                log::debug!("vcpu {}: read of unclaimed port {port:#x}", index);
            }
            ExitKind::Handled
        }
        VcpuExit::IoOut(port, data) => {
            if !pio.write(u64::from(port), data) {
                log::debug!(
                    "vcpu {}: write {data:x?} to unclaimed port {port:#x}",
                    index
                );
            }
            ExitKind::Handled
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                log::debug!("vcpu {}: read of unclaimed MMIO {addr:#x}", index);
            }
            ExitKind::Handled
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio.write(addr, data) {
                log::debug!(
                    "vcpu {}: write {data:x?} to unclaimed MMIO {addr:#x}",
                    index
                );
            }
            ExitKind::Handled
        }
        // With the in-kernel LAPIC, HLT is handled inside KVM; an exit here
        // only means "run again".
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => ExitKind::Interrupted,
        VcpuExit::Shutdown => ExitKind::Shutdown,
        VcpuExit::SystemEvent(kind, _) => ExitKind::SystemEvent(kind),
        VcpuExit::InternalError => ExitKind::InternalError,
        VcpuExit::FailEntry(hw, cpu) => ExitKind::FailEntry(hw, cpu),
        other => ExitKind::Unhandled(format!("{other:?}")),
    }
}
