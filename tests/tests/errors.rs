//! What a user sees when the VM cannot start or the guest crashes: one
//! clear message and a distinct exit code, never a panic.

use std::path::PathBuf;

use vmd_tests::{kvm_or_skip, Monitor};

/// Monitor exit codes (vmm_monitor::exit).
const EXIT_HOST_ERROR: i32 = 1;
const EXIT_GUEST_CRASH: i32 = 4;

/// Load address of the hand-made kernel below.
const LOAD_ADDR: u64 = 0x10_0000;

/// A minimal PVH ELF whose entry point executes `ud2` with no IDT: the
/// #UD cannot be delivered and the vCPU triple-faults.
fn triple_fault_kernel() -> PathBuf {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let note_off = EHDR + 2 * PHDR;
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes()); // namesz
    note.extend_from_slice(&4u32.to_le_bytes()); // descsz
    note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    note.extend_from_slice(b"Xen\0");
    let code_off = note_off + note.len() + 4;
    let entry = LOAD_ADDR + code_off as u64;
    note.extend_from_slice(&(entry as u32).to_le_bytes());
    let code = [0x0f, 0x0b, 0xf4, 0xeb, 0xfd]; // ud2; hlt; jmp hlt
    let total = code_off + code.len();

    let mut elf = vec![0u8; EHDR];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // ELFCLASS64
    elf[5] = 1; // little endian
    elf[6] = 1; // version
    elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[24..32].copy_from_slice(&entry.to_le_bytes());
    elf[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    elf[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes());
    elf[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
    elf[56..58].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
    let phdr = |kind: u32, offset: usize, addr: u64, size: usize, align: u64| {
        let mut p = Vec::with_capacity(PHDR);
        p.extend_from_slice(&kind.to_le_bytes());
        p.extend_from_slice(&5u32.to_le_bytes()); // R+X
        p.extend_from_slice(&(offset as u64).to_le_bytes());
        p.extend_from_slice(&addr.to_le_bytes());
        p.extend_from_slice(&addr.to_le_bytes());
        p.extend_from_slice(&(size as u64).to_le_bytes());
        p.extend_from_slice(&(size as u64).to_le_bytes());
        p.extend_from_slice(&align.to_le_bytes());
        p
    };
    elf.extend(phdr(1, 0, LOAD_ADDR, total, 0x1000)); // PT_LOAD
    elf.extend(phdr(
        4,
        note_off,
        LOAD_ADDR + note_off as u64,
        note.len(),
        4,
    )); // PT_NOTE
    elf.extend(note);
    elf.extend(code);
    assert_eq!(elf.len(), total);
    let path = std::env::temp_dir().join(format!("vmd-triple-fault-{}.elf", std::process::id()));
    std::fs::write(&path, elf).unwrap();
    path
}

#[test]
fn triple_fault_stops_vm_naming_vcpu_reason_and_rip() {
    if !kvm_or_skip("triple_fault_stops_vm_naming_vcpu_reason_and_rip") {
        return;
    }
    let kernel = triple_fault_kernel();
    let run = Monitor::kernel(&kernel).memory("16M").run();
    std::fs::remove_file(&kernel).ok();
    assert_eq!(run.status.code(), Some(EXIT_GUEST_CRASH), "{run}");
    let message: Vec<_> = run
        .log
        .lines()
        .filter(|l| l.contains("VM stopped"))
        .collect();
    assert_eq!(message.len(), 1, "{run}");
    assert!(
        message[0].contains("vcpu 0: triple fault (KVM_EXIT_SHUTDOWN) at rip 0x"),
        "{run}"
    );
    assert!(!run.log.contains("panicked"), "{run}");
}

#[test]
fn missing_kernel_is_named_in_the_error() {
    if !kvm_or_skip("missing_kernel_is_named_in_the_error") {
        return;
    }
    let run = Monitor::kernel("/nonexistent/vmlinuz").memory("16M").run();
    assert_eq!(run.status.code(), Some(EXIT_HOST_ERROR), "{run}");
    assert!(
        run.log
            .contains("cannot open kernel /nonexistent/vmlinuz: No such file"),
        "{run}"
    );
}

#[test]
fn garbage_kernel_is_refused_with_its_format() {
    if !kvm_or_skip("garbage_kernel_is_refused_with_its_format") {
        return;
    }
    let path = std::env::temp_dir().join(format!("vmd-garbage-{}.bin", std::process::id()));
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let run = Monitor::kernel(&path).memory("16M").run();
    std::fs::remove_file(&path).ok();
    assert_eq!(run.status.code(), Some(EXIT_HOST_ERROR), "{run}");
    assert!(run.log.contains("unknown kernel format"), "{run}");
    assert!(run.log.contains(&path.display().to_string()), "{run}");
}

#[test]
fn bad_arguments_are_refused_before_anything_starts() {
    for (args, expected) in [
        (vec!["--cpus", "0"], "--cpus: 0 is out of range (1 to 64)"),
        (vec!["--cpus", "65"], "--cpus: 65 is out of range (1 to 64)"),
        (vec!["--memory", "12Q"], "--memory: '12Q' is not a size"),
        (vec!["--memory", "512"], "did you mean a suffix like 512M?"),
    ] {
        let mut monitor = Monitor::kernel("/nonexistent/vmlinuz");
        for a in args {
            monitor = monitor.arg(a);
        }
        let run = monitor.run();
        assert_eq!(run.status.code(), Some(EXIT_HOST_ERROR), "{run}");
        assert!(run.log.contains(expected), "expected {expected:?}:\n{run}");
    }
}
