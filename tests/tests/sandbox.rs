//! The device processes' sandbox, seen from outside.
//!
//! - Each device binary, started as the monitor starts it, made to try
//!   (hidden `--sandbox-selftest`) what an attacker in it would: open
//!   /etc/passwd (refused: ENOENT), run /bin/sh, make an AF_INET socket,
//!   ask to be traced (each ends the process, exit 159, with a report on
//!   the report fd naming the call — what the monitor logs).
//! - The devices of a VM vmd runs: in /proc, seccomp filter mode,
//!   no_new_privs, no capability, the VM's own unprivileged uid, user,
//!   mount, pid, ipc, uts and network namespaces of their own (pid 1 in
//!   theirs), a mount namespace holding only an empty read-only root, and
//!   no fd but those passed and those they made.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use vmd_tests::vmd::{assert_sandboxed, binary, children_named, fds_past_stdio, Vmd};
use vmd_tests::{kvm_or_skip, loud, Scratch};

/// Exit status of a process its sandbox stopped (128 + SIGSYS).
const EXIT_SANDBOX_VIOLATION: i32 = 159;
/// dev-backend's self-test status for a call refused with an error.
const SELFTEST_REFUSED: i32 = 3;

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into `fds`.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both were just created and are ours.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A pty: (master, slave).
fn pty() -> (OwnedFd, OwnedFd) {
    // SAFETY: posix_openpt returns a new fd or -1.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(master >= 0);
    // SAFETY: `master` is a pty master we own.
    assert_eq!(unsafe { libc::grantpt(master) }, 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::unlockpt(master) }, 0);
    let mut name = [0 as libc::c_char; 64];
    // SAFETY: ptsname_r writes a NUL-terminated name into `name`.
    let rc = unsafe { libc::ptsname_r(master, name.as_mut_ptr(), name.len()) };
    assert_eq!(rc, 0);
    // SAFETY: `name` is NUL-terminated.
    let slave = unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    assert!(slave >= 0);
    // SAFETY: both fds are ours.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// Runs device `name` with `args`, `fds` at 3, 4, ... and a report pipe
