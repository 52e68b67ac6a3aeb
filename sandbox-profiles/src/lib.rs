//! Per-process sandbox profiles of vmd-rs and the code that applies them.
//!
//! A profile is data: `profiles/<name>.json`, a seccomp allowlist where
//! every rule says why, composed from `common` (the Rust runtime, logging)
//! and `vhost_user_backend` (serving a vhost-user connection), compiled to
//! BPF by build.rs (a bad profile breaks the build). [`enter`] applies one
//! to the calling process, in stages, each giving up more:
//!
//! 0. in namespaces of its own (the monitor starts it so): an empty,
//!    read-only root;
//! 1. resource limits (open files, threads, no core dumps);
//! 2. the capability bounding set, then the uid and gids (when started as
//!    root and given an unprivileged uid), then every capability left;
//! 3. no_new_privs;
//! 4. a landlock domain that grants no path, no TCP port, no signal to a
//!    process outside it;
//! 5. the SIGSYS reporter, then the seccomp filters, on every thread.
//!
//! A call outside the profile traps: the reporter writes which profile,
//! thread and call to the parent's report fd and ends the process with
//! [`report::EXIT_SANDBOX_VIOLATION`]; the parent logs it by name.
//!
//! | module | owns |
//! | --- | --- |
//! | [`privileges`] | rlimits, uid/gid, capabilities, no_new_privs |
//! | [`landlock_domain`] | the landlock domain that grants nothing |
//! | [`exec_root`] | the monitor's root: its executables and their libraries only |
//! | [`elf_deps`] | the libraries an executable loads |
//! | [`mount_ns`] | the empty, read-only root of a process in its own mount namespace |
//! | [`report`] | the SIGSYS reporter, and reading a report in the parent |
//! | [`selftest`] | the test-only trigger: try a call the profile refuses |
//! | [`syscall_names`] | x86_64 system call names, for reports |
//! | [`constants`] | the named argument values profiles may use |

pub mod constants;
pub mod elf_deps;
pub mod exec_root;
pub mod landlock_domain;
pub mod mount_ns;
pub mod privileges;
pub mod report;
pub mod selftest;
pub mod syscall_names;

use std::os::fd::RawFd;

pub use privileges::Limits;
pub use report::{read_report, EXIT_SANDBOX_VIOLATION};

mod generated {
    /// One BPF instruction: (code, jt, jf, k).
    pub type Instruction = (u16, u8, u8, u32);

    /// A profile as build.rs compiled it.
    #[derive(Debug)]
    pub struct CompiledProfile {
        /// The profile's file name, without `.json`.
        pub name: &'static str,
        /// The system calls it allows (some only with certain arguments).
        pub allowed: &'static [&'static str],
        /// The system calls that fail with an errno instead: (name, errno).
        pub errno: &'static [(&'static str, u32)],
        /// A denylist profile's calls (it allows every other one).
        pub denied: &'static [&'static str],
        /// The BPF programs to install in this order: the errno filters,
        /// then the allowlist (last: it traps the calls that install one).
        pub programs: &'static [&'static [Instruction]],
    }

    include!(concat!(env!("OUT_DIR"), "/profiles.rs"));
}

pub use generated::CompiledProfile;

/// The process roles that have a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// dev-block.
    DevBlock,
    /// dev-net.
    DevNet,
    /// dev-console.
    DevConsole,
    /// dev-block run standalone (`--socket PATH`).
    DevBlockStandalone,
    /// dev-net run standalone.
    DevNetStandalone,
    /// dev-console run standalone.
    DevConsoleStandalone,
    /// The monitor, all its threads ([`enter_monitor`]).
    Monitor,
    /// The monitor's device launcher ([`enter_launcher`]): a denylist.
    Launcher,
    /// A vCPU thread of the monitor ([`enter_thread`]).
    MonitorVcpu,
}

impl Profile {
    /// The profile's name: its file `profiles/<name>.json`.
    pub fn name(self) -> &'static str {
        match self {
            Self::DevBlock => "dev_block",
            Self::DevNet => "dev_net",
            Self::DevConsole => "dev_console",
            Self::DevBlockStandalone => "dev_block_standalone",
            Self::DevNetStandalone => "dev_net_standalone",
            Self::DevConsoleStandalone => "dev_console_standalone",
            Self::Monitor => "monitor",
            Self::Launcher => "launcher",
            Self::MonitorVcpu => "monitor_vcpu",
        }
    }

    /// The profile of this device run standalone (`--socket PATH`): its
    /// own and `listening`. Other profiles are their own.
    pub fn standalone(self) -> Self {
        match self {
            Self::DevBlock => Self::DevBlockStandalone,
            Self::DevNet => Self::DevNetStandalone,
            Self::DevConsole => Self::DevConsoleStandalone,
            other => other,
        }
    }

    /// The compiled profile.
    pub fn compiled(self) -> &'static CompiledProfile {
        compiled(self.name()).unwrap_or_else(|| {
            unreachable!(
                "build.rs compiles every profile in profiles/, {} included",
                self.name()
            )
        })
    }
}

/// The compiled profile named `name`.
pub fn compiled(name: &str) -> Option<&'static CompiledProfile> {
    generated::PROFILES.iter().find(|p| p.name == name)
}

/// Every compiled profile.
pub fn all() -> &'static [CompiledProfile] {
    generated::PROFILES
}

/// How a process is sandboxed beyond its profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Resource limits.
    pub limits: Limits,
    /// The unprivileged uid and gid to become, when started as root.
    pub user: Option<(u32, u32)>,
    /// Where the SIGSYS reporter writes, besides stderr (the parent reads
    /// it after reaping the process).
    pub report_fd: Option<RawFd>,
    /// The process was started in namespaces of its own (user, mount, pid,
    /// ipc, uts, network), as its user namespace's root: it builds its
    /// empty root, and its uid outside is already the unprivileged one.
    pub namespaces: bool,
}

