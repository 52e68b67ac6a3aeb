//! OpenBSD routing domains on Linux: routing domain N (N > 0) is the VRF
//! device `rdomain<N>` on routing table 1000 + N, created by vmd when
//! missing (and brought up, with a log line saying so). Routing domain 0
//! is the default domain: nothing to do.
//!
//! What joins it follows vmd's priv code: a switch's `rdomain` applies to
//! the switch's bridge, an interface's own `rdomain` to a tap that is on
//! no switch (a bridge port has no L3 of its own on Linux, and a link has
//! one master only).

use std::io;

use super::{bridge, netlink, CreatedLink};

/// Routing table of routing domain N: `TABLE_BASE + N`. N itself cannot
/// be the table: Linux reserves tables 253 (default), 254 (main) and 255
/// (local), all within vm.conf's 0..=255.
pub const TABLE_BASE: u32 = 1000;

/// The highest routing domain, as vm.conf(5) allows (and its parser
/// checks); past it a VRF's name would not fit IFNAMSIZ anyway.
pub const MAX_RDOMAIN: u32 = 255;

/// Why a routing domain's VRF cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum VrfError {
    /// The kernel refused the VRF type (EOPNOTSUPP, `ip link` says
    /// "Unknown device type"): built without CONFIG_NET_VRF. The errno is
    /// part of this message rather than a cause of its own, so the hint
    /// comes last.
    #[error(
        "cannot create VRF {vrf} for rdomain {rdomain}: {errno} — this kernel has no VRF support (CONFIG_NET_VRF)"
    )]
    Unsupported {
        /// The VRF's name.
        vrf: String,
        /// The routing domain.
        rdomain: u32,
        /// EOPNOTSUPP as the kernel said it.
        errno: io::Error,
    },
    /// A routing domain past [`MAX_RDOMAIN`].
    #[error("rdomain {rdomain} is out of range (0 to {MAX_RDOMAIN})")]
    OutOfRange {
        /// The routing domain.
        rdomain: u32,
    },
    /// Step `what` failed.
    #[error("cannot {what} VRF {vrf} for rdomain {rdomain}")]
    Failed {
        /// The step.
        what: &'static str,
        /// The VRF's name.
        vrf: String,
        /// The routing domain.
        rdomain: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The VRF device of routing domain `rdomain`.
pub fn vrf_name(rdomain: u32) -> String {
    format!("rdomain{rdomain}")
}

/// The routing table of routing domain `rdomain` (at most
/// [`MAX_RDOMAIN`]; saturating past it, where [`ensure_vrf`] refuses).
pub fn vrf_table(rdomain: u32) -> u32 {
    TABLE_BASE.saturating_add(rdomain)
}

/// Makes sure the VRF of `rdomain` exists and returns its index; `None`
/// for rdomain 0 (the default domain). A VRF created now is brought up,
/// logged and pushed onto `created` (as soon as it exists, so a later
/// failure does not lose it). An existing link of that name is used as
/// it is.
pub fn ensure_vrf(rdomain: u32, created: &mut Vec<CreatedLink>) -> Result<Option<u32>, VrfError> {
    if rdomain == 0 {
        return Ok(None);
    }
    if rdomain > MAX_RDOMAIN {
        return Err(VrfError::OutOfRange { rdomain });
    }
    let vrf = vrf_name(rdomain);
    let table = vrf_table(rdomain);
    let failed = |what, source| VrfError::Failed {
        what,
        vrf: vrf.clone(),
        rdomain,
        source,
    };
    let made = bridge::index_of(&vrf).is_none()
        && match netlink::create_vrf(&vrf, table) {
            Ok(()) => true,
            // Made meanwhile by someone else (another VM starting): theirs.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => false,
            Err(errno) if errno.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                return Err(VrfError::Unsupported {
                    vrf,
                    rdomain,
                    errno,
                })
            }
            Err(e) => return Err(failed("create", e)),
        };
    if made {
        created.push(CreatedLink::Vrf {
            name: vrf.clone(),
            rdomain,
        });
    }
    let index = bridge::index_of(&vrf)
        .ok_or_else(|| failed("find", io::Error::from_raw_os_error(libc::ENODEV)))?;
    if made {
        netlink::set_up(index, true).map_err(|e| failed("bring up", e))?;
        log::info!("created VRF {vrf} (table {table}) for rdomain {rdomain}");
    }
    Ok(Some(index))
}
