//! The sandbox options every device process takes, and entering its
//! profile (crate `sandbox-profiles`) once its fds are taken and before it
//! serves a single vhost-user message.
//!
//! Under the monitor a device is always sandboxed unless `--no-sandbox`
//! is given, which the monitor passes only when vmd was asked by root to
//! run that VM's devices unsandboxed (logged loudly at both ends).
//! Standalone (`--socket PATH`, for other frontends) it binds its socket,
//! then enters the same sandbox but the empty root (nobody started it in
//! namespaces of its own), its profile allowing `accept4` besides.

use sandbox_profiles::{Limits, Options, Profile, SandboxError};

use crate::process::{passed_fd, Endpoint, FdError};

/// Descriptors a device may hold: its passed fds, three eventfds and an
/// epoll set per queue, memory regions (at most 509 with
/// CONFIGURE_MEM_SLOTS, 8 without), the inflight memfd.
pub const MAX_OPEN_FILES: u64 = 1024;
/// Threads of the device's uid: queue workers and dev-block's I/O pools.
pub const MAX_THREADS: u64 = 4096;

/// The sandbox options, for `#[command(flatten)]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct SandboxArgs {
    /// Inherited pipe the sandbox's SIGSYS reporter writes to (from the
    /// monitor, which reads it when the process has ended).
    #[arg(long, value_name = "FD")]
    pub report_fd: Option<i32>,
    /// Unprivileged uid and gid to become when started as root.
    #[arg(long, value_name = "UID:GID", value_parser = parse_user)]
    pub sandbox_user: Option<(u32, u32)>,
    /// Serve without the sandbox (debugging only).
    #[arg(long)]
    pub no_sandbox: bool,
    /// Started in namespaces of its own (by the monitor): build an empty
    /// root before the rest of the sandbox.
    #[arg(long)]
    pub sandbox_namespaces: bool,
    /// Test only: once sandboxed, try CALL (openat, execve, socket,
    /// ptrace) and exit 3 if it was refused, 4 if it went through.
    #[arg(long, hide = true, value_name = "CALL")]
    pub sandbox_selftest: Option<String>,
}

/// Exit status of a self-test whose call was refused with an error.
pub const SELFTEST_REFUSED: i32 = 3;
/// Exit status of a self-test whose call went through (a broken sandbox).
pub const SELFTEST_ALLOWED: i32 = 4;

fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = s.split_once(':').ok_or("expected UID:GID")?;
    let uid: u32 = uid.parse().map_err(|_| format!("bad uid {uid:?}"))?;
    let gid: u32 = gid.parse().map_err(|_| format!("bad gid {gid:?}"))?;
    if uid == 0 || gid == 0 {
        return Err("the sandbox user must not be root".into());
    }
    Ok((uid, gid))
}

impl SandboxArgs {
    /// Checks the options: a report fd must be a passed fd (3 or more).
    pub fn validate(&self) -> Result<(), FdError> {
        if let Some(fd) = self.report_fd {
            passed_fd("report-fd", fd)?;
        }
        Ok(())
    }

    /// Enters `profile` before serving on `endpoint`: under the monitor
    /// on its inherited connection; standalone, once its socket is bound,
    /// the profile with `listening` added (accepting on that socket).
    pub fn enter_for(&self, endpoint: &Endpoint, profile: Profile) -> Result<(), SandboxError> {
        match endpoint {
            Endpoint::Stream(..) => self.enter(profile),
            Endpoint::Listen(..) => {
                // SAFETY: geteuid has no preconditions.
                let root = unsafe { libc::geteuid() } == 0;
                if root && self.sandbox_user.is_none() && !self.no_sandbox {
                    log::warn!(
                        "standalone as root without --sandbox-user: it keeps uid 0 (with no \
                         capability)"
                    );
                }
                self.enter(profile.standalone())
            }
        }
    }

    /// Enters `profile` (or says loudly that it does not). The report fd
    /// stays open for the process's life: the reporter writes to it.
    pub fn enter(&self, profile: Profile) -> Result<(), SandboxError> {
        if self.no_sandbox {
            log::warn!(
                "NOT SANDBOXED (--no-sandbox): profile {} is not applied; this process \
                 has every right its user has",
                profile.name()
            );
            return Ok(());
        }
        let options = Options {
            limits: Limits {
                open_files: MAX_OPEN_FILES,
                threads: MAX_THREADS,
            },
            user: self.sandbox_user,
            report_fd: self.report_fd,
            namespaces: self.sandbox_namespaces,
        };
        sandbox_profiles::enter(profile, &options)?;
        log::info!("sandboxed: profile {}", profile.name());
        if let Some(call) = &self.sandbox_selftest {
            self_test(call);
        }
        Ok(())
    }
}

/// Runs the self-test and exits (unless the call traps, which ends the
/// process with the sandbox's report).
fn self_test(call: &str) -> ! {
    match sandbox_profiles::selftest::attempt(call) {
        Err(e) => {
            log::error!("sandbox self-test: {call} refused: {e}");
            std::process::exit(SELFTEST_REFUSED)
        }
        Ok(()) => {
            log::error!("sandbox self-test: {call} WENT THROUGH: the sandbox is broken");
            std::process::exit(SELFTEST_ALLOWED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_user_is_two_non_root_ids() {
        assert_eq!(parse_user("1000:1000"), Ok((1000, 1000)));
        assert!(parse_user("0:5").unwrap_err().contains("root"));
        assert!(parse_user("5").is_err());
        assert!(parse_user("a:b").unwrap_err().contains("bad uid"));
        let args = SandboxArgs {
            report_fd: Some(2),
            ..SandboxArgs::default()
        };
        assert!(args.validate().is_err(), "fd 2 is not a passed fd");
    }
}
