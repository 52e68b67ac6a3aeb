//! Carrying out one control request for one peer.
//!
//! Every request is checked against the peer first (see `access`): status
//! and wait are open to anyone who reached the socket; start, stop, pause,
//! unpause, device list and device restart need root or the VM's owner
//! (starting a VM whose devices run unsandboxed, vm.conf's `sandbox no`,
//! needs root); load, reload, reset, log, device log and a held device
//! restart need root. A refused request changes nothing.

use std::sync::Arc;

use ipc::control::{
    ErrorKind, LogVerbosity, Request, ResetTarget, Response, StartRequest, VmRef, VmState,
};
use ipc::monitor::{LogLevel, ToMonitor};

use super::access::{owner_of_peer, Peer, Starter};
use super::daemon::{specs_of, ConfigMode, Refusal, Vmd};
use super::registry::is_live;
use super::spec::VmSpec;

/// Carries out `request` for `peer`; `reply` is called once per response
/// (more than once only for `stop -a -w`, one `Stopped` per VM, ended by
/// `Done`).
pub fn handle(vmd: &Arc<Vmd>, peer: &Peer, request: Request, reply: &mut dyn FnMut(Response)) {
    let result = match request {
        Request::Status => Ok(status(vmd)),
        Request::Start(start) => start_vm(vmd, peer, &start),
        Request::Stop { vm, force, wait } => return stop(vmd, peer, vm, force, wait, reply),
        Request::Wait(vm) => wait_vm(vmd, &vm),
        Request::Pause(vm) => pause(vmd, peer, &vm, true),
        Request::Unpause(vm) => pause(vmd, peer, &vm, false),
        Request::Load(path) => root(peer, "load").and_then(|_| load(vmd, &path)),
        Request::Reload => root(peer, "reload").and_then(|_| reload(vmd)),
        Request::Reset(target) => root(peer, "reset").and_then(|_| reset(vmd, target)),
        Request::Log(level) => root(peer, "log").and_then(|_| set_log(vmd, level)),
        Request::DeviceList(vm) => device_list(vmd, peer, &vm),
        Request::DeviceRestart { vm, device, hold } => {
            device_restart(vmd, peer, &vm, &device, hold)
        }
        Request::DeviceLog {
            vm,
            device,
            verbosity,
        } => root(peer, "set a device's log level")
            .and_then(|_| device_log(vmd, peer, &vm, &device, verbosity)),
        Request::Console(_) => Err(Refusal::new(
            ErrorKind::Invalid,
            "a console request needs its own connection",
        )),
    };
    reply(result.unwrap_or_else(|r| Response::Error {
        kind: r.kind,
        message: r.message,
    }));
}

fn root(peer: &Peer, what: &str) -> Result<(), Refusal> {
    if peer.is_root() {
        Ok(())
    } else {
        Err(Refusal::new(
            ErrorKind::PermissionDenied,
            format!("permission denied: only root may {what}"),
        ))
    }
}

pub(super) fn not_found(vm: &VmRef) -> Refusal {
    match vm {
        VmRef::Id(id) => Refusal::new(ErrorKind::NotFound, format!("no vm with id {id}")),
        VmRef::Name(name) => Refusal::new(ErrorKind::NotFound, format!("no vm named '{name}'")),
    }
}

/// The id of `vm`, if `peer` may control it.
pub(super) fn controlled(vmd: &Vmd, peer: &Peer, vm: &VmRef, what: &str) -> Result<u32, Refusal> {
    let state = vmd.lock();
    let entry = state.vms.find(vm).ok_or_else(|| not_found(vm))?;
    if !peer.may_control(&entry.spec.owner) {
        return Err(Refusal::new(
            ErrorKind::PermissionDenied,
            format!(
                "permission denied: {} may not {what} vm '{}' (owner {})",
                peer.name(),
                entry.spec.name,
                entry.spec.owner.text
            ),
        ));
    }
    Ok(entry.id)
}

/// The link and name of running VM `vm`, which `peer` may control.
fn running_link(
    vmd: &Vmd,
    peer: &Peer,
    vm: &VmRef,
    what: &str,
) -> Result<(u32, String, Arc<super::link::MonitorLink>), Refusal> {
    let id = controlled(vmd, peer, vm, what)?;
    let state = vmd.lock();
    let entry = state.vms.get(id).ok_or_else(|| not_found(vm))?;
    let link = entry.link.clone().ok_or_else(|| {
        Refusal::new(
            ErrorKind::Already,
            format!("vm '{}' is not running", entry.spec.name),
        )
    })?;
    Ok((id, entry.spec.name.clone(), link))
}

