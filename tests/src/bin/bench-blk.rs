//! bench-blk: the test guest's `blk-bench` scenario on a raw image served
//! by dev-block (`--disk IMG`, spawned by vmm-monitor) and by
//! qemu-storage-daemon's vhost-user-blk export (`--disk vhost-user=SOCK`),
//! interleaved round by round with alternating order, and reports side by
//! side, per row (4 KiB random and 64 KiB sequential reads and writes at
//! queue depths 1 and 32 per queue): the IOPS the guest measured and the
//! backend process's CPU time per I/O.
//!
//! The guest prints a `row-start` line before each row and the row's
//! result line right after its last completion; this tool reads the
//! monitor's stdout as it streams and samples the backend's CPU clock
//! (all its threads, `clock_getcpuclockid`) at both lines. Between rows
//! the backend is idle, so the lag of a console line does not matter.
//!
//! Usage: bench-blk [ROUNDS] (default 5). Run it through scripts/bench-blk,
//! which builds everything in release mode first. VMD_MONITOR overrides the
//! monitor (default: vmm-monitor next to this program; dev-block must be
//! next to it), VMD_TEST_GUEST the guest, BENCH_BLK_OPS the requests per
//! row (default: the guest's, per row).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vmd_tests::bench::{
    drain, exit_code, field, handle_signals, interrupted, lines, median, num, process_name, spread,
    Guard, Result, Scratch,
};

/// vCPUs, and so request queues (the monitor asks for one per vCPU; the
/// peer is exported with as many).
const CPUS: usize = 2;
/// Guest RAM.
const MEMORY: &str = "256M";
/// Image size.
const IMAGE_MIB: u64 = 256;
/// Longest a VM run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest qemu-storage-daemon may take to create its socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
const SCENARIO: &str = "blk-bench";

// ---- measuring ----

/// CPU time (user + system, all threads, exited ones included) of a process.
struct CpuClock {
    pid: libc::pid_t,
    clock: Option<libc::clockid_t>,
}

impl CpuClock {
    fn of(pid: libc::pid_t) -> Self {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: `clock` is a valid out-pointer.
        let ok = unsafe { libc::clock_getcpuclockid(pid, &mut clock) } == 0;
        Self {
            pid,
            clock: ok.then_some(clock),
        }
    }

    /// Nanoseconds so far.
    fn now(&self) -> Result<u64> {
        if let Some(clock) = self.clock {
            // SAFETY: an all-zero timespec is a valid out-parameter.
            let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
            // SAFETY: `ts` is a valid out-pointer.
            if unsafe { libc::clock_gettime(clock, &mut ts) } == 0 {
                return Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
        }
        // Fallback: /proc/<pid>/stat utime + stime, in clock ticks.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map_err(|e| format!("/proc/{}/stat: {e}", self.pid))?;
        let after_comm = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        // Fields 14 and 15 of stat(5), counted from `state` (field 3).
        let (Some(utime), Some(stime)) = (ticks(11), ticks(12)) else {
            return Err(format!("bad /proc/{}/stat", self.pid));
        };
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Ok((utime + stime) * 1_000_000_000 / hz)
    }
}

/// Identifies a row: (rw, bs, depth).
type RowKey = (String, u64, u64);

/// One row of one run.
struct RowSample {
    key: RowKey,
    queues: u64,
    ops: u64,
    /// Guest-measured time of the row.
    us: u64,
    /// Guest interrupts counted during the row.
    irqs: u64,
    /// Backend CPU time during the row.
    cpu_ns: u64,
}

/// The dev-block process among the children of any thread of `monitor`.
fn find_dev_block(monitor: libc::pid_t) -> Result<libc::pid_t> {
    let tasks = std::fs::read_dir(format!("/proc/{monitor}/task")).map_err(|e| e.to_string())?;
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children.split_whitespace().filter_map(|p| p.parse().ok()) {
            if process_name(pid).as_deref() == Some("dev-block") {
                return Ok(pid);
            }
        }
    }
    Err(format!("no dev-block child of vmm-monitor {monitor}"))
}

