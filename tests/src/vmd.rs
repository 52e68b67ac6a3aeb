//! Running a private vmd for a test: its own config, control socket and
//! run directory in a scratch directory, its log in a file, and vmctl
//! pointed at it through `VMD_SOCKET`.
//!
//! Dropping a [`Vmd`] stops every VM it knows (forcibly) and kills it, so
//! a failing test leaves no monitor behind; monitors a killed vmd left
//! are found by their sockets and killed too.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::monitor_binary;

/// How long vmd may take to open its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A binary of this build (`vmd`, `vmctl`, `dev-block`).
pub fn binary(name: &str) -> PathBuf {
    let path = monitor_binary().with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build --workspace --bins, which scripts/test does)",
        path.display()
    );
    path
}

/// What a vmctl run did.
#[derive(Debug)]
pub struct Ran {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error (vmctl's messages).
    pub stderr: String,
}

impl Ran {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics unless it succeeded; returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "vmctl failed: {}{}", self.stdout, self.stderr);
        &self.stdout
    }

    /// Panics unless it failed with exit 1 and `needle` in its message.
    #[track_caller]
    pub fn fails_with(&self, needle: &str) {
        assert_eq!(
            self.code, 1,
            "expected failure, got: {}{}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "expected {needle:?} in: {}",
            self.stderr
        );
    }
}

/// One line of `vmctl status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Column values by header.
    pub id: u32,
    /// PID or "-".
    pub pid: String,
    /// TTY or "-".
    pub tty: String,
    /// OWNER.
    pub owner: String,
    /// STATE.
    pub state: String,
    /// NAME.
    pub name: String,
}

/// A private vmd.
pub struct Vmd {
    dir: PathBuf,
    child: Option<Child>,
    conf: PathBuf,
    netns: Option<String>,
    /// Extra environment of vmd (and so of its monitors).
    env: Vec<(String, String)>,
}

impl Vmd {
    /// Writes `config` to `dir/vm.conf` and starts vmd on it in the
    /// foreground, its socket `dir/run/vmd.sock`, its log `dir/vmd.log`.
    pub fn start(dir: &Path, config: &str) -> Self {
        Self::launch(dir, config, None, &[])
    }

    /// [`Vmd::start`] inside network namespace `netns` (`ip netns exec`):
    /// the taps it makes live there.
    pub fn start_in_netns(dir: &Path, config: &str, netns: &str) -> Self {
        Self::launch(dir, config, Some(netns), &[])
    }

    /// [`Vmd::start`] with `env` added to vmd's environment (which its
    /// monitors inherit).
    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Self {
        Self::launch(dir, config, None, env)
    }

    fn launch(dir: &Path, config: &str, netns: Option<&str>, env: &[(&str, &str)]) -> Self {
        let conf = dir.join("vm.conf");
        std::fs::write(&conf, config).expect("write vm.conf");
        let mut vmd = Self {
            dir: dir.to_path_buf(),
            child: None,
            conf,
            netns: netns.map(str::to_string),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        vmd.restart();
        vmd
    }

    /// The control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("run").join("vmd.sock")
    }

