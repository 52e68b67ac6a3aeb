use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

use super::*;

/// Calls no device process may make, in any profile (nor the monitor,
/// but for the two signals it sends its own devices and threads).
const NEVER: &[&str] = &[
    "execve",
    "execveat",
    "fork",
    "vfork",
    "ptrace",
    "socket",
    "connect",
    "bind",
    "listen",
    "open",
    "openat",
    "openat2",
    "kill",
    "tgkill",
    "tkill",
    "setuid",
    "setresuid",
    "setgid",
    "capset",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "bpf",
    "perf_event_open",
    "process_vm_readv",
    "process_vm_writev",
    "io_uring_setup",
    "userfaultfd",
    "keyctl",
    "init_module",
    "finit_module",
    "kexec_load",
    "reboot",
    "swapon",
    "acct",
];

#[test]
fn every_profile_compiles_and_none_allows_what_no_device_needs() {
    let names: Vec<&str> = all().iter().map(|p| p.name).collect();
    for leaf in [Profile::DevBlock, Profile::DevNet, Profile::DevConsole] {
        assert!(names.contains(&leaf.name()), "{names:?}");
    }
    for p in all() {
        for call in NEVER {
            // The monitor signals its own device processes (to end one)
            // and its vCPU threads (to kick one out of KVM_RUN).
            if p.name == "monitor" && ["kill", "tgkill"].contains(call) {
                continue;
            }
            assert!(
                !p.allowed.contains(call),
                "profile {} allows {call}",
                p.name
            );
        }
        for (call, _) in p.errno {
            assert!(syscall_names::number(call).is_some(), "{call}");
        }
    }
    // Composition: a leaf has what its includes have.
    let common = compiled("common").unwrap();
    for leaf in [Profile::DevBlock, Profile::DevNet, Profile::DevConsole] {
        for call in common.allowed {
            assert!(
                leaf.compiled().allowed.contains(call),
                "{} lacks {call}",
                leaf.name()
            );
        }
    }
    assert!(Profile::DevNet.compiled().allowed.contains(&"writev"));
    assert!(!Profile::DevConsole.compiled().allowed.contains(&"writev"));
}

