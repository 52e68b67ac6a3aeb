//! Control mode (`vmm-monitor --control-fd N`): the monitor as vmd runs
//! it, speaking the protocol of [`ipc::monitor`].
//!
//! 1. [`launch`]: Launch, Disk..., Run on the first connection (fd N) →
//!    a [`launch::LaunchPlan`] of open files; nothing opened by path.
//! 2. [`run`] builds the VM from it ([`Machine::build`]) and answers
//!    Started, or Failed and exits [`EXIT_HOST_ERROR`].
//! 3. [`server`]: that connection, and any later one that says Hello on
//!    the listening socket, gets requests answered (pause, unpause, stop,
//!    log level, identity) while the main thread runs the VM.
//! 4. On a guest reset the main thread rebuilds the VM in place from the
//!    same fds (kernel and initrd rewound, dev-block restarted on dups of
//!    the same disk fds, the same console) and reports Rebooted; on any
//!    other end it reports Exited and exits with that code.
//!
//! [`pause`]: the vCPU gate. It lives as long as the monitor, so a paused
//! VM that is rebooted (the reset came just before the pause) stays paused
//! until vmd unpauses it. [`console`]: the pty's output and input.
//!
//! The monitor outlives vmd: a closed vmd connection is logged and the VM
//! runs on; SIGHUP and SIGINT are ignored (vmd starts monitors in their
//! own session, but a terminal vmd ran on must not take its VMs along).

pub mod console;
pub mod launch;
pub mod pause;
pub mod server;

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use ipc::monitor::FromMonitor;
use ipc::Channel;
use kvm_ioctls::Kvm;

use crate::config::VmConfig;
use crate::devices::serial::ConsoleSink;
use crate::exit::{VmEvent, EXIT_HOST_ERROR};
use crate::vm::{BootImages, Vm, VmError};
use console::ConsoleLink;
use pause::PauseGate;
use server::Shared;

/// Why control mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The control fd is not a unix stream socket.
    #[error("--control-fd {fd}: not a connected unix stream socket")]
    NotASocket {
        /// The fd given.
        fd: RawFd,
        /// The check that failed.
        #[source]
        source: std::io::Error,
    },
}

/// What the VM is rebuilt from on every (re)boot.
struct Machine {
    kvm: Kvm,
    config: VmConfig,
    images: BootImages,
    console: Option<Arc<ConsoleLink>>,
    gate: Arc<PauseGate>,
    nics: Vec<crate::nics::NicFiles>,
}

impl Machine {
    /// Builds the VM (not running yet) and makes it the one `shared`
    /// acts on. `Ok(None)`: vmd asked to stop before it could run.
    fn build(&self, shared: &Shared) -> Result<Option<Vm>, VmError> {
        let images = self.images.try_clone().map_err(|source| VmError::Os {
            what: "duplicate the kernel and initrd fds",
            source,
        })?;
        let os = |source| VmError::Os {
            what: "set up the console",
            source,
        };
        let (sink, pending) = match &self.console {
            Some(console) => {
                let (sink, pending) = console.prepare().map_err(os)?;
                (sink, Some(pending))
            }
            None => (ConsoleSink::stdout().map_err(os)?, None),
        };
        let mut vm = Vm::new(&self.kvm, &self.config, images, sink)?;
        vm.set_pause_gate(self.gate.clone());
        vm.attach_disks(&self.config)?;
        for (index, nic) in self.nics.iter().enumerate() {
            crate::nics::attach(&mut vm, index, nic)?;
        }
        if let (Some(console), Some(pending)) = (&self.console, pending) {
            console.attach_to(&mut vm, pending)?;
        }
        let devices = vm.device_log_handles();
        // New device processes start at their default level: give them
        // the monitor's (they serve vhost-user, so their logger is set up).
        for device in &devices {
            if let Err(e) = device.set_level(log::max_level()) {
                log::warn!("{}: cannot set its log level: {e}", device.name());
            }
        }
        let supervisors = vm.supervisor_handles();
        Ok(shared
            .set_vm(vm.events(), devices, supervisors)
            .then_some(vm))
    }
}

