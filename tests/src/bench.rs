//! What the benchmark tools (bench-blk, bench-net) share: child-process
//! guards and a signal thread that kills them, a scratch directory, pipe
//! readers, the arguments and environment every tool reads, the parsing of
//! the guest's `key=value` lines, and medians and ratio spreads.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A benchmark's errors: what to print.
pub type Result<T> = std::result::Result<T, String>;

// ---- cleanup: guards, and a signal thread that kills our children ----

/// Set once SIGINT/SIGTERM/SIGHUP arrived.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Processes to kill when a signal arrives (guards register theirs).
static LIVE: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

/// True once a termination signal arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn register(pid: libc::pid_t) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

fn unregister(pid: libc::pid_t) {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != pid);
}

fn termination_signals() -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is a valid out-parameter for sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
    }
    set
}

/// Blocks the termination signals in every thread (call before starting
/// any) and takes them in a thread of their own, which says so as `tool`
/// and kills the registered processes: the main thread then sees its runs
/// fail and unwinds through the guards, which remove the files. (Children
/// start with an empty signal mask: std resets it in the child.)
pub fn handle_signals(tool: &'static str) {
    let set = termination_signals();
    // SAFETY: `set` is valid; blocking signals in this thread is harmless.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    std::thread::spawn(move || loop {
        let mut signal = 0;
        // SAFETY: `set` and `signal` are valid; the signals are blocked.
        if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
            continue;
        }
        eprintln!("{tool}: signal {signal}, cleaning up");
        INTERRUPTED.store(true, Ordering::SeqCst);
        for pid in LIVE.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            // SAFETY: kill(2) on a child a guard still owns (not yet reaped).
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
    });
}

/// The exit code of a tool `tool` whose work ended with `result`, which it
/// prints if it is an error: 0, 1, or 130 after a signal.
pub fn exit_code(tool: &str, result: Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{tool}: {e}");
            if interrupted() {
                130
            } else {
                1
            }
        }
    }
}

/// A child process, killed and reaped when dropped, with `also` (a
/// grandchild) killed first if it is still that program.
pub struct Guard {
    /// The process.
    pub child: Child,
    /// A grandchild to kill first, and its name (`/proc/PID/comm`).
    pub also: Option<(libc::pid_t, &'static str)>,
    /// A file to remove after the process is gone (a socket).
    pub remove: Option<PathBuf>,
}

impl Guard {
    /// Starts `command` (and fails if a signal has come).
    pub fn spawn(command: &mut Command) -> Result<Self> {
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {command:?}: {e}"))?;
        register(child.id() as libc::pid_t);
        let guard = Self {
            child,
            also: None,
            remove: None,
        };
        if interrupted() {
            return Err("interrupted".into());
        }
        Ok(guard)
    }

    /// The process id.
    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Waits for the process to end, at most until `deadline`.
    pub fn wait_until(&mut self, deadline: Instant) -> Result<ExitStatus> {
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => return Err("timed out".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some((pid, comm)) = self.also {
            if process_name(pid).as_deref() == Some(comm) {
                // SAFETY: kill(2) on the grandchild we identified by name.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        unregister(self.pid());
        if let Some(path) = &self.remove {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The name (`/proc/PID/comm`) of process `pid`.
pub fn process_name(pid: libc::pid_t) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// A scratch directory, removed with everything in it when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    /// A new empty directory `vmd-<tool>-<pid>` in the temporary directory.
    pub fn new(tool: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("vmd-{tool}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Self(dir))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- pipes ----

/// Collects a pipe's bytes on a thread (the last 64 KiB of them).
pub fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(mut pipe) = pipe {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 128 << 10 {
                    kept.drain(..kept.len() - (64 << 10));
                }
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

/// Sends each line of `pipe` to a channel, on a thread.
pub fn lines(pipe: impl Read + Send + 'static) -> (mpsc::Receiver<String>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (rx, reader)
}

// ---- arguments and environment ----

/// The round count: the first argument, else `default`.
pub fn rounds(default: usize) -> Result<usize> {
    match std::env::args().nth(1) {
        None => Ok(default),
        Some(a) => a
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or(format!("bad round count {a:?}")),
    }
}

/// The monitor: VMD_MONITOR, else vmm-monitor next to this program.
pub fn monitor() -> Result<PathBuf> {
    Ok(match std::env::var_os("VMD_MONITOR") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("vmm-monitor"),
    })
}

/// The guest: VMD_TEST_GUEST, else the one this crate built.
pub fn guest() -> String {
    std::env::var("VMD_TEST_GUEST").unwrap_or_else(|_| crate::TEST_GUEST.into())
}

// ---- CPU time ----

/// Field `n` (1-based, as stat(5) numbers them; `n` >= 3) of
/// /proc/PID/stat.
fn stat_field(pid: libc::pid_t, n: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    after_comm.split_whitespace().nth(n - 3)?.parse().ok()
}

/// The youngest process named `comm` (`/proc/PID/comm`), if one runs: a
/// process of an earlier run that is still on its way out is older.
pub fn find_process(comm: &str) -> Option<libc::pid_t> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| process_name(pid).as_deref() == Some(comm))
        .max_by_key(|&pid| stat_field(pid, 22).unwrap_or(0))
}

/// The parent of process `pid`.
pub fn parent_of(pid: libc::pid_t) -> Option<libc::pid_t> {
    stat_field(pid, 4).map(|p| p as libc::pid_t)
}

/// Nanoseconds on a CPU of the threads of process `pid` whose name
/// (`comm`) `keep` accepts, from /proc/PID/task/TID/schedstat (threads
/// that ended are not counted; 0 for a process that is gone).
pub fn threads_cpu_ns(pid: libc::pid_t, keep: impl Fn(&str) -> bool) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| keep(c.trim_end_matches('\n')))
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

// ---- the guest's lines ----

/// The value of `key=` in a line of `key=value` words.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// The number after `key=` in a line of `key=value` words.
pub fn num(line: &str, key: &str) -> Result<u64> {
    field(line, key)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no {key}= in {line:?}"))
}

// ---- report ----

/// The median of `v` (NaN if it is empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// "min–max" of the paired ratios `ours[i] / peer[i]`.
pub fn spread(ours: &[f64], peer: &[f64]) -> String {
    let ratios: Vec<f64> = ours.iter().zip(peer).map(|(a, b)| a / b).collect();
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.2}–{max:.2}")
}

/// QEMU options every side-by-side run uses: no default devices or user
/// configuration, no display, the guest's serial console on stdio.
pub const QEMU_HEADLESS: [&str; 5] = [
    "-nodefaults",
    "-no-user-config",
    "-nographic",
    "-serial",
    "stdio",
];