/// Why the sandbox could not be entered (the process must not go on).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Giving up a privilege failed.
    #[error("profile {profile}: giving up privileges")]
    Privileges {
        /// The profile.
        profile: &'static str,
        /// What failed.
        #[source]
        source: privileges::PrivilegeError,
    },
    /// The empty root could not be entered.
    #[error("profile {profile}: entering an empty root")]
    EmptyRoot {
        /// The profile.
        profile: &'static str,
        /// What failed.
        #[source]
        source: mount_ns::MountError,
    },
    /// The landlock domain could not be entered.
    #[error("profile {profile}: entering the landlock domain")]
    Landlock {
        /// The profile.
        profile: &'static str,
        /// What failed.
        #[source]
        source: landlock_domain::LandlockError,
    },
    /// The SIGSYS reporter could not be installed.
    #[error("profile {profile}: installing the SIGSYS reporter")]
    Reporter {
        /// The profile.
        profile: &'static str,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a seccomp filter.
    #[error("profile {profile}: installing seccomp filter {index}")]
    Seccomp {
        /// The profile.
        profile: &'static str,
        /// Which of its programs.
        index: usize,
        /// What failed.
        #[source]
        source: seccompiler::Error,
    },
}

/// Applies `profile` to the calling process (all its threads: call it
/// before starting any but the logger's). On error the process must
/// exit: it is partly sandboxed.
pub fn enter(profile: Profile, options: &Options) -> Result<(), SandboxError> {
    let name = profile.name();
    let privileges = |source| SandboxError::Privileges {
        profile: name,
        source,
    };
    if options.namespaces {
        mount_ns::enter_empty_root().map_err(|source| SandboxError::EmptyRoot {
            profile: name,
            source,
        })?;
    }
    privileges::set_limits(options.limits).map_err(privileges)?;
    privileges::drop_bounding_set().map_err(privileges)?;
    if let (Some((uid, gid)), false) = (options.user, options.namespaces) {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            privileges::become_user(uid, gid).map_err(privileges)?;
        }
    }
    privileges::drop_capabilities().map_err(privileges)?;
    privileges::no_new_privs().map_err(privileges)?;
    landlock(name, landlock_domain::deny_everything())?;
    report::install(name, options.report_fd).map_err(|source| SandboxError::Reporter {
        profile: name,
        source,
    })?;
    install_filters(profile.compiled())
}

/// How a landlock domain was entered: logged if this kernel enforces
/// only part of it, an error if it refused it.
fn landlock(
    name: &'static str,
    entered: Result<landlock_domain::Enforcement, landlock_domain::LandlockError>,
) -> Result<(), SandboxError> {
    match entered {
        Ok(landlock_domain::Enforcement::Full) => Ok(()),
        Ok(partial) => {
            log::warn!("profile {name}: landlock enforcement is {partial:?} on this kernel");
            Ok(())
        }
        Err(source) => Err(SandboxError::Landlock {
            profile: name,
            source,
        }),
    }
}

/// Confines a monitor once its device launcher runs (the launcher, not
/// the monitor, starts processes): a landlock domain that grants no path
/// and no TCP port ([`landlock_domain::deny_all_but_signals`]), then the
/// SIGSYS reporter (writing to stderr and `report_fd`, which vmd reads)
/// and the `monitor` profile on every thread. vCPU
/// threads started later narrow it with [`enter_thread`]. The process has
/// no_new_privs already (vmd starts it so) or seccompiler sets it.
pub fn enter_monitor(report_fd: Option<RawFd>) -> Result<(), SandboxError> {
    let profile = Profile::Monitor;
    let name = profile.name();
    landlock(name, landlock_domain::deny_all_but_signals())?;
    report::install(name, report_fd).map_err(|source| SandboxError::Reporter {
        profile: name,
        source,
    })?;
    install_filters(profile.compiled())
}

/// Filters a monitor's device launcher with the `launcher` denylist
/// (every device it starts inherits it, beneath the device's own
/// profile, from its first instruction), after the SIGSYS reporter.
pub fn enter_launcher() -> Result<(), SandboxError> {
    let profile = Profile::Launcher;
    report::install(profile.name(), None).map_err(|source| SandboxError::Reporter {
        profile: profile.name(),
        source,
    })?;
    install_filters(profile.compiled())
}

/// Applies `profile` to the calling thread only, and to the threads it
/// starts later (a monitor's vCPU thread: its profile is narrower than its
/// process's). The process must have no_new_privs (vmd sets it when it
/// starts a monitor) or seccompiler sets it. A refused call reports to
/// stderr and ends the process.
pub fn enter_thread(profile: Profile) -> Result<(), SandboxError> {
    let name = profile.name();
    report::install(name, None).map_err(|source| SandboxError::Reporter {
        profile: name,
        source,
    })?;
    for (index, program) in profile.compiled().programs.iter().enumerate() {
        seccompiler::apply_filter(&to_bpf(program)).map_err(|source| SandboxError::Seccomp {
            profile: name,
            index,
            source,
        })?;
    }
    Ok(())
}

fn to_bpf(program: &[generated::Instruction]) -> seccompiler::BpfProgram {
    program
        .iter()
        .map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
        .collect()
}

/// Installs a compiled profile's seccomp programs on every thread.
fn install_filters(profile: &'static CompiledProfile) -> Result<(), SandboxError> {
    for (index, program) in profile.programs.iter().enumerate() {
        seccompiler::apply_filter_all_threads(&to_bpf(program)).map_err(|source| {
            SandboxError::Seccomp {
                profile: profile.name,
                index,
                source,
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
