//! vmd's table of VMs: ids, specs, states, and the link to each running
//! monitor.
//!
//! # Invariants
//! - Ids are given once, counting up from 1, and never reused while vmd
//!   runs (re-adopted VMs keep theirs; new ids start above them).
//! - Names are unique.
//! - `link` is `Some` exactly in the states Running, Paused and Stopping
//!   (and Stopping only until the monitor's end is seen).
//! - `ends` counts how often the VM has stopped: a waiter waits for it to
//!   change, so a VM that stops and starts again in between still wakes it.

use std::collections::BTreeMap;
use std::sync::Arc;

use ipc::control::{VmRef, VmState, VmStatus};

use super::link::MonitorLink;
use super::spec::VmSpec;

/// One VM.
pub struct VmEntry {
    /// Its id.
    pub id: u32,
    /// What it runs.
    pub spec: VmSpec,
    /// Its state.
    pub state: VmState,
    /// The monitor, while it runs.
    pub link: Option<Arc<MonitorLink>>,
    /// The console's terminal, while it runs.
    pub tty: Option<String>,
    /// How many times it has stopped.
    pub ends: u64,
    /// How it stopped last.
    pub last_end: Option<String>,
    /// A configuration read while it ran, taken for its next start.
    pub pending: Option<VmSpec>,
    /// The pid of the `vmctl console` attached, if one is.
    pub console_client: Option<i32>,
}

impl VmEntry {
    /// Its line in `vmctl status`.
    pub fn status(&self) -> VmStatus {
        let pid = self.link.as_ref().map(|l| l.pid());
        VmStatus {
            id: self.id,
            pid,
            vcpus: self.spec.cpus,
            max_mem: self.spec.memory,
            cur_mem: pid.and_then(resident_bytes),
            tty: self.tty.clone(),
            owner: self.spec.owner.text.clone(),
            state: self.state,
            name: self.spec.name.clone(),
        }
    }
}

/// VmRSS of process `pid`, in bytes.
fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// All VMs vmd knows.
#[derive(Default)]
pub struct Registry {
    vms: BTreeMap<u32, VmEntry>,
    next_id: u32,
}

impl Registry {
    /// Adds a VM in `state` and returns its id.
    pub fn add(&mut self, spec: VmSpec, state: VmState) -> u32 {
        self.next_id = self.next_id.max(1);
        let id = self.next_id;
        self.next_id += 1;
        self.insert(id, spec, state);
        id
    }

    /// Adds a VM under a known id (re-adoption); later ids go above it.
    pub fn insert(&mut self, id: u32, spec: VmSpec, state: VmState) {
        self.next_id = self.next_id.max(id + 1);
        self.vms.insert(
            id,
            VmEntry {
                id,
                spec,
                state,
                link: None,
                tty: None,
                ends: 0,
                last_end: None,
                pending: None,
                console_client: None,
            },
        );
    }

    /// The VM named or numbered `vm`.
    pub fn find(&self, vm: &VmRef) -> Option<&VmEntry> {
        match vm {
            VmRef::Id(id) => self.vms.get(id),
            VmRef::Name(name) => self.vms.values().find(|v| v.spec.name == *name),
        }
    }

    /// The id of the VM named or numbered `vm`.
    pub fn id_of(&self, vm: &VmRef) -> Option<u32> {
        self.find(vm).map(|v| v.id)
    }

    /// The VM with id `id`.
    pub fn get(&self, id: u32) -> Option<&VmEntry> {
        self.vms.get(&id)
    }

    /// The VM with id `id`, to change.
    pub fn get_mut(&mut self, id: u32) -> Option<&mut VmEntry> {
        self.vms.get_mut(&id)
    }

    /// Whether a VM is named `name`.
    pub fn has_name(&self, name: &str) -> bool {
        self.vms.values().any(|v| v.spec.name == name)
    }

    /// Removes the VM `id`.
    pub fn remove(&mut self, id: u32) -> Option<VmEntry> {
        self.vms.remove(&id)
    }

    /// Every VM, by id.
    pub fn iter(&self) -> impl Iterator<Item = &VmEntry> {
        self.vms.values()
    }

    /// Every VM, by id, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut VmEntry> {
        self.vms.values_mut()
    }

    /// Ids of the VMs for which `keep` holds.
    pub fn ids_where(&self, keep: impl Fn(&VmEntry) -> bool) -> Vec<u32> {
        self.vms
            .values()
            .filter(|v| keep(v))
            .map(|v| v.id)
            .collect()
    }
}

/// Whether a VM in `state` has a monitor.
pub fn is_live(state: VmState) -> bool {
    matches!(
        state,
        VmState::Running | VmState::Paused | VmState::Stopping
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmd::access::ResolvedOwner;
    use ipc::control::StartRequest;

    fn spec(name: &str) -> VmSpec {
        VmSpec::from_start(name, &StartRequest::default(), ResolvedOwner::default())
    }

    #[test]
    fn ids_count_up_and_are_not_reused() {
        let mut r = Registry::default();
        let a = r.add(spec("a"), VmState::Stopped);
        let b = r.add(spec("b"), VmState::Stopped);
        assert_eq!((a, b), (1, 2));
        r.remove(b);
        assert_eq!(r.add(spec("c"), VmState::Stopped), 3);
        r.insert(10, spec("adopted"), VmState::Running);
        assert_eq!(r.add(spec("d"), VmState::Stopped), 11);
        assert_eq!(r.id_of(&VmRef::Name("adopted".into())), Some(10));
        assert_eq!(r.id_of(&VmRef::Id(3)), Some(3));
        assert!(r.find(&VmRef::Name("b".into())).is_none());
        assert!(r.has_name("c") && !r.has_name("b"));
    }

    #[test]
    fn resident_memory_of_this_process_is_read() {
        let rss = resident_bytes(std::process::id()).unwrap();
        assert!(rss > 0);
        assert!(resident_bytes(u32::MAX).is_none());
    }
}
