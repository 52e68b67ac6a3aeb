//! The CPUID each vCPU sees.
//!
//! We start from what KVM can virtualise (KVM_GET_SUPPORTED_CPUID) and make
//! the topology leaves agree with the machine we build: one package of `n`
//! cores with one thread each, APIC ID = vCPU index. A guest that derives
//! its CPU map from CPUID (Linux does, from leaf 0xB/0x1F when present, else
//! leaf 1) then agrees with the MADT.
//!
//! Leaves touched (Intel SDM vol. 2A "CPUID"; AMD APM vol. 3 appendix E):
//! - 0x1: initial APIC ID, logical processor count, HTT, hypervisor bit.
//! - 0x4: cores per package and sharing per cache level (Intel).
//! - 0xB and 0x1F: the x2APIC topology, SMT and core levels.
//! - 0x8000_0008: core count and APIC ID size (AMD).
//! - 0x8000_001E: extended APIC ID and core ID (AMD).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: the package may hold more than one logical processor.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Level type "SMT" in leaf 0xB/0x1F ECX[15:8].
const LEVEL_TYPE_SMT: u32 = 1;
/// Level type "Core" in leaf 0xB/0x1F ECX[15:8].
const LEVEL_TYPE_CORE: u32 = 2;
/// Leaf 4 cache type "null" (EAX[4:0] == 0): no more cache levels.
const CACHE_TYPE_NULL: u32 = 0;
/// Leaf 4 cache level of the last-level cache shared by all cores.
const CACHE_LEVEL_SHARED: u32 = 3;

/// Errors building a vCPU's CPUID.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// The vCPU count is outside 1..=255 (xAPIC IDs are 8 bits).
    #[error("cannot describe {0} vCPUs in CPUID (1 to 255)")]
    BadCount(usize),
    /// The KVM CPUID table could not be rebuilt.
    #[error("cannot rebuild the CPUID table: {0}")]
    Table(String),
}

/// Number of bits needed for `count` distinct IDs (ceil(log2(count))).
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// The CPUID of vCPU `index` of `count`, derived from KVM's supported table.
pub fn vcpu_cpuid(supported: &CpuId, index: usize, count: usize) -> Result<CpuId, CpuidError> {
    if count == 0 || count > 255 || index >= count {
        return Err(CpuidError::BadCount(count));
    }
    let apic_id = index as u32;
    let count = count as u32;
    let max_basic = supported
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);

    let mut entries: Vec<kvm_cpuid_entry2> = supported
        .as_slice()
        .iter()
        .filter(|e| e.function != 0xb && e.function != 0x1f)
        .copied()
        .collect();
    for entry in &mut entries {
        match entry.function {
            0x1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff)
                    | (apic_id << 24)
                    | ((1 << id_bits(count)).min(255) << 16);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x4 if entry.eax & 0x1f != CACHE_TYPE_NULL => {
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= CACHE_LEVEL_SHARED {
                    (1 << id_bits(count)) - 1
                } else {
                    0
                };
                let cores = (1u32 << id_bits(count)) - 1;
                entry.eax = (entry.eax & 0x3fff) | (sharing << 14) | (cores << 26);
            }
            0x8000_0008 => {
                entry.ecx = (entry.ecx & !0xf0ff) | (id_bits(count) << 12) | (count - 1);
            }
            0x8000_001e => {
                entry.eax = apic_id;
                entry.ebx = (entry.ebx & !0xffff) | (apic_id & 0xff);
                entry.ecx &= !0xff;
            }
            _ => {}
        }
    }
    for leaf in [0xb, 0x1f] {
        if max_basic >= leaf {
            entries.extend(topology_leaf(leaf, apic_id, count));
        }
    }
    CpuId::from_entries(&entries).map_err(|e| CpuidError::Table(format!("{e:?}")))
}

