//! Disks end to end: the test guest's virtio-blk driver, through the
//! monitor's virtio-pci transport, to a dev-block process (raw and qcow2
//! images) or to qemu-storage-daemon's vhost-user-blk export.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmd_tests::{kvm_or_skip, run_tool, tool_or_skip, Monitor, Scratch};

/// Monitor exit codes (vmm_monitor::exit).
const EXIT_POWEROFF: i32 = 0;

/// A raw image of `mib` MiB.
fn raw_image(scratch: &Scratch, name: &str, mib: u64) -> String {
    let path = scratch.path(name);
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(mib << 20).unwrap();
    path.display().to_string()
}

fn blk(cmdline: &str, disk: &str) -> vmd_tests::GuestRun {
    Monitor::guest(cmdline)
        .cpus(2)
        .memory("256M")
        .disk(disk)
        .run()
}

#[test]
fn blk_rw_raw_image_with_msix_on_two_queues() {
    if !kvm_or_skip("blk_rw_raw_image_with_msix_on_two_queues") {
        return;
    }
    let scratch = Scratch::new("blk-rw-raw");
    let run = blk("test=blk-rw", &raw_image(&scratch, "d.img", 16));
    run.assert_passed("blk-rw", EXIT_POWEROFF);
    assert_eq!(
        run.value("blk-rw", "mode").as_deref(),
        Some("msix"),
        "{run}"
    );
    assert_eq!(run.value("blk-rw", "queues").as_deref(), Some("2"), "{run}");
    assert_eq!(
        run.value("blk-rw", "capacity").as_deref(),
        Some("32768"),
        "{run}"
    );
}

#[test]
fn blk_rw_raw_image_polled() {
    if !kvm_or_skip("blk_rw_raw_image_polled") {
        return;
    }
    let scratch = Scratch::new("blk-rw-poll");
    let run = blk("test=blk-rw poll=1", &raw_image(&scratch, "d.img", 8));
    run.assert_passed("blk-rw", EXIT_POWEROFF);
}

#[test]
fn blk_rw_qcow2_from_qemu_img_stays_consistent() {
    let test = "blk_rw_qcow2_from_qemu_img_stays_consistent";
    if !kvm_or_skip(test) || !tool_or_skip("qemu-img", test) {
        return;
    }
    let scratch = Scratch::new("blk-rw-qcow2");
    let image = scratch.path("d.qcow2").display().to_string();
    run_tool("qemu-img", &["create", "-q", "-f", "qcow2", &image, "16M"]);
    let run = blk("test=blk-rw", &format!("{image},format=qcow2"));
    run.assert_passed("blk-rw", EXIT_POWEROFF);
    let check = run_tool("qemu-img", &["check", &image]);
    assert!(check.contains("No errors were found"), "{check}");
    // What the guest left behind (its last pattern) is what qemu-img reads.
    let raw = scratch.path("d.raw").display().to_string();
    run_tool("qemu-img", &["convert", "-O", "raw", &image, &raw]);
    assert!(
        std::fs::read(&raw).unwrap().iter().any(|b| *b != 0),
        "the guest's data is in the image"
    );
}

/// A fresh qcow2 image of `mib` MiB made by qemu-img, if it is installed.
fn qcow2_image(scratch: &Scratch, name: &str, mib: u64, test: &str) -> Option<String> {
    if !tool_or_skip("qemu-img", test) {
        return None;
    }
    let image = scratch.path(name).display().to_string();
    run_tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", &image, &format!("{mib}M")],
    );
    Some(image)
}

#[test]
fn blk_id_returns_the_disk_name() {
    let test = "blk_id_returns_the_disk_name";
    if !kvm_or_skip(test) {
        return;
    }
    let scratch = Scratch::new("blk-id");
    let mut disks = vec![raw_image(&scratch, "d.img", 1)];
    disks.extend(qcow2_image(&scratch, "d.qcow2", 1, test));
    for disk in disks {
        check_blk_id(&disk);
    }
}

fn check_blk_id(disk: &str) {
    let run = blk("test=blk-id", disk);
    run.assert_passed("blk-id", EXIT_POWEROFF);
    // The first data line describes the PCI function (its `id=` is the PCI
    // ID); the ID string comes on the line of its own.
    let id = run
        .data("blk-id")
        .into_iter()
        .find_map(|l| l.strip_prefix("id="))
        .map(|l| l.split(' ').next());
    assert_eq!(id, Some(Some("disk0")), "{run}");
}