    /// The configuration file.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// Starts vmd again (after [`Vmd::kill`]) and waits for its socket.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("vmd.log"))
            .expect("open vmd.log");
        let mut command = match &self.netns {
            None => Command::new(binary("vmd")),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary("vmd"));
                c
            }
        };
        let child = command
            .args(["-d", "-vv", "-f"])
            .arg(&self.conf)
            .env("VMD_SOCKET", self.socket())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start vmd");
        self.child = Some(child);
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("vmd exited with {status} at start:\n{}", self.log());
            }
            assert!(
                start.elapsed() < START_TIMEOUT,
                "vmd did not open its socket:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// vmd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("vmd.log")).unwrap_or_default()
    }

    /// Waits until vmd's log contains `needle` `times` times.
    #[track_caller]
    pub fn wait_log(&self, needle: &str, times: usize, timeout: Duration) {
        let start = Instant::now();
        while self.log().matches(needle).count() < times {
            assert!(
                start.elapsed() < timeout,
                "{needle:?} did not appear {times} times in vmd's log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pid of vmd.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("vmd runs")
    }

    /// Kills vmd with SIGKILL (its VMs keep running).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `vmctl args...` as root.
    pub fn vmctl(&self, args: &[&str]) -> Ran {
        self.vmctl_command(args)
            .output()
            .map(Ran::from)
            .expect("run vmctl")
    }

    /// Runs `vmctl args...` as `uid`/`gid` (root only).
    pub fn vmctl_as(&self, uid: u32, gid: u32, args: &[&str]) -> Ran {
        let mut command = self.vmctl_command(args);
        // std clears the supplementary groups when root drops to `uid`.
        command.uid(uid).gid(gid);
        command.output().map(Ran::from).expect("run vmctl")
    }

    /// A vmctl command, not started.
    pub fn vmctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary("vmctl"));
        command
            .args(args)
            .env("VMD_SOCKET", self.socket())
            .stdin(Stdio::null());
        command
    }

    /// `vmctl status`, parsed.
    #[track_caller]
    pub fn status(&self) -> Vec<Row> {
        let ran = self.vmctl(&["status"]);
        let text = ran.ok();
        text.lines()
            .skip(1)
            .map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(f.len(), 9, "status line {line:?}");
                Row {
                    id: f[0].parse().expect("id"),
                    pid: f[1].into(),
                    tty: f[5].into(),
                    owner: f[6].into(),
                    state: f[7].into(),
                    name: f[8].into(),
                }
            })
            .collect()
    }

    /// The status row of VM `name`.
    #[track_caller]
    pub fn row(&self, name: &str) -> Row {
        self.status()
            .into_iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no vm {name} in status"))
    }

    /// Waits until VM `name` is in `state`.
    #[track_caller]
    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> Row {
        let start = Instant::now();
        loop {
            if let Some(row) = self.status().into_iter().find(|r| r.name == name) {
                if row.state == state {
                    return row;
                }
            }
            assert!(
                start.elapsed() < timeout,
                "vm {name} never became {state}: {:?}\n{}",
                self.status(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pids of monitors whose sockets are in this vmd's run directory.
    fn monitor_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return pids;
        };
        let run = self.dir.join("run");
        for entry in procs.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            // A monitor holds its listening socket; match it by the
            // socket path in /proc/net/unix would need inode lookups, so
            // match on the environment vmd passed down instead.
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let wanted = format!("VMD_SOCKET={}", run.join("vmd.sock").display());
            let is_monitor = std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|e| e.file_name().is_some_and(|n| n == "vmm-monitor"));
            if is_monitor && env.split(|b| *b == 0).any(|v| v == wanted.as_bytes()) {
                pids.push(pid);
            }
        }
        pids
    }
}

/// Whether process `pid` runs (a zombie does not: an orphaned monitor
/// that ended waits for init to reap it, and some containers' init never
/// does).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

impl Drop for Vmd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.vmctl(&["stop", "-a", "-f", "-w"]);
        }
        self.kill();
        for pid in self.monitor_pids() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// `/proc/PID/status` field `key` (its value, trimmed; "" if absent).
pub fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// The children of `pid` named `comm`.
pub fn children_named(pid: u32, comm: &str) -> Vec<u32> {
    let tasks =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    tasks
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// Kills `monitor`'s child named `comm` up to `kills` times with SIGKILL,
/// each after a pause drawn from `pause_ms` (a fixed xorshift sequence:
/// different moments, the same in every run) that `wait` spends (reading
/// output, say); stops early once `wait` returns false. Returns the pids
/// killed.
pub fn kill_repeatedly(
    monitor: u32,
    comm: &str,
    kills: usize,
    pause_ms: std::ops::Range<u64>,
    mut wait: impl FnMut(std::time::Duration) -> bool,
) -> Vec<u32> {
    let mut killed = Vec::new();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    while killed.len() < kills {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let pause = pause_ms.start + seed % (pause_ms.end - pause_ms.start);
        if !wait(std::time::Duration::from_millis(pause)) {
            break;
        }
        if let [pid] = children_named(monitor, comm)[..] {
            // SAFETY: kill(2) on a pid just read as the monitor's child.
            if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 {
                killed.push(pid);
            }
        }
    }
    killed
}

/// What process `pid` holds past stdio: (fd, what it points at).
pub fn fds_past_stdio(pid: u32) -> Vec<(u32, PathBuf)> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|entry| {
                let entry = entry.ok()?;
                let fd: u32 = entry.file_name().to_str()?.parse().ok()?;
                let target = std::fs::read_link(entry.path()).unwrap_or_default();
                (fd > 2).then_some((fd, target))
            })
            .collect()
        })
        .unwrap_or_default()
}

/// Panics unless process `pid` (named `what` in messages) is sandboxed as
/// a VM's device under vmd as root: seccomp filter mode, no_new_privs, no
/// capability in any set, and one unprivileged uid of vmd's range
/// (returned).
#[track_caller]
pub fn assert_sandboxed(pid: u32, what: &str) -> u32 {
    assert_eq!(
        status_field(pid, "Seccomp"),
        "2",
        "{what}: seccomp filter mode"
    );
    assert_eq!(status_field(pid, "NoNewPrivs"), "1", "{what}");
    for set in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, set), "0000000000000000", "{what}: {set}");
    }
    let uids: Vec<u32> = status_field(pid, "Uid")
        .split_whitespace()
        .filter_map(|u| u.parse().ok())
        .collect();
    assert_eq!(uids.len(), 4, "{what}");
    assert!(
        uids.iter().all(|&u| u == uids[0] && u >= 0x7000_0000),
        "{what}: uids {uids:?}"
    );
    uids[0]
}
