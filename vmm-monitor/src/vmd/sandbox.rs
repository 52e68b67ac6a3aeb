//! The unprivileged identity each VM's sandboxed processes take.
//!
//! Every VM gets a uid and gid of its own, `SANDBOX_ID_BASE + id` (ids
//! wrap within [`SANDBOX_ID_SPAN`]), so that two VMs' device processes
//! cannot signal, trace or read each other even before their namespaces
//! and seccomp filters do. The range sits above systemd's container range
//! (up to 0x6fffffff) and below 0x7fff0000, and no account should own it;
//! `/etc/passwd` is not consulted.

/// First uid/gid of the range.
pub const SANDBOX_ID_BASE: u32 = 0x7000_0000;
/// Ids in the range.
pub const SANDBOX_ID_SPAN: u32 = 0x0fff_0000;

/// The uid and gid of VM `id`'s sandboxed processes.
pub fn sandbox_user(id: u32) -> (u32, u32) {
    let n = SANDBOX_ID_BASE + id % SANDBOX_ID_SPAN;
    (n, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_vm_has_its_own_unprivileged_ids_in_the_range() {
        assert_eq!(sandbox_user(1), (0x7000_0001, 0x7000_0001));
        assert_ne!(sandbox_user(1), sandbox_user(2));
        let (uid, _) = sandbox_user(u32::MAX);
        assert!((SANDBOX_ID_BASE..SANDBOX_ID_BASE + SANDBOX_ID_SPAN).contains(&uid));
    }
}