#[test]
fn blk_discard_and_write_zeroes_on_raw_and_qcow2() {
    let test = "blk_discard_and_write_zeroes_on_raw_and_qcow2";
    if !kvm_or_skip(test) {
        return;
    }
    let scratch = Scratch::new("blk-discard");
    blk("test=blk-discard", &raw_image(&scratch, "d.img", 4))
        .assert_passed("blk-discard", EXIT_POWEROFF);
    if tool_or_skip("qemu-img", test) {
        let image = scratch.path("d.qcow2").display().to_string();
        run_tool("qemu-img", &["create", "-q", "-f", "qcow2", &image, "4M"]);
        blk("test=blk-discard", &image).assert_passed("blk-discard", EXIT_POWEROFF);
        let check = run_tool("qemu-img", &["check", &image]);
        assert!(check.contains("No errors were found"), "{check}");
    }
}

#[test]
fn blk_ro_write_fails_and_image_is_untouched() {
    let test = "blk_ro_write_fails_and_image_is_untouched";
    if !kvm_or_skip(test) {
        return;
    }
    let scratch = Scratch::new("blk-ro");
    let raw = raw_image(&scratch, "d.img", 1);
    std::fs::write(&raw, vec![0x5a; 1 << 20]).unwrap();
    let mut disks = vec![raw];
    disks.extend(qcow2_image(&scratch, "d.qcow2", 1, test));
    for image in disks {
        let before = std::fs::read(&image).unwrap();
        let run = blk("test=blk-ro", &format!("{image},readonly"));
        run.assert_passed("blk-ro", EXIT_POWEROFF);
        assert_eq!(
            run.value("blk-ro", "write_status").as_deref(),
            Some("1"),
            "IOERR:\n{run}"
        );
        assert_eq!(std::fs::read(&image).unwrap(), before, "{image} unchanged");
    }
}

/// qemu-storage-daemon exporting `image` as vhost-user-blk on `socket`;
/// killed when dropped.
struct StorageDaemon(Child);

impl StorageDaemon {
    fn start(image: &str, socket: &str) -> Self {
        let blockdev = format!("driver=file,node-name=f,filename={image}");
        let export = format!(
            "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={socket},writable=on,num-queues=2"
        );
        let child = Command::new("qemu-storage-daemon")
            .args(["--blockdev", &blockdev, "--export", &export])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start qemu-storage-daemon");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::path::Path::new(socket).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn blk_rw_against_qemu_storage_daemon() {
    let test = "blk_rw_against_qemu_storage_daemon";
    if !kvm_or_skip(test) || !tool_or_skip("qemu-storage-daemon", test) {
        return;
    }
    let scratch = Scratch::new("blk-qsd");
    let image = raw_image(&scratch, "d.img", 16);
    let socket = scratch.path("qsd.sock").display().to_string();
    let _daemon = StorageDaemon::start(&image, &socket);
    let run = blk("test=blk-rw", &format!("vhost-user={socket}"));
    run.assert_passed("blk-rw", EXIT_POWEROFF);
    assert_eq!(run.value("blk-rw", "queues").as_deref(), Some("2"), "{run}");
}

/// Checks a `test=blk-rw reinit=1` run on a 16 MiB disk: passed, and
/// the whole area verified after the device reset and re-initialisation.
fn assert_reinit_verified(run: &vmd_tests::GuestRun) {
    run.assert_passed("blk-rw", EXIT_POWEROFF);
    let reinit = run
        .data("blk-rw")
        .into_iter()
        .find(|line| line.starts_with("reinit="))
        .map(str::to_owned);
    let reinit = reinit.unwrap_or_else(|| panic!("no reinit line:\n{run}"));
    assert!(
        reinit.starts_with("reinit=1 verified=16777216 "),
        "{reinit}:\n{run}"
    );
    // The depths after the reset ran too.
    assert!(
        run.data("blk-rw")
            .iter()
            .any(|line| line.contains(" depth=32 ")),
        "{run}"
    );
}

#[test]
fn blk_device_reset_and_reinit_keeps_data() {
    let test = "blk_device_reset_and_reinit_keeps_data";
    if !kvm_or_skip(test) {
        return;
    }
    let scratch = Scratch::new("blk-reinit");
    let run = blk("test=blk-rw reinit=1", &raw_image(&scratch, "d.img", 16));
    assert_reinit_verified(&run);

    if !tool_or_skip("qemu-storage-daemon", test) {
        return;
    }
    let image = raw_image(&scratch, "q.img", 16);
    let socket = scratch.path("qsd.sock").display().to_string();
    let _daemon = StorageDaemon::start(&image, &socket);
    let run = blk("test=blk-rw reinit=1", &format!("vhost-user={socket}"));
    assert_reinit_verified(&run);
}

/// Reads `child`'s log as it comes (so that a full pipe never stalls it);
/// the thread returns all of it once the child has ended.
fn drain_stderr(child: &mut Child) -> std::thread::JoinHandle<String> {
    let mut stderr = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        let mut log = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
        log
    })
}

