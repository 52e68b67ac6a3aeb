//! Who may do what: VM owners resolved to ids, and each request's peer
//! checked against them.
//!
//! Rules (vmd's): root may do anything; a VM's owner — its user, or any
//! member of its group — may start, stop, pause, unpause and attach to
//! that VM; everyone who can reach the socket may read the status. A VM
//! whose devices run unsandboxed (vm.conf's `sandbox no`) only root may
//! start, its owner included; vmd starting VMs itself counts as root.

use std::os::unix::net::UnixStream;

use nix::unistd::{Gid, Group, Uid, User};

use super::conf::Owner;

/// An owner with its names resolved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvedOwner {
    /// The owning user.
    pub uid: Option<u32>,
    /// The owning group.
    pub gid: Option<u32>,
    /// As `vmctl status` shows it: `user`, `user:group`, `:group`, or
    /// `root` for a VM without owner.
    pub text: String,
}

/// Why an owner cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnerError {
    /// No such user.
    #[error("unknown user '{0}'")]
    NoUser(String),
    /// No such group.
    #[error("unknown group '{0}'")]
    NoGroup(String),
}

/// Resolves `owner` (names or numeric ids) against the host's user and
/// group databases. A user given without a group leaves the group unset.
pub fn resolve(owner: &Owner) -> Result<ResolvedOwner, OwnerError> {
    let uid = match &owner.user {
        None => None,
        Some(name) => Some(user_id(name)?),
    };
    let gid = match &owner.group {
        None => None,
        Some(name) => Some(group_id(name)?),
    };
    let text = match (&owner.user, &owner.group) {
        (Some(u), Some(g)) => format!("{u}:{g}"),
        (Some(u), None) => u.clone(),
        (None, Some(g)) => format!(":{g}"),
        (None, None) => "root".into(),
    };
    Ok(ResolvedOwner { uid, gid, text })
}

/// The owner of a VM started by `uid` without a configured owner: that
/// user (root's VMs show as "root").
pub fn owner_of_peer(uid: u32) -> ResolvedOwner {
    if uid == 0 {
        return ResolvedOwner {
            text: "root".into(),
            ..Default::default()
        };
    }
    let text = User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    ResolvedOwner {
        uid: Some(uid),
        gid: None,
        text,
    }
}

fn user_id(name: &str) -> Result<u32, OwnerError> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(id);
    }
    match User::from_name(name) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        _ => Err(OwnerError::NoUser(name.into())),
    }
}

fn group_id(name: &str) -> Result<u32, OwnerError> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(id);
    }
    match Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        _ => Err(OwnerError::NoGroup(name.into())),
    }
}

/// The process at the other end of a control connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its effective uid.
    pub uid: u32,
    /// Its gid and supplementary groups.
    pub groups: Vec<u32>,
    /// Its pid, for the log.
    pub pid: i32,
}

impl Peer {
    /// The peer of `stream`, by SO_PEERCRED; its supplementary groups are
    /// read from /proc (the peer's, at the time of the request).
    pub fn of(stream: &UnixStream) -> std::io::Result<Self> {
        let cred = ipc::peer_credentials(stream)?;
        let mut groups = vec![cred.gid];
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", cred.pid)) {
            groups.extend(supplementary_groups(&status));
        }
        Ok(Self {
            uid: cred.uid,
            groups,
            pid: cred.pid,
        })
    }

    /// Root.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether this peer may start, stop, pause, unpause and attach to a
    /// VM owned by `owner`.
    pub fn may_control(&self, owner: &ResolvedOwner) -> bool {
        self.is_root()
            || owner.uid == Some(self.uid)
            || owner.gid.is_some_and(|g| self.groups.contains(&g))
    }

    /// The peer's user name, for messages.
    pub fn name(&self) -> String {
        owner_of_peer(self.uid).text
    }
}

/// The `Groups:` line of a /proc/PID/status text.
fn supplementary_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Who asks for a VM to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Starter {
    /// vmd itself (its enabled VMs, at startup and after `load`, `reload`
    /// or `reset`): root, as vmd is, and as the configuration asked.
    Vmd,
    /// A `vmctl start` from the user `uid`.
    User(u32),
}

