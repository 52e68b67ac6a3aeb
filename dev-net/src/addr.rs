//! Addresses of local interfaces (`vmctl start -L`, `local interface` in
//! vm.conf), derived exactly as OpenBSD's vmd derives them (`vm_priv_addr`,
//! `vm_priv_addr6` in priv.c, the default lladdr in vmd.c `vm_register`).
//!
//! IPv4: every VM owns the /24-sized block `prefix | (vm_id << 8)`; inside it,
//! interface `ifidx` gets the /31 starting at `(ifidx + 1) * 2` (the first /31
//! is skipped so no gateway ends in `.0`). The even address is the host's (the
//! tap), the odd one the guest's. With the default `100.64.0.0/10`, VM 5's
//! first interface is host 100.64.5.2, guest 100.64.5.3; its second .4/.5.
//!
//! IPv6 (`local inet6 [prefix]`): vmd's scheme, kept so vmd users find the
//! addresses they expect. The guest's IPv4 address fills bits 64..96 of the
//! prefix, giving a /96 per interface; the host is `::1` and the guest `::2`
//! in it. With `fd76:6d64:7273::/48` and VM 5's first interface (guest
//! 100.64.5.3): host `fd76:6d64:7273:0:6440:503:0:1/96`, guest `...:0:2`.
//! vmd copies the IPv4 address over whatever the prefix has there; we refuse
//! prefixes longer than /64 instead, so the two never overlap.
//!
//! Default guest MAC: `fe:e1:bb:dX:rr:rr`, vmd's rule: the kernel's fake
//! address `fe:e1:ba:dX` with the third octet plus one (so frames of the
//! guest and of the tap are told apart), `X = (ifidx + 1) & 0xf`, and two
//! random octets.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::mac::MacAddr;

/// Prefix length of a local interface's IPv4 subnet: a point-to-point /31.
pub const LOCAL_PREFIX_LEN: u8 = 31;
/// Netmask of a local interface's IPv4 subnet (the /31 as a mask), which
/// the built-in DHCP server hands out.
pub const LOCAL_NETMASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 254);
/// Prefix length of a local interface's IPv6 subnet: the prefix plus the
/// 32 bits of the guest's IPv4 address, as vmd configures it.
pub const LOCAL_PREFIX_LEN6: u8 = 96;
/// Local interfaces a VM can have: its /24-sized block holds the /31s at
/// .2 to .254, 127 of them (vmd refuses `idx >= 0x7f`).
pub const MAX_LOCAL_INTERFACES: u32 = 127;
/// Longest IPv6 prefix usable: bits 64..96 carry the guest's IPv4 address.
pub const MAX_LOCAL_PREFIX_LEN6: u8 = 64;

/// Errors deriving a local interface's addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// The IPv4 prefix length is over 32.
    #[error("local prefix {addr}/{len}: prefix length over 32")]
    PrefixLen {
        /// The prefix's address.
        addr: Ipv4Addr,
        /// The bad length.
        len: u8,
    },
    /// The IPv4 prefix has bits set past its length.
    #[error("local prefix {addr}/{len}: host bits set")]
    PrefixHostBits {
        /// The prefix's address.
        addr: Ipv4Addr,
        /// Its length.
        len: u8,
    },
    /// VM ids start at 1.
    #[error("vm id 0: vm ids start at 1")]
    ZeroVmId,
    /// The interface index is past what a VM's /24 holds.
    #[error("vm id {vm_id}: interface {ifidx} past the {MAX_LOCAL_INTERFACES} local interfaces a vm can have")]
    TooManyInterfaces {
        /// The VM.
        vm_id: u32,
        /// The interface index (from 0).
        ifidx: u32,
    },
    /// The VM id is too high for the prefix: its addresses fall outside.
    #[error("vm id {vm_id} interface {ifidx}: addresses fall outside local prefix {prefix}/{len}")]
    OutsidePrefix {
        /// The VM.
        vm_id: u32,
        /// The interface index (from 0).
        ifidx: u32,
        /// The prefix's address.
        prefix: Ipv4Addr,
        /// Its length.
        len: u8,
    },
    /// The IPv6 prefix is longer than /64 (or than 128).
    #[error("local inet6 prefix {addr}/{len}: longer than /{MAX_LOCAL_PREFIX_LEN6}, no room for the interface's IPv4 address")]
    Prefix6Len {
        /// The prefix's address.
        addr: Ipv6Addr,
        /// The bad length.
        len: u8,
    },
    /// The IPv6 prefix has bits set past its length.
    #[error("local inet6 prefix {addr}/{len}: host bits set")]
    Prefix6HostBits {
        /// The prefix's address.
        addr: Ipv6Addr,
        /// Its length.
        len: u8,
    },
}