#[test]
fn named_constants_have_the_kernel_values() {
    let libc_values: &[(&str, u64)] = &[
        ("PROT_EXEC", libc::PROT_EXEC as u64),
        ("MADV_DONTNEED", libc::MADV_DONTNEED as u64),
        ("CLONE_THREAD", libc::CLONE_THREAD as u64),
        ("PR_SET_NAME", libc::PR_SET_NAME as u64),
        ("PR_GET_NAME", libc::PR_GET_NAME as u64),
        ("PR_SET_NO_NEW_PRIVS", libc::PR_SET_NO_NEW_PRIVS as u64),
        (
            "SECCOMP_SET_MODE_FILTER",
            libc::SECCOMP_SET_MODE_FILTER as u64,
        ),
        ("AT_EMPTY_PATH", libc::AT_EMPTY_PATH as u64),
        ("F_GETFD", libc::F_GETFD as u64),
        ("F_SETFD", libc::F_SETFD as u64),
        ("F_GETFL", libc::F_GETFL as u64),
        ("F_SETFL", libc::F_SETFL as u64),
        ("F_DUPFD_CLOEXEC", libc::F_DUPFD_CLOEXEC as u64),
        ("F_ADD_SEALS", libc::F_ADD_SEALS as u64),
        ("SOL_SOCKET", libc::SOL_SOCKET as u64),
        ("SO_TYPE", libc::SO_TYPE as u64),
        ("SO_DOMAIN", libc::SO_DOMAIN as u64),
        (
            "FALLOC_FL_PUNCH_HOLE_KEEP_SIZE",
            (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u64,
        ),
        ("FALLOC_FL_ZERO_RANGE", libc::FALLOC_FL_ZERO_RANGE as u64),
        ("TCGETS", libc::TCGETS),
        ("TCSETS", libc::TCSETS),
        ("TCFLSH", libc::TCFLSH),
    ];
    for (name, value) in libc_values {
        assert_eq!(constants::constant(name), Some(*value), "{name}");
    }
    // The tun ioctls are not in libc: _IOR/_IOW('T', nr, 4 bytes).
    let ioc = |dir: u64, nr: u64| (dir << 30) | (4 << 16) | (u64::from(b'T') << 8) | nr;
    assert_eq!(constants::constant("TUNGETIFF"), Some(ioc(2, 210)));
    assert_eq!(constants::constant("TUNSETOFFLOAD"), Some(ioc(1, 208)));
    assert_eq!(constants::constant("TUNSETVNETHDRSZ"), Some(ioc(1, 216)));
    // KVM's: _IOC(dir, 0xAE, nr, size).
    let kvm = |dir: u64, nr: u64, size: u64| (dir << 30) | (size << 16) | (0xae << 8) | nr;
    assert_eq!(constants::constant("KVM_RUN"), Some(kvm(0, 0x80, 0)));
    assert_eq!(constants::constant("KVM_IOEVENTFD"), Some(kvm(1, 0x79, 64)));
    assert_eq!(constants::constant("KVM_IRQFD"), Some(kvm(1, 0x76, 32)));
    assert_eq!(
        constants::constant("KVM_SET_GSI_ROUTING"),
        Some(kvm(1, 0x6a, 8))
    );
    assert_eq!(constants::constant("KVM_GET_REGS"), Some(kvm(2, 0x81, 144)));
    // The build ioctls, sized from kvm-bindings' structs.
    use std::mem::size_of;
    let size = |n: usize| n as u64;
    let expected = [
        ("KVM_GET_API_VERSION", kvm(0, 0x00, 0)),
        ("KVM_CREATE_VM", kvm(0, 0x01, 0)),
        ("KVM_CHECK_EXTENSION", kvm(0, 0x03, 0)),
        ("KVM_GET_VCPU_MMAP_SIZE", kvm(0, 0x04, 0)),
        (
            "KVM_GET_SUPPORTED_CPUID",
            kvm(3, 0x05, size(size_of::<kvm_bindings::kvm_cpuid2>())),
        ),
        ("KVM_CREATE_VCPU", kvm(0, 0x41, 0)),
        (
            "KVM_SET_USER_MEMORY_REGION",
            kvm(
                1,
                0x46,
                size(size_of::<kvm_bindings::kvm_userspace_memory_region>()),
            ),
        ),
        ("KVM_SET_TSS_ADDR", kvm(0, 0x47, 0)),
        ("KVM_SET_IDENTITY_MAP_ADDR", kvm(1, 0x48, 8)),
        ("KVM_CREATE_IRQCHIP", kvm(0, 0x60, 0)),
        (
            "KVM_CREATE_PIT2",
            kvm(1, 0x77, size(size_of::<kvm_bindings::kvm_pit_config>())),
        ),
        (
            "KVM_SET_CPUID2",
            kvm(1, 0x90, size(size_of::<kvm_bindings::kvm_cpuid2>())),
        ),
        (
            "KVM_SET_MSRS",
            kvm(1, 0x89, size(size_of::<kvm_bindings::kvm_msrs>())),
        ),
        (
            "KVM_GET_SREGS",
            kvm(2, 0x83, size(size_of::<kvm_bindings::kvm_sregs>())),
        ),
        (
            "KVM_SET_SREGS",
            kvm(1, 0x84, size(size_of::<kvm_bindings::kvm_sregs>())),
        ),
        (
            "KVM_SET_REGS",
            kvm(1, 0x82, size(size_of::<kvm_bindings::kvm_regs>())),
        ),
        (
            "KVM_SET_FPU",
            kvm(1, 0x8d, size(size_of::<kvm_bindings::kvm_fpu>())),
        ),
        (
            "KVM_GET_LAPIC",
            kvm(2, 0x8e, size(size_of::<kvm_bindings::kvm_lapic_state>())),
        ),
        (
            "KVM_SET_LAPIC",
            kvm(1, 0x8f, size(size_of::<kvm_bindings::kvm_lapic_state>())),
        ),
    ];
    for (name, value) in expected {
        assert_eq!(constants::constant(name), Some(value), "{name}");
    }
}

/// Env var that makes this test binary, re-run as a child, act as a
/// sandboxed process (`child_role` below) and try one call.
const CHILD_ENV: &str = "SANDBOX_PROFILES_TEST_CHILD";

/// In the child: enters the dev_net profile, then tries what $CHILD_ENV
/// names. Exits 0 when the call was refused with an errno, and (if the
/// filter traps) never returns.
#[test]
fn child_role() {
    let Ok(what) = std::env::var(CHILD_ENV) else {
        return;
    };
    let report_fd: i32 = std::env::var("SANDBOX_PROFILES_REPORT_FD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1);
    let options = Options {
        limits: Limits {
            open_files: 256,
            threads: 4096,
        },
        user: None,
        report_fd: (report_fd >= 0).then_some(report_fd),
        namespaces: false,
    };
    enter(Profile::DevNet, &options).expect("entering the sandbox");
    let path = c"/etc/passwd";
    let ret = match what.as_str() {
        // SAFETY: a valid C string; the result is only checked.
        "openat" => unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) },
        // SAFETY: plain arguments.
        "socket" => unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) },
        "ptrace" => {
            // SAFETY: plain arguments; the process is not traced.
            let r = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
            r as i32
        }
        "execve" => {
            let argv = [path.as_ptr(), std::ptr::null()];
            // SAFETY: NULL-terminated argv of valid C strings, empty envp.
            unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), [std::ptr::null()].as_ptr()) }
        }
        "mmap_exec" => {
            // SAFETY: an anonymous mapping request; the result is only checked.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                -1
            } else {
                0
            }
        }
        other => panic!("unknown child action {other}"),
    };
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // Refused with an errno: say which, through the exit status.
    std::process::exit(if ret < 0 { 100 + errno.min(100) } else { 1 });
}

