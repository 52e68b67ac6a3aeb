//! vmd's side of a VM's network interfaces: the tap of each, made and
//! configured here (vmd is the only process with the right to), then
//! handed down as an fd; dev-net serves it.
//!
//! - Names: a configured `interface tapN` name, else `vm<id>i<n>`
//!   (IFNAMSIZ allows 15 bytes; past that the kernel picks `vmtap%d`).
//!   Every tap's alias (`ip link` shows it) says whose it is:
//!   `vm<id>-if<n>-<vm name>`, followed by ` group <name>` for an
//!   interface (or switch) `group`: Linux has no named interface groups.
//! - `up` (default) or `down`; a `local` interface gets the host side of
//!   its /31 out of `local prefix` (and, with `local inet6`, the host side
//!   of its /96), as `dev_net::addr` computes them; a `switch` interface
//!   becomes a port of the switch's bridge, created if missing.
//! - Taps are not persistent: they vanish with the last fd, so whatever
//!   way a VM ends (or fails to start), its taps go with it.

pub mod bridge;
pub mod netlink;

use std::net::IpAddr;
use std::os::fd::OwnedFd;

use dev_net::addr::{local_addrs, local_addrs6, LocalAddrs};
use dev_net::mac::MacAddr;

use super::conf::{Ipv4Net, Ipv6Net};

/// One network interface of a VM, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    /// The tap's name; `None`: generated.
    pub tap: Option<String>,
    /// Addressed from the local prefix, served by the built-in DHCP.
    pub local: bool,
    /// The switch it joins (its bridge is found at start).
    pub switch: Option<String>,
    /// A fixed Ethernet address for the guest.
    pub lladdr: Option<[u8; 6]>,
    /// Frames from another source (or to another unicast) MAC are dropped.
    pub locked: bool,
    /// Brought up (default) or left down.
    pub up: bool,
    /// `group name`: Linux has no named interface groups, so the group is
    /// written into the tap's alias (`... group name`), where `ip link`
    /// shows it and scripts can match it.
    pub group: Option<String>,
}

impl NicSpec {
    /// An interface with nothing configured: generated name and MAC, up.
    pub fn plain() -> Self {
        Self {
            tap: None,
            local: false,
            switch: None,
            lladdr: None,
            locked: false,
            up: true,
            group: None,
        }
    }
}

/// A tap ready to hand down, with what dev-net needs to serve it.
#[derive(Debug)]
pub struct OpenNic {
    /// The tap's name.
    pub name: String,
    /// The tap fd (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).
    pub fd: OwnedFd,
    /// The guest's MAC.
    pub mac: MacAddr,
    /// `locked lladdr`.
    pub locked: bool,
    /// For a local interface: the addresses the DHCP server hands out.
    pub local: Option<LocalAddrs>,
    /// The tap's own Ethernet address.
    pub host_mac: [u8; 6],
}

/// Why an interface could not be set up; nothing of it stays.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap could not be created.
    #[error("interface {index}: cannot create tap {name}")]
    Tap {
        /// Interface index in the VM.
        index: usize,
        /// The name asked for.
        name: String,
        /// What failed.
        #[source]
        source: dev_net::tap::TapError,
    },
    /// A local address cannot be made.
    #[error("interface {index}: local address")]
    Addr {
        /// Interface index.
        index: usize,
        /// What failed.
        #[source]
        source: dev_net::addr::AddrError,
    },
    /// Configuring the tap failed.
    #[error("interface {index} ({name}): cannot {what}")]
    Configure {
        /// Interface index.
        index: usize,
        /// The tap's name.
        name: String,
        /// The step.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The generated tap name of interface `index` of VM `id`.
pub fn tap_name(id: u32, index: usize) -> String {
    let name = format!("vm{id}i{index}");
    if name.len() < libc::IFNAMSIZ {
        name
    } else {
        "vmtap%d".into()
    }
}

/// The alias of a tap: whose interface it is, and its group if any.
pub fn tap_alias(id: u32, index: usize, vm: &str, group: Option<&str>) -> String {
    match group {
        Some(group) => format!("vm{id}-if{index}-{vm} group {group}"),
        None => format!("vm{id}-if{index}-{vm}"),
    }
}

/// What a VM's interfaces are numbered and addressed from.
pub struct NetContext<'a> {
    /// vmd's id of the VM.
    pub vm_id: u32,
    /// The VM's name.
    pub vm_name: &'a str,
    /// `local prefix`.
    pub prefix: Ipv4Net,
    /// `local inet6`, if on.
    pub inet6: Option<Ipv6Net>,
}