/// The backend of one run.
enum Backend {
    /// dev-block, spawned by the monitor from the image.
    DevBlock { image: PathBuf },
    /// An external vhost-user backend process listening on `socket`.
    External { pid: libc::pid_t, socket: PathBuf },
}

struct Setup {
    monitor: PathBuf,
    guest: String,
    ops: Option<u64>,
}

/// Boots the guest's blk-bench on `backend`; returns its rows.
fn run_vm(setup: &Setup, backend: &Backend) -> Result<Vec<RowSample>> {
    let disk = match backend {
        Backend::DevBlock { image } => image.display().to_string(),
        Backend::External { socket, .. } => format!("vhost-user={}", socket.display()),
    };
    let mut cmdline = format!("test={SCENARIO}");
    if let Some(ops) = setup.ops {
        cmdline += &format!(" ops={ops}");
    }
    let mut command = Command::new(&setup.monitor);
    command
        .arg("--kernel")
        .arg(&setup.guest)
        .args(["--cmdline", &cmdline, "--cpus", &CPUS.to_string()])
        .args(["--memory", MEMORY, "--disk", &disk])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut vm = Guard::spawn(&mut command)?;
    let stderr = drain(vm.child.stderr.take());
    let (rx, reader) = lines(vm.child.stdout.take().ok_or("no stdout")?);
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut console = String::new();
    let mut clock = match backend {
        Backend::External { pid, .. } => Some(CpuClock::of(*pid)),
        Backend::DevBlock { .. } => None,
    };
    let mut rows = Vec::new();
    let mut started: Option<u64> = None;
    let mut passed = false;
    let mut failure: Option<String> = None;
    let prefix = format!("VMDT {SCENARIO} ");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                failure = Some(format!("no end after {RUN_TIMEOUT:?}"));
                break;
            }
        };
        // Sample first: the backend is idle only until the next row starts.
        let sampled = match &clock {
            Some(c) if line.starts_with(&prefix) => Some(c.now()?),
            _ => None,
        };
        console.push_str(&line);
        console.push('\n');
        if line == format!("VMDT BEGIN {SCENARIO}") {
            if let Backend::DevBlock { .. } = backend {
                let pid = find_dev_block(vm.pid())?;
                vm.also = Some((pid, "dev-block"));
                clock = Some(CpuClock::of(pid));
            }
        } else if line == format!("VMDT PASS {SCENARIO}") {
            passed = true;
        } else if line.starts_with("VMDT FAIL") {
            failure = Some(line.clone());
        } else if let Some(data) = line.strip_prefix(&prefix) {
            if data.starts_with("row-start ") {
                started = sampled;
            } else if data.starts_with("rw=") {
                let (Some(begin), Some(end)) = (started.take(), sampled) else {
                    return Err(format!("row without row-start: {line}"));
                };
                rows.push(RowSample {
                    key: (
                        field(data, "rw").unwrap_or("?").to_owned(),
                        num(data, "bs")?,
                        num(data, "depth")?,
                    ),
                    queues: num(data, "queues")?,
                    ops: num(data, "ops")?,
                    us: num(data, "us")?,
                    irqs: num(data, "irqs")?,
                    cpu_ns: end.saturating_sub(begin),
                });
            }
        }
    }
    let status = if failure.is_none() {
        vm.wait_until(deadline + Duration::from_secs(10))
            .map_err(|e| format!("vmm-monitor: {e}"))
    } else {
        Err("stopped".into())
    };
    drop(vm); // kills whatever is left, so the pipes close
    let _ = reader.join();
    let log = stderr.join().unwrap_or_default();
    if interrupted() {
        return Err("interrupted".into());
    }
    let ok = matches!(&status, Ok(s) if s.success());
    if let Some(failure) = failure.or_else(|| (!passed || !ok).then(|| format!("{status:?}"))) {
        return Err(format!(
            "{SCENARIO} on --disk {disk} failed: {failure}\n--- console ---\n{console}--- monitor log ---\n{log}"
        ));
    }
    Ok(rows)
}