fn link_refusal(name: &str, e: &super::link::LinkError) -> Refusal {
    Refusal::new(
        ErrorKind::Host,
        format!("vm '{name}': {}", ipc::error_chain(e)),
    )
}

/// `vmctl device list`: the VM's device processes, from its monitor.
fn device_list(vmd: &Vmd, peer: &Peer, vm: &VmRef) -> Result<Response, Refusal> {
    let (id, name, link) = running_link(vmd, peer, vm, "list the devices of")?;
    match link.ask(&ToMonitor::Devices) {
        Ok(ipc::monitor::FromMonitor::Devices(devices)) => {
            Ok(Response::Devices { id, name, devices })
        }
        Ok(other) => Err(unexpected_answer(&name, &other)),
        Err(e) => Err(link_refusal(&name, &e)),
    }
}

fn unexpected_answer(name: &str, answer: &ipc::monitor::FromMonitor) -> Refusal {
    Refusal::new(
        ErrorKind::Host,
        format!("vm '{name}': the monitor answered {answer:?}"),
    )
}

/// `vmctl device restart`: the monitor kills the device's process, whose
/// supervisor restarts it as after any death; `-d` (`hold`, root only)
/// holds the new process stopped before it serves, for a debugger.
fn device_restart(
    vmd: &Vmd,
    peer: &Peer,
    vm: &VmRef,
    device: &str,
    hold: bool,
) -> Result<Response, Refusal> {
    if hold {
        root(peer, "hold a device for a debugger")?;
    }
    let (_, name, link) = running_link(vmd, peer, vm, "restart a device of")?;
    let request = ToMonitor::RestartDevice {
        name: device.to_string(),
        hold,
    };
    if !hold {
        link.request(&request)
            .map_err(|e| link_refusal(&name, &e))?;
        log::info!("vm '{name}': {device} restarted by {}", peer.name());
        return Ok(Response::Done(format!("restarting {device} of vm {name}")));
    }
    match link.ask(&request) {
        Ok(ipc::monitor::FromMonitor::Held { pid }) => {
            log::warn!(
                "vm '{name}': {device} restarted and held stopped as pid {pid} by {}",
                peer.name()
            );
            Ok(Response::Done(format!(
                "{device} of vm {name} is held stopped before it serves, as pid {pid}; \
                 attach a debugger or tracer, then continue it (kill -CONT {pid})"
            )))
        }
        Ok(ipc::monitor::FromMonitor::Failed(why)) => {
            Err(Refusal::new(ErrorKind::Host, format!("vm '{name}': {why}")))
        }
        Ok(other) => Err(unexpected_answer(&name, &other)),
        Err(e) => Err(link_refusal(&name, &e)),
    }
}

/// `vmctl device log`: one device's log level, kept across its restarts.
fn device_log(
    vmd: &Vmd,
    peer: &Peer,
    vm: &VmRef,
    device: &str,
    verbosity: LogVerbosity,
) -> Result<Response, Refusal> {
    let (_, name, link) = running_link(vmd, peer, vm, "set the log level of")?;
    let (level, word) = match verbosity {
        LogVerbosity::Brief => (LogLevel::Info, "brief"),
        LogVerbosity::Verbose => (LogLevel::Debug, "verbose"),
    };
    link.request(&ToMonitor::DeviceLogLevel {
        name: device.to_string(),
        level,
    })
    .map_err(|e| link_refusal(&name, &e))?;
    log::info!("vm '{name}': {device} logs {word}, set by {}", peer.name());
    Ok(Response::Done(format!(
        "{device} of vm {name}: logging {word}"
    )))
}

fn status(vmd: &Vmd) -> Response {
    Response::Status(vmd.lock().vms.iter().map(|v| v.status()).collect())
}