/// Subleaves 0 (SMT), 1 (core) and 2 (end of list) of leaf 0xB or 0x1F.
fn topology_leaf(function: u32, apic_id: u32, count: u32) -> [kvm_cpuid_entry2; 3] {
    let entry = |index: u32, eax: u32, ebx: u32, level_type: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: index | (level_type << 8),
        edx: apic_id,
        ..Default::default()
    };
    [
        // One thread per core: no bits of the APIC ID select the thread.
        entry(0, 0, 1, LEVEL_TYPE_SMT),
        // All cores in one package: shifting out id_bits(count) gives the package.
        entry(1, id_bits(count), count, LEVEL_TYPE_CORE),
        entry(2, 0, 0, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn fake_supported() -> CpuId {
        CpuId::from_entries(&[
            leaf(0, 0, 0x1f, 0x6874_7541, 0, 0),
            leaf(1, 0, 0x00a2_0f12, 0x0b80_0800, 0x7ed8_320b, 0x178b_fbff),
            leaf(4, 0, 0x0400_0121, 0, 0, 0),
            leaf(4, 3, 0x0400_0163, 0, 0, 0),
            leaf(4, 4, 0, 0, 0, 0),
            leaf(0xb, 0, 1, 2, 0x100, 7),
            leaf(0xb, 1, 4, 16, 0x201, 7),
            leaf(0x8000_0008, 0, 0x3030, 0, 0x700f, 0),
            leaf(0x8000_001e, 0, 7, 0x103, 0x300, 0),
        ])
        .unwrap()
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn cpuid_leaf1_carries_apic_id_and_count() {
        let c = vcpu_cpuid(&fake_supported(), 5, 8).unwrap();
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 5);
        assert_eq!((l1.ebx >> 16) & 0xff, 8);
        assert_eq!(l1.ebx & 0xffff, 0x0800, "clflush size and brand kept");
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
    }

    #[test]
    fn cpuid_single_vcpu_has_no_htt() {
        let c = vcpu_cpuid(&fake_supported(), 0, 1).unwrap();
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!((l1.ebx >> 16) & 0xff, 1);
    }

    #[test]
    fn cpuid_topology_leaves_agree_for_each_vcpu() {
        for count in [1usize, 2, 3, 8, 64] {
            for index in 0..count {
                let c = vcpu_cpuid(&fake_supported(), index, count).unwrap();
                for function in [0xb, 0x1f] {
                    let smt = find(&c, function, 0);
                    let core = find(&c, function, 1);
                    let end = find(&c, function, 2);
                    assert_eq!(
                        (smt.eax, smt.ebx, smt.ecx >> 8 & 0xff),
                        (0, 1, LEVEL_TYPE_SMT)
                    );
                    assert_eq!(core.ebx as usize, count);
                    assert_eq!(core.ecx >> 8 & 0xff, LEVEL_TYPE_CORE);
                    assert!(1usize << core.eax >= count, "shift covers all APIC IDs");
                    assert_eq!(index as u32 >> core.eax, 0, "one package");
                    assert_eq!((end.ecx >> 8) & 0xff, 0);
                    assert!([smt, core, end].iter().all(|e| e.edx == index as u32));
                }
                assert_eq!(c.as_slice().iter().filter(|e| e.function == 0xb).count(), 3);
            }
        }
    }

    #[test]
    fn cpuid_cache_and_amd_leaves_count_cores() {
        let c = vcpu_cpuid(&fake_supported(), 3, 6).unwrap();
        assert_eq!(find(&c, 4, 0).eax >> 26, 7, "8 core IDs per package");
        assert_eq!((find(&c, 4, 0).eax >> 14) & 0xfff, 0, "L1 per core");
        assert_eq!((find(&c, 4, 3).eax >> 14) & 0xfff, 7, "L3 shared");
        assert_eq!(find(&c, 4, 4).eax, 0, "end of cache list untouched");
        let amd = find(&c, 0x8000_0008, 0);
        assert_eq!(amd.ecx & 0xff, 5);
        assert_eq!((amd.ecx >> 12) & 0xf, 3);
        assert_eq!(find(&c, 0x8000_001e, 0).eax, 3);
    }

    #[test]
    fn cpuid_bad_counts_are_refused() {
        assert!(vcpu_cpuid(&fake_supported(), 0, 0).is_err());
        assert!(vcpu_cpuid(&fake_supported(), 0, 256).is_err());
        assert!(vcpu_cpuid(&fake_supported(), 4, 4).is_err());
    }
}
