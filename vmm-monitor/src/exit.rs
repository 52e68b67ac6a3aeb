//! How a VM ends, and how devices and vCPUs say so.
//!
//! Devices (ACPI power management, i8042) and vCPU threads never stop the VM
//! themselves: they send a [`VmEvent`] through a [`VmEvents`] handle, and the
//! monitor's main thread, which owns the VM, acts on the first one.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Process exit code for a guest that powered off.
pub const EXIT_POWEROFF: i32 = 0;
/// Process exit code for a monitor that failed on the host side (bad
/// arguments, unreadable kernel, KVM refused something).
pub const EXIT_HOST_ERROR: i32 = 1;
/// Process exit code for a guest that asked to reboot (vmd restarts it).
pub const EXIT_REBOOT: i32 = 3;
/// Process exit code for a guest that crashed: triple fault, KVM internal
/// error, or an exit the monitor cannot handle.
pub const EXIT_GUEST_CRASH: i32 = 4;

/// Process exit code for a VM stopped because one of its device processes
/// died.
pub const EXIT_DEVICE_DIED: i32 = 5;

/// Process exit code for a VM that vmd stopped ([`VmEvent::Stopped`]):
/// distinct from a guest poweroff, so that vmd and scripts can tell who
/// ended it.
pub const EXIT_STOPPED: i32 = 6;

/// Why a vCPU stopped the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuFault {
    /// Index of the vCPU (0 is the boot vCPU).
    pub vcpu: usize,
    /// The exit reason, as KVM named it, with its details.
    pub reason: String,
    /// Guest RIP at the exit, if the registers could be read.
    pub rip: Option<u64>,
}

impl fmt::Display for VcpuFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vcpu {}: {}", self.vcpu, self.reason)?;
        match self.rip {
            Some(rip) => write!(f, " at rip {rip:#x}"),
            None => write!(f, " (rip unavailable)"),
        }
    }
}

/// Something that ends the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest powered off (ACPI S5).
    Poweroff,
    /// The guest asked for a reset (ACPI reset register, i8042, triple fault
    /// is *not* this: see [`VmEvent::Crash`]).
    Reboot,
    /// A vCPU hit something the VM cannot continue from.
    Crash(VcpuFault),
    /// The host side failed while the VM ran (e.g. KVM_RUN returned an
    /// unexpected error).
    HostError(String),
    /// A device process ended while the VM ran.
    DeviceDied {
        /// The device's name (e.g. "disk0").
        device: String,
        /// How it ended ("exited with status 1", "killed by signal 9").
        how: String,
    },
    /// vmd asked the monitor to end the VM at once (`vmctl stop -f`).
    Stopped,
}

impl fmt::Display for VmEvent {
    /// The reason as the monitor logs it and reports it to vmd.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmEvent::Poweroff => f.write_str("guest powered off"),
            VmEvent::Reboot => f.write_str("guest asked to reboot"),
            VmEvent::Crash(fault) => write!(f, "guest crashed: {fault}"),
            VmEvent::HostError(why) => write!(f, "host error: {why}"),
            VmEvent::DeviceDied { device, how } => write!(f, "device process {device} {how}"),
            VmEvent::Stopped => f.write_str("stopped by vmd"),
        }
    }
}

impl VmEvent {
    /// The monitor's process exit code for this event.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmEvent::Poweroff => EXIT_POWEROFF,
            VmEvent::Reboot => EXIT_REBOOT,
            VmEvent::Crash(_) => EXIT_GUEST_CRASH,
            VmEvent::HostError(_) => EXIT_HOST_ERROR,
            VmEvent::DeviceDied { .. } => EXIT_DEVICE_DIED,
            VmEvent::Stopped => EXIT_STOPPED,
        }
    }
}

/// A cloneable handle through which devices and vCPUs report a [`VmEvent`].
///
/// Sending an event also raises the VM's stop flag at once, so that the vCPU
/// whose exit produced the event (say, the port write that powered off)
/// does not enter the guest again before the main thread reacts.
#[derive(Clone, Debug)]
pub struct VmEvents {
    tx: crossbeam_channel::Sender<VmEvent>,
    stopping: Arc<AtomicBool>,
}

impl VmEvents {
    /// A handle and the receiver the monitor's main thread waits on.
    pub fn new() -> (Self, crossbeam_channel::Receiver<VmEvent>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (
            Self {
                tx,
                stopping: Arc::new(AtomicBool::new(false)),
            },
            rx,
        )
    }

    /// Reports `event`. Reporting after the VM has already stopped is harmless.
    pub fn send(&self, event: VmEvent) {
        self.request_stop();
        // The receiver is gone only once the monitor is already tearing the
        // VM down, when a late event has nothing left to change.
        let _ = self.tx.send(event);
    }

    /// Raises the stop flag without an event.
    fn request_stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// A handle on the stop flag alone, for the main thread: it holds no
    /// sender, so the receiver still sees when every sender is gone.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.stopping.clone())
    }

    /// True once the VM is ending: vCPUs must not enter the guest again.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

/// The stop flag of a VM, without the right to send events.
#[derive(Clone, Debug)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    /// Raises the stop flag: vCPUs return instead of entering the guest.
    pub fn request_stop(&self) {
        self.0.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct() {
        let codes = [
            VmEvent::Poweroff.exit_code(),
            VmEvent::Reboot.exit_code(),
            VmEvent::Crash(VcpuFault {
                vcpu: 0,
                reason: "x".into(),
                rip: None,
            })
            .exit_code(),
            VmEvent::HostError("x".into()).exit_code(),
            VmEvent::DeviceDied {
                device: "disk0".into(),
                how: "x".into(),
            }
            .exit_code(),
            VmEvent::Stopped.exit_code(),
        ];
        for (i, a) in codes.iter().enumerate() {
            assert!(codes[i + 1..].iter().all(|b| a != b), "{codes:?}");
        }
    }

    #[test]
    fn sending_an_event_raises_the_stop_flag_for_every_clone() {
        let (events, rx) = VmEvents::new();
        let other = events.clone();
        assert!(!other.is_stopping());
        events.send(VmEvent::Poweroff);
        assert!(other.is_stopping());
        assert_eq!(rx.try_recv(), Ok(VmEvent::Poweroff));
    }

    #[test]
    fn stopped_by_vmd_has_its_own_code_and_reason() {
        assert_eq!(VmEvent::Stopped.exit_code(), EXIT_STOPPED);
        assert_eq!(VmEvent::Stopped.to_string(), "stopped by vmd");
        assert_eq!(
            VmEvent::DeviceDied {
                device: "disk0".into(),
                how: "killed by signal 9".into()
            }
            .to_string(),
            "device process disk0 killed by signal 9"
        );
    }

    #[test]
    fn vcpu_fault_message_names_vcpu_reason_and_rip() {
        let f = VcpuFault {
            vcpu: 3,
            reason: "triple fault (KVM_EXIT_SHUTDOWN)".into(),
            rip: Some(0x1000),
        };
        assert_eq!(
            f.to_string(),
            "vcpu 3: triple fault (KVM_EXIT_SHUTDOWN) at rip 0x1000"
        );
    }
}
