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
    ("PR_SET_NO_NEW_PRIVS", 38),
    // <linux/seccomp.h>
    ("SECCOMP_SET_MODE_FILTER", 1),
    // <linux/fcntl.h>, <asm-generic/fcntl.h>
    ("AT_EMPTY_PATH", 0x1000),
    ("F_GETFD", 1),
    ("F_SETFD", 2),
    ("F_GETFL", 3),
    ("F_SETFL", 4),
    ("F_DUPFD_CLOEXEC", 1030),
    ("F_ADD_SEALS", 1033),
    // <asm-generic/socket.h>
    ("SOL_SOCKET", 1),
    ("SO_TYPE", 3),
    ("SO_DOMAIN", 39),
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
    // Building a VM (again at each guest reset): _IO(KVMIO, nr) for
    // GET_API_VERSION 0x00, CREATE_VM 0x01, CHECK_EXTENSION 0x03,
    // GET_VCPU_MMAP_SIZE 0x04, CREATE_VCPU 0x41, SET_TSS_ADDR 0x47,
    // CREATE_IRQCHIP 0x60; the others with their struct's size: kvm_cpuid2
    // (8), kvm_userspace_memory_region (32), __u64 (8), kvm_pit_config
    // (64), kvm_msrs (8), kvm_sregs (312), kvm_regs (144), kvm_fpu (416),
    // kvm_lapic_state (1024).
    ("KVM_GET_API_VERSION", 0xae00),
    ("KVM_CREATE_VM", 0xae01),
    ("KVM_CHECK_EXTENSION", 0xae03),
    ("KVM_GET_VCPU_MMAP_SIZE", 0xae04),
    ("KVM_GET_SUPPORTED_CPUID", 0xc008_ae05),
    ("KVM_CREATE_VCPU", 0xae41),
    ("KVM_SET_USER_MEMORY_REGION", 0x4020_ae46),
    ("KVM_SET_TSS_ADDR", 0xae47),
    ("KVM_SET_IDENTITY_MAP_ADDR", 0x4008_ae48),
    ("KVM_CREATE_IRQCHIP", 0xae60),
    ("KVM_CREATE_PIT2", 0x4040_ae77),
    ("KVM_SET_CPUID2", 0x4008_ae90),
    ("KVM_SET_MSRS", 0x4008_ae89),
    ("KVM_GET_SREGS", 0x8138_ae83),
    ("KVM_SET_SREGS", 0x4138_ae84),
    ("KVM_SET_REGS", 0x4090_ae82),
    ("KVM_SET_FPU", 0x41a0_ae8d),
    ("KVM_GET_LAPIC", 0x8400_ae8e),
    ("KVM_SET_LAPIC", 0x4400_ae8f),
];

/// The value of constant `name`.
pub fn constant(name: &str) -> Option<u64> {
    CONSTANTS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}
