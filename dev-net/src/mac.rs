//! Ethernet (MAC) addresses: parsing `fe:e1:bb:d1:23:45`, formatting, and
//! the group bit.

use std::fmt;
use std::str::FromStr;

/// Bytes of a MAC address.
pub const MAC_LEN: usize = 6;

/// A 48-bit Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; MAC_LEN]);

/// A string that is not six colon-separated hex octets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a MAC address (six hex octets separated by ':')")]
pub struct MacParseError(pub String);

impl MacAddr {
    /// The broadcast address ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: Self = Self([0xff; MAC_LEN]);

    /// The address in the first six bytes of `bytes`, if there are six.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.get(..MAC_LEN)?.try_into().ok().map(Self)
    }

    /// Whether this is a group (multicast or broadcast) address: the I/G
    /// bit, the least significant bit of the first octet (IEEE 802-2014
    /// §8.2).
    pub fn is_group(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// The octets.
    pub fn octets(&self) -> [u8; MAC_LEN] {
        self.0
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, MacParseError> {
        let err = || MacParseError(s.to_owned());
        let mut out = [0u8; MAC_LEN];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.is_empty() || part.len() > 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parse_roundtrips_through_display() {
        let mac: MacAddr = "fe:e1:bb:d1:23:45".parse().unwrap();
        assert_eq!(mac.0, [0xfe, 0xe1, 0xbb, 0xd1, 0x23, 0x45]);
        assert_eq!(mac.to_string(), "fe:e1:bb:d1:23:45");
        assert_eq!(
            "0:1:2:A:b:C".parse::<MacAddr>().unwrap().to_string(),
            "00:01:02:0a:0b:0c"
        );
    }

    #[test]
    fn mac_parse_bad_strings_fail() {
        for bad in [
            "",
            "fe:e1:bb:d1:23",
            "fe:e1:bb:d1:23:45:67",
            "fe:e1:bb:d1:23:4g",
            "fe:e1:bb:d1::45",
            "fee:1:bb:d1:23:45",
            "fe-e1-bb-d1-23-45",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_group_bit_is_first_octet_lsb() {
        assert!(MacAddr::BROADCAST.is_group());
        assert!("01:00:5e:00:00:01".parse::<MacAddr>().unwrap().is_group());
        assert!(!"fe:e1:bb:d1:23:45".parse::<MacAddr>().unwrap().is_group());
        assert_eq!(MacAddr::from_slice(&[1, 2, 3, 4, 5]), None);
    }
}