/// The IPv4 addresses of one local interface: a /31 ([`LOCAL_PREFIX_LEN`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddrs {
    /// The host side (the tap): router and DNS server for the guest.
    pub host: Ipv4Addr,
    /// The guest side, handed out by the built-in DHCP server.
    pub guest: Ipv4Addr,
}

/// The IPv6 addresses of one local interface: a /96 ([`LOCAL_PREFIX_LEN6`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddrs6 {
    /// The host side (the tap), `::1` in the /96.
    pub host: Ipv6Addr,
    /// The guest side, `::2` in the /96 (vmd answers no router
    /// solicitations; the guest configures it itself).
    pub guest: Ipv6Addr,
}

/// The IPv4 addresses of interface `ifidx` (from 0) of VM `vm_id` (from 1)
/// out of the local prefix `prefix/prefix_len`: host = prefix | (vm_id << 8)
/// | ((ifidx + 1) * 2), guest = host + 1.
pub fn local_addrs(
    prefix: Ipv4Addr,
    prefix_len: u8,
    vm_id: u32,
    ifidx: u32,
) -> Result<LocalAddrs, AddrError> {
    if prefix_len > 32 {
        return Err(AddrError::PrefixLen {
            addr: prefix,
            len: prefix_len,
        });
    }
    // Number of addresses in the prefix; u64 so that /0 fits.
    let size: u64 = 1 << (32 - u32::from(prefix_len));
    let base = u64::from(u32::from(prefix));
    if base % size != 0 {
        return Err(AddrError::PrefixHostBits {
            addr: prefix,
            len: prefix_len,
        });
    }
    if vm_id == 0 {
        return Err(AddrError::ZeroVmId);
    }
    if ifidx >= MAX_LOCAL_INTERFACES {
        return Err(AddrError::TooManyInterfaces { vm_id, ifidx });
    }
    let host_offset = (u64::from(vm_id) << 8) | ((u64::from(ifidx) + 1) * 2);
    let guest_offset = host_offset + 1;
    if guest_offset >= size {
        return Err(AddrError::OutsidePrefix {
            vm_id,
            ifidx,
            prefix,
            len: prefix_len,
        });
    }
    // Both fit: base + offset < base + size <= 2^32.
    let to_addr = |offset: u64| Ipv4Addr::from((base + offset) as u32);
    Ok(LocalAddrs {
        host: to_addr(host_offset),
        guest: to_addr(guest_offset),
    })
}