/// Starts qemu-storage-daemon exporting `image` on `socket` with `queues`
/// queues (its stderr to `log`), and waits for the socket.
fn storage_daemon(image: &Path, socket: &Path, log: &Path, queues: usize) -> Result<Guard> {
    let log_file = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let _ = std::fs::remove_file(socket);
    let blockdev = format!("driver=file,node-name=f,filename={}", image.display());
    let export = format!(
        "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on,num-queues={queues}",
        socket.display()
    );
    let mut guard = Guard::spawn(
        Command::new("qemu-storage-daemon")
            .args(["--blockdev", &blockdev, "--export", &export])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file),
    )?;
    guard.remove = Some(socket.to_owned());
    let deadline = Instant::now() + SOCKET_TIMEOUT;
    while !socket.exists() {
        if let Ok(Some(status)) = guard.child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("qemu-storage-daemon exited ({status}): {log}"));
        }
        if Instant::now() > deadline || interrupted() {
            return Err(format!("qemu-storage-daemon made no {}", socket.display()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(guard)
}

/// Writes `path` in full (no holes, nothing shared with another file) with
/// the same pseudo-random bytes every time, and syncs it.
fn write_image(path: &Path) -> Result<()> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = File::create(path).map_err(err)?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..IMAGE_MIB {
        for word in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        file.write_all(&chunk).map_err(err)?;
    }
    file.sync_all().map_err(err)
}

// ---- report ----

#[derive(Default)]
struct Stats {
    iops: Vec<f64>,
    cpu_us_per_io: Vec<f64>,
    irqs_per_io: Vec<f64>,
}

fn collect(into: &mut BTreeMap<RowKey, Stats>, rows: Vec<RowSample>) {
    for row in rows {
        let stats = into.entry(row.key).or_default();
        let ops = row.ops.max(1) as f64;
        stats.iops.push(ops * 1e6 / row.us.max(1) as f64);
        stats.cpu_us_per_io.push(row.cpu_ns as f64 / 1000.0 / ops);
        stats.irqs_per_io.push(row.irqs as f64 / ops);
    }
}

fn label((rw, bs, depth): &RowKey) -> String {
    format!("{rw} {}k QD{depth}", bs / 1024)
}

/// The guest's row order: random before sequential, reads before writes,
/// QD1 before QD32.
fn order(key: &RowKey) -> (bool, bool, u64) {
    (!key.0.starts_with("rand"), key.0.ends_with("write"), key.2)
}

fn report(
    ours: &BTreeMap<RowKey, Stats>,
    peer: &BTreeMap<RowKey, Stats>,
    rounds: usize,
    queues: u64,
) {
    let mut keys: Vec<&RowKey> = ours.keys().filter(|k| peer.contains_key(*k)).collect();
    keys.sort_by_key(|k| order(k));
    println!(
        "{SCENARIO}, {CPUS} vCPUs, {queues} queues, {IMAGE_MIB} MiB raw image, {rounds} rounds, medians"
    );
    println!("(ratio = dev-block / qemu-storage-daemon: IOPS higher is better, CPU per I/O lower is better)");
    println!(
        "{:<20} {:>10} {:>10} {:>6}   {:>10} {:>10} {:>6}   {:>9} {:>7}",
        "", "IOPS", "", "", "CPU µs/IO", "", "", "irq/IO", ""
    );
    println!(
        "{:<20} {:>10} {:>10} {:>6}   {:>10} {:>10} {:>6}   {:>9} {:>7}",
        "row", "dev-block", "qsd", "ratio", "dev-block", "qsd", "ratio", "dev-block", "qsd"
    );
    for key in &keys {
        let (a, b) = (&ours[*key], &peer[*key]);
        let (ia, ib) = (median(a.iops.clone()), median(b.iops.clone()));
        let (ca, cb) = (
            median(a.cpu_us_per_io.clone()),
            median(b.cpu_us_per_io.clone()),
        );
        println!(
            "{:<20} {ia:>10.0} {ib:>10.0} {:>6.2}   {ca:>10.2} {cb:>10.2} {:>6.2}   {:>9.2} {:>7.2}",
            label(key),
            ia / ib,
            ca / cb,
            median(a.irqs_per_io.clone()),
            median(b.irqs_per_io.clone()),
        );
    }
    println!("per-round ratios, lowest to highest (round i of dev-block against round i of qsd):");
    for key in &keys {
        let (a, b) = (&ours[*key], &peer[*key]);
        println!(
            "{:<20} IOPS {:<14} CPU per I/O {}",
            label(key),
            spread(&a.iops, &b.iops),
            spread(&a.cpu_us_per_io, &b.cpu_us_per_io)
        );
    }
}

fn main() {
    handle_signals("bench-blk");
    std::process::exit(exit_code("bench-blk", bench()));
}

fn bench() -> Result<()> {
    let rounds = vmd_tests::bench::rounds(5)?;
    let monitor = vmd_tests::bench::monitor()?;
    for program in [monitor.clone(), monitor.with_file_name("dev-block")] {
        if !program.exists() {
            return Err(format!("{} is missing: build it first", program.display()));
        }
    }
    let ops = match std::env::var("BENCH_BLK_OPS") {
        Ok(v) => Some(v.parse().map_err(|_| format!("bad BENCH_BLK_OPS={v}"))?),
        Err(_) => None,
    };
    let setup = Setup {
        monitor,
        guest: vmd_tests::bench::guest(),
        ops,
    };
    let scratch = Scratch::new("bench-blk")?;
    // Two images with the same bytes, each written in full: the same
    // allocated file for both backends, nothing shared between them.
    let ours_image = scratch.path("dev-block.img");
    let peer_image = scratch.path("qsd.img");
    write_image(&ours_image)?;
    write_image(&peer_image)?;
    let socket = scratch.path("qsd.sock");
    let mut ours = BTreeMap::new();
    let mut peer = BTreeMap::new();
    let mut queues = 0;
    for round in 0..rounds {
        // Alternate who goes first, so drift hits both alike.
        for k in 0..2 {
            let first_ours = round % 2 == 0;
            let is_ours = (k == 0) == first_ours;
            let started = Instant::now();
            let rows = if is_ours {
                run_vm(
                    &setup,
                    &Backend::DevBlock {
                        image: ours_image.clone(),
                    },
                )?
            } else {
                let daemon = storage_daemon(&peer_image, &socket, &scratch.path("qsd.log"), CPUS)?;
                let rows = run_vm(
                    &setup,
                    &Backend::External {
                        pid: daemon.pid(),
                        socket: socket.clone(),
                    },
                )?;
                drop(daemon);
                rows
            };
            eprintln!(
                "bench-blk: round {}/{rounds}: {} done in {:.1} s",
                round + 1,
                if is_ours {
                    "dev-block"
                } else {
                    "qemu-storage-daemon"
                },
                started.elapsed().as_secs_f64()
            );
            if rows.is_empty() {
                return Err("the guest reported no rows".into());
            }
            queues = rows[0].queues;
            if rows.iter().any(|r| r.queues != CPUS as u64) {
                return Err(format!(
                    "the guest used {queues} queues, not {CPUS}: the comparison would be unfair"
                ));
            }
            collect(if is_ours { &mut ours } else { &mut peer }, rows);
        }
    }
    report(&ours, &peer, rounds, queues);
    Ok(())
}
