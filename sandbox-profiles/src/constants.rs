//! The named constants a profile may use as an argument value, with their
//! x86_64 Linux values (uapi headers). Shared by build.rs, which resolves
//! the names, and the crate's tests, which check the values against libc.

/// (name, value) pairs. Flags combined in one value are named with the
/// flags joined by `_` and say so in the profile's comment.
pub const CONSTANTS: &[(&str, u64)] = &[
    // <asm-generic/mman-common.h>
    ("PROT_EXEC", 0x4),
    ("MADV_DONTNEED", 4),
    // <linux/sched.h>
    ("CLONE_THREAD", 0x0001_0000),
    // <linux/prctl.h>
    ("PR_SET_NAME", 15),
    ("PR_GET_NAME", 16),
    // <linux/fcntl.h>, <asm-generic/fcntl.h>
    ("AT_EMPTY_PATH", 0x1000),
    ("F_GETFD", 1),
    ("F_SETFD", 2),
    ("F_GETFL", 3),
    ("F_SETFL", 4),
    ("F_DUPFD_CLOEXEC", 1030),
    // <linux/falloc.h>: KEEP_SIZE 0x01, PUNCH_HOLE 0x02, ZERO_RANGE 0x10
    ("FALLOC_FL_PUNCH_HOLE_KEEP_SIZE", 0x03),
    ("FALLOC_FL_ZERO_RANGE", 0x10),
    // <asm-generic/ioctls.h>
    ("TCGETS", 0x5401),
    ("TCSETS", 0x5402),
    ("TCFLSH", 0x540b),
    // <linux/if_tun.h>: _IOR('T', 210, unsigned int), _IOW('T', 208, ...),
    // _IOW('T', 216, int)
    ("TUNGETIFF", 0x8004_54d2),
    ("TUNSETOFFLOAD", 0x4004_54d0),
    ("TUNSETVNETHDRSZ", 0x4004_54d8),
    // <linux/kvm.h>, KVMIO 0xAE: _IO(KVMIO, 0x80), _IOW(KVMIO, 0x79,
    // struct kvm_ioeventfd (64 bytes)), _IOW(KVMIO, 0x76, struct kvm_irqfd
    // (32)), _IOW(KVMIO, 0x6a, struct kvm_irq_routing (8)), _IOR(KVMIO,
    // 0x81, struct kvm_regs (144))
    ("KVM_RUN", 0xae80),
    ("KVM_IOEVENTFD", 0x4040_ae79),
    ("KVM_IRQFD", 0x4020_ae76),
    ("KVM_SET_GSI_ROUTING", 0x4008_ae6a),
    ("KVM_GET_REGS", 0x8090_ae81),
];

/// The value of constant `name`.
pub fn constant(name: &str) -> Option<u64> {
    CONSTANTS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}
