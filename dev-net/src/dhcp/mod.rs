//! The built-in DHCP/BOOTP server of a local interface, after vmd's dhcp.c:
//! one guest, one address, no state machine. The net device hands it every
//! frame the guest sends; it answers the guest's own BOOTP/DHCP requests and
//! returns `None` for everything else.
//!
//! - `request.rs`: frame → validated `Request` (every header and
//!   option length checked), or ignored / malformed.
//! - `reply.rs`: the reply frame.
//! - `wire.rs`: constants and checksums.
//!
//! Answers: DISCOVER → OFFER; REQUEST → ACK when it asks for the guest's
//! address (option 50, else `ciaddr`, else no address at all), NAK when it
//! asks for another, nothing when it names another server (option 54);
//! INFORM → ACK without lease; DECLINE and RELEASE → nothing; no message
//! type → a BOOTP reply. The lease is infinite; options: message type,
//! server id (the host), lease time, subnet mask, router and DNS server
//! (the host), host name and bootfile when configured.
//!
//! Where we part from vmd's dhcp.c: vmd drops requests with `ciaddr` set
//! (renewals) and with a `file` name, NAKs RELEASE/DECLINE/INFORM and
//! replies to an address ignoring the BROADCAST flag; we answer renewals,
//! stay silent on RELEASE/DECLINE, answer INFORM, and follow RFC 2131
//! §4.1 for the destination. vmd's NAK carries the full option set; ours
//! only what RFC 2131 table 3 allows. vmd's source MAC is the guest's MAC
//! plus one; ours is the configured host MAC.

mod reply;
mod request;
mod wire;

#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;

use crate::addr::{LocalAddrs, LOCAL_NETMASK};
use crate::guest_frames::FrameFilter;
use crate::mac::MacAddr;
use reply::ReplyKind;
use request::{Kind, Rejected};
use wire::msg;

/// Longest host name sent (option 12): a DNS name's 253 characters.
pub const MAX_HOSTNAME_LEN: usize = 253;
/// Longest bootfile: the BOOTP `file` field less its terminating NUL.
pub const MAX_BOOTFILE_LEN: usize = wire::FILE_LEN - 1;

/// What the server hands out on one local interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// The guest's MAC: only frames from it, asking for it, are answered.
    pub guest_mac: MacAddr,
    /// The source MAC of replies (the tap's, locally administered).
    pub host_mac: MacAddr,
    /// The address handed to the guest.
    pub guest_addr: Ipv4Addr,
    /// The host's address: server id, router and DNS server.
    pub host_addr: Ipv4Addr,
    /// The subnet mask handed out (255.255.255.254 on a local interface).
    pub netmask: Ipv4Addr,
    /// Host name (option 12); vmd sends the VM name with `boot device net`.
    pub hostname: Option<String>,
    /// Boot file (`file` field and option 67); vmd sends "auto_install"
    /// with `boot device net`.
    pub bootfile: Option<String>,
}

impl DhcpConfig {
    /// The config of a local interface: its /31 addresses and mask, no
    /// host name, no bootfile.
    pub fn local(guest_mac: MacAddr, host_mac: MacAddr, addrs: &LocalAddrs) -> DhcpConfig {
        DhcpConfig {
            guest_mac,
            host_mac,
            guest_addr: addrs.guest,
            host_addr: addrs.host,
            netmask: LOCAL_NETMASK,
            hostname: None,
            bootfile: None,
        }
    }
}

