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
//!   becomes a port of the switch's bridge, created if missing (and then
//!   brought up, or left down for a `down` switch).
//! - `rdomain N` (see [`rdomain`]): a switch's puts its bridge into VRF
//!   `rdomain<N>`, an interface's own puts its tap there when the
//!   interface is on no switch; on a switch it cannot apply (a bridge
//!   port has no L3 of its own, nor a second master) and is logged.
//! - Taps are not persistent: they vanish with the last fd, so whatever
//!   way a VM ends (or fails to start), its taps go with it. Bridges and
//!   VRFs vmd creates stay; vmd records them ([`CreatedLink`]) and
//!   `vmctl reset switches` deletes those left without members
//!   ([`delete_unused`]).

pub mod bridge;
pub mod netlink;
pub mod rdomain;

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
    /// `rdomain N`: the tap joins VRF `rdomain<N>` (on no switch only).
    pub rdomain: Option<u32>,
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
            rdomain: None,
        }
    }
}

/// What [`open_nic`] needs about the switch an interface joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch<'a> {
    /// The bridge device (created if missing).
    pub bridge: &'a str,
    /// The switch's `rdomain`: the VRF its bridge joins.
    pub rdomain: Option<u32>,
    /// `up` (default) or `down`: what a bridge vmd creates is left at.
    pub up: bool,
}

/// A link vmd created (and so may delete once nothing uses it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreatedLink {
    /// A switch's bridge.
    Bridge {
        /// Its name.
        name: String,
    },
    /// The VRF of a routing domain.
    Vrf {
        /// Its name (`rdomain<N>`).
        name: String,
        /// The routing domain.
        rdomain: u32,
    },
}

impl CreatedLink {
    /// The link's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Bridge { name } | Self::Vrf { name, .. } => name,
        }
    }
}

impl std::fmt::Display for CreatedLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bridge { name } => write!(f, "bridge {name} vmd created for a switch"),
            Self::Vrf { name, rdomain } => {
                write!(f, "VRF {name} vmd created for rdomain {rdomain}")
            }
        }
    }
}

/// The links under link `index` (a bridge's ports, a VRF's members),
/// sorted: what `lower_*` in /sys/class/net/<name>/ lists, asked of
/// rtnetlink so that it holds in whatever network namespace vmd runs
/// (sysfs shows the namespace it was mounted in).
pub fn members(index: u32) -> std::io::Result<Vec<String>> {
    let mut names = netlink::links_with_master(index)?;
    names.sort();
    Ok(names)
}

