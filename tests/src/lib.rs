//! End-to-end test harness: run the real `vmm-monitor` on the test guest and
//! read what the guest reports over COM1.
//!
//! The guest (tests/guest, built by this crate's build.rs) prints lines of
//! the form `VMDT BEGIN <scenario>`, `VMDT <scenario> key=value ...` and
//! finally `VMDT PASS <scenario>` or `VMDT FAIL <scenario> <reason>`, then
//! powers off. [`GuestRun`] holds one run's output and exit status.
//!
//! Tests that need /dev/kvm call [`kvm_or_skip`] first: without KVM they
//! print a loud `SKIPPED` line straight to the terminal (past the test
//! harness's output capture) and return.

pub mod bench;
pub mod pty;
pub mod vmd;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Path of the test guest ELF, built by this crate's build.rs.
pub const TEST_GUEST: &str = env!("VMD_TEST_GUEST");

/// How long any single guest run may take before the test fails. Generous:
/// guest CPL0 code is emulated on these machines, and tests run in parallel.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// Writes `message` to the real stderr, past libtest's capture.
pub fn loud(message: &str) {
    let _ = std::io::stderr().write_all(format!("{message}\n").as_bytes());
}

/// True if /dev/kvm can be opened; otherwise prints a loud SKIPPED line
/// naming `test` and returns false.
pub fn kvm_or_skip(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            loud(&format!(
                "SKIPPED {test}: /dev/kvm cannot be opened ({e}); KVM tests did not run"
            ));
            false
        }
    }
}

/// The `vmm-monitor` binary of the build that built this test.
pub fn monitor_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/vmm-monitor
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let path = dir.join("vmm-monitor");
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p vmm-monitor, which scripts/test does)",
        path.display()
    );
    path
}

/// One run of the monitor on the test guest.
#[derive(Debug)]
pub struct GuestRun {
    /// What the guest wrote to COM1 (the monitor's stdout).
    pub console: String,
    /// The monitor's log (stderr).
    pub log: String,
    /// How the monitor exited.
    pub status: ExitStatus,
    /// How long the run took.
    pub elapsed: Duration,
}

impl GuestRun {
    /// The `VMDT` lines, without the prefix.
    pub fn vmdt_lines(&self) -> Vec<&str> {
        self.console
            .lines()
            .filter_map(|l| l.trim_end().strip_prefix("VMDT "))
            .collect()
    }

    /// The data lines of `scenario`, without the `VMDT <scenario> ` prefix.
    pub fn data(&self, scenario: &str) -> Vec<&str> {
        let prefix = format!("{scenario} ");
        self.vmdt_lines()
            .into_iter()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect()
    }

    /// The value of `key` in the first data line of `scenario` carrying it.
    pub fn value(&self, scenario: &str, key: &str) -> Option<String> {
        let wanted = format!("{key}=");
        self.data(scenario)
            .iter()
            .flat_map(|line| line.split_whitespace())
            .find_map(|word| word.strip_prefix(wanted.as_str()).map(str::to_owned))
    }

    /// Panics with the whole run unless the guest printed `VMDT PASS <scenario>`
    /// after `VMDT BEGIN <scenario>`, nothing failed, and the monitor exited
    /// with `code`.
    pub fn assert_passed(&self, scenario: &str, code: i32) {
        let lines = self.vmdt_lines();
        let begin = lines.iter().position(|l| *l == format!("BEGIN {scenario}"));
        let pass = lines.iter().position(|l| *l == format!("PASS {scenario}"));
        let failed = lines.iter().any(|l| l.starts_with("FAIL"));
        assert!(
            matches!((begin, pass), (Some(b), Some(p)) if b < p)
                && !failed
                && self.status.code() == Some(code),
            "scenario {scenario} did not pass with exit code {code}:\n{self}"
        );
    }
}

impl std::fmt::Display for GuestRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "exit status: {:?} after {:?}", self.status, self.elapsed)?;
        writeln!(f, "--- console ---\n{}", self.console)?;
        write!(f, "--- monitor log ---\n{}", self.log)
    }
}

/// A monitor invocation being assembled.
#[derive(Clone, Debug)]
pub struct Monitor {
    kernel: PathBuf,
    args: Vec<String>,
}

impl Monitor {
    /// The monitor booting the test guest with `cmdline`.
    pub fn guest(cmdline: &str) -> Self {
        Self {
            kernel: PathBuf::from(TEST_GUEST),
            args: vec!["--cmdline".into(), cmdline.into()],
        }
    }

    /// The monitor booting `kernel` with no other argument.
    pub fn kernel(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            args: Vec::new(),
        }
    }

    /// Adds raw arguments.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets the vCPU count.
    pub fn cpus(self, n: usize) -> Self {
        self.arg("--cpus").arg(n.to_string())
    }

    /// Sets guest RAM (e.g. "128M").
    pub fn memory(self, size: &str) -> Self {
        self.arg("--memory").arg(size)
    }

    /// Adds a disk (`--disk SPEC`).
    pub fn disk(self, spec: &str) -> Self {
        self.arg("--disk").arg(spec)
    }

    /// The command that runs the monitor, its stdout and stderr piped.
    pub fn command(&self) -> Command {
        let mut command = Command::new(monitor_binary());
        command
            .arg("--kernel")
            .arg(&self.kernel)
            .args(&self.args)
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs the monitor to its end (killing it after [`RUN_TIMEOUT`]).
    pub fn run(&self) -> GuestRun {
        let start = Instant::now();
        let mut child = self.command().spawn().expect("start vmm-monitor");
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let status = wait_or_kill(&mut child, RUN_TIMEOUT);
        GuestRun {
            console: stdout.join().unwrap_or_default(),
            log: stderr.join().unwrap_or_default(),
            status,
            elapsed: start.elapsed(),
        }
    }
}

/// A scratch directory for one test, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    /// A new empty directory named after `test`.
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmd-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Self(dir)
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A new sparse file of `len` bytes inside the directory (a raw disk
    /// image of zeroes); returns its path.
    pub fn sparse_file(&self, name: &str, len: u64) -> PathBuf {
        let path = self.path(name);
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(len))
            .expect("make a sparse file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// True if `program` runs; otherwise prints a loud SKIPPED line for `test`.
pub fn tool_or_skip(program: &str, test: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        loud(&format!(
            "SKIPPED {test}: {program} is not installed (scripts/test installs it)"
        ));
    }
    found
}

/// Runs `program args...`, panicking with its output if it fails.
pub fn run_tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect("run tool");
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn wait_or_kill(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for vmm-monitor") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            loud(&format!("vmm-monitor ran past {timeout:?} and was killed"));
            return child.wait().expect("reap vmm-monitor");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