/// Creates and configures the tap of interface `index`, joining `bridge`
/// if given (its switch's), `random` giving the generated MAC's random
/// octets.
pub fn open_nic(
    ctx: &NetContext<'_>,
    index: usize,
    nic: &NicSpec,
    bridge: Option<&str>,
    random: u16,
) -> Result<OpenNic, NetError> {
    let wanted = nic
        .tap
        .clone()
        .unwrap_or_else(|| tap_name(ctx.vm_id, index));
    let tap = dev_net::tap::Tap::create(&wanted).map_err(|source| NetError::Tap {
        index,
        name: wanted.clone(),
        source,
    })?;
    let name = match tap.kind() {
        dev_net::tap::TapKind::Tap { name } => name.clone(),
        dev_net::tap::TapKind::Datagram => wanted,
    };
    let configure = |what: &str, source| NetError::Configure {
        index,
        name: name.clone(),
        what: what.into(),
        source,
    };
    let ifindex = bridge::index_of(&name).ok_or_else(|| {
        configure(
            "find its index",
            std::io::Error::from_raw_os_error(libc::ENODEV),
        )
    })?;
    let alias = tap_alias(ctx.vm_id, index, ctx.vm_name, nic.group.as_deref());
    netlink::set_alias(ifindex, &alias).map_err(|e| configure("set its alias", e))?;
    let local = if nic.local {
        let addr_err = |source| NetError::Addr { index, source };
        let v4 = local_addrs(ctx.prefix.addr, ctx.prefix.len, ctx.vm_id, index as u32)
            .map_err(addr_err)?;
        netlink::add_address(
            ifindex,
            IpAddr::V4(v4.host),
            dev_net::addr::LOCAL_PREFIX_LEN,
        )
        .map_err(|e| configure(&format!("add address {}", v4.host), e))?;
        if let Some(net6) = ctx.inet6 {
            let v6 = local_addrs6(net6.addr, net6.len, v4.guest).map_err(addr_err)?;
            netlink::add_address(
                ifindex,
                IpAddr::V6(v6.host),
                dev_net::addr::LOCAL_PREFIX_LEN6,
            )
            .map_err(|e| configure(&format!("add address {}", v6.host), e))?;
        }
        Some(v4)
    } else {
        None
    };
    if let Some(bridge) = bridge {
        if bridge::ensure(bridge).map_err(|e| configure(&format!("create bridge {bridge}"), e))? {
            log::info!("created bridge {bridge} for a switch");
            if let Some(b) = bridge::index_of(bridge) {
                netlink::set_up(b, true)
                    .map_err(|e| configure(&format!("bring {bridge} up"), e))?;
            }
        }
        bridge::add_port(bridge, ifindex)
            .map_err(|e| configure(&format!("add it to bridge {bridge}"), e))?;
    }
    netlink::set_up(ifindex, nic.up).map_err(|e| configure("set it up", e))?;
    let mac = match nic.lladdr {
        Some(octets) => MacAddr(octets),
        None => dev_net::addr::default_guest_mac(index as u32, random),
    };
    let host_mac = hardware_address(&name).map_err(|e| configure("read its MAC", e))?;
    Ok(OpenNic {
        name,
        fd: tap.into_fd(),
        mac,
        locked: nic.locked,
        local,
        host_mac,
    })
}

/// The Ethernet address of interface `name` (SIOCGIFHWADDR).
fn hardware_address(name: &str) -> std::io::Result<[u8; 6]> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: socket() with constant arguments; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills the ifreq it is given.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR set the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests;
