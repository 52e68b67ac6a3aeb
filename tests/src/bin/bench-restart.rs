//! bench-restart: what a guest notices when its disk's device process is
//! killed. The test guest's `blk-stall` scenario keeps 32 verified 4 KiB
//! requests in flight per queue (2 queues) while this tool SIGKILLs the
//! disk's backend KILLS times, PAUSE_MS apart (±25%). For each kill this
//! tool notes the host's TSC; the guest prints its TSC once at its start
//! (read here at once: the guest's TSC offset, to within the line's way
//! out) and, at its end, every gap of 1 ms or more between two
//! completions, with the TSC where it began. The stall of a kill is the
//! largest such gap beginning within 20 ms of it: at depth 32 completions
//! come every few µs, so that gap begins at the kill and lasts until the
//! first completion after it. A kill with no such gap stalled the guest
//! less than 1 ms (counted as 1 ms); one made during a stall counts what
//! was left of it.
//! The guest's largest gaps of a run without kills are reported beside:
//! the host's scheduling alone.
//!
//! - Ours: vmm-monitor with `--disk IMG`; its supervisor restarts dev-block
//!   and replays the vhost-user state (issue 8).
//! - Peer: QEMU (q35, vhost-user-blk-pci, `chardev reconnect=1`) on
//!   qemu-storage-daemon's vhost-user-blk export, which this tool starts
//!   again at once after each kill (QEMU has no supervisor of its own).
//!
//! Reported per VMM: the guest's verdict, how many times the guest booted
//! (a reset shows as a second boot), and the median and largest of the
//! stalls. Usage: bench-restart [KILLS] (default 100); BENCH_RESTART_PAUSE_MS
//! (default 300), BENCH_RESTART_PEER_KILLS (default 10) and
//! BENCH_RESTART_PEER_PAUSE_MS (default 3000: QEMU retries a lost backend's
//! socket once a second, `reconnect=1` being its shortest). Run it through
//! scripts/bench-restart, which builds in release mode first.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmd_tests::bench::{
    drain, exit_code, handle_signals, interrupted, lines, median, Guard, Result, Scratch,
};

const CPUS: usize = 2;
const MEMORY: &str = "256M";
const IMAGE_MIB: u64 = 64;
/// Longest qemu-storage-daemon may take to create its socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// Smallest gap the guest lists (`stall_us=`).
const STALL_US: u64 = 1000;

/// What one run saw.
struct Outcome {
    verdict: String,
    boots: usize,
    kills: usize,
    /// The guest's largest completion gaps, µs, largest first.
    gaps_us: Vec<u64>,
    /// Per kill: µs from the kill to the next completion.
    stalls_us: Vec<u64>,
}

impl Outcome {
    /// Median and largest stall after a kill, ms.
    fn stalls(&self) -> (f64, f64) {
        let ms: Vec<f64> = self.stalls_us.iter().map(|&s| s as f64 / 1000.0).collect();
        let max = ms.iter().copied().fold(f64::NAN, f64::max);
        (median(ms), max)
    }

    /// Median and largest of the `n` largest gaps, ms.
    fn gaps(&self, n: usize) -> (f64, f64) {
        let top: Vec<f64> = self
            .gaps_us
            .iter()
            .take(n.max(1))
            .map(|&g| g as f64 / 1000.0)
            .collect();
        let max = top.first().copied().unwrap_or(f64::NAN);
        (median(top), max)
    }
}

/// This CPU's time stamp counter.
fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86_64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// How far the guest's TSC, as this tool estimates it from the moment it
/// read the guest's `start` line, may be off: the line's way out (port
/// I/O byte by byte, the monitor, a pipe) is not instant.
const CLOCK_SLACK_MS: u64 = 20;

/// The stall each kill caused, in µs: the largest gap between two guest
/// completions that began within [`CLOCK_SLACK_MS`] of the kill (host TSC,
/// made guest TSC by `offset` = host − guest). At depth 32 completions
/// come every few µs, so the gap a kill causes begins at the kill: its
/// length is the time from the kill to the first completion after it. No
/// such gap of 1 ms or more: under [`STALL_US`] (counted as that).
fn stalls_after(kills: &[u64], offset: i128, per_ms: u64, stalls: &[(u64, u64)]) -> Vec<u64> {
    let slack = i128::from(CLOCK_SLACK_MS * per_ms);
    kills
        .iter()
        .map(|&k| {
            let k = i128::from(k) - offset;
            let us_ticks = |us: u64| i128::from(us) * i128::from(per_ms) / 1000;
            stalls
                .iter()
                .filter_map(|&(at, us)| {
                    let (start, end) = (i128::from(at), i128::from(at) + us_ticks(us));
                    if (start - k).abs() <= slack {
                        Some(us)
                    } else if start < k && k < end {
                        // A kill during a stall (a backend still away):
                        // what was left of it.
                        Some(((end - k) * 1000 / i128::from(per_ms.max(1))) as u64)
                    } else {
                        None
                    }
                })
                .max()
                .unwrap_or(STALL_US)
        })
        .collect()
}