/// A [`DhcpConfig`] the server refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhcpConfigError {
    /// The guest's MAC is multicast (or broadcast) or all zero.
    #[error("guest mac {0} is not a unicast address")]
    GuestMac(MacAddr),
    /// The host MAC is not a locally administered unicast address, or is
    /// the guest's.
    #[error("host mac {0} is not a locally administered unicast address other than the guest's")]
    HostMac(MacAddr),
    /// The netmask is not contiguous ones then zeros.
    #[error("netmask {0} is not contiguous")]
    Netmask(Ipv4Addr),
    /// Host and guest are not two distinct unicast addresses of one subnet.
    #[error(
        "host {host} and guest {guest} are not two addresses of one subnet with mask {netmask}"
    )]
    Addresses {
        /// The host address.
        host: Ipv4Addr,
        /// The guest address.
        guest: Ipv4Addr,
        /// The mask.
        netmask: Ipv4Addr,
    },
    /// The host name is empty, too long or not a host name.
    #[error("host name {0:?} is not a valid host name of at most {MAX_HOSTNAME_LEN} characters")]
    Hostname(String),
    /// The bootfile is empty, too long or holds a NUL.
    #[error("bootfile {0:?} is empty, holds a NUL or is longer than {MAX_BOOTFILE_LEN} bytes")]
    Bootfile(String),
}

/// Whether `name` may be sent as a host name: 1 to 253 characters, letters,
/// digits, '-', '_' and '.', no empty label (vmd: `res_hnok`). A caller
/// with a VM name that is not sends none, as vmd.
pub fn is_valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HOSTNAME_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn check_config(c: &DhcpConfig) -> Result<(), DhcpConfigError> {
    if c.guest_mac.is_group() || c.guest_mac.0 == [0; 6] {
        return Err(DhcpConfigError::GuestMac(c.guest_mac));
    }
    // The U/L bit (IEEE 802-2014 §8.2): a made-up MAC must be local.
    let local = c.host_mac.0[0] & 0x02 != 0;
    if c.host_mac.is_group() || !local || c.host_mac == c.guest_mac {
        return Err(DhcpConfigError::HostMac(c.host_mac));
    }
    let mask = u32::from(c.netmask);
    if mask.leading_ones() + mask.trailing_zeros() != 32 {
        return Err(DhcpConfigError::Netmask(c.netmask));
    }
    let (host, guest) = (u32::from(c.host_addr), u32::from(c.guest_addr));
    let special = |a: Ipv4Addr| a.is_unspecified() || a.is_broadcast() || a.is_multicast();
    if host == guest || host & mask != guest & mask || special(c.host_addr) || special(c.guest_addr)
    {
        return Err(DhcpConfigError::Addresses {
            host: c.host_addr,
            guest: c.guest_addr,
            netmask: c.netmask,
        });
    }
    if let Some(name) = &c.hostname {
        if !is_valid_hostname(name) {
            return Err(DhcpConfigError::Hostname(name.clone()));
        }
    }
    if let Some(file) = &c.bootfile {
        if file.is_empty() || file.len() > MAX_BOOTFILE_LEN || file.contains('\0') {
            return Err(DhcpConfigError::Bootfile(file.clone()));
        }
    }
    Ok(())
}

/// Counters of one server, for the monitor and vmctl.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DhcpStats {
    /// DHCPOFFERs sent.
    pub offers: u64,
    /// DHCPACKs sent to REQUESTs.
    pub acks: u64,
    /// DHCPACKs sent to INFORMs.
    pub inform_acks: u64,
    /// DHCPNAKs sent.
    pub naks: u64,
    /// BOOTP replies sent.
    pub bootp_replies: u64,
    /// Frames that are not a request this server answers (other traffic,
    /// other MACs, RELEASE, DECLINE, requests naming another server).
    pub ignored: u64,
    /// Frames that are broken: truncated or inconsistent headers, bad IHL,
    /// options running past the end, no magic cookie, bad option lengths.
    pub malformed: u64,
}

/// The DHCP/BOOTP server of one guest interface.
///
/// # Invariants
/// The config passed [`DhcpServer::new`]'s checks: unicast MACs, host and
/// guest in one subnet, hostname and bootfile short enough that each fits
/// one option and every reply one 1500-byte frame (under 700 bytes of IP;
/// replies with no host name and bootfile stay within RFC 2131's 576).
#[derive(Debug)]
pub struct DhcpServer {
    config: DhcpConfig,
    stats: DhcpStats,
}

