//! Networking end to end, inside a network namespace the test makes: a
//! local interface (`-L`, `local interface`) gets the right address from
//! dev-net's DHCP server and the guest pings the host side; taps are named
//! and aliased for their VM and are gone once it stops.

use std::process::Command;
use std::time::Duration;

use vmd_tests::vmd::Vmd;
use vmd_tests::{kvm_or_skip, loud, Scratch, TEST_GUEST};

const SLOW: Duration = Duration::from_secs(120);

/// A network namespace, deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Option<Self> {
        let name = format!("vmdt-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(name))
    }

    /// `ip ARGS` inside the namespace: its output, or None if it failed.
    fn ip(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "ip"])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn net_or_skip(test: &str) -> Option<Netns> {
    if !kvm_or_skip(test) {
        return None;
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        loud(&format!("SKIPPED {test}: no /dev/net/tun"));
        return None;
    }
    let ns = Netns::new(test.split('_').next().unwrap_or("net"));
    if ns.is_none() {
        loud(&format!(
            "SKIPPED {test}: cannot make a network namespace (ip netns add)"
        ));
    }
    ns
}

/// The console of VM `name` until it stops.
fn console_until_stop(vmd: &Vmd, name: &str) -> String {
    let out = vmd
        .vmctl_command(&["console", name])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("vmctl console");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_local_interface_gets_its_address_by_dhcp_and_pings_the_host_side() {
    let Some(ns) =
        net_or_skip("a_local_interface_gets_its_address_by_dhcp_and_pings_the_host_side")
    else {
        return;
    };
    let dir = Scratch::new("net-local");
    let config = format!(
        "vm \"n\" {{\n boot \"{TEST_GUEST}\"\n memory 32M\n disable\n local interface\n \
         cmdline \"test=net expect_ip=100.64.1.3 expect_router=100.64.1.2 ping=3 linger=2000\"\n}}\n"
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
    assert!(
        ns.ip(&["link", "show", "vm1i0"]).is_none(),
        "tap left behind"
    );
}

#[test]
fn vmctl_start_l_gives_an_instance_a_local_interface() {
    let Some(ns) = net_or_skip("vmctl_start_l_gives_an_instance_a_local_interface") else {
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
    assert!(
        ns.ip(&["link", "show", &format!("vm{id}i0")]).is_none(),
        "tap left behind"
    );
    // An instance of a template that does not allow interfaces gets none.
    std::fs::write(
        vmd.conf(),
        template.replace("allow instance { interface }", ""),
    )
    .unwrap();
    vmd.vmctl(&["reload"]).ok();
    vmd.vmctl(&["start", "-t", "tmpl", "-L", "other"])
        .fails_with("does not allow instances to set interface");
    let _ = SLOW;
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