fn env_num(key: &str, default: u64) -> Result<u64> {
    match std::env::var(key) {
        Err(_) => Ok(default),
        Ok(v) => v.parse().map_err(|_| format!("bad {key}={v}")),
    }
}

/// A small xorshift, for kill moments that differ but repeat run to run.
struct Jitter(u64);

impl Jitter {
    fn next_pause(&mut self, pause_ms: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let quarter = (pause_ms / 4).max(1);
        Duration::from_millis(pause_ms - quarter + self.0 % (2 * quarter))
    }
}

/// Runs the guest under `command`, calling `kill` `kills` times once it
/// has found its disk; returns what the guest reported.
fn run(
    command: &mut Command,
    kills: usize,
    pause_ms: u64,
    mut kill: impl FnMut(&Guard) -> Result<bool>,
) -> Result<Outcome> {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut vm = Guard::spawn(command)?;
    let log = drain(vm.child.stderr.take());
    let (console, _reader) = lines(vm.child.stdout.take().ok_or("no stdout")?);
    let mut output: Vec<String> = Vec::new();
    let mut jitter = Jitter(0x2545_f491_4f6c_dd1d);
    let mut killed = 0;
    let mut kill_tsc = Vec::new();
    let mut offset: Option<(i128, u64)> = None;
    let ended = |out: &[String]| {
        out.iter()
            .any(|l| l.contains("VMDT PASS") || l.contains("VMDT FAIL"))
    };
    let started = Instant::now();
    while offset.is_none() {
        let line = console
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| format!("the guest never started its I/O: {output:?}"))?;
        let host = rdtsc();
        if line.contains(" start tsc=") {
            let guest: u64 = field_num(&line, "tsc")?;
            offset = Some((
                i128::from(host) - i128::from(guest),
                field_num(&line, "tsc_per_ms")?,
            ));
        }
        output.push(line);
    }
    while killed < kills && !ended(&output) && !interrupted() {
        let pause = jitter.next_pause(pause_ms);
        let until = Instant::now() + pause;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match console.recv_timeout(left) {
                Ok(line) => output.push(line),
                Err(_) => break,
            }
        }
        if ended(&output) {
            break;
        }
        if kill(&vm)? {
            kill_tsc.push(rdtsc());
            killed += 1;
        }
    }
    // The guest runs for a fixed time; wait for its verdict.
    let deadline = started + Duration::from_secs(600);
    while !ended(&output) && Instant::now() < deadline && !interrupted() {
        match console.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => output.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(_) => {}
        }
    }
    let _ = vm.wait_until(Instant::now() + Duration::from_secs(30));
    drop(vm);
    let log = log.join().unwrap_or_default();
    let verdict = output
        .iter()
        .find_map(|l| {
            l.contains("VMDT PASS")
                .then(|| "PASS".to_string())
                .or_else(|| {
                    l.split_once("VMDT FAIL")
                        .map(|(_, why)| format!("FAIL{why}"))
                })
        })
        .unwrap_or_else(|| format!("no verdict (log: {})", log.lines().last().unwrap_or("")));
    let gaps_us = output
        .iter()
        .rev()
        .find_map(|l| l.split_once("gaps_us=").map(|(_, g)| g.trim().to_string()))
        .map(|g| g.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_default();
    let stalls: Vec<(u64, u64)> = output
        .iter()
        .rev()
        .find_map(|l| l.split_once("stalls=").map(|(_, s)| s.trim().to_string()))
        .map(|s| {
            s.split(',')
                .filter_map(|p| {
                    let (at, us) = p.split_once(':')?;
                    Some((at.parse().ok()?, us.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    let (offset, per_ms) = offset.unwrap_or((0, 1));
    Ok(Outcome {
        verdict,
        boots: output.iter().filter(|l| l.contains("VMDT BEGIN")).count(),
        kills: killed,
        gaps_us,
        stalls_us: stalls_after(&kill_tsc, offset, per_ms, &stalls),
    })
}

fn guest_args(secs: u64, top: usize) -> String {
    format!("test=blk-stall secs={secs} depth=32 size=16 top={top} stall_us={STALL_US}")
}

/// The number after `key=` in `line`.
fn field_num(line: &str, key: &str) -> Result<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no {key}= in {line:?}"))
}

fn ours(image: &Path, kills: usize, pause_ms: u64, secs: u64) -> Result<Outcome> {
    let monitor = vmd_tests::bench::monitor()?;
    let mut command = Command::new(monitor);
    command
        .args(["--kernel", &vmd_tests::bench::guest()])
        .args(["--cmdline", &guest_args(secs, kills.max(8))])
        .args(["--cpus", &CPUS.to_string(), "--memory", MEMORY])
        .arg("--disk")
        .arg(image);
    run(&mut command, kills, pause_ms, |vm| {
        let children = vmd_tests::vmd::children_named(vm.pid() as u32, "dev-block");
        Ok(match children.first().map(|&pid| pid as libc::pid_t) {
            Some(pid) => {
                // SAFETY: kill(2) on the monitor's dev-block child, just found.
                let ret = unsafe { libc::kill(pid, libc::SIGKILL) };
                ret == 0
            }
            None => false,
        })
    })
}

/// qemu-storage-daemon exporting `image` at `socket`, once the socket is there.
fn storage_daemon(image: &Path, socket: &Path) -> Result<Guard> {
    let _ = std::fs::remove_file(socket);
    let mut qsd = Guard::spawn(
        Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!("driver=file,node-name=f,filename={}", image.display()))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on,num-queues={CPUS}",
                socket.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    qsd.remove = Some(socket.to_owned());
    let deadline = Instant::now() + SOCKET_TIMEOUT;
    while !socket.exists() {
        if Instant::now() > deadline {
            return Err("qemu-storage-daemon did not create its socket".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(qsd)
}

fn peer(image: &Path, socket: &Path, kills: usize, pause_ms: u64, secs: u64) -> Result<Outcome> {
    let mut qsd = Some(storage_daemon(image, socket)?);
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args([
            "-accel",
            "kvm",
            "-M",
            "q35",
            "-m",
            MEMORY,
            "-smp",
            &CPUS.to_string(),
        ])
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={MEMORY},share=on"),
        ])
        .args(["-numa", "node,memdev=mem"])
        .args(vmd_tests::bench::QEMU_HEADLESS)
        .args(["-kernel", &vmd_tests::bench::guest()])
        .args(["-append", &guest_args(secs, kills.max(8))])
        .args([
            "-chardev",
            &format!("socket,id=c0,path={},reconnect=1", socket.display()),
        ])
        .args([
            "-device",
            &format!("vhost-user-blk-pci,chardev=c0,num-queues={CPUS}"),
        ]);
    run(&mut command, kills, pause_ms, |_| {
        // Killed, then started again at once: the best a supervisor could do.
        drop(qsd.take());
        qsd = Some(storage_daemon(image, socket)?);
        Ok(true)
    })
}

fn image(scratch: &Scratch, name: &str) -> Result<std::path::PathBuf> {
    let path = scratch.path(name);
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(IMAGE_MIB << 20))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

fn report(what: &str, with: &Outcome, without: &Outcome) {
    let (median, max) = with.stalls();
    let (base_median, base_max) = without.gaps(with.kills);
    // A guest that failed printed no stalls: none to show.
    let shown = |v: f64| {
        if with.verdict == "PASS" {
            format!("{v:.1}")
        } else {
            "-".into()
        }
    };
    println!(
        "{what:<24} {:>5} {:>6} {:>12} {:>10} {:>14.1} {:>10.1}   {}",
        with.kills,
        with.boots,
        shown(median),
        shown(max),
        base_median,
        base_max,
        with.verdict
    );
}

fn main_result() -> Result<()> {
    handle_signals("bench-restart");
    let kills = vmd_tests::bench::rounds(100)?;
    let pause_ms = env_num("BENCH_RESTART_PAUSE_MS", 300)?.max(20);
    let peer_kills = env_num("BENCH_RESTART_PEER_KILLS", 10)? as usize;
    let peer_pause_ms = env_num("BENCH_RESTART_PEER_PAUSE_MS", 3000)?.max(20);
    let scratch = Scratch::new("bench-restart")?;
    let secs = |k: usize, pause_ms: u64| (k as u64 * pause_ms * 5 / 4) / 1000 + 5;
    println!(
        "bench-restart: blk-stall (4 KiB verified I/O, depth 32 x {CPUS} queues, 16 MiB), \
         the backend SIGKILLed ~{pause_ms} ms apart (QEMU's: ~{peer_pause_ms} ms)"
    );
    println!(
        "{:<24} {:>5} {:>6} {:>12} {:>10} {:>14} {:>10}   verdict",
        "", "kills", "boots", "stall med ms", "max ms", "no-kill gaps ms", "max ms"
    );
    let run_secs = secs(kills, pause_ms);
    let ours_with = ours(&image(&scratch, "ours.img")?, kills, pause_ms, run_secs)?;
    let ours_without = ours(
        &image(&scratch, "ours0.img")?,
        0,
        pause_ms,
        run_secs.min(15),
    )?;
    report("ours (vmm-monitor)", &ours_with, &ours_without);
    let have = |tool: &str| Command::new(tool).arg("--version").output().is_ok();
    if !have("qemu-storage-daemon") || !have("qemu-system-x86_64") {
        println!("peer: SKIPPED (qemu-storage-daemon or qemu-system-x86_64 missing)");
        return Ok(());
    }
    let socket = scratch.path("qsd.sock");
    let peer_secs = secs(peer_kills, peer_pause_ms);
    let peer_image = image(&scratch, "peer.img")?;
    let peer_with = peer(&peer_image, &socket, peer_kills, peer_pause_ms, peer_secs)?;
    let peer_image = image(&scratch, "peer0.img")?;
    let peer_without = peer(&peer_image, &socket, 0, peer_pause_ms, peer_secs.min(15))?;
    report("QEMU + storage daemon", &peer_with, &peer_without);
    Ok(())
}

fn main() {
    std::process::exit(exit_code("bench-restart", main_result()));
}
