//! The daemon's state and what changes it: starting a VM, noticing its
//! end, applying a configuration.
//!
//! One [`Vmd`] is shared by every thread (control connections, monitor
//! readers, the staggered starter); its [`Registry`] sits behind one mutex,
//! and a condition variable wakes whoever waits for a VM to change state.
//! Nothing slow (opening disks, spawning a monitor, asking a monitor) runs
//! with the mutex held: a VM being started is marked `Starting` first, so
//! no other request can start it twice.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use ipc::control::{ErrorKind, VmState};
use ipc::monitor::{Launch, LogLevel, VmRecord};

use super::access::{check_unsandboxed_start, Starter};
use super::conf::{Config, Globals, SwitchConf};
use super::link::{spawn_monitor, LaunchFiles, MonitorEvent};
use super::registry::{is_live, Registry};
use super::resources::{open_boot_file, open_console, open_disk, open_kvm};
use super::spec::VmSpec;

/// A request vmd refuses, with what the client should see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The class.
    pub kind: ErrorKind,
    /// The message, naming what was wrong.
    pub message: String,
}

impl Refusal {
    /// A refusal of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// How vmd was started.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configuration file (`-f`).
    pub conf_path: PathBuf,
    /// `-D` macros.
    pub defines: Vec<(String, String)>,
    /// Where the control socket and the monitors' sockets live.
    pub run_dir: PathBuf,
    /// The monitor binary.
    pub monitor: PathBuf,
}

/// What the daemon holds behind its mutex.
#[derive(Default)]
pub struct State {
    /// The VMs.
    pub vms: Registry,
    /// The global settings of the configuration in force.
    pub globals: Globals,
    /// The switches of the configuration in force.
    pub switches: Vec<SwitchConf>,
    /// The bridges and VRFs vmd created for switches and rdomains, which
    /// `reset switches` deletes once nothing uses them. Kept in memory
    /// only: after a restart vmd knows of none, and leaves those links be.
    pub created_links: Vec<super::net::CreatedLink>,
}

/// The daemon.
pub struct Vmd {
    /// Startup settings.
    pub settings: Settings,
    state: Mutex<State>,
    changed: Condvar,
    log_level: Mutex<LogLevel>,
    me: Weak<Vmd>,
}