/// after them, trying `call`; its exit code and report line.
fn selftest(
    name: &str,
    args: &[&str],
    fds: Vec<OwnedFd>,
    call: &str,
) -> (Option<i32>, String, String) {
    let (report_read, report_write) = pipe();
    let report_at = 3 + fds.len() as RawFd;
    let mut sources: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    sources.push(report_write.as_raw_fd());
    let mut cmd = Command::new(binary(name));
    cmd.args(args)
        .args([
            "--report-fd",
            &report_at.to_string(),
            "--sandbox-selftest",
            call,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: dup2 and fcntl only, which are async-signal-safe; the
    // sources are first moved above every target.
    unsafe {
        cmd.pre_exec(move || {
            for (i, &fd) in sources.iter().enumerate() {
                if libc::dup2(fd, 100 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for i in 0..sources.len() {
                if libc::dup2(100 + i as RawFd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(fds);
    drop(report_write);
    let out = child.wait_with_output().unwrap();
    let mut report = String::new();
    let _ = std::fs::File::from(report_read).read_to_string(&mut report);
    (
        out.status.code(),
        report.trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The args and fds each device is started with (after the socket at 3).
fn device_setup(name: &str, scratch: &Scratch) -> (Vec<&'static str>, Vec<OwnedFd>, Vec<OwnedFd>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut keep = vec![OwnedFd::from(ours)];
    let mut fds = vec![OwnedFd::from(theirs)];
    let args = match name {
        "dev-net" => {
            let (wire, tap) = UnixDatagram::pair().unwrap();
            keep.push(OwnedFd::from(wire));
            fds.push(OwnedFd::from(tap));
            vec![
                "--socket-fd",
                "3",
                "--tap-fd",
                "4",
                "--mac",
                "fe:e1:bb:d1:23:45",
            ]
        }
        "dev-block" => {
            let path = scratch.path("disk.img");
            let file = std::fs::File::create(&path).unwrap();
            file.set_len(1 << 20).unwrap();
            fds.push(OwnedFd::from(file));
            vec!["--socket-fd", "3", "--disk-fd", "4", "--format", "raw"]
        }
        "dev-console" => {
            let (master, slave) = pty();
            let mut pair = [0; 2];
            // SAFETY: socketpair writes two fds into `pair`.
            let rc = unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                    0,
                    pair.as_mut_ptr(),
                )
            };
            assert_eq!(rc, 0);
            // SAFETY: both were just created and are ours.
            let (a, b) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
            keep.push(a);
            fds.extend([master, slave, b]);
            vec![
                "--socket-fd",
                "3",
                "--pty-fd",
                "4",
                "--pty-slave-fd",
                "5",
                "--com-fd",
                "6",
            ]
        }
        other => panic!("no setup for {other}"),
    };
    (args, fds, keep)
}

#[test]
fn each_device_refuses_what_an_attacker_in_it_would_try_and_names_the_call() {
    let scratch = Scratch::new("sandbox-selftest");
    for device in ["dev-block", "dev-net", "dev-console"] {
        for (call, nr) in [
            ("openat", 257),
            ("execve", 59),
            ("socket", 41),
            ("ptrace", 101),
        ] {
            let (args, fds, _keep) = device_setup(device, &scratch);
            let (code, report, stderr) = selftest(device, &args, fds, call);
            if call == "openat" {
                // Refused with ENOENT: the process says so and exits.
                assert_eq!(code, Some(SELFTEST_REFUSED), "{device} {call}: {stderr}");
                assert!(
                    stderr.contains("openat refused: No such file or directory"),
                    "{device}: {stderr}"
                );
                assert!(report.is_empty(), "{device}: {report}");
                continue;
            }
            assert_eq!(
                code,
                Some(EXIT_SANDBOX_VIOLATION),
                "{device} {call}: report {report:?}, stderr {stderr}"
            );
            let profile = device.replace('-', "_");
            assert!(
                report.starts_with(&format!("sandbox: profile {profile}: thread "))
                    && report.contains(&format!("made syscall {call} ({nr})")),
                "{device} {call}: {report:?}"
            );
            assert!(
                stderr.contains(&report),
                "{device}: the line is logged too: {stderr}"
            );
        }
    }
}

/// Whether this test can run: KVM present and root (vmd sandboxes VMs
/// with their own uid only as root); says loudly why not.
fn kvm_and_root_or_skip(test: &str) -> bool {
    if !kvm_or_skip(test) {
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        loud(&format!("SKIPPED {test}: vmd sandboxes VMs only as root"));
        return false;
    }
    true
}

/// A vmd in `scratch` running VM `name` (the ticker guest on a 1 MiB
/// disk); returns vmd, the monitor's pid and the disk's path.
fn running_ticker_vm(scratch: &Scratch, name: &str) -> (Vmd, u32, std::path::PathBuf) {
    let disk = scratch.sparse_file("d.img", 1 << 20);
    let config = format!(
        "vm \"{name}\" {{\n boot \"{}\"\n memory 64M\n disk \"{}\"\n cmdline \"test=ticker ms=500\"\n}}\n",
        vmd_tests::TEST_GUEST,
        disk.display()
    );
    let dir = scratch.path("vmd");
    std::fs::create_dir_all(&dir).unwrap();
    let vmd = Vmd::start(&dir, &config);
    let row = vmd.wait_state(name, "running", Duration::from_secs(30));
    let monitor: u32 = row.pid.parse().expect("the monitor's pid");
    (vmd, monitor, disk)
}

#[test]
fn a_running_vms_devices_are_filtered_unprivileged_and_hold_only_their_fds() {
    if !kvm_and_root_or_skip(
        "a_running_vms_devices_are_filtered_unprivileged_and_hold_only_their_fds",
    ) {
        return;
    }
    let scratch = Scratch::new("sandbox-proc");
    let (vmd, monitor, disk) = running_ticker_vm(&scratch, "box");
    let mut seen = Vec::new();
    for device in ["dev-block", "dev-console"] {
        let mut pids = Vec::new();
        for _ in 0..100 {
            pids = children_named(monitor, device);
            if !pids.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(pids.len(), 1, "{device} under monitor {monitor}");
        let pid = pids[0];
        // Sandboxed before it serves: wait for the vhost-user set-up.
        std::thread::sleep(Duration::from_millis(200));
        seen.push(assert_sandboxed(pid, device));
        // Its log lines name it by the pid the host sees (it is 1 inside).
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let env_pid = String::from_utf8_lossy(&environ)
            .split('\0')
            .find_map(|kv| kv.strip_prefix("VMD_LOG_PID=").map(str::to_string));
        assert_eq!(
            env_pid.and_then(|p| p.parse::<u32>().ok()),
            Some(pid),
            "{device}: VMD_LOG_PID"
        );
        // Namespaces of its own, in which it is pid 1, and a mount
        // namespace that holds only its empty, read-only root.
        for ns in ["user", "mnt", "pid", "ipc", "uts", "net"] {
            let link = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/{ns}")).unwrap();
            assert_ne!(
                link(pid),
                link(monitor),
                "{device}: the monitor's {ns} namespace"
            );
        }
        let nspid = vmd_tests::vmd::status_field(pid, "NSpid");
        assert_eq!(nspid, format!("{pid}\t1"), "{device}: NSpid");
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let lines: Vec<&str> = mounts.lines().collect();
        assert_eq!(lines.len(), 1, "{device}: mounts {mounts}");
        let fields: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(fields[4], "/", "{device}: {mounts}");
        assert!(
            fields[5].split(',').any(|o| o == "ro"),
            "{device}: {mounts}"
        );
        assert!(lines[0].contains(" - tmpfs "), "{device}: {mounts}");
        // Its stdout and stderr are one pipe the monitor reads and logs
        // under its name, not the monitor's own stderr (vmd's log).
        let fd_link = |p: u32, fd: u32| std::fs::read_link(format!("/proc/{p}/fd/{fd}")).unwrap();
        let output = fd_link(pid, 2);
        assert!(
            output.to_string_lossy().starts_with("pipe:"),
            "{device}: fd 2 is {output:?}"
        );
        assert_eq!(fd_link(pid, 1), output, "{device}: stdout and stderr");
        assert_ne!(
            output,
            fd_link(monitor, 2),
            "{device}: the monitor's stderr"
        );
        // Every fd past stdio: what was passed
        // and what it made itself (eventfds, epoll sets, sockets, the
        // inflight memfd); no path but the disk image.
        for (_, target) in fds_past_stdio(pid) {
            let t = target.to_string_lossy();
            let expected = t.starts_with("anon_inode:")
                || t.starts_with("socket:")
                || t.starts_with("pipe:")
                || t.starts_with("/memfd:")
                || t.starts_with("/dev/pts/")
                || t == "/dev/null"
                || (device == "dev-console" && t == "/dev/ptmx")
                || (device == "dev-block" && target == disk);
            assert!(expected, "{device} holds {t}");
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "one uid per VM: {seen:?}"
    );
    // The monitor too runs as the VM's uid, with no capability and
    // no_new_privs.
    let status = |key| vmd_tests::vmd::status_field(monitor, key);
    let uid = seen[0];
    assert_eq!(
        status("Uid"),
        format!("{uid}\t{uid}\t{uid}\t{uid}"),
        "the monitor's uid"
    );
    assert_eq!(status("CapEff"), "0000000000000000", "the monitor");
    assert_eq!(status("CapBnd"), "0000000000000000", "the monitor");
    assert_eq!(status("NoNewPrivs"), "1", "the monitor");
    assert_eq!(status("Groups"), "", "the monitor");
    // Mount, network, IPC and UTS namespaces of its own (vmd's are the
    // host's).
    for ns in ["mnt", "net", "ipc", "uts"] {
        let link = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/{ns}")).unwrap();
        assert_ne!(
            link(monitor),
            link(vmd.pid()),
            "the monitor's {ns} namespace"
        );
    }
    // Its root holds what it executes and what loading that needs, all
    // read-only, a /proc showing only its own VM's processes, and an
    // empty /tmp: no /etc, no /dev, no shell.
    let root = |path: &str| format!("/proc/{monitor}/root{path}");
    let exe = std::fs::read_link(format!("/proc/{monitor}/exe")).unwrap();
    for present in [
        exe.to_string_lossy().into_owned(),
        exe.with_file_name("dev-block")
            .to_string_lossy()
            .into_owned(),
        exe.with_file_name("dev-net").to_string_lossy().into_owned(),
        "/proc/self/status".to_string(),
    ] {
        assert!(
            Path::new(&root(&present)).exists(),
            "monitor's root lacks {present}"
        );
    }
    for absent in [
        "/etc/passwd",
        "/bin/sh",
        "/usr/bin",
        "/dev/null",
        "/home",
        "/proc/sys",
    ] {
        assert!(
            !Path::new(&root(absent)).exists(),
            "monitor's root has {absent}"
        );
    }
    let mounts = std::fs::read_to_string(format!("/proc/{monitor}/mountinfo")).unwrap();
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let options = fields[5].split(',').collect::<Vec<_>>();
        if fields[4] == "/proc" {
            assert!(line.contains("hidepid=invisible"), "monitor: {line}");
        } else {
            assert!(options.contains(&"ro"), "monitor: writable {line}");
        }
    }
    // (What hidepid hides depends on the reader, so it is seen from
    // inside by sandbox-profiles' exec_root test, not from here.)
    // Every thread of it is filtered (profile monitor; its vCPU threads
    // narrow that with monitor_vcpu), and nothing it starts but its
    // device launcher, which starts the devices as the monitor's children.
    for task in std::fs::read_dir(format!("/proc/{monitor}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
        assert!(
            status.contains("\nSeccomp:\t2\n"),
            "monitor thread {}: {status}",
            comm.trim()
        );
    }
    // The monitor holds what vmd passed (/dev/kvm, the kernel, the disk,
    // the console's pty) and what it made (KVM's, eventfds, memfds,
    // sockets, pipes); no path it opened itself. (fds 0-2 are vmd's log.)
    for (_, target) in fds_past_stdio(monitor) {
        let t = target.to_string_lossy();
        let expected = ["anon_inode:", "socket:", "pipe:", "/memfd:", "/dev/pts/"]
            .iter()
            .any(|p| t.starts_with(p))
            || ["/dev/kvm", "/dev/null", "/dev/ptmx"].contains(&t.as_ref())
            || target == disk
            || target == Path::new(vmd_tests::TEST_GUEST);
        assert!(expected, "the monitor holds {t}");
    }
    let launcher = children_named(monitor, "vmm-monitor");
    assert_eq!(launcher.len(), 1, "the monitor's device launcher");
    let launcher_status = |key| vmd_tests::vmd::status_field(launcher[0], key);
    assert_eq!(launcher_status("Uid"), status("Uid"), "the launcher's uid");
    assert_eq!(
        launcher_status("CapEff"),
        "0000000000000000",
        "the launcher"
    );
    assert_eq!(launcher_status("NoNewPrivs"), "1", "the launcher");
    assert_eq!(launcher_status("Seccomp"), "2", "the launcher's denylist");
    // Its vCPU threads run under their own profile (monitor_vcpu).
    let mut vcpus = 0;
    for task in std::fs::read_dir(format!("/proc/{monitor}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim().starts_with("vcpu") {
            let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
            assert!(
                status.contains("\nSeccomp:\t2\n"),
                "{}: {status}",
                comm.trim()
            );
            vcpus += 1;
        }
    }
    assert_eq!(vcpus, 1, "the VM's one vCPU thread");
    vmd.vmctl(&["stop", "-f", "-w", "box"]).ok();
}

/// A call the monitor's profile refuses ends the monitor, and vmd reports
/// the VM's end with the call by name (from the monitor's report pipe).
#[test]
fn a_monitor_making_a_refused_call_is_stopped_and_vmd_names_the_call() {
    let test = "a_monitor_making_a_refused_call_is_stopped_and_vmd_names_the_call";
    if !kvm_and_root_or_skip(test) {
        return;
    }
    let scratch = Scratch::new("sandbox-monitor-trap");
    let config = format!(
        "vm \"trap\" {{\n boot \"{}\"\n memory 64M\n cmdline \"test=ticker ms=500\"\n}}\n",
        vmd_tests::TEST_GUEST
    );
    let dir = scratch.path("vmd");
    std::fs::create_dir_all(&dir).unwrap();
    let vmd = Vmd::start_with_env(&dir, &config, &[("VMD_MONITOR_SANDBOX_SELFTEST", "socket")]);
    let _ = vmd.vmctl(&["start", "trap"]);
    vmd.wait_log("made syscall socket (41)", 1, Duration::from_secs(30));
    let log = vmd.log();
    let line = log
        .lines()
        .find(|l| l.starts_with("vmd[") && l.contains("made syscall socket (41)"))
        .unwrap_or_else(|| panic!("vmd names the call:\n{log}"));
    assert!(
        line.contains("sandbox: profile monitor: thread ") && line.contains("status 159"),
        "{line}"
    );
    let row = vmd.wait_state("trap", "stopped", Duration::from_secs(10));
    assert_eq!(row.pid, "-", "{row:?}");
}

/// Under vmd, with every process confined: a dev-block killed with
/// SIGKILL is restarted by its monitor (through the device launcher), the
/// new one sandboxed as the first was, and the VM runs on.
#[test]
fn a_killed_device_is_restarted_sandboxed_and_the_vm_runs_on() {
    let test = "a_killed_device_is_restarted_sandboxed_and_the_vm_runs_on";
    if !kvm_and_root_or_skip(test) {
        return;
    }
    let scratch = Scratch::new("sandbox-restart");
    let (vmd, monitor, _) = running_ticker_vm(&scratch, "again");
    let wait_for_one = |not: Option<u32>| {
        for _ in 0..200 {
            let pids = children_named(monitor, "dev-block");
            if let [pid] = pids[..] {
                if Some(pid) != not {
                    return pid;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("no new dev-block under monitor {monitor}:\n{}", vmd.log());
    };
    let first = wait_for_one(None);
    std::thread::sleep(Duration::from_millis(300));
    let uid = assert_sandboxed(first, "dev-block");
    // SAFETY: kill(2) on a pid read as the monitor's child.
    assert_eq!(unsafe { libc::kill(first as i32, libc::SIGKILL) }, 0);
    let second = wait_for_one(Some(first));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        assert_sandboxed(second, "dev-block"),
        uid,
        "the same VM uid"
    );
    vmd.wait_log("disk0: restarted as pid", 1, Duration::from_secs(10));
    let row = vmd.wait_state("again", "running", Duration::from_secs(5));
    assert_eq!(row.pid, monitor.to_string(), "the same monitor runs the VM");
    vmd.vmctl(&["stop", "-f", "-w", "again"]).ok();
}

/// `vmctl device list` shows a running VM's device processes with their
/// pids and restarts; `vmctl device restart` kills one, and its monitor
/// restarts it as after any death.
#[test]
fn vmctl_device_lists_and_restarts_a_vms_devices() {
    let test = "vmctl_device_lists_and_restarts_a_vms_devices";
    if !kvm_and_root_or_skip(test) {
        return;
    }
    let scratch = Scratch::new("sandbox-device-cmd");
    let (vmd, monitor, _) = running_ticker_vm(&scratch, "dev");
    let pid_of = |listing: &str, device: &str| -> (u32, u64) {
        let line = listing
            .lines()
            .find(|l| l.split_whitespace().next() == Some(device))
            .unwrap_or_else(|| panic!("no {device} in:\n{listing}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields[1].parse().unwrap(), fields[2].parse().unwrap())
    };
    let listing = vmd.vmctl(&["device", "list", "dev"]).ok().to_string();
    assert!(listing.starts_with("DEVICE"), "{listing}");
    let (disk_pid, restarts) = pid_of(&listing, "disk0");
    assert_eq!(restarts, 0, "{listing}");
    assert_eq!(
        children_named(monitor, "dev-block"),
        [disk_pid],
        "{listing}"
    );
    let (console_pid, _) = pid_of(&listing, "console");
    assert_eq!(children_named(monitor, "dev-console"), [console_pid]);

    vmd.vmctl(&["device", "restart", "dev", "disk0"]).ok();
    vmd.wait_log("disk0: restarted as pid", 1, Duration::from_secs(10));
    // Asked for, not a crash: restarted at once, however young the process
    // was (the crash-loop backoff would wait 10 ms and count it).
    let log = vmd.log();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("disk0 (pid {disk_pid})")))
        .unwrap_or_else(|| panic!("no death logged:\n{log}"));
    assert!(line.ends_with("restarting it"), "{line}");
    let listing = vmd.vmctl(&["device", "list", "dev"]).ok().to_string();
    let (new_pid, restarts) = pid_of(&listing, "disk0");
    assert_eq!(restarts, 1, "{listing}");
    assert_ne!(new_pid, disk_pid, "{listing}");
    assert_eq!(children_named(monitor, "dev-block"), [new_pid]);
    assert_eq!(
        pid_of(&listing, "console").0,
        console_pid,
        "the console untouched"
    );

    vmd.vmctl(&["device", "restart", "dev", "disk9"])
        .fails_with("has no device disk9");
    vmd.vmctl(&["stop", "-f", "-w", "dev"]).ok();
    vmd.vmctl(&["device", "list", "dev"])
        .fails_with("is not running");
}