/// Runs `child_role` in a child doing `what`; (exit code, report).
fn run_child(what: &str) -> (Option<i32>, String) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into `fds`.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), 0) }, 0);
    // SAFETY: both fds were just created and are ours.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::child_role",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, what)
        .env(
            "SANDBOX_PROFILES_REPORT_FD",
            write_end.as_raw_fd().to_string(),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    drop(write_end);
    let mut report = String::new();
    let _ = std::fs::File::from(read_end).read_to_string(&mut report);
    (status.code(), report)
}

#[test]
fn a_call_outside_the_profile_ends_the_process_and_is_reported_by_name() {
    for (what, nr) in [("socket", 41), ("ptrace", 101), ("execve", 59)] {
        let (code, report) = run_child(what);
        assert_eq!(code, Some(EXIT_SANDBOX_VIOLATION), "{what}: {report}");
        let name = syscall_names::name(nr).unwrap();
        assert!(
            report.contains("profile dev_net: thread ")
                && report.contains(&format!("made syscall {name} ({nr})")),
            "{what}: {report:?}"
        );
    }
}

#[test]
fn opening_a_path_fails_with_enoent_and_executable_memory_is_refused() {
    let (code, report) = run_child("openat");
    assert_eq!(code, Some(100 + libc::ENOENT), "{report}");
    assert!(report.is_empty(), "{report}");
    // PROT_EXEC is outside the mmap rule: a trap, reported as mmap.
    let (code, report) = run_child("mmap_exec");
    assert_eq!(code, Some(EXIT_SANDBOX_VIOLATION), "{report}");
    assert!(report.contains("made syscall mmap (9)"), "{report}");
}

/// The launcher's denylist sits beneath every device's own profile for
/// the device's whole life: it must deny nothing a device profile allows
/// (or makes fail with an errno), and it must deny what no process of a
/// VM needs.
#[test]
fn the_launcher_denies_nothing_a_device_uses_and_what_none_needs() {
    let launcher = Profile::Launcher.compiled();
    assert!(launcher.allowed.is_empty() && launcher.errno.is_empty());
    for device in [Profile::DevBlock, Profile::DevNet, Profile::DevConsole] {
        let p = device.compiled();
        for call in p.allowed.iter().chain(p.errno.iter().map(|(c, _)| c)) {
            assert!(
                !launcher.denied.contains(call),
                "the launcher denies {call}, which {} uses",
                p.name
            );
        }
    }
    // What a device does before its own filter, and the launcher itself:
    // the dynamic loader opens libraries, the empty root is mounted, the
    // child takes root in its namespace and executes the device.
    let needed_before_its_filter = [
        "openat",
        "open",
        "mount",
        "umount2",
        "pivot_root",
        "setresuid",
        "capset",
        "execve",
        "kill",
        "tgkill",
        "tkill",
        "setuid",
        "setgid",
    ];
    for call in NEVER {
        if !needed_before_its_filter.contains(call) {
            assert!(launcher.denied.contains(call), "the launcher allows {call}");
        }
    }
    for call in launcher.denied {
        assert!(syscall_names::number(call).is_some(), "{call}");
    }
}

/// docs/security.md lists each profile's calls with their reasons and the
/// counts: it must say what the profiles say.
#[test]
fn docs_security_md_matches_the_profiles() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md");
    let doc = std::fs::read_to_string(path).expect("docs/security.md");
    let section = |name: &str| -> String {
        let head = format!("### `{name}`");
        let start = doc
            .find(&head)
            .unwrap_or_else(|| panic!("no section for {name}"));
        let rest = &doc[start + head.len()..];
        let end = rest.find("\n#").unwrap_or(rest.len());
        rest[..end].to_string()
    };
    let rows = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| {
                l.strip_prefix("| `")?
                    .split_once('`')
                    .map(|(c, _)| c.to_string())
            })
            .collect()
    };
    for p in all() {
        let own = rows(&section(p.name));
        for call in &own {
            let known = p.allowed.contains(&call.as_str())
                || p.errno.iter().any(|(c, _)| c == call)
                || p.denied.contains(&call.as_str());
            assert!(
                known,
                "docs/security.md lists {call} under {} but the profile has it not",
                p.name
            );
        }
        let everywhere = rows(&doc);
        let listed = p.allowed.iter().chain(p.errno.iter().map(|(c, _)| c));
        for call in listed.chain(p.denied.iter()) {
            assert!(
                everywhere.iter().any(|c| c == call),
                "{}: {call} is not in docs/security.md",
                p.name
            );
        }
    }
    for monitor in [Profile::MonitorVcpu, Profile::Monitor] {
        let p = monitor.compiled();
        let text = format!(
            "`{}`: {}, and {} with an",
            p.name,
            p.allowed.len(),
            p.errno.len()
        );
        assert!(
            doc.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .contains(&text),
            "docs/security.md should say {text:?}"
        );
    }
    for leaf in [Profile::DevBlock, Profile::DevNet, Profile::DevConsole] {
        let p = leaf.compiled();
        let row = format!("| {} | {} | {} ", p.name, p.allowed.len(), p.errno.len());
        assert!(
            doc.contains(&row),
            "docs/security.md: the counts row should start {row:?}"
        );
    }
}