impl Vmd {
    /// A daemon with no VMs yet.
    pub fn new(settings: Settings, log_level: LogLevel) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            settings,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            log_level: Mutex::new(log_level),
            me: me.clone(),
        })
    }

    /// Locks the state.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes everyone waiting for a change.
    pub fn notify(&self) {
        self.changed.notify_all();
    }

    /// Waits until `done` holds for the state.
    pub fn wait_until<'a>(
        &self,
        mut guard: MutexGuard<'a, State>,
        mut done: impl FnMut(&State) -> bool,
    ) -> MutexGuard<'a, State> {
        while !done(&guard) {
            guard = self.changed.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
        guard
    }

    /// The level monitors start with and `vmctl log` last set.
    pub fn log_level(&self) -> LogLevel {
        *self.log_level.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the level for vmd and for monitors started from now on.
    pub fn set_log_level(&self, level: LogLevel) {
        *self.log_level.lock().unwrap_or_else(|p| p.into_inner()) = level;
        ipc::logger::set_level(level.filter());
    }

    /// The socket path of VM `id`'s monitor.
    pub fn monitor_socket(&self, id: u32) -> PathBuf {
        self.settings.run_dir.join(format!("vm{id}.sock"))
    }

    /// Starts VM `id`, which must be stopped (or waiting), as `by` asks;
    /// returns once it runs. On failure nothing stays open and the VM is
    /// as before (a VM that only `vmctl start` described is removed).
    ///
    /// A VM whose devices run unsandboxed (`sandbox no`) starts only when
    /// root asks (vmd itself counts), and with a warning in the log every
    /// time.
    pub fn start_vm(&self, id: u32, by: Starter) -> Result<(String, Option<String>), Refusal> {
        let spec = {
            let mut state = self.lock();
            let vm = state
                .vms
                .get_mut(id)
                .ok_or_else(|| Refusal::new(ErrorKind::NotFound, format!("no vm with id {id}")))?;
            match vm.state {
                VmState::Stopped | VmState::Waiting => {}
                VmState::Starting => {
                    return Err(Refusal::new(
                        ErrorKind::Already,
                        format!("vm '{}' is already starting", vm.spec.name),
                    ))
                }
                _ => {
                    return Err(Refusal::new(
                        ErrorKind::Already,
                        format!("vm '{}' is already running", vm.spec.name),
                    ))
                }
            }
            if let Some(why) = vm.spec.unstartable() {
                return Err(Refusal::new(ErrorKind::Invalid, why));
            }
            let unsandboxed = vm.spec.unsandboxed();
            check_unsandboxed_start(&vm.spec.name, unsandboxed.as_deref(), by)
                .map_err(|e| Refusal::new(ErrorKind::PermissionDenied, e.to_string()))?;
            if let Some(at) = &unsandboxed {
                log::warn!(
                    "vm '{}': starting with its devices UNSANDBOXED (sandbox no in {at}), {}",
                    vm.spec.name,
                    by.describe()
                );
            }
            vm.state = VmState::Starting;
            vm.spec.clone()
        };
        match self.launch(id, &spec) {
            Ok((link, tty)) => {
                let mut state = self.lock();
                if let Some(vm) = state.vms.get_mut(id) {
                    vm.state = VmState::Running;
                    vm.link = Some(link);
                    vm.tty = tty.clone();
                }
                drop(state);
                self.notify();
                log::info!("started vm {id} ({}) successfully", spec.name);
                Ok((spec.name, tty))
            }
            Err(message) => {
                let mut state = self.lock();
                if spec.configured {
                    if let Some(vm) = state.vms.get_mut(id) {
                        vm.state = VmState::Stopped;
                    }
                } else {
                    state.vms.remove(id);
                }
                drop(state);
                let _ = std::fs::remove_file(self.monitor_socket(id));
                self.notify();
                log::warn!(
                    "vm {id} ({}) failed to start: {}",
                    spec.name,
                    message.message
                );
                Err(message)
            }
        }
    }

    /// Opens the VM's files, starts its monitor and waits for the VM to run.
    fn launch(
        &self,
        id: u32,
        spec: &VmSpec,
    ) -> Result<(Arc<super::link::MonitorLink>, Option<String>), Refusal> {
        let host = |e: &dyn std::error::Error| Refusal::new(ErrorKind::Host, ipc::error_chain(e));
        let kernel_path = spec
            .kernel
            .clone()
            .ok_or_else(|| Refusal::new(ErrorKind::Invalid, "no kernel"))?;
        let kvm = open_kvm().map_err(|e| host(&e))?;
        let kernel = open_boot_file("kernel", &kernel_path)
            .map_err(|e| Refusal::new(ErrorKind::Invalid, ipc::error_chain(&e)))?;
        let initrd = spec
            .initrd
            .as_deref()
            .map(|p| open_boot_file("initrd", p))
            .transpose()
            .map_err(|e| Refusal::new(ErrorKind::Invalid, ipc::error_chain(&e)))?;
        let mut disks = Vec::with_capacity(spec.disks.len());
        for disk in &spec.disks {
            let opened = open_disk(&disk.path, disk.format, false).map_err(|e| {
                let kind = match e {
                    super::resources::ResourceError::Locked { .. } => ErrorKind::Busy,
                    _ => ErrorKind::Invalid,
                };
                Refusal::new(kind, ipc::error_chain(&e))
            })?;
            disks.push(opened);
        }
        let nics = self.open_nics(id, spec)?;
        let console = open_console().map_err(|e| host(&e))?;
        let tty = Some(console.path.clone());
        let socket = self.monitor_socket(id);
        let _ = std::fs::remove_file(&socket);
        let listener = bind_private(&socket).map_err(|e| host(&e))?;
        let record = VmRecord {
            id,
            name: spec.name.clone(),
            memory: spec.memory,
            cpus: spec.cpus,
            kernel: kernel_path,
            disks: disks.iter().map(|d| (d.path.clone(), d.format)).collect(),
            owner_uid: spec.owner.uid,
            owner_gid: spec.owner.gid,
            owner: spec.owner.text.clone(),
            tty: tty.clone(),
            instance_of: spec.instance_of.clone(),
            configured: spec.configured,
        };
        let launch = Launch {
            record,
            cmdline: spec.cmdline.clone(),
            initrd: initrd.is_some(),
            console: true,
            log_level: self.log_level(),
            // As root, vmd gives the VM's device processes an identity of
            // their own; otherwise they keep vmd's (its tests, as a user).
            sandbox_user: is_root().then(|| super::sandbox::sandbox_user(id)),
            // `sandbox no`: start_vm checked root asked, and logged it.
            sandbox_off: spec.unsandboxed().is_some(),
            device_restarts: spec.conf.as_ref().and_then(|c| c.restarts),
        };
        let files = LaunchFiles {
            kvm,
            kernel,
            initrd,
            console: Some(console),
            listener,
            disks,
            nics,
        };
        let me = self.me.clone();
        let on_event = Box::new(move |event| {
            if let Some(vmd) = me.upgrade() {
                vmd.monitor_event(id, event);
            }
        });
        let link = spawn_monitor(&self.settings.monitor, launch, files, on_event)
            .map_err(|e| Refusal::new(ErrorKind::Host, ipc::error_chain(&e)))?;
        Ok((link, tty))
    }

    /// Makes the taps of `spec`'s interfaces (closed again, and so gone,
    /// if anything fails).
    fn open_nics(&self, id: u32, spec: &VmSpec) -> Result<Vec<super::net::OpenNic>, Refusal> {
        let (globals, switches) = {
            let state = self.lock();
            (state.globals.clone(), state.switches.clone())
        };
        let ctx = super::net::NetContext {
            vm_id: id,
            vm_name: &spec.name,
            prefix: globals.local_prefix,
            inet6: globals.local_inet6,
        };
        let mut nics = Vec::with_capacity(spec.nics.len());
        for (index, nic) in spec.nics.iter().enumerate() {
            let mut nic = nic.clone();
            let switch = match &nic.switch {
                None => None,
                Some(name) => {
                    let switch = switches.iter().find(|s| &s.name == name).ok_or_else(|| {
                        Refusal::new(
                            ErrorKind::Invalid,
                            format!(
                                "vm '{}': interface {index}: no switch named '{name}'",
                                spec.name
                            ),
                        )
                    })?;
                    nic.locked |= switch.locked;
                    if nic.group.is_none() {
                        nic.group = switch.group.clone();
                    }
                    Some(switch)
                }
            };
            let switch = switch.map(|s| super::net::Switch {
                bridge: s.interface.as_deref().unwrap_or(&s.name),
                rdomain: s.rdomain,
                up: s.up,
            });
            let mut created = Vec::new();
            let opened = super::net::open_nic(
                &ctx,
                index,
                &nic,
                switch.as_ref(),
                random_u16(),
                &mut created,
            );
            // Recorded whether or not the interface came up: they stay.
            if !created.is_empty() {
                let mut state = self.lock();
                for link in created {
                    if !state.created_links.contains(&link) {
                        state.created_links.push(link);
                    }
                }
            }
            let opened = opened.map_err(|e| {
                Refusal::new(
                    ErrorKind::Host,
                    format!("vm '{}': {}", spec.name, ipc::error_chain(&e)),
                )
            })?;
            log::info!(
                "vm {id} ({}): interface {index} is tap {} (guest {})",
                spec.name,
                opened.name,
                opened.mac
            );
            nics.push(opened);
        }
        Ok(nics)
    }

    /// What a monitor reported.
    pub fn monitor_event(&self, id: u32, event: MonitorEvent) {
        match event {
            MonitorEvent::Rebooted => {
                let state = self.lock();
                let name = state.vms.get(id).map(|v| v.spec.name.clone());
                log::info!("vm {id} ({}) rebooted", name.unwrap_or_default());
            }
            MonitorEvent::Exited(how) => {
                let mut state = self.lock();
                let Some(vm) = state.vms.get_mut(id) else {
                    return;
                };
                log::info!("vm {id} ({}) stopped: {how}", vm.spec.name);
                vm.state = VmState::Stopped;
                vm.link = None;
                vm.tty = None;
                vm.console_client = None;
                vm.ends += 1;
                vm.last_end = Some(how);
                if let Some(spec) = vm.pending.take() {
                    vm.spec = spec;
                }
                if !vm.spec.configured {
                    state.vms.remove(id);
                }
                drop(state);
                let _ = std::fs::remove_file(self.monitor_socket(id));
                self.notify();
            }
        }
    }

    /// Applies `config` as `mode` says and returns the ids of its enabled
    /// VMs, to start. Every VM of `config` is checked first: a refused
    /// configuration changes nothing.
    ///
    /// - [`ConfigMode::Add`] (`vmctl load`): its VMs join the others (a
    ///   name already known is refused), its switches join those in
    ///   force; the global settings stay.
    /// - [`ConfigMode::Replace`] (startup, `reload`, `reset`): stopped VMs
    ///   are forgotten; a running VM the file names keeps running and takes
    ///   the file's settings at its next start (its owner at once); one the
    ///   file does not name is forgotten when it stops; globals and
    ///   switches become the file's.
    pub fn apply_config(&self, config: &Config, mode: ConfigMode) -> Result<Vec<u32>, Refusal> {
        let specs = specs_of(config)?;
        if let Err(missing) = super::conf::validate_paths(config) {
            for line in missing.to_string().lines() {
                log::warn!("{line} (that VM cannot start until it does)");
            }
        }
        let mut state = self.lock();
        match mode {
            ConfigMode::Add => {
                if let Some(clash) = specs.iter().find(|s| state.vms.has_name(&s.name)) {
                    return Err(Refusal::new(
                        ErrorKind::Invalid,
                        format!("vm '{}' is already defined", clash.name),
                    ));
                }
            }
            ConfigMode::Replace => {
                let idle = state
                    .vms
                    .ids_where(|v| matches!(v.state, VmState::Stopped | VmState::Waiting));
                for id in idle {
                    state.vms.remove(id);
                }
                for vm in state.vms.iter_mut() {
                    vm.spec.configured = false;
                    vm.pending = None;
                }
            }
        }
        let mut to_start = Vec::new();
        for spec in specs {
            let existing = state
                .vms
                .ids_where(|v| v.spec.name == spec.name)
                .first()
                .copied();
            match existing {
                Some(id) => {
                    if let Some(vm) = state.vms.get_mut(id) {
                        // Who may control it changes now; what it runs
                        // changes at its next start.
                        vm.spec.configured = true;
                        vm.spec.owner = spec.owner.clone();
                        vm.spec.conf = spec.conf.clone();
                        vm.pending = Some(spec);
                    }
                }
                None => {
                    let enabled = spec.enabled;
                    let id = state.vms.add(spec, VmState::Stopped);
                    if enabled {
                        to_start.push(id);
                    }
                }
            }
        }
        match mode {
            ConfigMode::Add => {
                for switch in &config.switches {
                    if !state.switches.iter().any(|s| s.name == switch.name) {
                        state.switches.push(switch.clone());
                    }
                }
            }
            ConfigMode::Replace => {
                state.globals = config.globals.clone();
                state.switches = config.switches.clone();
            }
        }
        drop(state);
        self.notify();
        Ok(to_start)
    }

    /// Starts `ids` as `staggered start` says: `parallel` at a time,
    /// `delay` seconds between groups (vmd's default: as many as the host
    /// has CPUs, 30 s). The VMs show as `waiting` until their turn; one
    /// started by hand meanwhile is skipped.
    pub fn start_staggered(self: &Arc<Self>, ids: Vec<u32>) {
        if ids.is_empty() {
            return;
        }
        let (parallel, delay) = {
            let mut state = self.lock();
            for &id in &ids {
                if let Some(vm) = state.vms.get_mut(id) {
                    vm.state = VmState::Waiting;
                }
            }
            match state.globals.staggered {
                Some(s) => (s.parallel.max(1) as usize, s.delay_secs),
                None => (
                    std::thread::available_parallelism().map_or(1, |n| n.get()),
                    30,
                ),
            }
        };
        let vmd = self.clone();
        let spawned = std::thread::Builder::new()
            .name("staggered-start".into())
            .spawn(move || {
                for (group, chunk) in ids.chunks(parallel).enumerate() {
                    if group > 0 {
                        std::thread::sleep(std::time::Duration::from_secs(delay.into()));
                    }
                    for &id in chunk {
                        let waiting = vmd
                            .lock()
                            .vms
                            .get(id)
                            .is_some_and(|v| v.state == VmState::Waiting);
                        if waiting {
                            if let Err(e) = vmd.start_vm(id, Starter::Vmd) {
                                log::warn!("vm {id}: {}", e.message);
                            }
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            log::error!("cannot start the staggered start thread: {e}");
        }
    }

    /// Whether VM `id` has a monitor.
    pub fn is_live(&self, id: u32) -> bool {
        self.lock().vms.get(id).is_some_and(|v| is_live(v.state))
    }
}

/// How [`Vmd::apply_config`] combines a configuration with what runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigMode {
    /// `vmctl load`: add to what is there.
    Add,
    /// Startup, `reload`, `reset`: the file is the configuration now.
    Replace,
}

/// The specs of every VM of `config`, or the first that cannot be made.
pub fn specs_of(config: &Config) -> Result<Vec<VmSpec>, Refusal> {
    config
        .vms
        .iter()
        .map(|vm| {
            VmSpec::from_conf(vm).map_err(|e| {
                Refusal::new(
                    ErrorKind::Invalid,
                    format!("{}:{}: {e}", vm.file.display(), vm.line),
                )
            })
        })
        .collect()
}

/// Every name in `config` that does not resolve (VM owners, `socket
/// owner`), one `file:line: message` (or `socket owner: ...`) each.
pub fn resolve_errors(config: &Config) -> Vec<String> {
    let mut errors: Vec<String> = config
        .vms
        .iter()
        .filter_map(|vm| {
            VmSpec::from_conf(vm)
                .err()
                .map(|e| format!("{}:{}: {e}", vm.file.display(), vm.line))
        })
        .collect();
    if let Some(owner) = &config.globals.socket_owner {
        if let Err(e) = super::access::resolve(owner) {
            errors.push(format!("socket owner: {e}"));
        }
    }
    errors
}

/// Binds a unix socket only root can connect to.
pub fn bind_private(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Two random bytes (for generated MACs), from getrandom(2).
fn random_u16() -> u16 {
    let mut bytes = [0u8; 2];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into a live buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != 2 {
        // Without entropy the address is still unique per VM id and index.
        return std::process::id() as u16;
    }
    u16::from_ne_bytes(bytes)
}

/// Whether vmd runs as root.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