/// The IPv6 addresses of the local interface whose guest IPv4 address is
/// `guest_v4` (from [`local_addrs`]), out of `prefix/prefix_len`: bytes 8..12
/// are `guest_v4`, byte 15 is 1 for the host and 2 for the guest.
pub fn local_addrs6(
    prefix: Ipv6Addr,
    prefix_len: u8,
    guest_v4: Ipv4Addr,
) -> Result<LocalAddrs6, AddrError> {
    if prefix_len > MAX_LOCAL_PREFIX_LEN6 {
        return Err(AddrError::Prefix6Len {
            addr: prefix,
            len: prefix_len,
        });
    }
    let bits = u128::from(prefix);
    // prefix_len <= 64, so the shift is in range.
    let host_mask = u128::MAX >> prefix_len;
    if bits & host_mask != 0 {
        return Err(AddrError::Prefix6HostBits {
            addr: prefix,
            len: prefix_len,
        });
    }
    let mut octets = prefix.octets();
    octets[8..12].copy_from_slice(&guest_v4.octets());
    octets[15] = 1;
    let host = Ipv6Addr::from(octets);
    octets[15] = 2;
    let guest = Ipv6Addr::from(octets);
    Ok(LocalAddrs6 { host, guest })
}

/// vmd's default MAC for interface `ifidx` (from 0) of a VM with no
/// `lladdr`: `fe:e1:bb:dX:rr:rr`, `X = (ifidx + 1) & 0xf` (so it wraps to 0
/// at the 16th interface), the last two octets `random`'s low byte then its
/// high byte (vmd: `rng`, `rng >> 8` of one `arc4random()`). The caller
/// supplies the randomness. `0xfe` has the locally-administered bit set and
/// the multicast bit clear.
pub fn default_guest_mac(ifidx: u32, random: u16) -> MacAddr {
    let [lo, hi] = random.to_le_bytes();
    let x = (ifidx.wrapping_add(1) & 0xf) as u8;
    MacAddr([0xfe, 0xe1, 0xbb, 0xd0 | x, lo, hi])
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn local_addrs_default_prefix_vm5_matches_vmd() {
        let a = local_addrs(DEFAULT, 10, 5, 0).unwrap();
        assert_eq!(a.host, v4("100.64.5.2"));
        assert_eq!(a.guest, v4("100.64.5.3"));
        let b = local_addrs(DEFAULT, 10, 5, 1).unwrap();
        assert_eq!(b.host, v4("100.64.5.4"));
        assert_eq!(b.guest, v4("100.64.5.5"));
    }

    #[test]
    fn local_addrs_various_ids_and_indexes() {
        let cases = [
            (DEFAULT, 10, 1, 0, "100.64.1.2", "100.64.1.3"),
            (DEFAULT, 10, 255, 3, "100.64.255.8", "100.64.255.9"),
            (DEFAULT, 10, 256, 0, "100.65.0.2", "100.65.0.3"),
            (
                DEFAULT,
                10,
                16383,
                126,
                "100.127.255.254",
                "100.127.255.255",
            ),
            (v4("10.0.0.0"), 8, 300, 2, "10.1.44.6", "10.1.44.7"),
            (v4("192.168.0.0"), 16, 42, 0, "192.168.42.2", "192.168.42.3"),
            (v4("192.168.0.0"), 23, 1, 0, "192.168.1.2", "192.168.1.3"),
        ];
        for (prefix, len, id, idx, host, guest) in cases {
            let a = local_addrs(prefix, len, id, idx).unwrap();
            assert_eq!(
                (a.host, a.guest),
                (v4(host), v4(guest)),
                "{prefix}/{len} vm {id} if {idx}"
            );
        }
    }

    #[test]
    fn local_addrs_outside_prefix_errors() {
        // A /24 has no room for any VM block; vm 2 certainly not.
        let err = local_addrs(v4("192.168.7.0"), 24, 2, 0).unwrap_err();
        assert_eq!(
            err,
            AddrError::OutsidePrefix {
                vm_id: 2,
                ifidx: 0,
                prefix: v4("192.168.7.0"),
                len: 24
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("vm id 2") && msg.contains("192.168.7.0/24"),
            "{msg}"
        );
        // A /23 holds vm 1 only.
        assert!(local_addrs(v4("192.168.6.0"), 23, 2, 0).is_err());
        // The default /10 holds vm ids below 2^14.
        assert!(local_addrs(DEFAULT, 10, 16384, 0).is_err());
        assert!(local_addrs(DEFAULT, 10, u32::MAX, 0).is_err());
    }

    #[test]
    fn local_addrs_bad_inputs_error() {
        assert_eq!(
            local_addrs(DEFAULT, 10, 1, 127),
            Err(AddrError::TooManyInterfaces {
                vm_id: 1,
                ifidx: 127
            })
        );
        assert_eq!(local_addrs(DEFAULT, 10, 0, 0), Err(AddrError::ZeroVmId));
        assert!(matches!(
            local_addrs(DEFAULT, 33, 1, 0),
            Err(AddrError::PrefixLen { len: 33, .. })
        ));
        assert!(matches!(
            local_addrs(v4("100.64.0.1"), 10, 1, 0),
            Err(AddrError::PrefixHostBits { .. })
        ));
    }

    #[test]
    fn local_addrs_zero_length_prefix_uses_whole_space() {
        let a = local_addrs(Ipv4Addr::UNSPECIFIED, 0, 0x00ff_ffff, 0).unwrap();
        assert_eq!(a.guest, v4("255.255.255.3"));
    }

    #[test]
    fn local_addrs6_embeds_guest_v4_like_vmd() {
        let prefix: Ipv6Addr = "fd76:6d64:7273::".parse().unwrap();
        let a = local_addrs6(prefix, 48, v4("100.64.5.3")).unwrap();
        assert_eq!(
            a.host,
            "fd76:6d64:7273:0:6440:503:0:1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            a.guest,
            "fd76:6d64:7273:0:6440:503:0:2".parse::<Ipv6Addr>().unwrap()
        );
        let b = local_addrs6("fd00::".parse().unwrap(), 8, v4("100.64.1.5")).unwrap();
        assert_eq!(b.host, "fd00::6440:105:0:1".parse::<Ipv6Addr>().unwrap());
        let c = local_addrs6("2001:db8:1:2::".parse().unwrap(), 64, v4("10.0.0.3")).unwrap();
        assert_eq!(
            c.guest,
            "2001:db8:1:2:a00:3:0:2".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn local_addrs6_bad_prefix_errors() {
        let long: Ipv6Addr = "fd00::".parse().unwrap();
        assert!(matches!(
            local_addrs6(long, 65, v4("100.64.1.3")),
            Err(AddrError::Prefix6Len { len: 65, .. })
        ));
        assert!(matches!(
            local_addrs6(long, 200, v4("100.64.1.3")),
            Err(AddrError::Prefix6Len { .. })
        ));
        let dirty: Ipv6Addr = "fd00::1".parse().unwrap();
        assert!(matches!(
            local_addrs6(dirty, 48, v4("100.64.1.3")),
            Err(AddrError::Prefix6HostBits { .. })
        ));
        assert!(local_addrs6(Ipv6Addr::UNSPECIFIED, 0, v4("100.64.1.3")).is_ok());
    }

    #[test]
    fn default_guest_mac_encodes_index_and_random() {
        assert_eq!(
            default_guest_mac(0, 0x72dc).to_string(),
            "fe:e1:bb:d1:dc:72"
        );
        assert_eq!(default_guest_mac(1, 0).0, [0xfe, 0xe1, 0xbb, 0xd2, 0, 0]);
        assert_eq!(
            default_guest_mac(14, 0xffff).0,
            [0xfe, 0xe1, 0xbb, 0xdf, 0xff, 0xff]
        );
        // The 16th interface wraps to X = 0, as in vmd.
        assert_eq!(default_guest_mac(15, 1).0[3], 0xd0);
        assert_eq!(default_guest_mac(u32::MAX, 1).0[3], 0xd0);
        // Unicast and locally administered.
        let mac = default_guest_mac(3, 0x1234);
        assert!(!mac.is_group());
        assert_eq!(mac.0[0] & 0x02, 0x02);
    }
}
