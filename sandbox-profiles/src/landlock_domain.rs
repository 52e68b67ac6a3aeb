//! A landlock domain that grants nothing: every filesystem right (open,
//! create, remove, execute, truncate, ioctl on devices...), TCP bind and
//! connect, abstract unix sockets made outside the domain, and signals
//! to processes outside it are all denied, whatever seccomp allows. A
//! second wall behind the seccomp profile, and the one that holds for
//! calls seccomp cannot look into (paths are pointers).

use landlock::{
    Access, AccessFs, AccessNet, RestrictSelfAttr, RestrictionStatus, Ruleset, RulesetAttr,
    RulesetStatus, Scope, ABI,
};

/// The landlock ABI this crate asks for (Linux 6.12: scopes).
const ABI_WANTED: ABI = ABI::V6;

/// Why the domain could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// Landlock refused the ruleset.
    #[error("landlock")]
    Ruleset(#[source] landlock::RulesetError),
}

/// How much of the denial this kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// All of it.
    Full,
    /// An older landlock: some rights (network, scopes) are not denied.
    Partial,
    /// No landlock in this kernel: seccomp alone keeps paths closed.
    None,
}

/// Enters the domain (this thread and any it starts later; call it
/// before starting threads, or from the only thread).
pub fn deny_everything() -> Result<Enforcement, LandlockError> {
    enter(Scope::from_all(ABI_WANTED))
}

/// The domain a monitor enters: as [`deny_everything`], except that it
/// may signal processes outside it — its device processes, which its
/// launcher started outside the domain (to stop one, or to pass on a log
/// level). The uid and the pid namespace still bound what it may signal.
pub fn deny_all_but_signals() -> Result<Enforcement, LandlockError> {
    enter(Scope::AbstractUnixSocket.into())
}

/// The landlock ABI version the kernel implements (0: none).
pub fn kernel_abi() -> i64 {
    /// `LANDLOCK_CREATE_RULESET_VERSION`.
    const VERSION: libc::c_uint = 1;
    // SAFETY: with this flag the call reads no pointer and returns the
    // version.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            VERSION,
        )
    };
    version.max(0)
}

fn enter(scopes: landlock::BitFlags<Scope>) -> Result<Enforcement, LandlockError> {
    let status: RestrictionStatus = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_WANTED))
        .and_then(|r| r.handle_access(AccessNet::from_all(ABI_WANTED)))
        .and_then(|r| r.scope(scopes))
        .and_then(|r| r.create())
        // Every thread, where the kernel can (landlock ABI 8); an older
        // one binds only the calling thread and the threads it starts.
        .and_then(|r| r.all_threads(kernel_abi() >= 8))
        .and_then(|r| r.restrict_self())
        .map_err(LandlockError::Ruleset)?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Enforcement::Full,
        RulesetStatus::PartiallyEnforced => Enforcement::Partial,
        RulesetStatus::NotEnforced => Enforcement::None,
    })
}
