//! vmd and vmctl end to end: a private vmd on a scratch config and
//! socket, test-guest VMs started, listed, paused, stopped and waited on,
//! owners and strangers, vmd killed and re-adopting its VMs, bad input.
//!
//! Tests here run one at a time (each VM's guest spins a host CPU).

use std::sync::Mutex;
use std::time::Duration;

use vmd_tests::vmd::{alive, binary, Vmd};
use vmd_tests::{kvm_or_skip, loud, tool_or_skip, Scratch, TEST_GUEST};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
const SLOW: Duration = Duration::from_secs(60);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// A vm block running the test guest's `ticker` (runs until stopped),
/// `disable`d unless `extra` says `enable`.
fn ticker(name: &str, extra: &str) -> String {
    let disable = if extra.contains("enable") {
        ""
    } else {
        "  disable\n"
    };
    format!(
        "vm \"{name}\" {{\n  boot \"{TEST_GUEST}\"\n  cmdline \"test=ticker ms=500\"\n  memory 32M\n{disable}{extra}}}\n"
    )
}

fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        loud(&format!(
            "SKIPPED {test}: needs root (to act as another user)"
        ));
    }
    root
}

/// Runs `vmd -n [extra...] -f file` on `text` written to `file` in `dir`;
/// returns the exit code and the output.
fn vmd_n(dir: &Scratch, file: &str, text: &str, extra: &[&str]) -> (Option<i32>, String) {
    let path = dir.path(file);
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(binary("vmd"))
        .arg("-n")
        .args(extra)
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn vmd_n_reports_configuration_ok_or_every_error_with_file_and_line() {
    let dir = Scratch::new("vmd-n");
    let (code, out) = vmd_n(&dir, "good.conf", &ticker("a", ""), &[]);
    assert_eq!((code, out.as_str()), (Some(0), "configuration OK\n"));

    let bad = "vm a { memory 1X }\nvm a { }\nvm \"-b\" { }\nfrobnicate\nvm \"42\" { }\n";
    let (code, err) = vmd_n(&dir, "bad.conf", bad, &[]);
    assert_eq!(code, Some(1));
    for line in [":1:", ":2:", ":3:", ":4:", ":5:"] {
        assert!(
            err.contains(&format!("bad.conf{line}")),
            "{line} missing in:\n{err}"
        );
    }
    // Syntax is fine here, but a disk is missing and an owner unknown.
    let unresolved = "socket owner :nosuchgroupxyz\nvm a { disk \"/nonexistent.img\" }\n\
                      vm b { owner nosuchuserxyz }\n";
    let (code, err) = vmd_n(&dir, "unresolved.conf", unresolved, &[]);
    assert_eq!(code, Some(1));
    for needle in [
        "unresolved.conf:2:",
        "/nonexistent.img",
        "unresolved.conf:3: vm 'b': owner: unknown user 'nosuchuserxyz'",
        "socket owner: unknown group 'nosuchgroupxyz'",
    ] {
        assert!(err.contains(needle), "{needle} missing in:\n{err}");
    }
    // -D overrides a macro of the file.
    let macros = "mem=\"1X\"\nvm a { memory $mem }\n";
    let (code, err) = vmd_n(&dir, "macros.conf", macros, &["-D", "mem=64M"]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn vms_start_list_pause_unpause_stop_and_wait_concurrently() {
    if !kvm_or_skip("vms_start_list_pause_unpause_stop_and_wait_concurrently") {
        return;
    }
    let _one = serial();
    let dir = Scratch::new("vmd-life");
    let config = ticker("a", "") + &ticker("b", "  cpus 2\n") + &ticker("c", "");
    let vmd = Vmd::start(dir.path("").as_path(), &config);

    // Configured VMs are listed stopped, with ids in file order.
    let rows = vmd.status();
    let names: Vec<(u32, &str, &str)> = rows
        .iter()
        .map(|r| (r.id, r.name.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            (1, "a", "stopped"),
            (2, "b", "stopped"),
            (3, "c", "stopped")
        ]
    );

    // Start all three at once.
    let starts: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| vmd.vmctl_command(&["start", n]).output().unwrap())
        .collect();
    for (out, id) in starts.iter().zip(1..) {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}\n{}", vmd.log());
        assert!(
            err.starts_with(&format!(
                "vmctl: started vm {id} successfully, tty /dev/pts/"
            )),
            "{err}"
        );
    }
    for row in vmd.status() {
        assert_eq!(row.state, "running", "{row:?}");
        assert!(row.tty.starts_with("pts/"), "{row:?}");
        assert!(alive(row.pid.parse().unwrap()));
    }
    let json = vmd.vmctl(&["status", "--json"]);
    assert!(json.ok().contains("\"vcpus\": 2"), "{}", json.stdout);

    // Starting a running VM is refused and changes nothing.
    vmd.vmctl(&["start", "a"]).fails_with("already running");

    // Pause and unpause, by name and by id, with abbreviated commands.
    vmd.vmctl(&["pau", "a"]).ok();
    assert_eq!(vmd.row("a").state, "paused");
    vmd.vmctl(&["pause", "1"]).fails_with("already paused");
    vmd.vmctl(&["unp", "1"]).ok();
    assert_eq!(vmd.row("a").state, "running");
    vmd.vmctl(&["unpause", "a"]).fails_with("not paused");

    // Two waiters on b, then stop b: both return.
    let waiters: Vec<_> = (0..2)
        .map(|_| vmd.vmctl_command(&["wait", "b"]).spawn().unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let b_pid: u32 = vmd.row("b").pid.parse().unwrap();
    vmd.vmctl(&["stop", "b"]).ok();
    for waiter in waiters {
        let out = waiter.wait_with_output().unwrap();
        assert!(out.status.success());
    }
    assert_eq!(vmd.row("b").state, "stopped");
    assert_eq!(vmd.row("b").pid, "-");
    assert!(!alive(b_pid), "the monitor of b is gone");
    vmd.vmctl(&["wait", "b"]).fails_with("not running");
    vmd.vmctl(&["stop", "b"]).fails_with("not running");

    // stop -a -w stops the rest and returns when they are gone.
    let out = vmd.vmctl(&["stop", "-a", "-w"]);
    out.ok();
    assert!(
        out.stderr.contains("vm has been terminated"),
        "{}",
        out.stderr
    );
    for row in vmd.status() {
        assert_eq!(row.state, "stopped", "{row:?}");
    }
    // status -r lists none now.
    assert_eq!(vmd.vmctl(&["status", "-r"]).ok().lines().count(), 1);
}

#[test]
fn vms_started_by_vmctl_alone_and_instances_of_templates() {
    if !kvm_or_skip("vms_started_by_vmctl_alone_and_instances_of_templates") {
        return;
    }
    let _one = serial();
    let dir = Scratch::new("vmd-adhoc");
    let template = format!(
        "vm \"tmpl\" {{\n boot \"{TEST_GUEST}\"\n cmdline \"test=ticker\"\n memory 32M\n disable\n allow instance {{ memory }}\n}}\n"
    );
    let vmd = Vmd::start(dir.path("").as_path(), &template);
    let disk = dir.path("x.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();

    // A VM vmctl alone describes: listed while it runs, gone once stopped.
    vmd.vmctl(&[
        "start",
        "-b",
        TEST_GUEST,
        "-m",
        "32M",
        "-d",
        disk.to_str().unwrap(),
        "adhoc",
    ])
    .ok();
    // The guest's default scenario powers off at once: stop it if it still
    // runs; either way it must leave the list.
    let stop = vmd.vmctl(&["stop", "-w", "adhoc"]);
    assert!(
        stop.code == 0 || stop.stderr.contains("no vm named 'adhoc'"),
        "{}",
        stop.stderr
    );
    let start = std::time::Instant::now();
    while vmd.status().iter().any(|r| r.name == "adhoc") {
        assert!(start.elapsed() < SLOW, "adhoc stays listed after its end");
        std::thread::sleep(Duration::from_millis(50));
    }

    // An instance may set what the template allows, and nothing else.
    vmd.vmctl(&["start", "-t", "tmpl", "-m", "48M", "inst"])
        .ok();
    let inst = vmd.row("inst");
    assert_eq!(inst.state, "running");
    vmd.vmctl(&["start", "-t", "tmpl", "-b", "/bin/true", "inst2"])
        .fails_with("does not allow instances to set boot");
    vmd.vmctl(&["start", "-t", "tmpl", "inst"])
        .fails_with("already exists");
    vmd.vmctl(&["start", "-m", "64M", "tmpl"])
        .fails_with("already defined");
    vmd.vmctl(&["stop", "-w", "inst"]).ok();
}

#[test]
fn owners_may_control_their_vms_and_strangers_only_read_status() {
    if !kvm_or_skip("owners_may_control_their_vms_and_strangers_only_read_status")
        || !root_or_skip("owners_may_control_their_vms_and_strangers_only_read_status")
    {
        return;
    }
    let _one = serial();
    let dir = Scratch::new("vmd-owner");
    // Let uid 65534 reach the scratch directory and the socket.
    std::fs::set_permissions(
        dir.path(""),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let config = "socket owner :65534\n".to_string()
        + &ticker("mine", "  owner 65534\n")
        + &ticker("theirs", "");
    let vmd = Vmd::start(dir.path("").as_path(), &config);
    let (nobody, nogroup) = (65534, 65534);
    let as_nobody = |args: &[&str]| vmd.vmctl_as(nobody, nogroup, args);

    as_nobody(&["status"]).ok();
    as_nobody(&["start", "theirs"]).fails_with("permission denied");
    assert_eq!(vmd.row("theirs").state, "stopped");
    as_nobody(&["start", "mine"]).ok();
    assert_eq!(vmd.row("mine").owner, "65534");
    vmd.vmctl(&["start", "theirs"]).ok();
    as_nobody(&["pause", "theirs"]).fails_with("permission denied");
    as_nobody(&["console", "theirs"]).fails_with("permission denied");
    as_nobody(&["stop", "theirs"]).fails_with("permission denied");
    as_nobody(&["pause", "mine"]).ok();
    as_nobody(&["unpause", "mine"]).ok();
    as_nobody(&["reload"]).fails_with("only root");
    as_nobody(&["log", "verbose"]).fails_with("only root");
    as_nobody(&["start", "-b", TEST_GUEST, "new"]).fails_with("only root may create");
    // stop -a as nobody stops only what nobody owns.
    as_nobody(&["stop", "-a", "-w"]).ok();
    assert_eq!(vmd.row("mine").state, "stopped");
    assert_eq!(vmd.row("theirs").state, "running");
    vmd.vmctl(&["stop", "-w", "theirs"]).ok();
}

#[test]
fn sandbox_no_only_root_may_start_and_its_devices_run_unsandboxed() {
    let test = "sandbox_no_only_root_may_start_and_its_devices_run_unsandboxed";
    if !kvm_or_skip(test) || !root_or_skip(test) {
        return;
    }
    let _one = serial();
    let dir = Scratch::new("vmd-nosandbox");
    // Let uid 65534 reach the scratch directory and the socket.
    std::fs::set_permissions(
        dir.path(""),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let config =
        "socket owner :65534\n".to_string() + &ticker("debug", "  owner 65534\n  sandbox no\n");
    let vmd = Vmd::start(dir.path("").as_path(), &config);
    // The owner may not: only root starts a VM with unsandboxed devices.
    vmd.vmctl_as(65534, 65534, &["start", "debug"])
        .fails_with("vm 'debug': its devices run unsandboxed (sandbox no): only root may start it");
    assert_eq!(vmd.row("debug").state, "stopped");
    assert!(!vmd.log().contains("UNSANDBOXED"), "{}", vmd.log());
    vmd.vmctl(&["start", "debug"]).ok();
    let conf_line = format!("sandbox no in {}:8), as root asked", vmd.conf().display());
    vmd.wait_log(
        "vm 'debug': starting with its devices UNSANDBOXED (",
        1,
        SLOW,
    );
    assert!(vmd.log().contains(&conf_line), "{}", vmd.log());
    let monitor: u32 = vmd.row("debug").pid.parse().expect("the monitor's pid");
    let mut consoles = Vec::new();
    for _ in 0..100 {
        consoles = vmd_tests::vmd::children_named(monitor, "dev-console");
        if !consoles.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(consoles.len(), 1, "dev-console under monitor {monitor}");
    // Past the point where a sandboxed device would have entered its sandbox.
    std::thread::sleep(Duration::from_millis(200));
    let seccomp = vmd_tests::vmd::status_field(consoles[0], "Seccomp");
    assert_eq!(seccomp, "0", "dev-console runs without seccomp");
    vmd.vmctl(&["stop", "-w", "debug"]).ok();
}

#[test]
fn vmd_killed_with_sigkill_and_started_again_readopts_running_vms() {
    if !kvm_or_skip("vmd_killed_with_sigkill_and_started_again_readopts_running_vms") {
        return;
    }
    let _one = serial();
    let dir = Scratch::new("vmd-adopt");
    let config = ticker("a", "") + &ticker("b", "  owner 65534\n");
    let mut vmd = Vmd::start(dir.path("").as_path(), &config);
    vmd.vmctl(&["start", "a"]).ok();
    vmd.vmctl(&["start", "b"]).ok();
    vmd.vmctl(&["pause", "b"]).ok();
    let before = vmd.status();

    vmd.kill();
    vmd.vmctl(&["status"]).fails_with("connect");
    for row in &before {
        assert!(alive(row.pid.parse().unwrap()), "{row:?} died with vmd");
    }
    std::thread::sleep(Duration::from_millis(500));
    vmd.restart();
    let after = vmd.status();
    assert_eq!(
        after, before,
        "re-adopted VMs keep id, pid, tty, owner and state"
    );
    // And they are fully controlled again.
    vmd.vmctl(&["unpause", "b"]).ok();
    vmd.vmctl(&["stop", "-w", "a"]).ok();
    assert_eq!(vmd.row("a").state, "stopped");
    assert!(!alive(before[0].pid.parse().unwrap()));
    // A configured VM that was re-adopted starts again with its config.
    vmd.vmctl(&["start", "a"]).ok();
    vmd.vmctl(&["stop", "-a", "-w"]).ok();
}

#[test]
fn enabled_vms_start_with_vmd_staggered() {
    if !kvm_or_skip("enabled_vms_start_with_vmd_staggered") {
        return;
    }
    let _one = serial();
    let dir = Scratch::new("vmd-stagger");
    let enabled = |name: &str| ticker(name, "  enable\n");
    let config = "staggered start parallel 1 delay 600\n".to_string()
        + &enabled("first")
        + &enabled("second")
        + &enabled("third");
    let vmd = Vmd::start(dir.path("").as_path(), &config);
    vmd.wait_state("first", "running", SLOW);
    assert_eq!(vmd.row("second").state, "waiting");
    assert_eq!(vmd.row("third").state, "waiting");
    // Stopping a waiting VM takes it out of the queue.
    vmd.vmctl(&["stop", "-w", "third"]).ok();
    assert_eq!(vmd.row("third").state, "stopped");
    // Starting a waiting VM by hand takes it out of the queue.
    vmd.vmctl(&["start", "second"]).ok();
    assert_eq!(vmd.row("second").state, "running");
}

#[test]
fn a_guest_reboot_restarts_the_vm_in_place() {
    if !kvm_or_skip("a_guest_reboot_restarts_the_vm_in_place") {
        return;
    }
    let _one = serial();
    let dir = Scratch::new("vmd-reboot");
    let config = format!(
        "vm \"r\" {{\n boot \"{TEST_GUEST}\"\n cmdline \"test=reboot\"\n memory 32M\n disable\n}}\n"
    );
    let vmd = Vmd::start(dir.path("").as_path(), &config);
    vmd.vmctl(&["start", "r"]).ok();
    let pid = vmd.row("r").pid;
    vmd.wait_log("vm 1 (r) rebooted", 2, SLOW);
    let row = vmd.row("r");
    assert_eq!((row.state.as_str(), row.pid), ("running", pid));
    vmd.vmctl(&["stop", "-w", "r"]).ok();
}

#[test]
fn disks_are_locked_to_one_vm_and_missing_ones_named() {
    if !kvm_or_skip("disks_are_locked_to_one_vm_and_missing_ones_named") {
        return;
    }
    let _one = serial();
    let dir = Scratch::new("vmd-disks");
    let disk = dir.path("shared.img");
    std::fs::write(&disk, vec![0u8; 4 << 20]).unwrap();
    let with_disk = |name: &str, path: &str| ticker(name, &format!("  disk \"{path}\"\n"));
    let config = with_disk("one", disk.to_str().unwrap())
        + &with_disk("two", disk.to_str().unwrap())
        + &with_disk("gone", dir.path("later.img").to_str().unwrap());
    // A missing image does not keep vmd from starting: its VM cannot.
    let vmd = Vmd::start(dir.path("").as_path(), &config);
    // vmd may log it just after its socket is up.
    vmd.wait_log("later.img", 1, Duration::from_secs(10));

    vmd.vmctl(&["start", "one"]).ok();
    vmd.vmctl(&["start", "two"])
        .fails_with("is in use by another VM");
    assert_eq!(vmd.row("two").state, "stopped");
    vmd.vmctl(&["start", "gone"]).fails_with("later.img");
    assert_eq!(vmd.row("gone").state, "stopped");
    vmd.vmctl(&["stop", "-w", "one"]).ok();
    // The lock went with the VM.
    vmd.vmctl(&["start", "two"]).ok();
    vmd.vmctl(&["stop", "-w", "two"]).ok();
}

#[test]
fn bad_requests_get_one_clear_error_and_vmd_keeps_serving() {
    if !kvm_or_skip("bad_requests_get_one_clear_error_and_vmd_keeps_serving") {
        return;
    }
    let _one = serial();
    let dir = Scratch::new("vmd-bad");
    let vmd = Vmd::start(dir.path("").as_path(), &ticker("a", ""));

    vmd.vmctl(&["start", "99"]).fails_with("no vm with id 99");
    vmd.vmctl(&["stop", "nosuch"])
        .fails_with("no vm named 'nosuch'");
    vmd.vmctl(&["start", ".bad"])
        .fails_with("must not start with");
    vmd.vmctl(&["start", "bad/name"]).fails_with("character");
    vmd.vmctl(&["st", "a"]).fails_with("ambiguous");
    vmd.vmctl(&["frob"]).fails_with("unknown command");
    vmd.vmctl(&["start", "-r", "/x.iso", "a"])
        .fails_with("not yet");
    vmd.vmctl(&["start", "-b", "/nonexistent/kernel", "new"])
        .fails_with("cannot open kernel /nonexistent/kernel");
    assert!(
        vmd.status().iter().all(|r| r.name != "new"),
        "nothing was left"
    );

    // load: a duplicate name changes nothing; a good file adds its VMs.
    let dup = dir.path("dup.conf");
    std::fs::write(&dup, ticker("a", "") + &ticker("z", "")).unwrap();
    vmd.vmctl(&["load", dup.to_str().unwrap()])
        .fails_with("already defined");
    assert!(vmd.status().iter().all(|r| r.name != "z"));
    let broken = dir.path("broken.conf");
    std::fs::write(&broken, "vm q { memory lots }\n").unwrap();
    vmd.vmctl(&["load", broken.to_str().unwrap()])
        .fails_with("broken.conf:1:");
    let more = dir.path("more.conf");
    std::fs::write(&more, ticker("z", "")).unwrap();
    vmd.vmctl(&["load", more.to_str().unwrap()]).ok();
    assert_eq!(vmd.row("z").state, "stopped");

    // Garbage and an oversized frame on the socket: that connection is
    // closed, vmd serves the next one.
    use std::io::Write;
    let mut raw = std::os::unix::net::UnixStream::connect(vmd.socket()).unwrap();
    let _ = raw.write_all(b"this is not a frame at all, not even close.....");
    drop(raw);
    let mut raw = std::os::unix::net::UnixStream::connect(vmd.socket()).unwrap();
    let mut header = Vec::new();
    header.extend_from_slice(b"vmdI");
    header.extend_from_slice(&[3, 0, 0, 0]); // version 3 (ipc::PROTOCOL_VERSION), flags 0
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]);
    let _ = raw.write_all(&header);
    drop(raw);
    vmd.vmctl(&["status"]).ok();

    // A reload of a file that does not resolve changes nothing.
    std::fs::write(vmd.conf(), ticker("a", "  owner nosuchuserxyz\n")).unwrap();
    vmd.vmctl(&["reload"])
        .fails_with("unknown user 'nosuchuserxyz'");
    assert_eq!(vmd.row("z").state, "stopped");
    vmd.vmctl(&["reset", "vms"]).fails_with("unknown user");
    std::fs::write(vmd.conf(), ticker("a", "")).unwrap();

    // reload drops stopped VMs no longer configured and keeps running
    // ones; a running one the new file drops goes once it stops.
    vmd.vmctl(&["start", "a"]).ok();
    vmd.vmctl(&["start", "z"]).ok();
    std::fs::write(vmd.conf(), ticker("a", "") + &ticker("y", "")).unwrap();
    vmd.vmctl(&["reload"]).ok();
    let names: Vec<String> = vmd.status().into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["a", "z", "y"]);
    assert_eq!(vmd.row("a").state, "running");
    vmd.vmctl(&["stop", "-w", "z"]).ok();
    let names: Vec<String> = vmd.status().into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["a", "y"]);
    // reset vms stops and removes every VM, then reads the config again.
    vmd.vmctl(&["reset", "vms"]).ok();
    let rows = vmd.status();
    assert!(rows.iter().all(|r| r.state == "stopped"), "{rows:?}");
    assert_eq!(rows.len(), 2);
}

#[test]
fn log_verbose_reaches_every_process_of_every_vm() {
    if !kvm_or_skip("log_verbose_reaches_every_process_of_every_vm") {
        return;
    }
    let _one = serial();
    let dir = Scratch::new("vmd-log");
    let disk = dir.path("d.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let vmd = Vmd::start(
        dir.path("").as_path(),
        &ticker("a", &format!("  disk \"{}\"\n", disk.display())),
    );
    vmd.vmctl(&["log", "brief"]).ok();
    vmd.vmctl(&["start", "a"]).ok();
    let pid = vmd.row("a").pid;
    let mark = vmd.log().len();
    vmd.vmctl(&["log", "verbose"]).ok();
    // vmd, the monitor and its dev-block each take the new level.
    let changed = |tail: &str, program: &str| {
        tail.lines()
            .any(|l| l.starts_with(program) && l.contains("log level set to DEBUG"))
    };
    let start = std::time::Instant::now();
    loop {
        let tail = vmd.log()[mark..].to_string();
        if changed(&tail, &format!("vmm-monitor[{pid}]")) && changed(&tail, "dev-block[") {
            // vmd's own debug lines show too.
            vmd.vmctl(&["status"]).ok();
            assert!(vmd.log()[mark..]
                .lines()
                .any(|l| l.starts_with("vmd[") && l.contains("DEBUG")));
            break;
        }
        assert!(
            start.elapsed() < SLOW,
            "not every process took the level:\n{tail}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // And back: brief hides debug lines again.
    vmd.vmctl(&["log", "brief"]).ok();
    vmd.wait_log("log level set to INFO", 2, SLOW);
    let mark = vmd.log().len();
    vmd.vmctl(&["status"]).ok();
    assert!(
        !vmd.log()[mark..].contains("DEBUG"),
        "{}",
        &vmd.log()[mark..]
    );
}

#[test]
fn vmctl_create_makes_images_qemu_img_accepts() {
    if !tool_or_skip("qemu-img", "vmctl_create_makes_images_qemu_img_accepts") {
        return;
    }
    let dir = Scratch::new("vmctl-create");
    let vmctl = |args: &[&str]| {
        std::process::Command::new(binary("vmctl"))
            .args(args)
            .current_dir(dir.path(""))
            .output()
            .unwrap()
    };
    let ok = |out: std::process::Output, message: &str| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("vmctl: {message}\n")
        );
    };
    ok(
        vmctl(&["create", "-s", "64M", "raw.img"]),
        "raw imagefile created",
    );
    ok(
        vmctl(&["create", "-s", "1.5G", "base.qcow2"]),
        "qcow2 imagefile created",
    );
    ok(
        vmctl(&["create", "-b", "base.qcow2", "overlay.qcow2"]),
        "qcow2 imagefile created",
    );
    ok(
        vmctl(&["cre", "-i", "overlay.qcow2", "copy.img"]),
        "raw imagefile created",
    );
    let exists = vmctl(&["create", "-s", "1M", "raw.img"]);
    assert_eq!(exists.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&exists.stderr).contains("raw.img"));
    let no_size = vmctl(&["create", "x.img"]);
    assert_eq!(no_size.status.code(), Some(1));
    assert!(!dir.path("x.img").exists());
    for image in ["base.qcow2", "overlay.qcow2"] {
        let path = dir.path(image);
        vmd_tests::run_tool("qemu-img", &["check", path.to_str().unwrap()]);
    }
    let info = vmd_tests::run_tool(
        "qemu-img",
        &["info", dir.path("overlay.qcow2").to_str().unwrap()],
    );
    assert!(info.contains("virtual size: 1.5 GiB"), "{info}");
    assert!(info.contains("backing file: base.qcow2"), "{info}");
    assert_eq!(
        std::fs::metadata(dir.path("raw.img")).unwrap().len(),
        64 << 20
    );
    assert_eq!(
        std::fs::metadata(dir.path("copy.img")).unwrap().len(),
        3 << 29
    );
}

#[test]
fn vmd_detaches_without_d_and_a_second_vmd_is_refused() {
    let dir = Scratch::new("vmd-detach");
    let conf = dir.path("vm.conf");
    std::fs::write(&conf, ticker("a", "")).unwrap();
    let socket = dir.path("run/vmd.sock");
    let vmd = |args: &[&str]| {
        std::process::Command::new(binary("vmd"))
            .args(args)
            .arg("-f")
            .arg(&conf)
            .env("VMD_SOCKET", &socket)
            .output()
            .unwrap()
    };
    // Without -d, vmd returns at once and serves in the background.
    let out = vmd(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vmctl = |args: &[&str]| {
        std::process::Command::new(binary("vmctl"))
            .args(args)
            .env("VMD_SOCKET", &socket)
            .output()
            .unwrap()
    };
    let status = vmctl(&["status"]);
    assert!(status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).contains(" a\n"));
    // A second vmd on the same socket says so, to its caller.
    let second = vmd(&["-d"]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("vmd is already running"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    // SIGTERM ends the detached vmd and removes its socket.
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .find(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            exe.file_name().is_some_and(|n| n == "vmd")
                && env
                    .split(|b| *b == 0)
                    .any(|v| v == format!("VMD_SOCKET={}", socket.display()).as_bytes())
        })
        .expect("the detached vmd");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let start = std::time::Instant::now();
    while socket.exists() {
        assert!(start.elapsed() < SLOW, "vmd did not end on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}