fn start_vm(vmd: &Arc<Vmd>, peer: &Peer, start: &StartRequest) -> Result<Response, Refusal> {
    let vm = start
        .vm
        .clone()
        .ok_or_else(|| Refusal::new(ErrorKind::Invalid, "no vm name given"))?;
    let id = {
        let mut state = vmd.lock();
        if let Some(template) = &start.template {
            let VmRef::Name(name) = &vm else {
                return Err(Refusal::new(
                    ErrorKind::Invalid,
                    "an instance needs a name, not an id",
                ));
            };
            if state.vms.has_name(name) {
                return Err(Refusal::new(
                    ErrorKind::Already,
                    format!("vm '{name}' already exists"),
                ));
            }
            let parent = state
                .vms
                .find(&VmRef::Name(template.clone()))
                .ok_or_else(|| not_found(&VmRef::Name(template.clone())))?;
            let allowed_owner = parent.spec.conf.as_ref().is_some_and(|c| {
                c.allow_instance
                    .owners
                    .iter()
                    .any(|o| super::access::resolve(o).is_ok_and(|r| peer.may_control(&r)))
            });
            if !(peer.may_control(&parent.spec.owner) || allowed_owner) {
                return Err(Refusal::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "permission denied: {} may not make instances of vm '{template}'",
                        peer.name()
                    ),
                ));
            }
            let owner = if peer.is_root() {
                parent.spec.owner.clone()
            } else {
                owner_of_peer(peer.uid)
            };
            let spec = parent
                .spec
                .instance(name, start, owner)
                .map_err(|e| Refusal::new(ErrorKind::PermissionDenied, e.to_string()))?;
            state.vms.add(spec, VmState::Stopped)
        } else if let Some(entry) = state.vms.find(&vm) {
            if VmSpec::has_options(start) {
                return Err(Refusal::new(
                    ErrorKind::Invalid,
                    format!(
                        "vm '{}' is already defined: start it without -b, -d or -m, or start an instance of it with -t",
                        entry.spec.name
                    ),
                ));
            }
            let id = entry.id;
            drop(state);
            controlled(vmd, peer, &vm, "start")?;
            id
        } else {
            let VmRef::Name(name) = &vm else {
                return Err(not_found(&vm));
            };
            if !peer.is_root() {
                return Err(Refusal::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "permission denied: only root may create vm '{name}'; start a configured vm or an instance (-t) of one you own"
                    ),
                ));
            }
            let spec = VmSpec::from_start(name, start, owner_of_peer(peer.uid));
            if let Some(why) = spec.unstartable() {
                return Err(Refusal::new(ErrorKind::Invalid, why));
            }
            state.vms.add(spec, VmState::Stopped)
        }
    };
    let (name, tty) = vmd.start_vm(id, Starter::User(peer.uid))?;
    Ok(Response::Started { id, name, tty })
}

fn stop(
    vmd: &Arc<Vmd>,
    peer: &Peer,
    vm: Option<VmRef>,
    force: bool,
    wait: bool,
    reply: &mut dyn FnMut(Response),
) {
    let targets = match &vm {
        Some(vm) => match controlled(vmd, peer, vm, "stop") {
            Ok(id) => vec![id],
            Err(r) => {
                return reply(Response::Error {
                    kind: r.kind,
                    message: r.message,
                })
            }
        },
        None => vmd.lock().vms.ids_where(|v| {
            (is_live(v.state) || v.state == VmState::Waiting) && peer.may_control(&v.spec.owner)
        }),
    };
    let mut stopping = Vec::new();
    for id in targets {
        match stop_one(vmd, id, force) {
            Ok(ends) => stopping.push((id, ends)),
            Err(r) if vm.is_some() => {
                return reply(Response::Error {
                    kind: r.kind,
                    message: r.message,
                })
            }
            Err(r) => log::info!("stop -a: vm {id}: {}", r.message),
        }
    }
    if !wait {
        let ids: Vec<String> = stopping.iter().map(|(id, _)| id.to_string()).collect();
        return reply(Response::Done(match ids.len() {
            0 => "no running vm to stop".into(),
            1 => format!("sent request to terminate vm {}", ids[0]),
            _ => format!("sent request to terminate vms {}", ids.join(", ")),
        }));
    }
    let count = stopping.len();
    for (id, ends) in stopping {
        reply(wait_for_end(vmd, id, ends));
    }
    if vm.is_none() {
        reply(Response::Done(format!("{count} vm(s) stopped")));
    }
}

