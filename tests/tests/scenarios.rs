//! The test guest's scenarios on the real monitor: boot, SMP bring-up, RAM,
//! LAPIC timer, reboot. Each runs when /dev/kvm is present and says SKIPPED
//! loudly otherwise.

use vmd_tests::{kvm_or_skip, Monitor};

/// Monitor exit codes (vmm_monitor::exit).
const EXIT_POWEROFF: i32 = 0;
const EXIT_REBOOT: i32 = 3;

#[test]
fn hello_prints_cmdline_and_powers_off() {
    if !kvm_or_skip("hello_prints_cmdline_and_powers_off") {
        return;
    }
    let run = Monitor::guest("test=hello extra=words")
        .memory("128M")
        .run();
    run.assert_passed("hello", EXIT_POWEROFF);
    assert_eq!(
        run.data("hello"),
        vec!["cmdline=test=hello extra=words"],
        "{run}"
    );
}

#[test]
fn unknown_scenario_fails_visibly() {
    if !kvm_or_skip("unknown_scenario_fails_visibly") {
        return;
    }
    let run = Monitor::guest("test=no-such-thing").memory("64M").run();
    assert!(
        run.vmdt_lines()
            .contains(&"FAIL no-such-thing unknown scenario"),
        "{run}"
    );
    assert_eq!(run.status.code(), Some(EXIT_POWEROFF), "{run}");
}

fn smp_reports_every_apic_id(cpus: usize) {
    let run = Monitor::guest("test=smp").cpus(cpus).memory("128M").run();
    run.assert_passed("smp", EXIT_POWEROFF);
    assert_eq!(run.value("smp", "cpus"), Some(cpus.to_string()), "{run}");
    let mut ids = Vec::new();
    for line in run.data("smp").iter().filter(|l| l.starts_with("cpu ")) {
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {key}= in {line:?}:\n{run}"))
        };
        let apic = field("apic");
        // CPUID must describe the same machine as the LAPIC and the MADT.
        assert_eq!(field("cpuid1"), apic, "CPUID leaf 1 APIC ID:\n{run}");
        assert_eq!(field("cpuidb"), apic, "CPUID leaf 0xB x2APIC ID:\n{run}");
        assert_eq!(
            field("cores"),
            cpus.to_string(),
            "CPUID leaf 0xB core count:\n{run}"
        );
        ids.push(apic.parse::<usize>().expect("numeric APIC ID"));
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..cpus).collect::<Vec<_>>(), "{run}");
}

#[test]
fn smp_1_vcpu() {
    if kvm_or_skip("smp_1_vcpu") {
        smp_reports_every_apic_id(1);
    }
}

#[test]
fn smp_2_vcpus() {
    if kvm_or_skip("smp_2_vcpus") {
        smp_reports_every_apic_id(2);
    }
}

#[test]
fn smp_8_vcpus() {
    if kvm_or_skip("smp_8_vcpus") {
        smp_reports_every_apic_id(8);
    }
}

#[test]
fn smp_64_vcpus_the_most_a_vm_may_have() {
    if kvm_or_skip("smp_64_vcpus_the_most_a_vm_may_have") {
        smp_reports_every_apic_id(64);
    }
}

fn mem_verifies_all_ram(memory: &str, bytes: u64, cpus: usize) {
    let run = Monitor::guest("test=mem").cpus(cpus).memory(memory).run();
    run.assert_passed("mem", EXIT_POWEROFF);
    let tested: u64 = run
        .value("mem", "tested")
        .and_then(|v| v.parse().ok())
        .expect("tested=");
    let high: u64 = run
        .value("mem", "high")
        .and_then(|v| v.parse().ok())
        .expect("high=");
    // Everything but the first MiB and the guest's own image (a few MiB at most).
    assert!(
        tested <= bytes && tested >= bytes - (8 << 20),
        "tested {tested} of {bytes}:\n{run}"
    );
    assert_eq!(
        high,
        bytes.saturating_sub(3 << 30),
        "RAM above 4 GiB:\n{run}"
    );
}

#[test]
fn mem_128m_1_2_8_vcpus() {
    if kvm_or_skip("mem_128m_1_2_8_vcpus") {
        for cpus in [1, 2, 8] {
            mem_verifies_all_ram("128M", 128 << 20, cpus);
        }
    }
}

#[test]
fn mem_above_4g_2_vcpus() {
    if kvm_or_skip("mem_above_4g_2_vcpus") {
        mem_verifies_all_ram("3136M", 3136 << 20, 2);
    }
}

fn timer_ticks(cpus: usize) {
    let run = Monitor::guest("test=timer").cpus(cpus).memory("64M").run();
    run.assert_passed("timer", EXIT_POWEROFF);
    let ticks: u64 = run
        .value("timer", "ticks")
        .and_then(|v| v.parse().ok())
        .expect("ticks=");
    assert!(ticks >= 10, "{run}");
}

#[test]
fn timer_1_vcpu() {
    if kvm_or_skip("timer_1_vcpu") {
        timer_ticks(1);
    }
}

#[test]
fn timer_2_vcpus() {
    if kvm_or_skip("timer_2_vcpus") {
        timer_ticks(2);
    }
}

#[test]
fn timer_8_vcpus() {
    if kvm_or_skip("timer_8_vcpus") {
        timer_ticks(8);
    }
}

#[test]
fn reboot_by_acpi_reset_register_exits_with_reboot_code() {
    if !kvm_or_skip("reboot_by_acpi_reset_register_exits_with_reboot_code") {
        return;
    }
    for cpus in [1, 2, 8] {
        let run = Monitor::guest("test=reboot").cpus(cpus).memory("64M").run();
        assert_eq!(run.data("reboot"), vec!["method=acpi"], "{run}");
        assert_eq!(run.status.code(), Some(EXIT_REBOOT), "{run}");
        assert!(!run.console.contains("VMDT FAIL"), "{run}");
    }
}

#[test]
fn reboot_by_i8042_exits_with_reboot_code() {
    if !kvm_or_skip("reboot_by_i8042_exits_with_reboot_code") {
        return;
    }
    let run = Monitor::guest("test=reboot method=kbd").memory("64M").run();
    assert_eq!(run.data("reboot"), vec!["method=kbd"], "{run}");
    assert_eq!(run.status.code(), Some(EXIT_REBOOT), "{run}");
}