impl Starter {
    /// Whether this counts as root asking.
    pub fn is_root(self) -> bool {
        match self {
            Starter::Vmd => true,
            Starter::User(uid) => uid == 0,
        }
    }

    /// Who asked, for the log: `as root asked`, `as vmd starts it itself`.
    pub fn describe(self) -> &'static str {
        match self {
            Starter::Vmd => "as vmd starts it itself (enable)",
            Starter::User(_) => "as root asked",
        }
    }
}

/// A start, by someone other than root, of a VM whose devices run
/// unsandboxed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("vm '{vm}': its devices run unsandboxed (sandbox no): only root may start it")]
pub struct UnsandboxedStart {
    /// The VM.
    pub vm: String,
}

/// Whether `by` may start VM `vm`, whose devices run unsandboxed when
/// `unsandboxed` (where vm.conf says `sandbox no`) is set: anyone who may
/// control it may start a sandboxed VM, only root an unsandboxed one.
pub fn check_unsandboxed_start(
    vm: &str,
    unsandboxed: Option<&str>,
    by: Starter,
) -> Result<(), UnsandboxedStart> {
    if unsandboxed.is_some() && !by.is_root() {
        return Err(UnsandboxedStart { vm: vm.into() });
    }
    Ok(())
}

/// The gid a user name or id stands for, for `socket owner`.
pub fn socket_owner_ids(owner: &Owner) -> Result<(Option<Uid>, Option<Gid>), OwnerError> {
    let resolved = resolve(owner)?;
    Ok((
        resolved.uid.map(Uid::from_raw),
        resolved.gid.map(Gid::from_raw),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            groups: groups.to_vec(),
            pid: 1,
        }
    }

    #[test]
    fn root_controls_everything_owner_and_group_their_own() {
        let owned = ResolvedOwner {
            uid: Some(1000),
            gid: Some(50),
            text: "bob:staff".into(),
        };
        let unowned = ResolvedOwner::default();
        assert!(peer(0, &[0]).may_control(&owned));
        assert!(peer(0, &[0]).may_control(&unowned));
        assert!(peer(1000, &[1000]).may_control(&owned));
        assert!(peer(1001, &[1001, 50]).may_control(&owned));
        assert!(!peer(1001, &[1001]).may_control(&owned));
        assert!(!peer(1000, &[1000]).may_control(&unowned));
    }

    #[test]
    fn owners_resolve_names_and_numbers() {
        let o = |u: Option<&str>, g: Option<&str>| Owner {
            user: u.map(Into::into),
            group: g.map(Into::into),
        };
        let r = resolve(&o(Some("root"), Some("0"))).unwrap();
        assert_eq!(
            (r.uid, r.gid, r.text.as_str()),
            (Some(0), Some(0), "root:0")
        );
        let r = resolve(&o(Some("4242"), None)).unwrap();
        assert_eq!((r.uid, r.gid), (Some(4242), None));
        assert_eq!(
            resolve(&o(Some("no-such-user-xyz"), None)),
            Err(OwnerError::NoUser("no-such-user-xyz".into()))
        );
        assert_eq!(
            resolve(&o(None, Some("no-such-group-xyz"))),
            Err(OwnerError::NoGroup("no-such-group-xyz".into()))
        );
    }

    #[test]
    fn only_root_or_vmd_starts_an_unsandboxed_vm() {
        let at = Some("/etc/vm.conf:12");
        assert_eq!(
            check_unsandboxed_start("web", at, Starter::User(1000))
                .unwrap_err()
                .to_string(),
            "vm 'web': its devices run unsandboxed (sandbox no): only root may start it"
        );
        assert!(check_unsandboxed_start("web", at, Starter::User(0)).is_ok());
        assert!(check_unsandboxed_start("web", at, Starter::Vmd).is_ok());
        assert!(check_unsandboxed_start("web", None, Starter::User(1000)).is_ok());
    }

    #[test]
    fn supplementary_groups_read_from_status() {
        let status = "Name:\tx\nUid:\t1\t1\t1\t1\nGroups:\t4 24 27 \nNgid:\t0\n";
        assert_eq!(supplementary_groups(status), vec![4, 24, 27]);
        assert!(supplementary_groups("Name: x\n").is_empty());
    }
}
