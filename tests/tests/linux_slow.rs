//! A stock Debian kernel booted on the monitor until it has read what the
//! monitor built for it: the e820 map, the KVM signature, the ACPI tables,
//! the IOAPIC and the CPU count.
//!
//! Opt-in (`VMD_SLOW_TESTS=1`, which `scripts/test` sets when it fetched the
//! kernel) and slow: guest kernel code is emulated on our development hosts,
//! and decompressing the kernel alone takes about 100 s there. The test
//! stops the VM once it has seen every line it waits for.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

use vmd_tests::{kvm_or_skip, loud, Monitor};

/// How long the kernel may take to print everything (it needs about 2
/// minutes on an idle development host).
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

#[test]
fn debian_kernel_boots_to_acpi_ioapic_and_smp_setup() {
    let test = "debian_kernel_boots_to_acpi_ioapic_and_smp_setup";
    if std::env::var("VMD_SLOW_TESTS").as_deref() != Ok("1") {
        loud(&format!(
            "SKIPPED {test}: slow; set VMD_SLOW_TESTS=1 (scripts/test does)"
        ));
        return;
    }
    let Ok(kernel) = std::env::var("VMD_TEST_BZIMAGE") else {
        loud(&format!(
            "SKIPPED {test}: VMD_TEST_BZIMAGE is not set (scripts/test sets it)"
        ));
        return;
    };
    if !kvm_or_skip(test) {
        return;
    }
    let mut child = Monitor::kernel(&kernel)
        .arg("--cmdline")
        .arg("console=ttyS0 earlyprintk=serial,ttyS0,115200")
        .cpus(2)
        .memory("256M")
        .command()
        .spawn()
        .expect("start vmm-monitor");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // What the kernel must say, in this order, about the machine we built.
    let wanted = [
        "Linux version",
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
        "BIOS-e820: [mem 0x00000000000e0000-0x00000000000fffff] ACPI data",
        "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
        "Hypervisor detected: KVM",
        "ACPI: RSDP 0x00000000000E0000",
        "ACPI: FACP",
        "ACPI: DSDT",
        "ACPI: APIC",
        "IOAPIC[0]: apic_id 2, version 17, address 0xfec00000, GSI 0-23",
        "smpboot: Allowing 2 CPUs, 0 hotplug CPUs",
    ];
    let deadline = std::time::Instant::now() + BOOT_TIMEOUT;
    let mut console = Vec::new();
    let mut next = 0;
    while next < wanted.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if line.contains(wanted[next]) {
                    next += 1;
                }
                console.push(line);
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
    }
    assert_eq!(
        next,
        wanted.len(),
        "the kernel never printed {:?}; console so far:\n{}\n--- monitor log ---\n{log}",
        wanted.get(next),
        console.join("\n")
    );
}
