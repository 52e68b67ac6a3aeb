//! Building a VM from a [`VmConfig`] and running it to its end.
//!
//! Order matters and follows what each step needs:
//! 1. KVM VM with TSS/identity-map addresses, in-kernel irqchip, PIT.
//! 2. Guest RAM (memfd) registered as KVM memory slots.
//! 3. ACPI tables, then the kernel (its boot info points at the RSDP).
//! 4. Platform devices on the port-I/O bus, with irqfds for their IRQs;
//!    the PCI root behind the config ports, ready for virtio-pci functions
//!    ([`Vm::add_virtio_device`], BARs on the MMIO bus).
//! 5. vCPUs: CPUID, common state, and the boot protocol's state on vCPU 0;
//!    the others wait in KVM for the guest's INIT/SIPI.
//! 6. One thread per vCPU; the main thread waits for the first [`VmEvent`],
//!    stops every vCPU, and returns the event.

use std::fs::File;
use std::io::Seek;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use sandbox_profiles::Profile;

use crate::supervisor::RestartPolicy;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{Bus, BusError, SharedDevice};
use crate::config::VmConfig;
use crate::control::pause::PauseGate;
use crate::device_proc::LevelHandle;
use crate::devices::acpi_pm::{AcpiPm, PM_BASE, PM_LEN, SCI_IRQ};
use crate::devices::i8042::{I8042, I8042_DATA_PORT, I8042_LEN};
use crate::devices::pci_host::{PciConfigIo, PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN};
use crate::devices::rtc::{Rtc, RTC_LEN, RTC_PORT};
use crate::devices::serial::{ConsoleSink, IrqLine, Serial, COM1_IRQ, COM1_PORT, COM1_PORT_LEN};
use crate::exit::{StopHandle, VmEvent, VmEvents};
use crate::irq::{IrqError, IrqRouter};
use crate::loader::{BootProtocol, LoadParams};
use crate::memory::{GuestRam, MemoryError};
use crate::pci::{PciDevices, PciSetupError};
use crate::vcpu::Vcpu;
use crate::virtio::VirtioDevice;
use crate::{acpi, boot, cpuid, disks, layout, loader};

/// How often a vCPU thread that has not stopped yet is kicked again.
const KICK_INTERVAL: Duration = Duration::from_millis(1);