/// Deletes every link of `links` that has no members left (see
/// [`members`]), bridges first (a bridge in a VRF is a member of
/// it), each with a log line; returns those kept (still used, or not
/// deletable), with a log line each. A link gone already is dropped.
pub fn delete_unused(mut links: Vec<CreatedLink>) -> Vec<CreatedLink> {
    links.sort_by_key(|l| matches!(l, CreatedLink::Vrf { .. }));
    let mut kept = Vec::new();
    for link in links {
        let Some(index) = bridge::index_of(link.name()) else {
            log::info!("{link} is gone already");
            continue;
        };
        match members(index) {
            Ok(members) if members.is_empty() => match netlink::delete_link(index) {
                Ok(()) => log::info!("deleted {link}"),
                Err(e) => {
                    log::warn!("kept {link}: cannot delete it: {e}");
                    kept.push(link);
                }
            },
            Ok(members) => {
                log::info!("kept {link}: still used by {}", members.join(", "));
                kept.push(link);
            }
            Err(e) => {
                log::warn!("kept {link}: cannot list what uses it: {e}");
                kept.push(link);
            }
        }
    }
    kept
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
    /// The VRF of a routing domain cannot be had.
    #[error("interface {index} ({name})")]
    Vrf {
        /// Interface index.
        index: usize,
        /// The tap's name.
        name: String,
        /// What failed.
        #[source]
        source: rdomain::VrfError,
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

/// Creates and configures the tap of interface `index`, joining `switch`
/// if given, `random` giving the generated MAC's random octets. Bridges
/// and VRFs created on the way are pushed onto `created` as soon as they
/// exist, whether or not the whole succeeds (they are kept either way).
pub fn open_nic(
    ctx: &NetContext<'_>,
    index: usize,
    nic: &NicSpec,
    switch: Option<&Switch<'_>>,
    random: u16,
    created: &mut Vec<CreatedLink>,
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
    match (nic.rdomain, switch) {
        (None | Some(0), _) => {}
        (Some(asked), Some(switch)) => {
            let applies = match switch.rdomain {
                Some(n) => format!("the switch's rdomain {n} applies to it"),
                None => "the switch has no rdomain".into(),
            };
            log::warn!(
                "vm '{}': interface {index} ({name}): rdomain {asked} not applied: on Linux a \
                 port of bridge {} has no routing domain of its own; {applies}",
                ctx.vm_name,
                switch.bridge
            );
        }
        // Before the addresses: enslaving to a VRF flushes a link's IPv6
        // addresses (unless keep_addr_on_down), and the routes of those
        // added afterwards go to the VRF's table.
        (Some(rdomain), None) => {
            let vrf = rdomain::ensure_vrf(rdomain, created).map_err(|source| NetError::Vrf {
                index,
                name: name.clone(),
                source,
            })?;
            if let Some(vrf) = vrf {
                let what = format!("put it into VRF {}", rdomain::vrf_name(rdomain));
                netlink::set_master(ifindex, vrf).map_err(|e| configure(&what, e))?;
            }
        }
    }
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
    if let Some(switch) = switch {
        join_switch(switch, ifindex, created).map_err(|e| match e {
            JoinError::Vrf(source) => NetError::Vrf {
                index,
                name: name.clone(),
                source,
            },
            JoinError::Step(what, e) => configure(&what, e),
        })?;
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

/// Why [`join_switch`] failed: the switch's VRF, or a step on the bridge.
enum JoinError {
    Vrf(rdomain::VrfError),
    Step(String, std::io::Error),
}

/// Makes `switch`'s bridge (if missing: then up or down as the switch
/// says), puts it into the switch's VRF (every time: a bridge already
/// there stays), and adds tap `port` to it.
fn join_switch(
    switch: &Switch<'_>,
    port: u32,
    created: &mut Vec<CreatedLink>,
) -> Result<(), JoinError> {
    let bridge = switch.bridge;
    let step = |what: String| move |e| JoinError::Step(what, e);
    if bridge::ensure(bridge).map_err(step(format!("create bridge {bridge}")))? {
        created.push(CreatedLink::Bridge {
            name: bridge.to_string(),
        });
        log::info!("created bridge {bridge} for a switch");
        if switch.up {
            let b = bridge::index_of(bridge).ok_or_else(|| {
                JoinError::Step(
                    format!("find bridge {bridge}"),
                    std::io::Error::from_raw_os_error(libc::ENODEV),
                )
            })?;
            netlink::set_up(b, true).map_err(step(format!("bring {bridge} up")))?;
        }
    }
    if let Some(rdomain) = switch.rdomain {
        if let Some(vrf) = rdomain::ensure_vrf(rdomain, created).map_err(JoinError::Vrf)? {
            let what = format!(
                "put bridge {bridge} into VRF {}",
                rdomain::vrf_name(rdomain)
            );
            let b = bridge::index_of(bridge).ok_or_else(|| {
                JoinError::Step(
                    what.clone(),
                    std::io::Error::from_raw_os_error(libc::ENODEV),
                )
            })?;
            netlink::set_master(b, vrf).map_err(step(what))?;
        }
    }
    bridge::add_port(bridge, port).map_err(step(format!("add it to bridge {bridge}")))
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
