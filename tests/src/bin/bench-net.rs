//! bench-net: UDP packets per second and throughput, guest→host and
//! host→guest, over a tap, on our VMM (vmd → vmm-monitor → dev-net) and on
//! QEMU's userspace virtio-net (`-netdev tap,...,vhost=off`), side by side
//! in the same run, round by round with alternating order.
//!
//! Each VMM runs in a network namespace of its own. Ours: a private vmd
//! started there (`ip netns exec`) with one VM that has a `local interface`
//! (tap `vm1i0`, host side 100.64.1.2/31, guest 100.64.1.3). QEMU: a tap
//! this tool makes there (`ip tuntap add`, 100.64.1.2/31), opened by
//! `qemu-system-x86_64 -M q35 -netdev tap,ifname=...,vhost=off -device
//! virtio-net-pci,disable-legacy=on`. The same test guest (`test=net`,
//! static address 100.64.1.3, 1 vCPU, 256 MiB) runs on both.
//!
//! - tx (guest→host): the guest's `bench=tx` sends UDP datagrams of `size=`
//!   bytes to 100.64.1.2:PORT as fast as the device takes them for `ms=`
//!   and reports what it sent; a sink socket in the namespace (a thread
//!   that setns()'d into it) counts what arrived.
//! - rx (host→guest): a source socket in the namespace sends datagrams of
//!   the same size to 100.64.1.3 as fast as it can from the guest's `mac=`
//!   line (a permanent neighbour entry is installed then, so no ARP) until
//!   the guest's result; the guest's `bench=rx` counts what arrived in its
//!   `ms=` window after `bench rx ready`.
//!
//! Usage: bench-net [ROUNDS] (default 3). Run it through scripts/bench-net,
//! which builds everything in release mode first. Needs root, /dev/kvm,
//! /dev/net/tun, `ip` and qemu-system-x86_64; without them it says
//! SKIPPED and exits 0. VMD_MONITOR overrides the monitor (vmd, vmctl and
//! dev-net must be next to it), VMD_TEST_GUEST the guest, BENCH_NET_MS the
//! guest's window (default 3000), BENCH_NET_UNSANDBOXED=1 runs ours with
//! vm.conf's `sandbox no` (what the sandbox costs), BENCH_NET_SIZES the payload sizes
//! (default "64,1400").

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmd_tests::bench::{
    drain, exit_code, find_process, handle_signals, interrupted, lines, median, num, parent_of,
    spread, threads_cpu_ns, Guard, Result, Scratch,
};

const MEMORY_MIB: u64 = 256;
const HOST_IP: &str = "100.64.1.2";
const GUEST_IP: &str = "100.64.1.3";
/// The sink's port (guest→host) and the port the source sends to.
const SINK_PORT: u16 = 5201;
const GUEST_PORT: u16 = 5202;
/// The guest's UDP source port.
const GUEST_SRC_PORT: u16 = 40_000;
/// QEMU's tap, in its namespace; ours is vmd's first tap of VM 1.
const QEMU_TAP: &str = "qtap0";
const OUR_TAP: &str = "vm1i0";
const QEMU_MAC: &str = "52:54:00:12:34:56";
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the sink keeps counting after the guest's result line.
const SINK_GRACE: Duration = Duration::from_millis(300);

/// Namespaces to delete if a signal arrives.
static NAMESPACES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Runs a command to completion; its stdout, or an error with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---- network namespaces ----