/// Asks VM `id` to stop; returns its end count to wait on.
fn stop_one(vmd: &Vmd, id: u32, force: bool) -> Result<u64, Refusal> {
    let (link, ends, name) = {
        let mut state = vmd.lock();
        let vm = state
            .vms
            .get_mut(id)
            .ok_or_else(|| not_found(&VmRef::Id(id)))?;
        match vm.state {
            VmState::Running | VmState::Paused => {}
            VmState::Stopping if !force => {
                return Err(Refusal::new(
                    ErrorKind::Already,
                    format!("vm '{}' is already stopping", vm.spec.name),
                ))
            }
            VmState::Stopping => {}
            VmState::Starting => {
                return Err(Refusal::new(
                    ErrorKind::Busy,
                    format!("vm '{}' is starting; stop it once it runs", vm.spec.name),
                ))
            }
            VmState::Waiting => {
                // Not started yet: take it out of the start queue.
                vm.state = VmState::Stopped;
                vm.ends += 1;
                vm.last_end = Some("taken out of the start queue".into());
                let ends = vm.ends - 1;
                drop(state);
                vmd.notify();
                return Ok(ends);
            }
            _ => {
                return Err(Refusal::new(
                    ErrorKind::Invalid,
                    format!("vm '{}' is not running", vm.spec.name),
                ))
            }
        }
        vm.state = VmState::Stopping;
        (vm.link.clone(), vm.ends, vm.spec.name.clone())
    };
    vmd.notify();
    if !force {
        log::info!("vm {id} ({name}): stopping forcibly (graceful stop through the guest is not built yet)");
    }
    if let Some(link) = link {
        if let Err(e) = link.request(&ToMonitor::Stop) {
            if !matches!(e, super::link::LinkError::Gone) {
                log::warn!(
                    "vm {id} ({name}): monitor {} did not stop ({}); killing it",
                    link.pid(),
                    ipc::error_chain(&e)
                );
                kill(link.pid());
                link.shutdown();
            }
        }
    }
    Ok(ends)
}

