//! `smp`: starts every AP the MADT lists with INIT-SIPI-SIPI; each reports
//! its LAPIC ID from CPL3 and parks. Passes if every MADT APIC ID reported
//! exactly once.

use core::sync::atomic::{AtomicU32, Ordering};

use super::{Ctx, Reason, Scenario};
use crate::cpu::{self, Deadline};
use crate::entry::MAX_CPUS;
use crate::{ap, lapic, power};

/// The scenario.
pub const SCENARIO: Scenario = Scenario { name: "smp", run };

/// Wait for all APs: a base plus a share per AP (an AP's CPL0 path is
/// emulated and takes milliseconds; vCPUs may outnumber host cores).
const WAIT_BASE_MS: u64 = 10_000;
const WAIT_PER_CPU_MS: u64 = 1_000;

/// APIC ID + 1 reported by CPU index i (0: nothing yet).
static REPORTED: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
/// APs that reported.
static DONE: AtomicU32 = AtomicU32::new(0);

fn run(ctx: &Ctx) -> Result<(), Reason> {
    let Some(acpi) = power::ACPI.get() else {
        crate::fail!("no ACPI tables")
    };
    let ids = acpi.lapic_ids();
    let cpus = ids.len();
    crate::println!("VMDT {} cpus={cpus}", ctx.name);
    if cpus == 0 || cpus > MAX_CPUS {
        crate::fail!("{cpus} CPUs in the MADT (supported: 1..={MAX_CPUS})");
    }
    let me = lapic::id();
    print_cpu(me);
    REPORTED[0].store(me + 1, Ordering::SeqCst);
    if !ids.contains(&me) {
        crate::fail!("BSP APIC ID {me} not in the MADT");
    }

    let began = cpu::rdtsc();
    ap::prepare(cpus, report);
    for &id in ids.iter().filter(|&&id| id != me) {
        ap::start(id);
    }
    let aps = (cpus - 1) as u32;
    let deadline = Deadline::after_ms(WAIT_BASE_MS + WAIT_PER_CPU_MS * cpus as u64);
    let all = cpu::wait_until(deadline, || DONE.load(Ordering::SeqCst) >= aps);
    let done = DONE.load(Ordering::SeqCst);
    let ms = (cpu::rdtsc() - began) / cpu::tsc_per_ms();
    crate::println!("VMDT {} reported={} ms={ms}", ctx.name, done + 1);
    if !all {
        crate::fail!("timeout: {} of {cpus} CPUs reported", done + 1);
    }

    let reported = || {
        REPORTED
            .iter()
            .map(|r| r.load(Ordering::SeqCst))
            .filter(|&v| v != 0)
            .map(|v| v - 1)
    };
    for &id in ids {
        let times = reported().filter(|&r| r == id).count();
        if times != 1 {
            crate::fail!("APIC ID {id} reported {times} times");
        }
    }
    if let Some(extra) = reported().find(|r| !ids.contains(r)) {
        crate::fail!("APIC ID {extra} reported but not in the MADT");
    }
    Ok(())
}

/// CPUID leaf that lists the x2APIC topology levels.
const LEAF_TOPOLOGY: u32 = 0xb;

/// Prints this CPU's line: its LAPIC ID, the initial APIC ID of CPUID leaf
/// 1 (EBX[31:24]), and from leaf 0xB the x2APIC ID (EDX) and the number of
/// logical processors at the core level (subleaf 1, EBX[15:0]), `-` when
/// the leaf is absent. A VMM with a consistent topology makes all IDs equal
/// and `cores` the CPU count.
fn print_cpu(apic: u32) {
    let (_, ebx1, ..) = cpu::cpuid(1, 0);
    let (max_leaf, ..) = cpu::cpuid(0, 0);
    if max_leaf >= LEAF_TOPOLOGY {
        let (.., x2apic) = cpu::cpuid(LEAF_TOPOLOGY, 0);
        let (_, cores, ..) = cpu::cpuid(LEAF_TOPOLOGY, 1);
        crate::println!(
            "VMDT smp cpu apic={apic} cpuid1={} cpuidb={x2apic} cores={}",
            ebx1 >> 24,
            cores & 0xffff
        );
    } else {
        crate::println!(
            "VMDT smp cpu apic={apic} cpuid1={} cpuidb=- cores=-",
            ebx1 >> 24
        );
    }
}

/// What each AP runs at CPL3: report, then park.
fn report(index: usize) -> ! {
    let id = lapic::id();
    print_cpu(id);
    REPORTED[index].store(id + 1, Ordering::SeqCst);
    DONE.fetch_add(1, Ordering::SeqCst);
    cpu::park()
}
