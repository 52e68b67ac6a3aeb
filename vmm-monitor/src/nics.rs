//! A VM's network interfaces: each a virtio-net device served by its own
//! dev-net process on the tap vmd made.
//!
//! The monitor keeps each tap fd for its whole life and gives every built
//! VM (a reboot builds a new one) a new dev-net on a dup of it, so the tap
//! — and its addresses, bridge port and alias, which vmd set — outlives
//! reboots and goes only with the monitor. A dev-net that dies is
//! restarted on the same tap (`crate::supervisor`): the frames in flight
//! are lost, as a real NIC's would be, and nothing else.

use std::fs::File;
use std::os::fd::AsFd;

use ipc::monitor::NicAttach;

use crate::device_proc::sibling_binary;
use crate::supervisor::{Recipe, Supervisor};
use crate::vm::{Vm, VmError};

/// The virtio device ID of a network card (virtio 1.2 §5).
pub const VIRTIO_ID_NET: u32 = 1;
/// One receive and one transmit queue.
const NET_QUEUES: u16 = 2;
/// Most interfaces per VM (PCI slots on bus 0 are shared with disks).
pub const MAX_NICS: usize = 8;

/// One interface as vmd sent it.
pub struct NicFiles {
    /// What dev-net needs to know.
    pub attach: NicAttach,
    /// The tap.
    pub tap: File,
}

/// dev-net's arguments for `nic`: vhost-user at fd 3, the tap at fd 4.
pub fn dev_net_args(nic: &NicAttach) -> Vec<String> {
    let mac = |m: [u8; 6]| {
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    };
    let mut args = vec![
        "--socket-fd".to_string(),
        "3".into(),
        "--tap-fd".into(),
        "4".into(),
        "--mac".into(),
        mac(nic.mac),
    ];
    if nic.locked {
        args.push("--locked".into());
    }
    if let Some(dhcp) = nic.dhcp {
        args.push("--dhcp-guest".into());
        args.push(dhcp.guest.to_string());
        args.push("--dhcp-host".into());
        args.push(dhcp.host.to_string());
        args.push("--dhcp-host-mac".into());
        args.push(mac(dhcp.host_mac));
    }
    args
}

/// Starts dev-net for interface `index` (supervised: restarted on the
/// same tap if it dies) and adds its virtio-net device.
pub fn attach(vm: &mut Vm, index: usize, nic: &NicFiles) -> Result<(), VmError> {
    let name = format!("net{index}");
    let tap = nic
        .tap
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| VmError::Os {
            what: "keep a copy of a network interface's tap",
            source,
        })?;
    let recipe = Recipe {
        name: name.clone(),
        program: sibling_binary("dev-net")?,
        args: dev_net_args(&nic.attach),
        resources: vec![tap],
        after_restart: None,
    };
    let (supervisor, device) = Supervisor::start(
        recipe,
        vm.device_sandbox(),
        vm.events(),
        vm.restart_policy(),
        VIRTIO_ID_NET,
        NET_QUEUES,
    )?;
    log::info!(
        "{name}: tap {} served by dev-net pid {}",
        nic.attach.tap,
        supervisor.pid().unwrap_or_default()
    );
    let slot = vm.add_supervised_device(supervisor, device)?;
    log::info!("{name}: virtio-net at PCI 00:{slot:02x}.0");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc::monitor::LocalDhcp;

    #[test]
    fn dev_net_gets_mac_lock_and_dhcp_addresses() {
        let nic = NicAttach {
            tap: "vm1i0".into(),
            mac: [0xfe, 0xe1, 0xbb, 0xd1, 0xdc, 0x72],
            locked: true,
            dhcp: Some(LocalDhcp {
                guest: "100.64.1.3".parse().unwrap(),
                host: "100.64.1.2".parse().unwrap(),
                host_mac: [0x02, 0, 0, 0, 0, 1],
            }),
        };
        assert_eq!(
            dev_net_args(&nic).join(" "),
            "--socket-fd 3 --tap-fd 4 --mac fe:e1:bb:d1:dc:72 --locked \
             --dhcp-guest 100.64.1.3 --dhcp-host 100.64.1.2 --dhcp-host-mac 02:00:00:00:00:01"
        );
    }
}
