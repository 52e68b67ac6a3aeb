//! Finding the VMs a previous vmd left running.
//!
//! Each monitor listens on `vm<id>.sock` in the run directory. At start,
//! vmd connects to each: a monitor that answers `Hello` with its
//! `Identity` is taken back (same id, name, owner, console and state); a
//! socket nobody answers on is a leftover of a VM that ended while no vmd
//! ran, and is removed.

use std::path::Path;
use std::sync::Arc;

use ipc::control::VmState;
use ipc::monitor::VmRecord;

use super::access::ResolvedOwner;
use super::daemon::Vmd;
use super::link::{adopt_link, connect, hello};
use super::spec::{DiskSpec, VmSpec};

/// Re-adopts every live monitor in `run_dir`; returns how many.
pub fn adopt_all(vmd: &Arc<Vmd>, run_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return 0;
    };
    let mut adopted = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_monitor = name
            .strip_prefix("vm")
            .and_then(|n| n.strip_suffix(".sock"))
            .is_some_and(|n| n.parse::<u32>().is_ok());
        if !is_monitor {
            continue;
        }
        let mut channel = match connect(&path) {
            Ok(c) => c,
            Err(_) => {
                log::info!("removing {}: no monitor answers there", path.display());
                let _ = std::fs::remove_file(&path);
                continue;
            }
        };
        let (record, pid, paused) = match hello(&mut channel) {
            Ok(identity) => identity,
            Err(e) => {
                log::warn!(
                    "{}: not re-adopted: {}",
                    path.display(),
                    ipc::error_chain(&e)
                );
                continue;
            }
        };
        let id = record.id;
        let state = if paused {
            VmState::Paused
        } else {
            VmState::Running
        };
        {
            let mut guard = vmd.lock();
            if guard.vms.get(id).is_some() || guard.vms.has_name(&record.name) {
                log::warn!(
                    "{}: vm {id} ({}) is known already",
                    path.display(),
                    record.name
                );
                continue;
            }
            guard.vms.insert(id, spec_of(&record), state);
        }
        let me = Arc::downgrade(vmd);
        let on_event = Box::new(move |event| {
            if let Some(vmd) = me.upgrade() {
                vmd.monitor_event(id, event);
            }
        });
        match adopt_link(channel, pid, on_event) {
            Ok(link) => {
                let mut guard = vmd.lock();
                if let Some(vm) = guard.vms.get_mut(id) {
                    vm.link = Some(link);
                    vm.tty = record.tty.clone();
                }
                adopted += 1;
                log::info!("re-adopted vm {id} ({}), monitor pid {pid}", record.name);
            }
            Err(e) => {
                vmd.lock().vms.remove(id);
                log::warn!("vm {id}: not re-adopted: {}", ipc::error_chain(&e));
            }
        }
    }
    adopted
}

/// The spec of a running VM as its monitor describes it. Its
/// configuration is matched again when vm.conf is applied.
fn spec_of(record: &VmRecord) -> VmSpec {
    VmSpec {
        name: record.name.clone(),
        memory: record.memory,
        cpus: record.cpus,
        kernel: Some(record.kernel.clone()),
        initrd: None,
        cmdline: String::new(),
        disks: record
            .disks
            .iter()
            .map(|(path, format)| DiskSpec {
                path: path.clone(),
                format: Some(*format),
            })
            .collect(),
        owner: ResolvedOwner {
            uid: record.owner_uid,
            gid: record.owner_gid,
            text: record.owner.clone(),
        },
        instance_of: record.instance_of.clone(),
        configured: record.configured,
        enabled: false,
        missing: Vec::new(),
        // The monitor keeps its taps; what vm.conf says applies at the next start.
        nics: Vec::new(),
        conf: None,
    }
}
