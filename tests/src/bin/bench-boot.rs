//! bench-boot: boot the test guest's `hello` scenario again and again under
//! vmm-monitor and under QEMU (microvm), interleaved, and report side by side
//! the time from process start to the first COM1 byte, the time to process
//! exit, and the peak RSS of each.
//!
//! Usage: bench-boot [RUNS] (default 20). Run it through scripts/bench-boot,
//! which builds everything in release mode first.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmd_tests::bench::median;

/// Guest RAM for both VMMs.
const MEMORY_MIB: u32 = 128;

struct Sample {
    first_byte: Duration,
    exit: Duration,
    max_rss_kib: i64,
}

fn run_once(mut command: Command) -> Result<Sample, String> {
    let start = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null()) // QEMU warns about CPUID bits this host lacks
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut first = [0u8; 1];
    let first_byte = match stdout.read(&mut first) {
        Ok(1) => start.elapsed(),
        _ => return Err(format!("{command:?} printed nothing")),
    };
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).map_err(|e| e.to_string())?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `status` and `usage` are valid out-pointers.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let exit = start.elapsed();
    if pid < 0 {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    let output = String::from_utf8_lossy(&first) + String::from_utf8_lossy(&rest);
    if !output.contains("VMDT PASS hello") {
        let status = std::process::ExitStatus::from_raw(status);
        return Err(format!(
            "{command:?} did not pass hello ({status}):\n{output}"
        ));
    }
    Ok(Sample {
        first_byte,
        exit,
        max_rss_kib: usage.ru_maxrss,
    })
}

fn ours(monitor: &str, guest: &str) -> Command {
    let mut c = Command::new(monitor);
    c.args(["--kernel", guest, "--cmdline", "test=hello", "--cpus", "1"]);
    c.arg("--memory").arg(format!("{MEMORY_MIB}M"));
    c
}

/// QEMU's microvm; `irqchip` picks its KVM irqchip mode: `None` is QEMU's
/// default for microvm (split: PIC, IOAPIC and PIT in QEMU), `Some("on")`
/// puts them all in the kernel, as vmm-monitor does.
fn qemu(guest: &str, irqchip: Option<&str>) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    match irqchip {
        Some(mode) => c.arg("-accel").arg(format!("kvm,kernel-irqchip={mode}")),
        None => c.args(["-accel", "kvm"]),
    };
    c.args(["-M", "microvm", "-smp", "1"]);
    c.args(vmd_tests::bench::QEMU_HEADLESS);
    c.arg("-m").arg(format!("{MEMORY_MIB}M"));
    c.args(["-kernel", guest, "-append", "test=hello"]);
    c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]);
    c
}

struct Summary {
    first_ms: f64,
    exit_ms: f64,
    rss_mib: f64,
}

fn summarize(samples: &[Sample]) -> Summary {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Summary {
        first_ms: median(samples.iter().map(|s| ms(s.first_byte)).collect()),
        exit_ms: median(samples.iter().map(|s| ms(s.exit)).collect()),
        rss_mib: median(
            samples
                .iter()
                .map(|s| s.max_rss_kib as f64 / 1024.0)
                .collect(),
        ),
    }
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let monitor =
        std::env::var("VMD_MONITOR").unwrap_or_else(|_| "target/release/vmm-monitor".into());
    let guest = std::env::var("VMD_TEST_GUEST").unwrap_or_else(|_| vmd_tests::TEST_GUEST.into());
    type Peer<'a> = (&'a str, Box<dyn Fn() -> Command + 'a>);
    let peers: [Peer<'_>; 3] = [
        ("vmm-monitor", Box::new(|| ours(&monitor, &guest))),
        ("qemu microvm", Box::new(|| qemu(&guest, None))),
        (
            "qemu microvm irqchip=on",
            Box::new(|| qemu(&guest, Some("on"))),
        ),
    ];
    let mut samples: Vec<Vec<Sample>> = peers.iter().map(|_| Vec::new()).collect();
    for i in 0..runs {
        // Interleave, rotating who goes first, so drift hits every peer alike.
        for k in 0..peers.len() {
            let p = (i + k) % peers.len();
            match run_once(peers[p].1()) {
                Ok(sample) => samples[p].push(sample),
                Err(e) => {
                    eprintln!("bench-boot: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    let sums: Vec<Summary> = samples.iter().map(|s| summarize(s)).collect();
    println!(
        "hello, 1 vCPU, {MEMORY_MIB} MiB, {runs} runs each, medians (ratio = vmm-monitor / peer):"
    );
    println!(
        "{:<26} {:>12} {:>14} {:>7} {:>24} {:>7}",
        "", peers[0].0, peers[1].0, "ratio", peers[2].0, "ratio"
    );
    let row = |name: &str, f: &dyn Fn(&Summary) -> f64, unit: &str| {
        let (a, b, c) = (f(&sums[0]), f(&sums[1]), f(&sums[2]));
        println!(
            "{name:<26} {a:>8.1} {unit:<3} {b:>10.1} {unit:<3} {:>7.2} {c:>20.1} {unit:<3} {:>7.2}",
            a / b,
            a / c
        );
    };
    row("start to first COM1 byte", &|s| s.first_ms, "ms");
    row("start to exit", &|s| s.exit_ms, "ms");
    row("peak RSS", &|s| s.rss_mib, "MiB");
}