/// The monitor running the guest with `cmdline` on `image` (2 vCPUs,
/// 256 MiB): its log read by a thread ([`drain_stderr`]), its console's
/// lines sent to a channel as they come.
fn watched_monitor(
    cmdline: &str,
    image: &str,
) -> (
    Child,
    std::thread::JoinHandle<String>,
    std::sync::mpsc::Receiver<String>,
) {
    let mut child = Monitor::guest(cmdline)
        .cpus(2)
        .memory("256M")
        .disk(image)
        .command()
        .spawn()
        .expect("start vmm-monitor");
    let log = drain_stderr(&mut child);
    let mut console = BufReader::new(child.stdout.take().unwrap());
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut line = String::new();
        while console.read_line(&mut line).unwrap_or(0) > 0 {
            let _ = tx.send(std::mem::take(&mut line));
        }
    });
    (child, log, lines)
}

/// Kills monitor `monitor`'s dev-block `kills` times, at pauses drawn from
/// `pause_ms` (a fixed xorshift sequence: different moments, the same
/// every run), reading the guest's `lines` into `output` meanwhile, until
/// the guest's verdict; returns the pids killed.
fn kill_dev_block_repeatedly(
    monitor: u32,
    lines: &std::sync::mpsc::Receiver<String>,
    output: &mut String,
    kills: usize,
    pause_ms: std::ops::Range<u64>,
) -> Vec<u32> {
    vmd_tests::vmd::kill_repeatedly(monitor, "dev-block", kills, pause_ms, |pause| {
        let until = Instant::now() + pause;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) => *output += &line,
                Err(_) => break,
            }
        }
        !output.contains("VMDT PASS") && !output.contains("VMDT FAIL")
    })
}

#[test]
fn a_killed_dev_block_is_restarted_and_the_guest_sees_no_error() {
    if !kvm_or_skip("a_killed_dev_block_is_restarted_and_the_guest_sees_no_error") {
        return;
    }
    let scratch = Scratch::new("blk-dies");
    let image = raw_image(&scratch, "d.img", 512);
    let (mut child, log_reader, lines) = watched_monitor("test=blk-rw", &image);
    let mut output = String::new();
    while !output.contains("VMDT BEGIN") {
        output += &lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the guest starts");
    }
    // Kill its dev-block again and again while the guest writes and
    // verifies, each at a different moment, each kill past the quick-death
    // window of the restart policy.
    let killed = kill_dev_block_repeatedly(child.id(), &lines, &mut output, 12, 300..600);
    let status = child.wait().unwrap();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(1)) {
        output += &line;
    }
    let log = log_reader.join().unwrap();
    assert!(
        killed.len() >= 3,
        "the guest ended too soon: {output}\n{log}"
    );
    assert!(output.contains("VMDT PASS blk-rw"), "{output}\n{log}");
    assert_eq!(status.code(), Some(0), "{log}");
    let restarts = log.matches("disk0: restarted as pid").count();
    assert_eq!(restarts, killed.len(), "a restart per kill: {log}");
    // Every process was reaped: nothing is left behind.
    for pid in killed {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}

/// The bar: 100 SIGKILLs of dev-block at random moments while the
/// guest keeps 32 requests in flight per queue, writing and verifying
/// checksummed blocks (`blk-stall`): no I/O error, every block reads back
/// as last written, one restart per kill, the VM never resets.
#[test]
fn dev_block_killed_100_times_under_load_loses_nothing() {
    if !kvm_or_skip("dev_block_killed_100_times_under_load_loses_nothing") {
        return;
    }
    const KILLS: usize = 100;
    let scratch = Scratch::new("blk-100-kills");
    let image = raw_image(&scratch, "d.img", 64);
    let cmdline = "test=blk-stall secs=45 depth=32 size=16 top=120";
    let (mut child, log_reader, lines) = watched_monitor(cmdline, &image);
    let mut output = String::new();
    while !output.contains("device=") {
        output += &lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the guest starts");
    }
    // Past the restart policy's quick-death window (250 ms), so that each
    // kill is restarted at once.
    let killed = kill_dev_block_repeatedly(child.id(), &lines, &mut output, KILLS, 260..360);
    let status = child.wait().unwrap();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(1)) {
        output += &line;
    }
    let log = log_reader.join().unwrap();
    let tail: String = log.lines().rev().take(40).collect::<Vec<_>>().join("\n");
    assert_eq!(
        killed.len(),
        KILLS,
        "the guest ended before {KILLS} kills:\n{output}\n{tail}"
    );
    assert!(output.contains("VMDT PASS blk-stall"), "{output}\n{tail}");
    assert!(output.contains(" errors=0 "), "{output}");
    assert!(
        !output.contains("VMDT BEGIN blk-stall\nVMDT BEGIN"),
        "the VM reset"
    );
    assert_eq!(
        output.matches("VMDT BEGIN").count(),
        1,
        "the VM reset: {output}"
    );
    assert_eq!(status.code(), Some(0), "{tail}");
    assert_eq!(
        log.matches("disk0: restarted as pid").count(),
        KILLS,
        "{tail}"
    );
}

