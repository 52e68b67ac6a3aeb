//! `vmctl console`: one client at a time on a VM's console pty.
//!
//! vmd checks the right (root or the VM's owner), refuses a second client,
//! tells the monitor `ConsoleAttach` (dev-console flushes the pty and
//! replays its ring of recent output), opens the pty's slave side and
//! hands it over with the answer; the end of the client's connection
//! detaches (see `server`).

use std::sync::Arc;

use ipc::control::{ErrorKind, VmRef, VmState};
use ipc::monitor::ToMonitor;

use super::access::Peer;
use super::daemon::{Refusal, Vmd};
use super::requests::{controlled, not_found};

/// A `vmctl console` client attached to a VM's console.
pub struct ConsoleSession {
    /// The VM's id.
    pub id: u32,
    /// Its name.
    pub name: String,
    /// The pty's path.
    pub tty: String,
    /// The pty's slave side, opened for the client.
    pub slave: std::fs::File,
    link: Arc<super::link::MonitorLink>,
    client: i32,
}

/// Attaches `peer` to the console of `vm`: checks the right, refuses a
/// second client, opens the pty's slave side and has dev-console replay
/// its ring of recent output to it.
pub fn attach(vmd: &Vmd, peer: &Peer, vm: &VmRef) -> Result<ConsoleSession, Refusal> {
    use std::os::unix::fs::OpenOptionsExt;
    let id = controlled(vmd, peer, vm, "attach to the console of")?;
    let (link, name, tty) = {
        let mut state = vmd.lock();
        let entry = state.vms.get_mut(id).ok_or_else(|| not_found(vm))?;
        let name = entry.spec.name.clone();
        let (Some(link), Some(tty), true) = (
            entry.link.clone(),
            entry.tty.clone(),
            matches!(entry.state, VmState::Running | VmState::Paused),
        ) else {
            return Err(Refusal::new(
                ErrorKind::Invalid,
                format!("vm '{name}' is not running"),
            ));
        };
        if let Some(pid) = entry.console_client {
            return Err(Refusal::new(
                ErrorKind::Busy,
                format!("the console of vm '{name}' is in use by another vmctl (pid {pid})"),
            ));
        }
        entry.console_client = Some(peer.pid);
        (link, name, tty)
    };
    let release = || {
        let mut state = vmd.lock();
        if let Some(entry) = state.vms.get_mut(id) {
            if entry.console_client == Some(peer.pid) {
                entry.console_client = None;
            }
        }
    };
    let slave = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&tty)
    {
        Ok(slave) => slave,
        Err(e) => {
            release();
            return Err(Refusal::new(
                ErrorKind::Host,
                format!("cannot open the console {tty} of vm '{name}': {e}"),
            ));
        }
    };
    if let Err(e) = link.request(&ToMonitor::ConsoleAttach) {
        release();
        return Err(Refusal::new(
            ErrorKind::Host,
            format!(
                "cannot attach to the console of vm '{name}': {}",
                ipc::error_chain(&e)
            ),
        ));
    }
    log::info!(
        "vm {id} ({name}): console attached by uid {} pid {}",
        peer.uid,
        peer.pid
    );
    Ok(ConsoleSession {
        id,
        name,
        tty,
        slave,
        link,
        client: peer.pid,
    })
}

/// The client of `session` left. dev-console is told before the console
/// counts as free, so that a new client's attach can never be overtaken
/// by this detach.
pub fn detach(vmd: &Vmd, session: ConsoleSession) {
    let ours = vmd
        .lock()
        .vms
        .get(session.id)
        .is_some_and(|e| e.console_client == Some(session.client));
    if !ours {
        return;
    }
    if let Err(e) = session.link.request(&ToMonitor::ConsoleDetach) {
        log::debug!(
            "vm {}: console detach: {}",
            session.id,
            ipc::error_chain(&e)
        );
    }
    let mut state = vmd.lock();
    if let Some(entry) = state.vms.get_mut(session.id) {
        if entry.console_client == Some(session.client) {
            entry.console_client = None;
        }
    }
    drop(state);
    log::info!("vm {} ({}): console detached", session.id, session.name);
}