/// A network namespace with `lo` up, deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Result<Self> {
        let name = format!("vmdb-{tag}-{}", std::process::id());
        let _ = run("ip", &["netns", "del", &name]);
        run("ip", &["netns", "add", &name])?;
        NAMESPACES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.clone());
        let ns = Self(name);
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NS ARGS`.
    fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", &self.0];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `f` on a thread that has entered this namespace.
    fn thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> JoinHandle<Result<T>> {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            // SAFETY: setns(2) on a namespace fd we hold; it affects only
            // this thread (CLONE_NEWNET needs no single-threaded process).
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
            }
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.0]);
    }
}

// ---- host side: sink and source ----

/// What a host socket counted.
#[derive(Default, Clone, Copy, Debug)]
struct Counted {
    frames: u64,
    bytes: u64,
    /// Seconds the counting ran (the source: first to last send).
    secs: f64,
    /// send() failures (the source).
    errors: u64,
}

/// A UDP sink on 0.0.0.0:SINK_PORT in `ns`, counting datagrams from the
/// guest's source port until `stop`. Returns once it is bound.
fn sink(ns: &Netns, stop: Arc<AtomicBool>) -> Result<JoinHandle<Result<Counted>>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = ns.thread(move || {
        let socket = UdpSocket::bind(("0.0.0.0", SINK_PORT)).map_err(|e| format!("bind: {e}"));
        let socket = match socket {
            Ok(s) => s,
            Err(e) => {
                let _ = ready_tx.send(Err(e.clone()));
                return Err(e);
            }
        };
        let size: libc::c_int = 32 << 20;
        // SAFETY: setsockopt on our socket with a c_int value.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| e.to_string())?;
        let _ = ready_tx.send(Ok(()));
        let mut counted = Counted::default();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) if from.port() == GUEST_SRC_PORT => {
                    counted.frames += 1;
                    counted.bytes += n as u64;
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("sink: {e}")),
            }
        }
        Ok(counted)
    });
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(format!("sink: {e}")),
        Err(_) => Err(format!("sink: {:?}", handle.join())),
    }
}

/// A UDP source in `ns` sending `size`-byte datagrams to the guest from
/// `go` until `stop`, as fast as send() returns.
fn source(
    ns: &Netns,
    size: usize,
    go: mpsc::Receiver<()>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<Counted>> {
    ns.thread(move || {
        let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
        if go.recv().is_err() {
            return Ok(Counted::default());
        }
        socket
            .connect((GUEST_IP, GUEST_PORT))
            .map_err(|e| format!("connect: {e}"))?;
        let data: Vec<u8> = (0..size).map(|k| k as u8).collect();
        let mut counted = Counted::default();
        let began = Instant::now();
        'out: loop {
            for _ in 0..256 {
                match socket.send(&data) {
                    Ok(n) => {
                        counted.frames += 1;
                        counted.bytes += n as u64;
                    }
                    Err(_) => counted.errors += 1,
                }
            }
            if stop.load(Ordering::Relaxed) {
                break 'out;
            }
        }
        counted.secs = began.elapsed().as_secs_f64();
        Ok(counted)
    })
}

// ---- the VMs ----

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Dir {
    Tx,
    Rx,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Vmm {
    Ours,
    Qemu,
}

struct Setup {
    /// BENCH_NET_UNSANDBOXED=1: our devices and vCPUs without their
    /// sandbox (vm.conf `sandbox no`), to measure what it costs.
    unsandboxed: bool,
    bin: PathBuf,
    guest: String,
    ms: u64,
    scratch: PathBuf,
}

/// One run's figures.
#[derive(Clone, Copy)]
struct Sample {
    /// Datagrams per second the sender managed, and that arrived.
    sent_pps: f64,
    arrived_pps: f64,
    /// UDP payload Mbit/s that arrived.
    arrived_mbps: f64,
    /// CPU µs per datagram that arrived: the device side (ours: dev-net;
    /// QEMU: its threads but the vCPU's) and the guest's vCPU thread.
    device_us: f64,
    vcpu_us: f64,
}

/// Whether a QEMU thread name is a vCPU's (`CPU 0/KVM`).
fn is_qemu_vcpu(comm: &str) -> bool {
    comm.starts_with("CPU ")
}

/// CPU nanoseconds so far of the device side and of the guest's vCPU
/// (see [`Sample::device_us`]).
fn cpu_now(vmm: Vmm, vm: &Running) -> (u64, u64) {
    match vmm {
        Vmm::Ours => {
            // dev-net's parent is the VM's monitor.
            let dev = find_process("dev-net");
            let monitor = dev.and_then(parent_of);
            (
                dev.map_or(0, |p| threads_cpu_ns(p, |_| true)),
                monitor.map_or(0, |p| threads_cpu_ns(p, |c| c == "vcpu0")),
            )
        }
        Vmm::Qemu => {
            let pid = vm.main.pid();
            (
                threads_cpu_ns(pid, |c| !is_qemu_vcpu(c)),
                threads_cpu_ns(pid, is_qemu_vcpu),
            )
        }
    }
}

/// A running VM: its console lines, and whatever must go with it.
struct Running {
    lines: mpsc::Receiver<String>,
    reader: Option<JoinHandle<()>>,
    /// The process whose exit ends the run (QEMU, or `vmctl console`).
    main: Guard,
    stderr: Option<JoinHandle<String>>,
    /// Ours: vmd and its directory.
    vmd: Option<(Guard, PathBuf)>,
    tap: &'static str,
}

impl Running {
    fn log(&mut self) -> String {
        let mut log = String::new();
        if let Some((_, dir)) = &self.vmd {
            log += &std::fs::read_to_string(dir.join("vmd.log")).unwrap_or_default();
        }
        log
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some((_vmd, dir)) = &self.vmd {
            let _ = Command::new(vmd_bin(dir, "vmctl"))
                .args(["stop", "-a", "-f", "-w"])
                .env("VMD_SOCKET", dir.join("run/vmd.sock"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The binaries' directory is kept next to vmd's scratch directory name.
fn vmd_bin(dir: &Path, name: &str) -> PathBuf {
    let bin = std::fs::read_to_string(dir.join("bin")).unwrap_or_default();
    PathBuf::from(bin.trim()).join(name)
}

fn cmdline(dir: Dir, size: usize, ms: u64) -> String {
    let common = format!("test=net static={GUEST_IP}/{HOST_IP} mask=255.255.255.254 ping=0");
    match dir {
        Dir::Tx => {
            format!("{common} udp={HOST_IP}:{SINK_PORT} count=0 bench=tx size={size} ms={ms}")
        }
        Dir::Rx => format!("{common} bench=rx ms={ms}"),
    }
}

fn start_ours(setup: &Setup, ns: &Netns, cmdline: &str) -> Result<Running> {
    let dir = setup.scratch.join("vmd");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(dir.join("bin"), setup.bin.display().to_string()).map_err(|e| e.to_string())?;
    let conf = dir.join("vm.conf");
    std::fs::write(
        &conf,
        format!(
            "vm \"n\" {{\n boot \"{}\"\n memory {MEMORY_MIB}M\n disable\n local interface\n cmdline \"{cmdline}\"\n{}}}\n",
            setup.guest,
            // For measuring what the sandbox costs (vm.conf's escape).
            if setup.unsandboxed { " sandbox no\n" } else { "" }
        ),
    )
    .map_err(|e| e.to_string())?;
    let socket = dir.join("run/vmd.sock");
    let log = std::fs::File::create(dir.join("vmd.log")).map_err(|e| e.to_string())?;
    let mut vmd = Guard::spawn(
        Command::new("ip")
            .args(["netns", "exec", &ns.0])
            .arg(setup.bin.join("vmd"))
            .args(["-d", "-vv", "-f"])
            .arg(&conf)
            .env("VMD_SOCKET", &socket)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if let Ok(Some(status)) = vmd.child.try_wait() {
            let log = std::fs::read_to_string(dir.join("vmd.log")).unwrap_or_default();
            return Err(format!("vmd exited with {status}:\n{log}"));
        }
        if Instant::now() > deadline || interrupted() {
            return Err("vmd did not open its socket".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let vmctl = setup.bin.join("vmctl");
    let started = Command::new(&vmctl)
        .args(["start", "n"])
        .env("VMD_SOCKET", &socket)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("vmctl: {e}"))?;
    if !started.status.success() {
        return Err(format!(
            "vmctl start: {}",
            String::from_utf8_lossy(&started.stderr)
        ));
    }
    let mut console = Guard::spawn(
        Command::new(&vmctl)
            .args(["console", "n"])
            .env("VMD_SOCKET", &socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let stderr = drain(console.child.stderr.take());
    let (lines, reader) = lines(console.child.stdout.take().ok_or("no stdout")?);
    Ok(Running {
        lines,
        reader: Some(reader),
        main: console,
        stderr: Some(stderr),
        vmd: Some((vmd, dir)),
        tap: OUR_TAP,
    })
}

fn start_qemu(setup: &Setup, ns: &Netns, cmdline: &str) -> Result<Running> {
    let netdev = format!("tap,id=n0,ifname={QEMU_TAP},script=no,downscript=no,vhost=off");
    let device = format!("virtio-net-pci,netdev=n0,disable-legacy=on,mac={QEMU_MAC}");
    let mut qemu = Guard::spawn(
        Command::new("ip")
            .args(["netns", "exec", &ns.0, "setsid", "qemu-system-x86_64"])
            .args(["-accel", "kvm", "-M", "q35", "-smp", "1"])
            // Thread names, so that the vCPU's CPU time can be told apart.
            .args(["-name", "bench,debug-threads=on"])
            .args(["-m", &format!("{MEMORY_MIB}M")])
            .args(vmd_tests::bench::QEMU_HEADLESS)
            .args(["-kernel", &setup.guest, "-append", cmdline])
            .args(["-netdev", &netdev, "-device", &device])
            .args([
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=4",
                "-no-reboot",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let stderr = drain(qemu.child.stderr.take());
    let (lines, reader) = lines(qemu.child.stdout.take().ok_or("no stdout")?);
    Ok(Running {
        lines,
        reader: Some(reader),
        main: qemu,
        stderr: Some(stderr),
        vmd: None,
        tap: QEMU_TAP,
    })
}

/// One VM run of one direction and size.
fn run_case(setup: &Setup, vmm: Vmm, ns: &Netns, dir: Dir, size: usize) -> Result<Sample> {
    let cmdline = cmdline(dir, size, setup.ms);
    let stop = Arc::new(AtomicBool::new(false));
    let mut sink_thread = None;
    let mut source_thread = None;
    let mut go = None;
    match dir {
        Dir::Tx => sink_thread = Some(sink(ns, stop.clone())?),
        Dir::Rx => {
            let (go_tx, go_rx) = mpsc::channel();
            go = Some(go_tx);
            source_thread = Some(source(ns, size, go_rx, stop.clone()));
        }
    }
    let mut vm = match vmm {
        Vmm::Ours => start_ours(setup, ns, &cmdline)?,
        Vmm::Qemu => start_qemu(setup, ns, &cmdline)?,
    };
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut console = String::new();
    let mut passed = false;
    let mut failure = None;
    let mut result: Option<String> = None;
    let (mut cpu_start, mut cpu_end) = (None, None);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match vm.lines.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                failure = Some(format!("no end after {RUN_TIMEOUT:?}"));
                break;
            }
        };
        console.push_str(&line);
        console.push('\n');
        // The window: from the guest's first line of the net test (tx
        // starts sending right after it) or its rx "ready", to its result.
        let starts = match dir {
            Dir::Tx => line.starts_with("VMDT net mac="),
            Dir::Rx => line == "VMDT net bench rx ready",
        };
        if starts {
            let qemu = vmd_tests::bench::process_name(vm.main.pid());
            if vmm == Vmm::Qemu && qemu.as_deref() != Some("qemu-system-x86") {
                // `ip netns exec` and `setsid` exec, so it should be.
                failure = Some(format!("the process started is {qemu:?}, not QEMU"));
                break;
            }
            cpu_start = Some(cpu_now(vmm, &vm));
        }
        if let Some(mac) = line.strip_prefix("VMDT net mac=") {
            if let Some(go) = go.take() {
                // A permanent neighbour: the source needs no ARP.
                ns.ip(&[
                    "neigh",
                    "replace",
                    GUEST_IP,
                    "lladdr",
                    mac.trim(),
                    "dev",
                    vm.tap,
                    "nud",
                    "permanent",
                ])?;
                let _ = go.send(());
            }
        } else if line.starts_with("VMDT net bench tx ")
            || line.starts_with("VMDT net bench rx frames=")
        {
            result = Some(line.clone());
            cpu_end = Some(cpu_now(vmm, &vm));
            if dir == Dir::Rx {
                stop.store(true, Ordering::Relaxed);
            }
        } else if line == "VMDT PASS net" {
            passed = true;
            break;
        } else if line.starts_with("VMDT FAIL") {
            failure = Some(line.clone());
            break;
        }
    }
    drop(go);
    if dir == Dir::Tx {
        std::thread::sleep(SINK_GRACE);
    }
    stop.store(true, Ordering::Relaxed);
    let status = if failure.is_none() {
        vm.main.wait_until(Instant::now() + Duration::from_secs(20))
    } else {
        Err("stopped".into())
    };
    let mut log = vm.log();
    drop(vm.vmd.take());
    let _ = vm.main.child.kill();
    if let Some(r) = vm.reader.take() {
        let _ = r.join();
    }
    log += &vm
        .stderr
        .take()
        .map(|s| s.join().unwrap_or_default())
        .unwrap_or_default();
    drop(vm);
    let sunk = match sink_thread {
        Some(t) => Some(t.join().map_err(|_| "sink panicked")??),
        None => None,
    };
    let sourced = match source_thread {
        Some(t) => Some(t.join().map_err(|_| "source panicked")??),
        None => None,
    };
    if interrupted() {
        return Err("interrupted".into());
    }
    let who = match vmm {
        Vmm::Ours => "vmd",
        Vmm::Qemu => "QEMU",
    };
    // QEMU's isa-debug-exit gives 1; a poweroff by ACPI gives 0.
    let ok = matches!(&status, Ok(s) if s.success() || (vmm == Vmm::Qemu && s.code() == Some(1)));
    let result = match (failure, passed && ok, result) {
        (None, true, Some(r)) => r,
        (failure, _, _) => {
            return Err(format!(
                "{who} {cmdline:?} failed: {failure:?} {status:?}\n--- console ---\n{console}--- log ---\n{log}"
            ))
        }
    };
    let ms = num(&result, "ms")?.max(1) as f64;
    let frames = num(&result, "frames")? as f64;
    let ((dev0, vcpu0), (dev1, vcpu1)) = cpu_start.zip(cpu_end).ok_or("no CPU window")?;
    let per_frame =
        |ns0: u64, ns1: u64, n: f64| ns1.saturating_sub(ns0) as f64 / 1000.0 / n.max(1.0);
    Ok(match dir {
        Dir::Tx => {
            let sunk = sunk.unwrap_or_default();
            Sample {
                sent_pps: frames * 1000.0 / ms,
                arrived_pps: sunk.frames as f64 * 1000.0 / ms,
                arrived_mbps: sunk.bytes as f64 * 8.0 / 1000.0 / ms,
                device_us: per_frame(dev0, dev1, sunk.frames as f64),
                vcpu_us: per_frame(vcpu0, vcpu1, sunk.frames as f64),
            }
        }
        Dir::Rx => {
            let sourced = sourced.unwrap_or_default();
            if sourced.frames == 0 {
                return Err(format!(
                    "{who}: the source sent nothing ({} send errors)",
                    sourced.errors
                ));
            }
            Sample {
                sent_pps: sourced.frames as f64 / sourced.secs.max(1e-9),
                arrived_pps: frames * 1000.0 / ms,
                arrived_mbps: frames * size as f64 * 8.0 / 1000.0 / ms,
                device_us: per_frame(dev0, dev1, frames),
                vcpu_us: per_frame(vcpu0, vcpu1, frames),
            }
        }
    })
}

// ---- report ----

type Key = (Dir, usize);

fn report(samples: &BTreeMap<(Key, bool), Vec<Sample>>, keys: &[Key], rounds: usize, ms: u64) {
    println!(
        "net bench, 1 vCPU, {MEMORY_MIB} MiB, {ms} ms per run, {rounds} rounds, medians; \
         ours = vmd/vmm-monitor/dev-net, qemu = QEMU q35 virtio-net-pci tap vhost=off"
    );
    println!(
        "(tx: guest→host, sent = the guest's count, arrived = the host sink's; \
         rx: host→guest, sent = the host source's send() rate, arrived = the guest's count; \
         kpps = 1000 datagrams/s, Mbit/s of UDP payload arrived)"
    );
    println!(
        "{:<10} {:>10} {:>10}   {:>10} {:>10} {:>6}   {:>9} {:>9} {:>6}",
        "", "sent kpps", "", "arrived", "kpps", "", "Mbit/s", "", ""
    );
    println!(
        "{:<10} {:>10} {:>10}   {:>10} {:>10} {:>6}   {:>9} {:>9} {:>6}",
        "case", "ours", "qemu", "ours", "qemu", "ratio", "ours", "qemu", "ratio"
    );
    let get = |key: &Key, ours: bool, f: fn(&Sample) -> f64| -> Vec<f64> {
        samples
            .get(&(*key, ours))
            .map(|v| v.iter().map(f).collect())
            .unwrap_or_default()
    };
    for key in keys {
        let label = format!("{} {}B", if key.0 == Dir::Tx { "tx" } else { "rx" }, key.1);
        let sent = |o| median(get(key, o, |s| s.sent_pps)) / 1000.0;
        let pps = |o| median(get(key, o, |s| s.arrived_pps)) / 1000.0;
        let mbps = |o| median(get(key, o, |s| s.arrived_mbps));
        println!(
            "{label:<10} {:>10.1} {:>10.1}   {:>10.1} {:>10.1} {:>6.2}   {:>9.1} {:>9.1} {:>6.2}",
            sent(true),
            sent(false),
            pps(true),
            pps(false),
            pps(true) / pps(false),
            mbps(true),
            mbps(false),
            mbps(true) / mbps(false),
        );
    }
    println!(
        "CPU µs per datagram arrived, medians: device = ours dev-net, QEMU's threads but the \
         vCPU's; vCPU = the guest's vCPU thread"
    );
    println!(
        "{:<10} {:>10} {:>10} {:>6}   {:>10} {:>10} {:>6}",
        "case", "dev ours", "dev qemu", "ratio", "vcpu ours", "vcpu qemu", "ratio"
    );
    for key in keys {
        let label = format!("{} {}B", if key.0 == Dir::Tx { "tx" } else { "rx" }, key.1);
        let dev = |o| median(get(key, o, |s| s.device_us));
        let vcpu = |o| median(get(key, o, |s| s.vcpu_us));
        println!(
            "{label:<10} {:>10.2} {:>10.2} {:>6.2}   {:>10.2} {:>10.2} {:>6.2}",
            dev(true),
            dev(false),
            dev(true) / dev(false),
            vcpu(true),
            vcpu(false),
            vcpu(true) / vcpu(false),
        );
    }
    println!("per-round ratios of arrived pps, lowest to highest (round i against round i):");
    for key in keys {
        let label = format!("{} {}B", if key.0 == Dir::Tx { "tx" } else { "rx" }, key.1);
        println!(
            "{label:<10} {}",
            spread(
                &get(key, true, |s| s.arrived_pps),
                &get(key, false, |s| s.arrived_pps)
            )
        );
    }
}

// ---- main ----

fn skip(reason: &str) -> ! {
    eprintln!("bench-net: SKIPPED: {reason}");
    std::process::exit(0);
}

fn main() {
    handle_signals("bench-net");
    let code = exit_code("bench-net", bench());
    for ns in NAMESPACES.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = run("ip", &["netns", "del", ns]);
    }
    std::process::exit(code);
}

fn bench() -> Result<()> {
    let rounds = vmd_tests::bench::rounds(3)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("not root (network namespaces and taps need it)");
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        skip(&format!("/dev/kvm cannot be opened ({e})"));
    }
    if !Path::new("/dev/net/tun").exists() {
        skip("no /dev/net/tun");
    }
    if run("ip", &["-V"]).is_err() {
        skip("no ip(8) (iproute2)");
    }
    if run("qemu-system-x86_64", &["--version"]).is_err() {
        skip("no qemu-system-x86_64 (apt-get install -y qemu-system-x86)");
    }
    let monitor = vmd_tests::bench::monitor()?;
    let bin = monitor
        .parent()
        .ok_or("no directory of the monitor")?
        .to_path_buf();
    for name in ["vmm-monitor", "vmd", "vmctl", "dev-net"] {
        if !bin.join(name).exists() {
            return Err(format!(
                "{} is missing: build it first",
                bin.join(name).display()
            ));
        }
    }
    let ms = match std::env::var("BENCH_NET_MS") {
        Ok(v) => v.parse().map_err(|_| format!("bad BENCH_NET_MS={v}"))?,
        Err(_) => 3000,
    };
    let sizes: Vec<usize> = match std::env::var("BENCH_NET_SIZES") {
        Ok(v) => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .map_err(|_| format!("bad BENCH_NET_SIZES={v}"))
            })
            .collect::<Result<_>>()?,
        Err(_) => vec![64, 1400],
    };
    let scratch = Scratch::new("bench-net")?;
    let setup = Setup {
        unsandboxed: std::env::var_os("BENCH_NET_UNSANDBOXED").is_some_and(|v| v == "1"),
        bin,
        guest: vmd_tests::bench::guest(),
        ms,
        scratch: scratch.dir().to_path_buf(),
    };
    let ours_ns = Netns::new("ours")?;
    let qemu_ns = Netns::new("qemu")?;
    qemu_ns.ip(&["tuntap", "add", "dev", QEMU_TAP, "mode", "tap"])?;
    qemu_ns.ip(&["addr", "add", &format!("{HOST_IP}/31"), "dev", QEMU_TAP])?;
    qemu_ns.ip(&["link", "set", QEMU_TAP, "up"])?;

    let keys: Vec<Key> = [Dir::Tx, Dir::Rx]
        .into_iter()
        .flat_map(|d| sizes.iter().map(move |s| (d, *s)))
        .collect();
    let mut samples: BTreeMap<(Key, bool), Vec<Sample>> = BTreeMap::new();
    for round in 0..rounds {
        for (i, key) in keys.iter().enumerate() {
            // Alternate who goes first, so drift hits both alike.
            let ours_first = (round + i) % 2 == 0;
            for k in 0..2 {
                let is_ours = (k == 0) == ours_first;
                let (vmm, ns) = if is_ours {
                    (Vmm::Ours, &ours_ns)
                } else {
                    (Vmm::Qemu, &qemu_ns)
                };
                let sample = run_case(&setup, vmm, ns, key.0, key.1)?;
                eprintln!(
                    "bench-net: round {}/{rounds} {:?} {}B {:?}: sent {:.1} kpps, arrived {:.1} kpps, {:.1} Mbit/s",
                    round + 1,
                    key.0,
                    key.1,
                    vmm,
                    sample.sent_pps / 1000.0,
                    sample.arrived_pps / 1000.0,
                    sample.arrived_mbps
                );
                samples.entry((*key, is_ours)).or_default().push(sample);
            }
        }
    }
    report(&samples, &keys, rounds, ms);
    Ok(())
}