/// Runs control mode on the vmd connection at `fd`; returns the exit code.
pub fn run(fd: RawFd, report_fd: Option<RawFd>) -> i32 {
    ignore_terminal_signals();
    if let Some(report) = report_fd {
        // Ours alone: neither the launcher nor a device inherits it.
        // SAFETY: F_SETFD on a passed fd; no memory is touched.
        unsafe { libc::fcntl(report, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let stream = match take_socket(fd) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{}", ipc::error_chain(&e));
            return EXIT_HOST_ERROR;
        }
    };
    let mut chan = Channel::new(stream);
    let plan = match launch::receive(&mut chan) {
        Ok(plan) => plan,
        Err(e) => return fail(&mut chan, &ipc::error_chain(&e)),
    };
    ipc::logger::set_level(plan.log_level.filter());
    log::info!(
        "VM {} (id {}) launched by vmd",
        plan.record.name,
        plan.record.id
    );
    if !plan.config.sandbox.off {
        if let Err(e) = confine(report_fd) {
            return fail(&mut chan, &e);
        }
    }
    let console = plan.console.map(|pty| Arc::new(ConsoleLink::new(pty)));
    let gate = Arc::new(PauseGate::new());
    let shared = Shared::new(plan.record, gate.clone(), console.clone());
    let machine = Machine {
        kvm: plan.kvm,
        config: plan.config,
        images: plan.images,
        console,
        gate,
        nics: plan.nics,
    };
    let first = match machine.build(&shared) {
        Ok(vm) => vm,
        Err(e) => return fail(&mut chan, &ipc::error_chain(&e)),
    };
    if let Err(e) = shared.spawn_acceptor(plan.listener) {
        return fail(&mut chan, &format!("cannot start the acceptor thread: {e}"));
    }
    let started = FromMonitor::Started {
        pid: std::process::id(),
    };
    match chan.send(&started, &[]) {
        Ok(()) => shared.adopt(chan.into_inner(), false),
        Err(e) => log::warn!(
            "cannot report Started to vmd: {}; running without vmd",
            ipc::error_chain(&e)
        ),
    }
    run_until_exit(&machine, &shared, first)
}

/// Runs the VM, rebuilding it on each guest reset, until it ends;
/// reports the end and returns the exit code.
fn run_until_exit(machine: &Machine, shared: &Shared, first: Option<Vm>) -> i32 {
    let mut next = first;
    let event = loop {
        let Some(vm) = next.take() else {
            break VmEvent::Stopped;
        };
        let event = vm
            .run()
            .unwrap_or_else(|e| VmEvent::HostError(ipc::error_chain(&e)));
        shared.clear_vm();
        if let Some(console) = &machine.console {
            console.clear();
        }
        if event != VmEvent::Reboot {
            break event;
        }
        log::info!("guest reset: rebuilding the VM");
        match machine.build(shared) {
            Ok(vm) => {
                if vm.is_some() {
                    shared.send_event(&FromMonitor::Rebooted);
                }
                next = vm;
            }
            Err(e) => {
                break VmEvent::HostError(format!(
                    "cannot rebuild the VM after a guest reset: {}",
                    ipc::error_chain(&e)
                ))
            }
        }
    };
    let code = event.exit_code();
    match &event {
        VmEvent::Poweroff | VmEvent::Stopped => log::info!("VM ended: {event}"),
        _ => log::error!("VM ended: {event}"),
    }
    shared.send_event(&FromMonitor::Exited {
        reason: event.to_string(),
        code,
    });
    code
}

/// Answers Failed (if vmd still listens) and returns the exit code.
fn fail(chan: &mut Channel, message: &str) -> i32 {
    log::error!("{message}");
    if let Err(e) = chan.send(&FromMonitor::Failed(message.to_string()), &[]) {
        log::warn!("cannot report the failure to vmd: {}", ipc::error_chain(&e));
    }
    EXIT_HOST_ERROR
}

/// Takes ownership of `fd`, which must be a unix stream socket.
pub(crate) fn take_socket(fd: RawFd) -> Result<UnixStream, ControlError> {
    let not_socket = |source| ControlError::NotASocket { fd, source };
    let kind = ipc::fds::socket_type(fd).map_err(not_socket)?;
    if kind != libc::SOCK_STREAM {
        return Err(not_socket(std::io::Error::from_raw_os_error(
            libc::EPROTOTYPE,
        )));
    }
    // SAFETY: the fd is an open socket passed to us for this purpose;
    // nothing else in the process owns it. Close-on-exec keeps it out of
    // device processes.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: F_SETFD on an fd we own.
    unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::F_SETFD,
            libc::FD_CLOEXEC,
        )
    };
    Ok(UnixStream::from(fd))
}

/// Test only: a call the monitor tries once confined (see [`confine`]).
pub const SELFTEST_ENV: &str = "VMD_MONITOR_SANDBOX_SELFTEST";

/// Starts the device launcher, then confines the monitor for good
/// (`sandbox_profiles::enter_monitor`): from here on it opens no path,
/// starts no process and reaches no network, on every thread.
fn confine(report_fd: Option<RawFd>) -> Result<(), String> {
    let launcher = crate::launcher::Launcher::start()
        .map_err(|e| format!("cannot start the device launcher: {e}"))?;
    log::info!("device launcher running as pid {}", launcher.pid());
    crate::device_proc::use_launcher(launcher);
    // Where the device binaries are, found while paths may still be used.
    for binary in crate::launcher::DEVICE_BINARIES {
        let _ = crate::device_proc::sibling_binary(binary);
    }
    sandbox_profiles::enter_monitor(report_fd).map_err(|e| ipc::error_chain(&e))?;
    log::info!("sandboxed: profile monitor");
    // Test only: try a call the profile refuses (as a device's
    // --sandbox-selftest), so a test can watch vmd report it.
    if let Some(call) = std::env::var_os(SELFTEST_ENV) {
        let call = call.to_string_lossy();
        if let Err(e) = sandbox_profiles::selftest::attempt(&call) {
            log::error!("sandbox self-test: {call} refused: {e}");
        }
    }
    Ok(())
}

/// SIGHUP and SIGINT must not end a monitor (and its VM) with vmd's
/// terminal; device processes inherit the disposition, which suits them
/// too (they end when their socket closes).
fn ignore_terminal_signals() {
    for signal in [libc::SIGHUP, libc::SIGINT] {
        // SAFETY: setting a signal's disposition to SIG_IGN has no
        // memory-safety preconditions.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
}