impl DhcpServer {
    /// A server for `config`, after checking it.
    pub fn new(config: DhcpConfig) -> Result<DhcpServer, DhcpConfigError> {
        check_config(&config)?;
        Ok(DhcpServer {
            config,
            stats: DhcpStats::default(),
        })
    }

    /// The config served.
    pub fn config(&self) -> &DhcpConfig {
        &self.config
    }

    /// The counters so far.
    pub fn stats(&self) -> DhcpStats {
        self.stats
    }

    /// Takes a whole Ethernet frame from the guest; returns the reply frame
    /// to deliver to the guest if it is a request this server answers.
    pub fn handle(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        let req = match request::parse(frame, &self.config) {
            Ok(req) => req,
            Err(Rejected::Ignored(_)) => {
                self.stats.ignored += 1;
                return None;
            }
            Err(Rejected::Malformed(why)) => {
                self.stats.malformed += 1;
                log::debug!("dhcp: malformed frame from the guest: {why}");
                return None;
            }
        };
        let Some(kind) = self.decide(&req) else {
            self.stats.ignored += 1;
            return None;
        };
        let counter = match kind {
            ReplyKind::Offer => &mut self.stats.offers,
            ReplyKind::Ack => &mut self.stats.acks,
            ReplyKind::InformAck => &mut self.stats.inform_acks,
            ReplyKind::Nak => &mut self.stats.naks,
            ReplyKind::Bootp => &mut self.stats.bootp_replies,
        };
        *counter += 1;
        Some(reply::build(&self.config, &req, kind))
    }

    /// The answer to a valid request, `None` for none.
    fn decide(&self, req: &request::Request) -> Option<ReplyKind> {
        let t = match req.kind {
            Kind::Bootp => return Some(ReplyKind::Bootp),
            Kind::Dhcp(t) => t,
        };
        match t {
            msg::DISCOVER => Some(ReplyKind::Offer),
            msg::REQUEST => {
                if req.server_id.is_some_and(|s| s != self.config.host_addr) {
                    // The client took another server's offer.
                    return None;
                }
                let ciaddr = Some(req.ciaddr).filter(|a| !a.is_unspecified());
                match req.requested.or(ciaddr) {
                    Some(a) if a != self.config.guest_addr => Some(ReplyKind::Nak),
                    _ => Some(ReplyKind::Ack),
                }
            }
            msg::INFORM => Some(ReplyKind::InformAck),
            msg::DECLINE => {
                log::info!(
                    "dhcp: guest {} declined {}: address in use on its side",
                    self.config.guest_mac,
                    self.config.guest_addr
                );
                None
            }
            // The address stays the guest's; a RELEASE needs no answer.
            msg::RELEASE => None,
            // OFFER, ACK and NAK are server messages.
            _ => None,
        }
    }
}

/// The device's hook: the server answers the guest's DHCP/BOOTP requests;
/// the requests themselves do not go on to the tap.
impl FrameFilter for DhcpServer {
    /// IPv4 UDP to port 67, or a start too short to tell.
    fn wants(&self, start: &[u8]) -> bool {
        let eth = wire::ETH_HDR_LEN;
        if wire::be16(start, 12) != Some(wire::ETHERTYPE_IPV4) {
            return false;
        }
        let (Some(&ver_ihl), Some(&proto)) = (start.get(eth), start.get(eth + 9)) else {
            return true;
        };
        if proto != wire::IPPROTO_UDP {
            return false;
        }
        let dst_port = eth + usize::from(ver_ihl & 0x0f) * 4 + 2;
        wire::be16(start, dst_port).is_none_or(|p| p == wire::SERVER_PORT)
    }

    fn on_guest_frame(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        self.handle(frame)
    }
}