/// Why a VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// KVM lacks something the monitor needs.
    #[error("KVM lacks {0}")]
    MissingCapability(&'static str),
    /// More vCPUs were asked for than KVM allows.
    #[error("{asked} vCPUs asked for, KVM allows at most {max}")]
    TooManyVcpus {
        /// vCPUs configured.
        asked: usize,
        /// KVM's limit.
        max: usize,
    },
    /// A KVM ioctl on the VM failed.
    #[error("KVM refused to {what}")]
    Kvm {
        /// What was being set up.
        what: &'static str,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest RAM could not be set up.
    #[error("guest RAM")]
    Memory(#[from] MemoryError),
    /// The ACPI tables could not be written.
    #[error("ACPI tables")]
    Acpi(#[from] acpi::AcpiError),
    /// A kernel or initrd file could not be opened.
    #[error("cannot open {what} {path}")]
    OpenImage {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel could not be loaded.
    #[error("cannot load kernel {path}")]
    Load {
        /// The kernel path.
        path: PathBuf,
        /// What was wrong.
        #[source]
        source: loader::LoaderError,
    },
    /// A vCPU's state could not be set.
    #[error("cannot set up vcpu {index}")]
    Boot {
        /// The vCPU.
        index: usize,
        /// The failure.
        #[source]
        source: boot::BootError,
    },
    /// A vCPU's CPUID could not be built.
    #[error("cannot build the CPUID of vcpu {index}")]
    Cpuid {
        /// The vCPU.
        index: usize,
        /// The failure.
        #[source]
        source: cpuid::CpuidError,
    },
    /// A disk could not be attached.
    #[error(transparent)]
    Disk(#[from] disks::DiskError),
    /// A device process could not be started.
    #[error(transparent)]
    DeviceProcess(#[from] crate::device_proc::DeviceProcessError),
    /// A supervised device process could not be started or connected.
    #[error(transparent)]
    Supervisor(#[from] crate::supervisor::SupervisorError),
    /// A vhost-user device could not be connected.
    #[error(transparent)]
    VhostUser(#[from] crate::vhost_user::Error),
    /// A device did not fit on its bus.
    #[error("cannot place a device")]
    Bus(#[from] BusError),
    /// A virtio-pci device could not be added.
    #[error("cannot add a PCI device")]
    Pci(#[from] PciSetupError),
    /// An eventfd, signal handler or thread could not be created.
    #[error("cannot {what}")]
    Os {
        /// What failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

fn os_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Os { what, source }
}

/// A built VM whose vCPUs have not started yet.
pub struct Vm {
    // Field order is drop order: vCPU fds and the VM fd go before guest RAM,
    // which KVM maps (see GuestRam::register).
    vcpus: Vec<Vcpu>,
    pci: PciDevices,
    // Device processes, each under a supervisor that restarts it while the
    // VM runs; they die with the VM (their frontends are in `pci`).
    supervisors: Vec<Arc<crate::supervisor::Supervisor>>,
    _vm: Arc<VmFd>,
    _ram: GuestRam,
    events: crossbeam_channel::Receiver<VmEvent>,
    reporter: VmEvents,
    stopper: StopHandle,
    gate: Arc<PauseGate>,
    com1: Arc<Mutex<Serial>>,
    sandbox: crate::config::DeviceSandbox,
    restart_policy: RestartPolicy,
}

impl Vm {
    /// Builds the VM described by `config` on `kvm`, with COM1 writing to `console`.
    pub fn new(
        kvm: &Kvm,
        config: &VmConfig,
        images: BootImages,
        console: ConsoleSink,
    ) -> Result<Self, VmError> {
        check_kvm(kvm, config.cpus)?;
        let vm = Arc::new(kvm.create_vm().map_err(kvm_err("create a VM"))?);
        vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
            .map_err(kvm_err("set the TSS address"))?;
        vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("set the identity map address"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("create the in-kernel irqchip"))?;
        let router = IrqRouter::new(vm.clone());
        router.install().map_err(|e| match e {
            IrqError::Install(source) => VmError::Kvm {
                what: "set the GSI routing",
                source,
            },
            IrqError::OutOfGsis => VmError::MissingCapability("GSI routes"),
        })?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit)
            .map_err(kvm_err("create the in-kernel PIT"))?;

        let ram = GuestRam::new(config.memory)?;
        ram.register(&vm)?;
        let rsdp = acpi::create_acpi_tables(ram.memory(), config.cpus)?;
        let entry = images.load(&ram, config, rsdp)?;

        let (events_tx, events) = VmEvents::new();
        let (pio, pci_config, com1) = platform_devices(&vm, config, console, &events_tx)?;
        let pio = Arc::new(pio);
        let mmio = Arc::new(Bus::new());
        let pci = PciDevices::new(
            pci_config,
            &mmio,
            vm.clone(),
            Arc::new(Mutex::new(router)),
            ram.memory().clone(),
        );

        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("report its supported CPUID"))?;
        let mut vcpus = Vec::with_capacity(config.cpus);
        for index in 0..config.cpus {
            let fd = vm
                .create_vcpu(index as u64)
                .map_err(kvm_err("create a vCPU"))?;
            let cpuid = cpuid::vcpu_cpuid(&supported, index, config.cpus)
                .map_err(|source| VmError::Cpuid { index, source })?;
            fd.set_cpuid2(&cpuid)
                .map_err(kvm_err("set a vCPU's CPUID"))?;
            let boot_err = |source| VmError::Boot { index, source };
            boot::setup_common(&fd, index).map_err(boot_err)?;
            if index == 0 {
                boot::setup_boot_vcpu(&fd, ram.memory(), &entry).map_err(boot_err)?;
            }
            vcpus.push(Vcpu::new(
                index,
                fd,
                (pio.clone(), mmio.clone()),
                events_tx.clone(),
            ));
        }
        log::info!(
            "VM built: {} vCPU(s), {} MiB RAM, {} kernel entry {:#x}",
            config.cpus,
            config.memory >> 20,
            match entry.protocol {
                BootProtocol::Pvh => "PVH",
                BootProtocol::Linux64 => "Linux 64-bit",
            },
            entry.entry.0
        );
        Ok(Self {
            vcpus,
            pci,
            _vm: vm,
            _ram: ram,
            events,
            stopper: events_tx.stop_handle(),
            reporter: events_tx,
            supervisors: Vec::new(),
            gate: Arc::new(PauseGate::new()),
            com1,
            sandbox: config.sandbox.clone(),
            restart_policy: config.restart_policy,
        })
    }

    /// Makes the vCPUs park at `gate` (kept by the control layer across
    /// reboots) instead of the VM's own, never-paused gate.
    pub fn set_pause_gate(&mut self, gate: Arc<PauseGate>) {
        self.gate = gate;
    }

    /// A handle to report events to this VM (e.g. [`VmEvent::Stopped`]).
    pub fn events(&self) -> VmEvents {
        self.reporter.clone()
    }

    /// How this VM's device processes are sandboxed.
    pub fn device_sandbox(&self) -> &crate::config::DeviceSandbox {
        &self.sandbox
    }

    /// When this VM's dead device processes are restarted.
    pub fn restart_policy(&self) -> RestartPolicy {
        self.restart_policy
    }

    /// COM1, for feeding it console input.
    pub fn com1(&self) -> Arc<Mutex<Serial>> {
        self.com1.clone()
    }

    /// Adds `device`, served by `supervisor`'s process, as a virtio-pci
    /// function (see [`add_virtio_device`](Self::add_virtio_device)); the
    /// process is restarted while the VM runs and dies with it. Returns
    /// the slot.
    pub fn add_supervised_device(
        &mut self,
        supervisor: Arc<crate::supervisor::Supervisor>,
        device: crate::vhost_user::SharedDevice,
    ) -> Result<u8, VmError> {
        self.supervisors.push(supervisor);
        self.add_virtio_device(Box::new(device))
    }

    /// The supervisors of this VM's device processes, without keeping them
    /// alive.
    pub fn supervisor_handles(&self) -> Vec<std::sync::Weak<crate::supervisor::Supervisor>> {
        self.supervisors.iter().map(Arc::downgrade).collect()
    }

    /// Handles to set the log level of each device process of this VM.
    pub fn device_log_handles(&self) -> Vec<LevelHandle> {
        self.supervisors
            .iter()
            .map(LevelHandle::supervised)
            .collect()
    }

    /// Adds `device` as a virtio-pci function at the next free slot of bus
    /// 0, with its BAR in the 32-bit MMIO window; returns the slot.
    pub fn add_virtio_device(&mut self, device: Box<dyn VirtioDevice>) -> Result<u8, VmError> {
        Ok(self.pci.add_virtio_device(device)?)
    }

    /// Attaches the disks of `config`, each as a virtio-blk PCI function.
    pub fn attach_disks(&mut self, config: &VmConfig) -> Result<(), VmError> {
        let queues = u16::try_from(config.cpus).unwrap_or(u16::MAX);
        for (index, disk) in config.disks.iter().enumerate() {
            let attached = disks::attach(
                index,
                disk,
                queues,
                &self.reporter,
                &self.sandbox,
                self.restart_policy,
            )?;
            self.supervisors.extend(attached.supervisor);
            let slot = self.add_virtio_device(attached.device)?;
            log::info!("disk{index}: virtio-blk at PCI 00:{slot:02x}.0");
        }
        Ok(())
    }

    /// Runs the vCPUs until the first event that ends the VM, stops them all,
    /// and returns that event.
    pub fn run(mut self) -> Result<VmEvent, VmError> {
        crate::vcpu::install_kick_handler().map_err(os_err("install the vCPU kick handler"))?;
        let mut threads = Vec::with_capacity(self.vcpus.len());
        let mut spawn_error = None;
        let sandboxed = !self.sandbox.off;
        for (index, vcpu) in self.vcpus.drain(..).enumerate() {
            let reporter = self.reporter.clone();
            let gate = self.gate.clone();
            match std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    // The guest reaches this thread first: the narrowest
                    // profile of the monitor, before the first KVM_RUN.
                    if sandboxed {
                        if let Err(e) = sandbox_profiles::enter_thread(Profile::MonitorVcpu) {
                            reporter.send(VmEvent::HostError(format!(
                                "vcpu {index}: {}",
                                ipc::error_chain(&e)
                            )));
                            return;
                        }
                    }
                    let run = std::panic::AssertUnwindSafe(|| vcpu.run(&gate));
                    if std::panic::catch_unwind(run).is_err() {
                        reporter.send(VmEvent::HostError(format!("vcpu {index} panicked")));
                    }
                }) {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    spawn_error = Some(e);
                    break;
                }
            }
        }
        let event = match spawn_error {
            Some(e) => Err(VmError::Os {
                what: "start a vCPU thread",
                source: e,
            }),
            // The Vm holds a sender itself, so recv cannot fail; a vCPU
            // thread that panics reports it (above).
            None => Ok(self
                .events
                .recv()
                .unwrap_or_else(|_| VmEvent::HostError("the VM's event channel closed".into()))),
        };
        // A device held for a debugger, or being given its state, holds
        // its device's lock, which a vCPU may be waiting for: end it first.
        for supervisor in &self.supervisors {
            supervisor.vm_ending();
        }
        stop_vcpus(&self.stopper, &self.gate, threads);
        event
    }
}

/// Opens /dev/kvm, builds the VM of `config` and runs it to its end.
pub fn run(config: &VmConfig, console: ConsoleSink) -> Result<VmEvent, VmError> {
    let images = BootImages::open(config)?;
    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    let mut vm = Vm::new(&kvm, config, images, console)?;
    vm.attach_disks(config)?;
    vm.run()
}

fn check_kvm(kvm: &Kvm, cpus: usize) -> Result<(), VmError> {
    for (cap, name) in [
        (Cap::Irqchip, "an in-kernel irqchip (KVM_CAP_IRQCHIP)"),
        (Cap::Pit2, "an in-kernel PIT (KVM_CAP_PIT2)"),
        (Cap::Irqfd, "irqfds (KVM_CAP_IRQFD)"),
        (Cap::Ioeventfd, "ioeventfds (KVM_CAP_IOEVENTFD)"),
        (Cap::UserMemory, "user memory slots (KVM_CAP_USER_MEMORY)"),
        (Cap::ExtCpuid, "KVM_GET_SUPPORTED_CPUID (KVM_CAP_EXT_CPUID)"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCapability(name));
        }
    }
    let max = kvm.get_max_vcpus();
    if cpus > max {
        return Err(VmError::TooManyVcpus { asked: cpus, max });
    }
    Ok(())
}

/// The kernel and initrd of a VM, opened before anything else is built so
/// that a bad path fails at once, or passed by vmd as fds.
pub struct BootImages {
    kernel: File,
    initrd: Option<File>,
}

impl BootImages {
    /// Opens the kernel and initrd that `config` names.
    pub fn open(config: &VmConfig) -> Result<Self, VmError> {
        let open = |what, path: &Path| {
            File::open(path).map_err(|source| VmError::OpenImage {
                what,
                path: path.to_owned(),
                source,
            })
        };
        Ok(Self {
            kernel: open("kernel", &config.kernel)?,
            initrd: config
                .initrd
                .as_deref()
                .map(|p| open("initrd", p))
                .transpose()?,
        })
    }

    /// Images read from files already open (vmd's fds).
    pub fn from_files(kernel: File, initrd: Option<File>) -> Self {
        Self { kernel, initrd }
    }

    /// The same images for another load (a reboot): dups of the files,
    /// sharing their offsets, which [`BootImages::load`] rewinds.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            kernel: self.kernel.try_clone()?,
            initrd: self.initrd.as_ref().map(File::try_clone).transpose()?,
        })
    }

    fn load(
        mut self,
        ram: &GuestRam,
        config: &VmConfig,
        rsdp: vm_memory::GuestAddress,
    ) -> Result<loader::KernelEntry, VmError> {
        let rewind = |file: &mut File, what, path: &Path| {
            file.rewind().map_err(|source| VmError::OpenImage {
                what,
                path: path.to_owned(),
                source,
            })
        };
        rewind(&mut self.kernel, "kernel", &config.kernel)?;
        if let Some(initrd) = self.initrd.as_mut() {
            let path = config.initrd.as_deref().unwrap_or(Path::new("(initrd fd)"));
            rewind(initrd, "initrd", path)?;
        }
        let params = LoadParams {
            kernel: &mut self.kernel,
            initrd: self.initrd.as_mut(),
            cmdline: &config.cmdline,
            ram_size: config.memory,
            rsdp: Some(rsdp),
        };
        loader::load_kernel(ram.memory(), params).map_err(|source| VmError::Load {
            path: config.kernel.clone(),
            source,
        })
    }
}

/// An eventfd registered as the irqfd of `gsi`.
fn irq_eventfd(vm: &VmFd, gsi: u32) -> Result<EventFd, VmError> {
    let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(os_err("create an interrupt eventfd"))?;
    vm.register_irqfd(&fd, gsi)
        .map_err(kvm_err("register an irqfd"))?;
    Ok(fd)
}

/// The port-I/O bus, the PCI config ports' device (to add PCI functions to
/// its root bus) and COM1 (to feed it console input).
type PlatformDevices = (Bus, Arc<Mutex<PciConfigIo>>, Arc<Mutex<Serial>>);

/// The port-I/O bus with COM1, i8042, RTC, ACPI PM and PCI config ports,
/// and the devices the VM keeps handles on.
fn platform_devices(
    vm: &VmFd,
    config: &VmConfig,
    console: ConsoleSink,
    events: &VmEvents,
) -> Result<PlatformDevices, VmError> {
    let pio = Bus::new();
    let com1 = Arc::new(Mutex::new(Serial::new(
        IrqLine(irq_eventfd(vm, COM1_IRQ)?),
        console,
    )));
    let i8042 = I8042::new(events.clone());
    let rtc = Rtc::new(config.memory);
    let pm = AcpiPm::new(irq_eventfd(vm, u32::from(SCI_IRQ))?, events.clone());
    let pci = Arc::new(Mutex::new(PciConfigIo::new(events.clone())));
    let devices: [(SharedDevice, u64, u64); 5] = [
        (com1.clone(), COM1_PORT, COM1_PORT_LEN),
        (
            Arc::new(Mutex::new(i8042)),
            I8042_DATA_PORT.into(),
            I8042_LEN.into(),
        ),
        (Arc::new(Mutex::new(rtc)), RTC_PORT.into(), RTC_LEN.into()),
        (Arc::new(Mutex::new(pm)), PM_BASE.into(), PM_LEN.into()),
        (pci.clone(), PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN),
    ];
    for (device, base, len) in devices {
        pio.insert(device, base, len)?;
    }
    Ok((pio, pci, com1))
}

/// Sets the stop flag, releases vCPUs parked at `gate`, and kicks every
/// vCPU thread until it has returned.
fn stop_vcpus(stopper: &StopHandle, gate: &PauseGate, threads: Vec<JoinHandle<()>>) {
    stopper.request_stop();
    gate.wake();
    for thread in threads {
        while !thread.is_finished() {
            // SAFETY: the pthread_t belongs to a thread we spawned and have not
            // joined yet, so it is valid; the signal's handler does nothing.
            unsafe { libc::pthread_kill(thread.as_pthread_t(), crate::vcpu::kick_signal()) };
            std::thread::sleep(KICK_INTERVAL);
        }
        if thread.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
}