fn kill(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Waits until VM `id` has ended more than `ends` times (or is gone).
fn wait_for_end(vmd: &Vmd, id: u32, ends: u64) -> Response {
    let (name, how) = {
        let guard = vmd.lock();
        let name = guard
            .vms
            .get(id)
            .map(|v| v.spec.name.clone())
            .unwrap_or_default();
        drop(guard);
        let mut last = None;
        let guard = vmd.wait_until(vmd.lock(), |s| match s.vms.get(id) {
            Some(v) => {
                last = v.last_end.clone();
                v.ends > ends
            }
            None => true,
        });
        drop(guard);
        (name, last.unwrap_or_else(|| "terminated".into()))
    };
    Response::Stopped { id, name, how }
}

fn wait_vm(vmd: &Vmd, vm: &VmRef) -> Result<Response, Refusal> {
    let (id, ends, live, name) = {
        let state = vmd.lock();
        let entry = state.vms.find(vm).ok_or_else(|| not_found(vm))?;
        let live =
            is_live(entry.state) || matches!(entry.state, VmState::Starting | VmState::Waiting);
        (entry.id, entry.ends, live, entry.spec.name.clone())
    };
    if !live {
        return Err(Refusal::new(
            ErrorKind::Invalid,
            format!("vm '{name}' is not running"),
        ));
    }
    Ok(wait_for_end(vmd, id, ends))
}

fn pause(vmd: &Vmd, peer: &Peer, vm: &VmRef, pause: bool) -> Result<Response, Refusal> {
    let what = if pause { "pause" } else { "unpause" };
    let id = controlled(vmd, peer, vm, what)?;
    let (link, name) = {
        let mut state = vmd.lock();
        let entry = state.vms.get_mut(id).ok_or_else(|| not_found(vm))?;
        let (from, to) = if pause {
            (VmState::Running, VmState::Paused)
        } else {
            (VmState::Paused, VmState::Running)
        };
        if entry.state != from {
            let why = match (entry.state, pause) {
                (VmState::Paused, true) => "is already paused".to_string(),
                (VmState::Running, false) => "is not paused".to_string(),
                (other, _) => format!("is {other}"),
            };
            return Err(Refusal::new(
                ErrorKind::Already,
                format!("vm '{}' {why}", entry.spec.name),
            ));
        }
        let link = entry.link.clone().ok_or_else(|| not_found(vm))?;
        entry.state = to;
        (link, entry.spec.name.clone())
    };
    let request = if pause {
        ToMonitor::Pause
    } else {
        ToMonitor::Unpause
    };
    if let Err(e) = link.request(&request) {
        let mut state = vmd.lock();
        if let Some(entry) = state.vms.get_mut(id) {
            if entry.state
                == (if pause {
                    VmState::Paused
                } else {
                    VmState::Running
                })
            {
                entry.state = if pause {
                    VmState::Running
                } else {
                    VmState::Paused
                };
            }
        }
        return Err(Refusal::new(
            ErrorKind::Host,
            format!("cannot {what} vm '{name}': {}", ipc::error_chain(&e)),
        ));
    }
    vmd.notify();
    log::info!("vm {id} ({name}) {what}d");
    Ok(Response::Done(format!("{what}d vm {id} successfully")))
}

fn parse(vmd: &Vmd, path: &std::path::Path) -> Result<super::conf::Config, Refusal> {
    super::conf::parse_config(path, &vmd.settings.defines)
        .map_err(|e| Refusal::new(ErrorKind::Invalid, e.to_string()))
}

fn load(vmd: &Arc<Vmd>, path: &std::path::Path) -> Result<Response, Refusal> {
    let config = parse(vmd, path)?;
    let ids = vmd.apply_config(&config, ConfigMode::Add)?;
    let count = config.vms.len();
    vmd.start_staggered(ids);
    log::info!("loaded {count} vm(s) from {}", path.display());
    Ok(Response::Done(format!(
        "loaded {count} vm(s) from {}",
        path.display()
    )))
}

/// Re-reads the configuration: stopped VMs are forgotten, running VMs
/// keep running (see [`Vmd::apply_config`]).
fn reload(vmd: &Arc<Vmd>) -> Result<Response, Refusal> {
    let config = parse(vmd, &vmd.settings.conf_path)?;
    let ids = vmd.apply_config(&config, ConfigMode::Replace)?;
    vmd.start_staggered(ids);
    log::info!(
        "configuration reloaded from {}",
        vmd.settings.conf_path.display()
    );
    Ok(Response::Done("configuration reloaded".into()))
}

/// vmd's reset: `vms` and `all` terminate every VM and forget it,
/// `switches` and `all` drop the switches and delete the bridges and VRFs
/// vmd created that nothing uses any more (those still used stay
/// recorded, for a later reset); then the configuration is read again
/// (its enabled VMs start). The file is read and checked before anything
/// is stopped: a broken file changes nothing.
fn reset(vmd: &Arc<Vmd>, target: ResetTarget) -> Result<Response, Refusal> {
    let config = parse(vmd, &vmd.settings.conf_path)?;
    specs_of(&config)?;
    if matches!(target, ResetTarget::Vms | ResetTarget::All) {
        let live = vmd.lock().vms.ids_where(|v| is_live(v.state));
        let mut waits = Vec::new();
        for id in live {
            if let Ok(ends) = stop_one(vmd, id, true) {
                waits.push((id, ends));
            }
        }
        for (id, ends) in waits {
            wait_for_end(vmd, id, ends);
        }
        let mut state = vmd.wait_until(vmd.lock(), |s| {
            s.vms.iter().all(|v| v.state != VmState::Starting)
        });
        for id in state.vms.ids_where(|_| true) {
            state.vms.remove(id);
        }
    }
    if matches!(target, ResetTarget::Switches | ResetTarget::All) {
        let recorded = {
            let mut state = vmd.lock();
            state.switches.clear();
            std::mem::take(&mut state.created_links)
        };
        // Not under the lock: a VM starting meanwhile records its own.
        let kept = super::net::delete_unused(recorded);
        vmd.lock().created_links.extend(kept);
    }
    let ids = vmd.apply_config(&config, ConfigMode::Replace)?;
    vmd.start_staggered(ids);
    Ok(Response::Done(
        match target {
            ResetTarget::All => "reset all",
            ResetTarget::Vms => "reset vms",
            ResetTarget::Switches => "reset switches",
        }
        .into(),
    ))
}

fn set_log(vmd: &Vmd, verbosity: LogVerbosity) -> Result<Response, Refusal> {
    let level = match verbosity {
        LogVerbosity::Brief => LogLevel::Info,
        LogVerbosity::Verbose => LogLevel::Debug,
    };
    vmd.set_log_level(level);
    let links: Vec<_> = vmd
        .lock()
        .vms
        .iter()
        .filter_map(|v| v.link.clone())
        .collect();
    let mut failed = Vec::new();
    for link in links {
        if let Err(e) = link.request(&ToMonitor::SetLogLevel(level)) {
            failed.push(format!("monitor {}: {}", link.pid(), ipc::error_chain(&e)));
        }
    }
    if !failed.is_empty() {
        return Err(Refusal::new(ErrorKind::Host, failed.join("; ")));
    }
    Ok(Response::Done(format!(
        "logging {}",
        match verbosity {
            LogVerbosity::Brief => "brief",
            LogVerbosity::Verbose => "verbose",
        }
    )))
}
