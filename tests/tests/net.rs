//! Networking end to end, each test inside a network namespace of its own
//! with a private vmd: a local interface (`-L`, `local interface`) gets the
//! right address from dev-net's DHCP server and the guest pings the host
//! side; two guests on a switch's bridge reach each other; a UDP echo
//! service on the host side of a local interface answers the guest;
//! `locked lladdr` drops frames from a forged source address; taps are
//! named and aliased for their VM and are gone however it stops; a tap
//! deleted under a running VM leaves the VM running; `reset switches`
//! deletes the bridges vmd made once unused, never one it did not make;
//! `rdomain` puts a tap into its VRF (or says the kernel has none).
//!
//! One test at a time: every guest spins on its vCPU, and their timeouts
//! (ARP, echo replies) are short.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmd_tests::vmd::{alive, Vmd};
use vmd_tests::{kvm_or_skip, loud, Scratch, TEST_GUEST};

/// Bound of a whole guest run (boot, DHCP, pings, lingering).
const GUEST_RUN: Duration = Duration::from_secs(120);
/// Bound of a tap's disappearance once its VM ended.
const TAP_GONE: Duration = Duration::from_secs(20);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// A network namespace, deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Option<Self> {
        let name = format!("vmdt-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(name))
    }

    /// `ip ARGS` inside the namespace: its output, or None if it failed.
    fn ip(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "ip"])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether interface `name` exists in the namespace.
    fn has_link(&self, name: &str) -> bool {
        self.ip(&["link", "show", name]).is_some()
    }

    /// Waits until interface `name` is gone; panics (with vmd's log)
    /// after [`TAP_GONE`].
    #[track_caller]
    fn wait_link_gone(&self, name: &str, vmd: &Vmd, why: &str) {
        let start = Instant::now();
        while self.has_link(name) {
            assert!(
                start.elapsed() < TAP_GONE,
                "tap {name} left behind after {why}:\n{}",
                vmd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A namespace tagged `tag`, or None after a loud SKIPPED line naming
/// `test` when KVM, /dev/net/tun or `ip netns` is missing.
fn net_or_skip(test: &str, tag: &str) -> Option<Netns> {
    if !kvm_or_skip(test) {
        return None;
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        loud(&format!("SKIPPED {test}: no /dev/net/tun"));
        return None;
    }
    let ns = Netns::new(tag);
    if ns.is_none() {
        loud(&format!(
            "SKIPPED {test}: cannot make a network namespace (ip netns add)"
        ));
    }
    ns
}

/// A VM block running the test guest with `cmdline`, `disable`d (the
/// test starts it), with `nic` as its interface line.
fn vm_block(name: &str, nic: &str, cmdline: &str) -> String {
    format!(
        "vm \"{name}\" {{\n boot \"{TEST_GUEST}\"\n memory 32M\n disable\n {nic}\n \
         cmdline \"test=net {cmdline}\"\n}}\n"
    )
}

/// The console of VM `name` until it stops.
fn console_until_stop(vmd: &Vmd, name: &str) -> String {
    Console::attach(vmd, name).finish(GUEST_RUN)
}

/// `vmctl console NAME` (input closed) running in the background, its
/// output gathered as it comes; it ends when the VM stops.
struct Console {
    name: String,
    child: Child,
    text: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Console {
    fn attach(vmd: &Vmd, name: &str) -> Self {
        let mut child = vmd
            .vmctl_command(&["console", name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("vmctl console");
        let mut out = child.stdout.take().expect("piped stdout");
        let text = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&text);
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            name: name.into(),
            child,
            text,
            reader: Some(reader),
        }
    }

    fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Waits until the console shows `needle`; panics on a guest FAIL or
    /// after `timeout`.
    #[track_caller]
    fn wait_for(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let text = self.text();
            if text.contains(needle) {
                return;
            }
            assert!(
                !text.contains("VMDT FAIL"),
                "vm {} failed waiting for {needle:?}:\n{text}",
                self.name
            );
            assert!(
                start.elapsed() < timeout,
                "vm {} never printed {needle:?}:\n{text}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the console showed once the VM stopped (within `timeout`).
    #[track_caller]
    fn finish(mut self, timeout: Duration) -> String {
        let start = Instant::now();
        while self.child.try_wait().expect("wait vmctl console").is_none() {
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "vm {} did not stop in {timeout:?}:\n{}",
                    self.name,
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.text()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if self.reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A UDP echo service on the host side, inside a namespace: a thread that
/// entered it (setns), bound to `0.0.0.0:PORT` there, sending every
/// datagram back and keeping what it got.
struct Responder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<String>>>,
}

impl Responder {
    /// Bound (or panics) when this returns.
    fn start(ns: &Netns, port: u16) -> Self {
        let path = format!("/var/run/netns/{}", ns.0);
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let bind = || -> std::io::Result<std::net::UdpSocket> {
                let file = std::fs::File::open(&path)?;
                // SAFETY: setns on an open namespace fd; it changes only
                // this thread's network namespace.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let socket = std::net::UdpSocket::bind(("0.0.0.0", port))?;
                socket.set_read_timeout(Some(Duration::from_millis(50)))?;
                Ok(socket)
            };
            let socket = match bind() {
                Ok(s) => {
                    let _ = bound_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = bound_tx.send(Err(e));
                    return Vec::new();
                }
            };
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
            got
        });
        bound_rx
            .recv()
            .expect("responder thread")
            .expect("responder: enter the namespace and bind");
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops it; every datagram it received, in order.
    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("responder thread")
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_local_interface_gets_its_address_by_dhcp_and_pings_the_host_side() {
    let _one = serial();
    let Some(ns) = net_or_skip(
        "a_local_interface_gets_its_address_by_dhcp_and_pings_the_host_side",
        "dhcp",
    ) else {
        return;
    };
    let dir = Scratch::new("net-local");
    let config = vm_block(
        "n",
        "local interface",
        "expect_ip=100.64.1.3 expect_router=100.64.1.2 ping=3 linger=2000",
    );
    let vmd = Vmd::start_in_netns(dir.path("").as_path(), &config, &ns.0);
    vmd.vmctl(&["start", "n"]).ok();
    // The tap is there, named and aliased for its VM, with the host side's address.
    let link = ns
        .ip(&["-d", "link", "show", "vm1i0"])
        .expect("tap vm1i0 exists");
    assert!(link.contains("alias vm1-if0-n"), "{link}");
    let addr = ns.ip(&["-4", "addr", "show", "vm1i0"]).unwrap();
    assert!(addr.contains("100.64.1.2/31"), "{addr}");
    // dev-net holds its tap and nothing of the console or other VMs.
    let monitor: u32 = vmd.row("n").pid.parse().unwrap();
    let fds = open_files_of_child(monitor, "dev-net");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let dev_net = vmd_tests::vmd::children_named(monitor, "dev-net");
        vmd_tests::vmd::assert_sandboxed(dev_net[0], "dev-net");
    }
    assert_eq!(
        fds.iter().filter(|f| *f == "/dev/net/tun").count(),
        1,
        "{fds:?}"
    );
    assert!(
        !fds.iter()
            .any(|f| f.starts_with("/dev/pts") || f == "/dev/ptmx"),
        "a console fd leaked into dev-net: {fds:?}"
    );
    let console = console_until_stop(&vmd, "n");
    assert!(
        console
            .contains("dhcp ip=100.64.1.3 mask=255.255.255.254 router=100.64.1.2 dns=100.64.1.2"),
        "{console}\n{}",
        vmd.log()
    );
    assert!(console.contains("ping seq=3"), "{console}");
    assert!(
        console.contains("VMDT PASS net"),
        "{console}\n{}",
        vmd.log()
    );
    // The VM stopped (powered off): its tap went with it.
    assert!(!ns.has_link("vm1i0"), "tap left behind");
}

/// The issue's bar for dev-net: killed 100 times at random moments while
/// the guest pings the host side through it every 20 ms, it is restarted
/// on the same tap each time; the pings go on, losing at most what was in
/// flight at each kill (as across a real NIC's reset), and the VM never
/// resets.
#[test]
fn dev_net_killed_100_times_while_the_guest_pings_loses_only_frames_in_flight() {
    let _one = serial();
    let test = "dev_net_killed_100_times_while_the_guest_pings_loses_only_frames_in_flight";
    let Some(ns) = net_or_skip(test, "restart") else {
        return;
    };
    const KILLS: usize = 100;
    const PINGS: usize = 2500;
    let dir = Scratch::new("net-restart");
    let config = vm_block(
        "n",
        "local interface",
        &format!("ping={PINGS} ping_ms=20 lossy=1 expect_ip=100.64.1.3"),
    );
    let vmd = Vmd::start_in_netns(dir.path("").as_path(), &config, &ns.0);
    vmd.vmctl(&["start", "n"]).ok();
    let console = Console::attach(&vmd, "n");
    let monitor: u32 = vmd.row("n").pid.parse().unwrap();
    let started = Instant::now();
    while !console.text().contains("ping seq=") {
        assert!(started.elapsed() < GUEST_RUN, "no ping: {}", console.text());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Each process lives past the restart policy's quick-death window
    // (250 ms), so each is restarted at once.
    let killed = vmd_tests::vmd::kill_repeatedly(monitor, "dev-net", KILLS, 300..400, |pause| {
        std::thread::sleep(pause);
        !console.text().contains("pings sent=")
    });
    let text = console.finish(GUEST_RUN);
    assert_eq!(killed.len(), KILLS, "the pings ended first:\n{text}");
    assert!(text.contains("VMDT PASS net"), "{text}\n{}", vmd.log());
    let line = text
        .lines()
        .find(|l| l.contains("pings sent="))
        .unwrap_or_else(|| panic!("no ping count: {text}"));
    let received: usize = line
        .split("received=")
        .nth(1)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    loud(&format!("{test}: {line}"));
    assert!(
        received >= PINGS - 2 * KILLS,
        "{received} of {PINGS} answered over {KILLS} restarts: {line}"
    );
    let log = vmd.log();
    assert_eq!(
        log.matches("net0: restarted as pid").count(),
        KILLS,
        "{log}"
    );
    assert_eq!(
        text.matches("VMDT BEGIN").count(),
        1,
        "the VM reset: {text}"
    );
}

#[test]
fn vmctl_start_l_gives_an_instance_a_local_interface() {
    let _one = serial();
    let Some(ns) = net_or_skip("vmctl_start_l_gives_an_instance_a_local_interface", "dashl") else {
        return;
    };
    let dir = Scratch::new("net-dash-l");
    let template = format!(
        "vm \"tmpl\" {{\n boot \"{TEST_GUEST}\"\n cmdline \"test=ticker\"\n memory 32M\n disable\n \
         allow instance {{ interface }}\n}}\n"
    );
    let vmd = Vmd::start_in_netns(dir.path("").as_path(), &template, &ns.0);
    vmd.vmctl(&["start", "-t", "tmpl", "-L", "-L", "inst"]).ok();
    let id = vmd.row("inst").id;
    for (index, host) in [(0, 2), (1, 4)] {
        let tap = format!("vm{id}i{index}");
        let link = ns.ip(&["-d", "link", "show", &tap]).expect("a tap per -L");
        assert!(
            link.contains(&format!("alias vm{id}-if{index}-inst")),
            "{link}"
        );
        let addr = ns.ip(&["-4", "addr", "show", &tap]).unwrap();
        assert!(addr.contains(&format!("100.64.{id}.{host}/31")), "{addr}");
    }
    vmd.vmctl(&["stop", "-w", "inst"]).ok();
    for index in 0..2 {
        assert!(!ns.has_link(&format!("vm{id}i{index}")), "tap left behind");
    }
    // An instance of a template that does not allow interfaces gets none.
    std::fs::write(
        vmd.conf(),
        template.replace("allow instance { interface }", ""),
    )
    .unwrap();
    vmd.vmctl(&["reload"]).ok();
    vmd.vmctl(&["start", "-t", "tmpl", "-L", "other"])
        .fails_with("does not allow instances to set interface");
}

/// Two guests on one switch: vmd makes the switch's bridge, both taps
/// join it, one guest pings the other and has its datagrams echoed.
#[test]
fn two_vms_on_a_switch_reach_each_other_through_its_bridge() {
    let _one = serial();
    let Some(ns) = net_or_skip(
        "two_vms_on_a_switch_reach_each_other_through_its_bridge",
        "switch",
    ) else {
        return;
    };
    let dir = Scratch::new("net-switch");
    let nic = "interface { switch \"sw\" }";
    let config = format!(
        "switch \"sw\" {{\n interface vmdtsw0\n}}\n{}{}",
        vm_block(
            "answers",
            nic,
            "static=10.7.0.1/10.7.0.254 ping=0 echo=7 linger=4000"
        ),
        vm_block(
            "asks",
            nic,
            "static=10.7.0.2/10.7.0.254 peer=10.7.0.1 ping=3 udp=10.7.0.1:7 count=3"
        ),
    );
    let vmd = Vmd::start_in_netns(dir.path("").as_path(), &config, &ns.0);
    assert!(!ns.has_link("vmdtsw0"), "the bridge exists before any VM");
    vmd.vmctl(&["start", "answers"]).ok();
    let answers = Console::attach(&vmd, "answers");
    vmd.vmctl(&["start", "asks"]).ok();
    let asks = Console::attach(&vmd, "asks");
    // The bridge: made by vmd (and logged), up, both taps its ports.
    vmd.wait_log("created bridge vmdtsw0 for a switch", 1, GUEST_RUN);
    let bridge = ns.ip(&["-d", "link", "show", "vmdtsw0"]).expect("bridge");
    assert!(bridge.contains("bridge"), "{bridge}");
    assert!(bridge.contains(",UP"), "the bridge is down: {bridge}");
    let ports = ns
        .ip(&["link", "show", "master", "vmdtsw0"])
        .expect("ip link show master");
    for tap in ["vm1i0", "vm2i0"] {
        assert!(
            ports.contains(&format!(": {tap}:")),
            "{tap} not a port: {ports}"
        );
        let link = ns.ip(&["-d", "link", "show", tap]).unwrap();
        assert!(link.contains("bridge_slave"), "{link}");
    }
    let asked = asks.finish(GUEST_RUN);
    let answered = answers.finish(GUEST_RUN);
    let log = vmd.log();
    assert!(asked.contains("ping seq=3"), "{asked}\n{answered}\n{log}");
    assert!(
        asked.contains("udp sent=3 received=3"),
        "{asked}\n{answered}\n{log}"
    );
    assert!(asked.contains("VMDT PASS net"), "{asked}\n{log}");
    assert!(
        answered.contains("echoed=3") && answered.contains("VMDT PASS net"),
        "{answered}\n{log}"
    );
    // Both powered off: their ports left the bridge, which stays.
    ns.wait_link_gone("vm1i0", &vmd, "the guest powered off");
    ns.wait_link_gone("vm2i0", &vmd, "the guest powered off");
    assert!(ns.has_link("vmdtsw0"));
}

/// `vmctl reset switches` deletes a bridge vmd made once no VM uses it
/// (keeping it, and saying so, while one does) and never a bridge that
/// was there before vmd.
#[test]
fn reset_switches_deletes_the_unused_bridges_vmd_made_and_only_those() {
    let _one = serial();
    let test = "reset_switches_deletes_the_unused_bridges_vmd_made_and_only_those";
    let Some(ns) = net_or_skip(test, "reset") else {
        return;
    };
    ns.ip(&["link", "add", "name", "vmdtpre0", "type", "bridge"])
        .expect("ip link add vmdtpre0 type bridge");
    let dir = Scratch::new("net-reset-switches");
    let config = format!(
        "switch \"made\" {{\n interface vmdtsw0\n}}\nswitch \"pre\" {{\n interface vmdtpre0\n}}\n{}",
        vm_block(
            "s",
            "interface { switch \"made\" }\n interface { switch \"pre\" }",
            "static=10.7.0.1/10.7.0.254 ping=0 linger=600000"
        ),
    );
    let vmd = Vmd::start_in_netns(dir.path("").as_path(), &config, &ns.0);
    vmd.vmctl(&["start", "s"]).ok();
    vmd.wait_log("created bridge vmdtsw0 for a switch", 1, TAP_GONE);
    let ports = |bridge: &str| {
        ns.ip(&["link", "show", "master", bridge])
            .unwrap_or_default()
    };
    assert!(ports("vmdtsw0").contains(": vm1i0:"), "{}", vmd.log());
    assert!(ports("vmdtpre0").contains(": vm1i1:"), "{}", vmd.log());
    // In use: kept, with a line saying why.
    vmd.vmctl(&["reset", "switches"]).ok();
    assert!(ns.has_link("vmdtsw0"));
    vmd.wait_log(
        "kept bridge vmdtsw0 vmd created for a switch: still used by vm1i0",
        1,
        TAP_GONE,
    );
    vmd.vmctl(&["stop", "-f", "-w", "s"]).ok();
    ns.wait_link_gone("vm1i0", &vmd, "vmctl stop -f");
    ns.wait_link_gone("vm1i1", &vmd, "vmctl stop -f");
    // Unused: deleted, and logged; the bridge that was there before stays.
    vmd.vmctl(&["reset", "switches"]).ok();
    vmd.wait_log(
        "deleted bridge vmdtsw0 vmd created for a switch",
        1,
        TAP_GONE,
    );
    assert!(!ns.has_link("vmdtsw0"), "{}", vmd.log());
    assert!(ns.has_link("vmdtpre0"), "{}", vmd.log());
    assert!(!vmd.log().contains("vmdtpre0 vmd created"), "{}", vmd.log());
}

/// `interface { rdomain 5 }` on no switch: the tap's master is VRF
/// `rdomain5` on table 1005, made by vmd; on a kernel without VRFs the
/// start fails saying so, and no tap of the VM stays.
#[test]
fn an_interface_rdomain_puts_its_tap_into_a_vrf_or_says_the_kernel_has_none() {
    let _one = serial();
    let test = "an_interface_rdomain_puts_its_tap_into_a_vrf_or_says_the_kernel_has_none";
    let Some(ns) = net_or_skip(test, "rdomain") else {
        return;
    };
    let vrf = ns
        .ip(&["link", "add", "vmdtprobe", "type", "vrf", "table", "10"])
        .is_some();
    if vrf {
        ns.ip(&["link", "del", "vmdtprobe"])
            .expect("ip link del vmdtprobe");
    }
    let dir = Scratch::new("net-rdomain");
    let config = vm_block(
        "r",
        "interface { rdomain 5 }",
        "static=10.7.0.1/10.7.0.254 ping=0 linger=600000",
    );
    let vmd = Vmd::start_in_netns(dir.path("").as_path(), &config, &ns.0);
    if !vrf {
        loud(&format!(
            "{test}: this kernel has no VRF support: checking the refusal only"
        ));
        vmd.vmctl(&["start", "r"]).fails_with("CONFIG_NET_VRF");
        assert!(!ns.has_link("vm1i0"), "tap left behind");
        assert!(!ns.has_link("rdomain5"));
        assert_eq!(vmd.row("r").state, "stopped");
        return;
    }
    vmd.vmctl(&["start", "r"]).ok();
    vmd.wait_log(
        "created VRF rdomain5 (table 1005) for rdomain 5",
        1,
        TAP_GONE,
    );
    let link = ns.ip(&["-d", "link", "show", "vm1i0"]).expect("tap vm1i0");
    assert!(link.contains("master rdomain5"), "{link}");
    let domain = ns.ip(&["-d", "link", "show", "rdomain5"]).expect("VRF");
    assert!(domain.contains("vrf table 1005"), "{domain}");
    vmd.vmctl(&["stop", "-f", "-w", "r"]).ok();
    ns.wait_link_gone("vm1i0", &vmd, "vmctl stop -f");
    vmd.vmctl(&["reset", "switches"]).ok();
    vmd.wait_log(
        "deleted VRF rdomain5 vmd created for rdomain 5",
        1,
        TAP_GONE,
    );
    assert!(!ns.has_link("rdomain5"));
}

/// The guest's datagrams reach a UDP service on the host side of its
/// local interface and come back.
#[test]
fn a_udp_service_on_the_host_side_echoes_the_guests_datagrams() {
    let _one = serial();
    let Some(ns) = net_or_skip(
        "a_udp_service_on_the_host_side_echoes_the_guests_datagrams",
        "udp",
    ) else {
        return;
    };
    let dir = Scratch::new("net-udp");
    let config = vm_block(
        "u",
        "local interface",
        "expect_ip=100.64.1.3 ping=1 udp=100.64.1.2:7777 count=5",
    );
    let vmd = Vmd::start_in_netns(dir.path("").as_path(), &config, &ns.0);
    let responder = Responder::start(&ns, 7777);
    vmd.vmctl(&["start", "u"]).ok();
    let console = console_until_stop(&vmd, "u");
    let got = responder.finish();
    assert!(
        console.contains("udp sent=5 received=5") && console.contains("VMDT PASS net"),
        "{console}\nresponder got {got:?}\n{}",
        vmd.log()
    );
    let want: Vec<String> = (0..5).map(|k| format!("vmdt-udp-{k}")).collect();
    assert_eq!(got, want, "{console}");
}

/// `locked lladdr`: a frame from a forged source address never leaves
/// dev-net (and is counted), the guest's own do.
#[test]
fn locked_lladdr_drops_frames_from_a_forged_source_address() {
    let _one = serial();
    let Some(ns) = net_or_skip(
        "locked_lladdr_drops_frames_from_a_forged_source_address",
        "locked",
    ) else {
        return;
    };
    let dir = Scratch::new("net-locked");
    let config = vm_block(
        "l",
        "local interface { locked lladdr }",
        "expect_ip=100.64.1.3 ping=1 udp=100.64.1.2:7777 count=1 spoof=fe:e1:ba:d0:0b:ad",
    );
    let vmd = Vmd::start_in_netns(dir.path("").as_path(), &config, &ns.0);
    let responder = Responder::start(&ns, 7777);
    vmd.vmctl(&["start", "l"]).ok();
    let console = console_until_stop(&vmd, "l");
    let got = responder.finish();
    assert!(
        console.contains("spoof src=fe:e1:ba:d0:0b:ad")
            && console.contains("udp sent=1 received=1")
            && console.contains("VMDT PASS net"),
        "{console}\nresponder got {got:?}\n{}",
        vmd.log()
    );
    // The forged datagram went first: it would have come first.
    assert_eq!(got, ["vmdt-udp-0"], "{console}");
    // dev-net counted the drop (its counters are logged when it ends).
    vmd.wait_log("oversize, 1 locked,", 1, TAP_GONE);
}

/// Whichever way a VM ends, its tap goes: `vmctl stop -f`, its monitor
/// killed, vmd's reset (the guest's own poweroff is tested above).
#[test]
fn taps_are_gone_after_a_forced_stop_a_killed_monitor_and_a_reset() {
    let _one = serial();
    let Some(ns) = net_or_skip(
        "taps_are_gone_after_a_forced_stop_a_killed_monitor_and_a_reset",
        "stops",
    ) else {
        return;
    };
    let dir = Scratch::new("net-stops");
    let lingers = "ping=0 linger=600000";
    let config = ["forced", "killed", "reset"]
        .map(|name| vm_block(name, "local interface", lingers))
        .concat();
    let vmd = Vmd::start_in_netns(dir.path("").as_path(), &config, &ns.0);
    for name in ["forced", "killed", "reset"] {
        vmd.vmctl(&["start", name]).ok();
    }
    let tap = |name: &str| format!("vm{}i0", vmd.row(name).id);
    let (forced, killed, reset) = (tap("forced"), tap("killed"), tap("reset"));
    for t in [&forced, &killed, &reset] {
        assert!(ns.has_link(t), "no tap {t}");
    }

    vmd.vmctl(&["stop", "-f", "forced"]).ok();
    ns.wait_link_gone(&forced, &vmd, "vmctl stop -f");

    let monitor: u32 = vmd.row("killed").pid.parse().unwrap();
    // SAFETY: kill has no memory-safety preconditions.
    let killed_it = unsafe { libc::kill(monitor as libc::pid_t, libc::SIGKILL) };
    assert_eq!(killed_it, 0, "kill {monitor}");
    ns.wait_link_gone(&killed, &vmd, "its monitor was killed");
    vmd.wait_state("killed", "stopped", TAP_GONE);
    assert!(!alive(monitor));

    assert!(ns.has_link(&reset), "{}", vmd.log());
    vmd.vmctl(&["reset", "vms"]).ok();
    ns.wait_link_gone(&reset, &vmd, "vmctl reset vms");
}

/// A tap deleted from under a running VM (`ip link del`): dev-net says so
/// and serves the guest without it; the VM keeps running.
#[test]
fn a_tap_deleted_under_a_running_vm_leaves_it_running() {
    let _one = serial();
    let Some(ns) = net_or_skip(
        "a_tap_deleted_under_a_running_vm_leaves_it_running",
        "tapdel",
    ) else {
        return;
    };
    let dir = Scratch::new("net-tapdel");
    let config = vm_block(
        "d",
        "local interface",
        "expect_ip=100.64.1.3 ping=1 linger=600000",
    );
    let vmd = Vmd::start_in_netns(dir.path("").as_path(), &config, &ns.0);
    vmd.vmctl(&["start", "d"]).ok();
    let console = Console::attach(&vmd, "d");
    // The guest got its address and reached the host: dev-net moves frames.
    console.wait_for("ping seq=1", GUEST_RUN);
    let monitor: u32 = vmd.row("d").pid.parse().unwrap();
    ns.ip(&["link", "del", "vm1i0"]).expect("ip link del vm1i0");
    assert!(!ns.has_link("vm1i0"));
    vmd.wait_log("the tap is gone", 1, TAP_GONE);
    // A moment later: the VM, its monitor and its dev-net all still run.
    std::thread::sleep(Duration::from_millis(500));
    let row = vmd.row("d");
    assert_eq!(row.state, "running", "{}", vmd.log());
    assert_eq!(row.pid, monitor.to_string());
    assert!(alive(monitor));
    open_files_of_child(monitor, "dev-net");
    let text = console.text();
    assert!(!text.contains("VMDT FAIL"), "{text}");
    vmd.vmctl(&["stop", "-f", "-w", "d"]).ok();
    let text = console.finish(GUEST_RUN);
    assert!(!text.contains("VMDT FAIL"), "{text}");
}

/// What the fds of `monitor`'s child named `name` point at.
fn open_files_of_child(monitor: u32, name: &str) -> Vec<String> {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |f: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(f))
                .map(str::trim)
        };
        if field("Name:") == Some(name) && field("PPid:") == Some(&monitor.to_string()) {
            return std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .map(|p| p.display().to_string())
                .collect();
        }
    }
    panic!("no {name} under monitor {monitor}");
}
