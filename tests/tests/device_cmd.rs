//! `vmctl device` on a VM doing disk I/O under vmd, as an operator uses
//! it: counters that run on across restarts, one device's log level, and
//! a restart held stopped for a debugger.

use std::time::{Duration, Instant};

use vmd_tests::pty::Terminal;
use vmd_tests::vmd::{status_field, Vmd};
use vmd_tests::{kvm_or_skip, loud, Scratch, TEST_GUEST};

/// One row of `vmctl device list`.
#[derive(Debug)]
struct Row {
    pid: Option<u32>,
    restarts: u64,
    requests: u64,
    errors: u64,
    state: String,
}

fn row(vmd: &Vmd, vm: &str, device: &str) -> Row {
    let ran = vmd.vmctl(&["device", "list", vm]);
    if ran.code != 0 {
        // Why the VM is gone is in vmd's log (the monitor's last lines).
        let log = vmd.log();
        let tail: Vec<&str> = log
            .lines()
            .rev()
            .filter(|l| !l.contains(" TRACE ") && !l.contains(" DEBUG "))
            .take(40)
            .collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "vmctl device list: {}\nvmd's log ends:\n{}",
            ran.stderr,
            tail.join("\n")
        );
    }
    let listing = ran.stdout;
    let line = listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(device))
        .unwrap_or_else(|| panic!("no {device} in:\n{listing}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 7, "{listing}");
    Row {
        pid: f[1].parse().ok(),
        restarts: f[2].parse().unwrap(),
        requests: f[3].parse().unwrap(),
        errors: f[5].parse().unwrap(),
        state: f[6].to_string(),
    }
}

/// Polls `device`'s row until `done` holds (or panics after `timeout`).
fn wait_row(vmd: &Vmd, vm: &str, device: &str, done: impl Fn(&Row) -> bool) -> Row {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = row(vmd, vm, device);
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{device} never got there: {r:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid in `vmctl device restart -d`'s message.
fn held_pid(said: &str) -> u32 {
    said.split("as pid ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in: {said}"))
}

#[test]
fn vmctl_device_counts_sets_a_level_and_holds_a_restart_for_a_debugger() {
    let test = "vmctl_device_counts_sets_a_level_and_holds_a_restart_for_a_debugger";
    if !kvm_or_skip(test) {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        loud(&format!("SKIPPED {test}: holding a device needs root"));
        return;
    }
    let scratch = Scratch::new("device-cmd");
    let disk = scratch.sparse_file("d.img", 8 << 20);
    // The VM's owner, uid 65534, reaches the socket.
    std::fs::set_permissions(
        scratch.path(""),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let config = format!(
        "socket owner :65534\nvm \"dbg\" {{\n boot \"{TEST_GUEST}\"\n memory 64M\n \
         disk \"{}\"\n owner 65534\n cmdline \"test=blk-stall secs=20 depth=8 size=4 top=4\"\n}}\n",
        disk.display()
    );
    let dir = scratch.path("vmd");
    std::fs::create_dir_all(&dir).unwrap();
    let vmd = Vmd::start(&dir, &config);
    vmd.wait_state("dbg", "running", Duration::from_secs(30));
    let mut console = Terminal::spawn(vmd.vmctl_command(&["console", "dbg"]));
    console.expect("VMDT BEGIN blk-stall", Duration::from_secs(30));

    // The guest's requests show up in the counters.
    let first = wait_row(&vmd, "dbg", "disk0", |r| r.requests > 0);
    assert_eq!((first.restarts, first.errors), (0, 0), "{first:?}");
    assert_eq!(first.state, "running");
    vmd.vmctl_as(65534, 65534, &["device", "restart", "dbg", "disk0"])
        .ok();
    wait_row(&vmd, "dbg", "disk0", |r| r.restarts == 1);

    // Restarted on request under load, ten times: as after a kill, the
    // guest sees pauses, no error (checked at the end).
    for n in 2..=11 {
        vmd.vmctl(&["device", "restart", "dbg", "disk0"]).ok();
        wait_row(&vmd, "dbg", "disk0", |r| {
            r.restarts == n && r.state == "running"
        });
    }
    let restarted = row(&vmd, "dbg", "disk0");
    // The counters run on across restarts.
    assert!(
        restarted.requests > first.requests,
        "{restarted:?} after {first:?}"
    );
    assert_eq!(restarted.errors, 0, "{restarted:?}");

    // Its owner may list and restart its devices (above), but only root
    // may hold one or set its level.
    vmd.vmctl_as(65534, 65534, &["device", "list", "dbg"]).ok();
    vmd.vmctl_as(65534, 65534, &["device", "restart", "-d", "dbg", "disk0"])
        .fails_with("only root may hold a device");
    vmd.vmctl_as(65534, 65534, &["device", "log", "dbg", "disk0", "verbose"])
        .fails_with("only root may set a device's log level");
    vmd.vmctl(&["device", "log", "dbg", "disk9", "verbose"])
        .fails_with("has no device disk9");

    // Everything brief, but disk0.
    vmd.vmctl(&["log", "brief"]).ok();
    let ran = vmd.vmctl(&["device", "log", "dbg", "disk0", "verbose"]);
    ran.ok();
    let said = ran.stderr;
    assert!(said.contains("disk0 of vm dbg: logging verbose"), "{said}");

    let ran = vmd.vmctl(&["device", "restart", "-d", "dbg", "disk0"]);
    ran.ok();
    let said = ran.stderr;
    let pid = held_pid(&said);
    assert!(said.contains("kill -CONT"), "{said}");
    assert!(
        status_field(pid, "State").starts_with('T'),
        "pid {pid} is not stopped: {}",
        status_field(pid, "State")
    );
    let held = row(&vmd, "dbg", "disk0");
    assert_eq!(
        (held.pid, held.state.as_str()),
        (Some(pid), "held"),
        "{held:?}"
    );
    // The guest's I/O waits for it: nothing completes while it is held.
    std::thread::sleep(Duration::from_secs(1));
    let still = row(&vmd, "dbg", "disk0");
    assert_eq!(still.requests, held.requests, "{still:?}");
    assert_eq!(still.state, "held");
    // Held again: the held process is replaced by another, held too.
    let first_held = pid;
    let ran = vmd.vmctl(&["device", "restart", "-d", "dbg", "disk0"]);
    ran.ok();
    let pid = held_pid(&ran.stderr);
    assert_ne!(pid, first_held);
    assert!(status_field(pid, "State").starts_with('T'));
    assert!(!vmd_tests::vmd::alive(first_held), "{first_held} lives on");
    let held = row(&vmd, "dbg", "disk0");
    assert_eq!(
        (held.pid, held.state.as_str()),
        (Some(pid), "held"),
        "{held:?}"
    );
    assert_eq!(held.requests, still.requests, "{held:?}");

    // SAFETY: kill has no memory-safety preconditions; pid is the device
    // the monitor just reported, stopped, so not reaped.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) }, 0);
    let going = wait_row(&vmd, "dbg", "disk0", |r| {
        r.state == "running" && r.requests > still.requests + 100
    });
    assert_eq!((going.pid, going.restarts), (Some(pid), 12), "{going:?}");
    assert_eq!(going.errors, 0, "{going:?}");
    // The counters went on from where its predecessor left them.
    assert!(
        going.requests > restarted.requests,
        "{going:?} after {restarted:?}"
    );

    // The level was given to the new process: its replay is logged.
    vmd.wait_log(&format!("dev-block[{pid}]"), 1, Duration::from_secs(5));
    let log = vmd.log();
    assert!(
        log.lines()
            .any(|l| l.starts_with(&format!("dev-block[{pid}]"))
                && l.contains("frontend request SET_VRING_BASE")),
        "no debug line of pid {pid}:\n{log}"
    );
    assert!(log.contains(&format!("pid {pid} is held stopped")), "{log}");

    console.expect("VMDT PASS blk-stall", Duration::from_secs(90));
    assert!(console.seen().contains(" errors=0 "), "{}", console.seen());
}

/// vm.conf's `restarts 0`: as with OpenBSD's vmd, a dead device process
/// ends its VM, and `vmctl device restart` is refused rather than ending
/// it.
#[test]
fn restarts_0_stops_the_vm_when_a_device_dies() {
    if !kvm_or_skip("restarts_0_stops_the_vm_when_a_device_dies") {
        return;
    }
    let scratch = Scratch::new("device-restarts-0");
    let disk = scratch.sparse_file("d.img", 1 << 20);
    let config = format!(
        "vm \"once\" {{\n boot \"{TEST_GUEST}\"\n memory 32M\n disk \"{}\"\n restarts 0\n \
         cmdline \"test=ticker ms=500\"\n}}\n",
        disk.display()
    );
    let dir = scratch.path("vmd");
    std::fs::create_dir_all(&dir).unwrap();
    let vmd = Vmd::start(&dir, &config);
    let running = vmd.wait_state("once", "running", Duration::from_secs(30));
    let monitor: u32 = running.pid.parse().unwrap();
    vmd.vmctl(&["device", "restart", "once", "disk0"])
        .fails_with("disk0 is never restarted: this VM's vm.conf says restarts 0");
    assert_eq!(vmd.row("once").state, "running");

    let pids = vmd_tests::vmd::children_named(monitor, "dev-block");
    assert_eq!(pids.len(), 1, "{pids:?}");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pids[0] as libc::pid_t, libc::SIGKILL) };
    vmd.wait_state("once", "stopped", Duration::from_secs(30));
    let log = vmd.log();
    assert!(
        log.contains("not restarting it (vm.conf: restarts 0)"),
        "{log}"
    );
    assert!(!log.contains("disk0: restarted as pid"), "{log}");
}
