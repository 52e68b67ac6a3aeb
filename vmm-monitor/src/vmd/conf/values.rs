//! Checking and converting option values: names, sizes, addresses, owners.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::errors::ErrorKind;
use super::model::{Ipv4Net, Ipv6Net, MacAddr, Owner};
use crate::config::{parse_size, MAX_MEMORY, MIN_MEMORY};

/// Longest VM name: vmd's VMM_MAX_NAME_LEN is 64 bytes with the NUL.
pub const MAX_NAME_LEN: usize = 63;
/// Longest Linux interface name (IFNAMSIZ less the NUL).
pub const MAX_IFNAME_LEN: usize = 15;
/// Longest `local prefix`: each VM takes a /24 worth of addresses
/// (vm id << 8), so a longer prefix leaves no room.
pub const MAX_LOCAL_PREFIX_LEN: u8 = 24;
/// Longest `local inet6` prefix: interfaces take /64s out of it.
pub const MAX_INET6_PREFIX_LEN: u8 = 64;
/// Granularity of guest memory: vmd rounds `memory` down to whole MiB.
const MEMORY_UNIT: u64 = 1 << 20;

/// Checks a VM or switch name as vmctl does: 1 to 63 characters among
/// letters, digits, `.`, `-` and `_`, not starting with `.`, `-` or `_`.
pub fn check_name(name: &str) -> Result<(), ErrorKind> {
    let bad = |why| {
        Err(ErrorKind::BadName {
            name: name.into(),
            why,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 63 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return bad("only letters, digits, '.', '-' and '_' are allowed");
    }
    if name.starts_with(['.', '-', '_']) {
        return bad("must not start with '.', '-' or '_'");
    }
    Ok(())
}

/// Checks a VM name: [`check_name`], and not all digits (vmctl reads an
/// all-digit argument as a VM id, so such a VM could not be named).
pub fn check_vm_name(name: &str) -> Result<(), ErrorKind> {
    check_name(name)?;
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ErrorKind::BadName {
            name: name.into(),
            why: "all digits, which vmctl reads as a VM id",
        });
    }
    Ok(())
}

/// Checks a Linux network interface name.
pub fn check_ifname(name: &str) -> Result<(), ErrorKind> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(ErrorKind::BadIfName(name.into()))
    }
}

/// Parses a decimal number within `min..=max`.
pub fn number(text: &str, what: &'static str, min: u64, max: u64) -> Result<u64, ErrorKind> {
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) && text.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(ErrorKind::BadNumber {
            what,
            text: text.into(),
            min,
            max,
        }),
    }
}

/// Parses `memory`: a size rounded down to whole MiB, within the monitor's limits.
pub fn memory(text: &str) -> Result<u64, ErrorKind> {
    let bytes = parse_size(text).map_err(ErrorKind::BadSize)?;
    let value = bytes / MEMORY_UNIT * MEMORY_UNIT;
    if !(MIN_MEMORY..=MAX_MEMORY).contains(&value) {
        return Err(ErrorKind::MemoryRange {
            value,
            min: MIN_MEMORY,
            max: MAX_MEMORY,
        });
    }
    Ok(value)
}