/// A process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dev_block_standalone_serves_qemu_as_frontend() {
    let test = "dev_block_standalone_serves_qemu_as_frontend";
    if !kvm_or_skip(test) || !tool_or_skip("qemu-system-x86_64", test) {
        return;
    }
    let scratch = Scratch::new("blk-qemu-frontend");
    let image = raw_image(&scratch, "d.img", 16);
    let socket = scratch.path("dev-block.sock").display().to_string();
    let dev_block = vmd_tests::monitor_binary().with_file_name("dev-block");
    let mut backend = Killed(
        Command::new(dev_block)
            .args(["--socket", &socket, "--disk", &image, "--queues", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dev-block"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new(&socket).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // QEMU needs guest RAM it can share with a vhost-user backend: a memfd.
    let chardev = format!("socket,id=c0,path={socket}");
    let out = Command::new("timeout")
        .args([
            "120",
            "qemu-system-x86_64",
            "-accel",
            "kvm",
            "-M",
            "q35",
            "-m",
            "256M",
            "-smp",
            "2",
        ])
        .args([
            "-object",
            "memory-backend-memfd,id=mem,size=256M,share=on",
            "-numa",
            "node,memdev=mem",
        ])
        .args(vmd_tests::bench::QEMU_HEADLESS)
        .args(["-kernel", vmd_tests::TEST_GUEST, "-append", "test=blk-rw"])
        .args([
            "-chardev",
            &chardev,
            "-device",
            "vhost-user-blk-pci,chardev=c0,num-queues=2",
        ])
        .output()
        .expect("run qemu");
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(
        console.contains("VMDT PASS blk-rw"),
        "{console}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The standalone backend outlives its frontend and listens again,
    // sandboxed all along (its profile plus accepting on its socket).
    assert!(
        backend.0.try_wait().unwrap().is_none(),
        "dev-block still serves"
    );
    let pid = backend.0.id();
    assert_eq!(
        vmd_tests::vmd::status_field(pid, "Seccomp"),
        "2",
        "standalone dev-block"
    );
    assert_eq!(vmd_tests::vmd::status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(
        vmd_tests::vmd::status_field(pid, "CapEff"),
        "0000000000000000"
    );
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        "it accepts the next frontend"
    );
}

#[test]
fn blk_rw_qcow2_overlay_reads_through_its_backing_chain() {
    let test = "blk_rw_qcow2_overlay_reads_through_its_backing_chain";
    if !kvm_or_skip(test) || !tool_or_skip("qemu-img", test) {
        return;
    }
    let scratch = Scratch::new("blk-backing");
    let base = scratch.path("base.img");
    std::fs::write(&base, vec![0x5a; 4 << 20]).unwrap();
    let mid = scratch.path("mid.qcow2").display().to_string();
    let top = scratch.path("top.qcow2").display().to_string();
    // Backing names relative to each image, as vmctl create -b writes them.
    run_tool(
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-b", "base.img", "-F", "raw", &mid,
        ],
    );
    run_tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            &top,
        ],
    );
    // The guest rewrites only the first MiB.
    let run = blk("test=blk-rw size=1", &top);
    run.assert_passed("blk-rw", EXIT_POWEROFF);
    let raw = scratch.path("top.raw").display().to_string();
    run_tool("qemu-img", &["convert", "-O", "raw", &top, &raw]);
    let content = std::fs::read(&raw).unwrap();
    assert!(
        content[..1 << 20].iter().any(|b| *b != 0x5a),
        "the guest's writes are in the overlay"
    );
    assert!(
        content[1 << 20..].iter().all(|b| *b == 0x5a),
        "the rest reads through two backing files"
    );
    assert!(
        std::fs::read(&base).unwrap().iter().all(|b| *b == 0x5a),
        "the base is untouched"
    );
    let check = run_tool("qemu-img", &["check", &top]);
    assert!(check.contains("No errors were found"), "{check}");
}