/// Parses a unicast Ethernet address `xx:xx:xx:xx:xx:xx`.
pub fn mac(text: &str) -> Result<MacAddr, ErrorKind> {
    let bad = || ErrorKind::BadMac(text.into());
    let mut bytes = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut bytes {
        let part = parts.next().ok_or_else(bad)?;
        if part.is_empty() || part.len() > 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    // Bit 0 of the first octet marks a group address; all zeros is no address.
    if parts.next().is_some() || bytes[0] & 1 != 0 || bytes == [0; 6] {
        return Err(bad());
    }
    Ok(MacAddr(bytes))
}

/// Splits `addr/len`.
fn split_prefix(text: &str, max_len: u8) -> Result<(&str, u8), ErrorKind> {
    let bad = |why| ErrorKind::BadPrefix {
        text: text.into(),
        why,
    };
    let (addr, len) = text
        .split_once('/')
        .ok_or_else(|| bad("expected address/length"))?;
    let len: u8 = len.parse().map_err(|_| bad("bad prefix length"))?;
    if len > max_len {
        return Err(bad("prefix too long to number the VMs' interfaces"));
    }
    Ok((addr, len))
}

/// Parses `local prefix`: an IPv4 prefix of length 24 or less, host bits zero.
pub fn prefix4(text: &str) -> Result<Ipv4Net, ErrorKind> {
    let bad = |why| ErrorKind::BadPrefix {
        text: text.into(),
        why,
    };
    let (addr, len) = split_prefix(text, MAX_LOCAL_PREFIX_LEN)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    if u32::from(addr) & !mask != 0 {
        return Err(bad("host bits set"));
    }
    Ok(Ipv4Net { addr, len })
}

/// Parses `local inet6 prefix`: a ULA (fd00::/8) prefix of length 8 to 64,
/// host bits zero.
pub fn prefix6(text: &str) -> Result<Ipv6Net, ErrorKind> {
    let bad = |why| ErrorKind::BadPrefix {
        text: text.into(),
        why,
    };
    let (addr, len) = split_prefix(text, MAX_INET6_PREFIX_LEN)?;
    let addr: Ipv6Addr = addr.parse().map_err(|_| bad("not an IPv6 address"))?;
    let bits = u128::from(addr);
    if bits >> 120 != 0xfd || len < 8 {
        return Err(bad("not a unique local (fd00::/8) prefix"));
    }
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    if bits & !mask != 0 {
        return Err(bad("host bits set"));
    }
    Ok(Ipv6Net { addr, len })
}

/// Parses an owner: `user`, `user:group` or `:group` (names or numeric ids).
pub fn owner(text: &str) -> Result<Owner, ErrorKind> {
    let bad = || ErrorKind::BadOwner(text.into());
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    let (user, group) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    let user = if user.is_empty() { None } else { Some(user) };
    if user.is_none() && group.is_none() {
        return Err(bad());
    }
    if !user.is_none_or(valid) || !group.is_none_or(valid) {
        return Err(bad());
    }
    Ok(Owner {
        user: user.map(Into::into),
        group: group.map(Into::into),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_name_vmctl_rules_enforced() {
        assert!(check_name("web-1.example_a").is_ok());
        assert!(check_name(&"a".repeat(63)).is_ok());
        for bad in ["", "-a", ".a", "_a", "a b", "a/b", "é", &"a".repeat(64)] {
            assert!(
                matches!(check_name(bad), Err(ErrorKind::BadName { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn memory_rounded_to_mib_and_range_checked() {
        assert_eq!(memory("1G").unwrap(), 1 << 30);
        assert_eq!(memory("4.5M").unwrap(), 4 << 20);
        assert!(matches!(memory("1M"), Err(ErrorKind::MemoryRange { .. })));
        assert!(matches!(memory("2T"), Err(ErrorKind::MemoryRange { .. })));
        assert!(matches!(memory("1X"), Err(ErrorKind::BadSize(_))));
    }

    #[test]
    fn mac_unicast_accepted_others_refused() {
        assert_eq!(
            mac("fe:e1:bb:d1:2d:3E").unwrap().0,
            [0xfe, 0xe1, 0xbb, 0xd1, 0x2d, 0x3e]
        );
        for bad in [
            "fe:e1:bb:d1:2d",
            "fe:e1:bb:d1:2d:3e:00",
            "01:00:5e:00:00:01",
            "0:0:0:0:0:0",
            "fe:e1:bb:d1:2d:3g",
            "fe:e1:bb:d1:2d:123",
        ] {
            assert!(matches!(mac(bad), Err(ErrorKind::BadMac(_))), "{bad}");
        }
    }

    #[test]
    fn prefix4_valid_parsed_bad_refused() {
        assert_eq!(prefix4("10.0.0.0/8").unwrap().len, 8);
        for bad in [
            "10.0.0.0",
            "10.0.0.1/8",
            "10.0.0.0/25",
            "10.0.0/8",
            "10.0.0.0/x",
        ] {
            assert!(
                matches!(prefix4(bad), Err(ErrorKind::BadPrefix { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn prefix6_ula_parsed_others_refused() {
        assert_eq!(prefix6("fd12:3456::/48").unwrap().len, 48);
        for bad in ["2001:db8::/48", "fd12::1/48", "fd12::/96", "fd12::"] {
            assert!(
                matches!(prefix6(bad), Err(ErrorKind::BadPrefix { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn owner_forms_parsed_empty_refused() {
        assert_eq!(
            owner("root").unwrap(),
            Owner {
                user: Some("root".into()),
                group: None
            }
        );
        assert_eq!(
            owner(":wheel").unwrap(),
            Owner {
                user: None,
                group: Some("wheel".into())
            }
        );
        assert_eq!(owner("a:b").unwrap().group.as_deref(), Some("b"));
        for bad in ["", ":", "a:", "a b", "a:b:c"] {
            assert!(matches!(owner(bad), Err(ErrorKind::BadOwner(_))), "{bad}");
        }
    }

    #[test]
    fn check_ifname_linux_rules_enforced() {
        assert!(check_ifname("tap0").is_ok());
        assert!(check_ifname("a23456789012345").is_ok());
        for bad in ["", "a234567890123456", "a/b", "a:b", "a b"] {
            assert!(check_ifname(bad).is_err(), "{bad}");
        }
    }
}
