//! What a vm.conf says, in plain types, after parsing and checking.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

/// Guest RAM of a VM whose config gives none (vmctl's default, 512 MiB).
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// Default `local prefix`: the shared address space of RFC 6598, as vmd.
pub const DEFAULT_LOCAL_PREFIX: Ipv4Net = Ipv4Net {
    addr: Ipv4Addr::new(100, 64, 0, 0),
    len: 10,
};
/// Prefix used by a bare `local inet6`. vmd picks a random ULA prefix; we
/// pick one fixed ULA /48, `fd76:6d64:7273::/48` (the global ID spells
/// "vmdrs"), so that addresses are the same on every start and every host.
pub const DEFAULT_LOCAL_INET6_PREFIX: Ipv6Net = Ipv6Net {
    addr: Ipv6Addr::new(0xfd76, 0x6d64, 0x7273, 0, 0, 0, 0, 0),
    len: 48,
};

/// A whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// The global settings.
    pub globals: Globals,
    /// The VMs, in file order (instances resolved against their parent).
    pub vms: Vec<VmConf>,
    /// The switches, in file order.
    pub switches: Vec<SwitchConf>,
}

/// Settings outside any block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Globals {
    /// `local prefix`: where local interfaces' IPv4 addresses come from.
    pub local_prefix: Ipv4Net,
    /// `local inet6 [prefix]`: IPv6 on local interfaces, off when `None`.
    pub local_inet6: Option<Ipv6Net>,
    /// `socket owner`: owner of the control socket (names resolved later).
    pub socket_owner: Option<Owner>,
    /// `staggered start`: how VMs start at boot; `None` for vmd's default.
    pub staggered: Option<Staggered>,
}

impl Default for Globals {
    fn default() -> Self {
        Globals {
            local_prefix: DEFAULT_LOCAL_PREFIX,
            local_inet6: None,
            socket_owner: None,
            staggered: None,
        }
    }
}

/// `staggered start parallel N delay S`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staggered {
    /// How many VMs start at once.
    pub parallel: u32,
    /// Seconds between two groups.
    pub delay_secs: u32,
}

/// An IPv4 prefix, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub len: u8,
}

/// An IPv6 prefix, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Net {
    /// The network address.
    pub addr: Ipv6Addr,
    /// The prefix length.
    pub len: u8,
}

/// `user`, `user:group` or `:group`, as written (numeric ids allowed); the
/// names are resolved to ids when the daemon applies the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The user, if given.
    pub user: Option<String>,
    /// The group, if given.
    pub group: Option<String>,
}

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// `boot device`: what a BIOS boot tries first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootDevice {
    /// The CD-ROM.
    Cdrom,
    /// The first disk.
    Disk,
    /// The network (the built-in DHCP hands out a boot file).
    Net,
}

/// A disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// A flat image.
    Raw,
    /// A qcow2 image.
    Qcow2,
}

/// `disk "path" [format raw|qcow2]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConf {
    /// The image.
    pub path: PathBuf,
    /// The format; `None`: detected from the image when it is opened.
    pub format: Option<DiskFormat>,
    /// Line of the `disk` option.
    pub line: u32,
}

/// `[local] interface [name] { ... }` of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConf {
    /// The tap's name; `None`: vmd picks one.
    pub name: Option<String>,
    /// `local`: addressed from the local prefix, served by the built-in DHCP.
    pub local: bool,
    /// The switch the tap joins.
    pub switch: Option<String>,
    /// Interface group of the tap.
    pub group: Option<String>,
    /// Fixed Ethernet address; `None`: vmd generates one.
    pub lladdr: Option<MacAddr>,
    /// `locked lladdr`: the guest may only send from (and receive to) its address.
    pub locked: bool,
    /// Routing domain (on Linux: VRF table) of the tap.
    pub rdomain: Option<u32>,
    /// Whether the tap is brought up (`up`, the default) or left `down`.
    pub up: bool,
    /// Line of the `interface` option.
    pub line: u32,
}

/// What `allow instance { ... }` lets an instance set for itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceAllow {
    /// `boot`: the boot image and boot device.
    pub boot: bool,
    /// `cdrom`.
    pub cdrom: bool,
    /// `disk`.
    pub disk: bool,
    /// `instance`: the instance may itself allow instances.
    pub instance: bool,
    /// `interface`: interface blocks and `interfaces N`.
    pub interface: bool,
    /// `memory`.
    pub memory: bool,
    /// `cpus` (ours; vmd has one vCPU).
    pub cpus: bool,
    /// `owner`: the instance may set its owner.
    pub owner: bool,
    /// `owner u[:g]` entries: if not empty, the owners an instance may have.
    pub owners: Vec<Owner>,
}

/// One `vm` block, or an instance resolved against its parent.
///
/// Exclusive settings, not inherited by an instance: disks (vmd-rs locks a
/// writable image to one VM), fixed `lladdr`s (two guests with one address
/// break the network), `enable`/`disable`, `sandbox` (an instance's
/// devices are sandboxed unless its own block says `sandbox no`) and
/// `allow instance`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConf {
    /// The name, as vmctl checks it.
    pub name: String,
    /// The file of the block.
    pub file: PathBuf,
    /// The line of `vm "name"`.
    pub line: u32,
    /// `vm "parent" instance "name"`: the parent.
    pub instance_of: Option<String>,
    /// Started when vmd starts (`enable`, the default) or not (`disable`).
    pub enabled: bool,
    /// Guest RAM in bytes, a whole number of MiB; `None`: [`DEFAULT_MEMORY`].
    pub memory: Option<u64>,
    /// vCPUs (1 to 64); `None`: one.
    pub cpus: Option<usize>,
    /// Kernel or BIOS image; `None`: the default BIOS.
    pub boot: Option<PathBuf>,
    /// `boot device`.
    pub boot_device: Option<BootDevice>,
    /// `cmdline "text"` (ours): the kernel command line for a direct
    /// kernel boot (vmd boots OpenBSD through its boot loader and has none).
    pub cmdline: Option<String>,
    /// `initrd "path"` (ours): the initial ramdisk for a direct kernel boot.
    pub initrd: Option<PathBuf>,
    /// ISO image attached as CD-ROM.
    pub cdrom: Option<PathBuf>,
    /// Disks, in order.
    pub disks: Vec<DiskConf>,
    /// Configured interfaces, in order.
    pub interfaces: Vec<InterfaceConf>,
    /// `interfaces N`: the VM has at least N interfaces (unconfigured ones
    /// added after those above), as in vm.conf(5).
    pub min_interfaces: usize,
    /// Who may start, stop, pause and attach to the VM.
    pub owner: Option<Owner>,
    /// What instances of this VM may set.
    pub allow_instance: InstanceAllow,
    /// Whether the VM's device processes (dev-block, dev-net,
    /// dev-console) run sandboxed: `sandbox yes`, the default. `sandbox
    /// no` (ours) runs them without seccomp, Landlock, namespaces or an
    /// identity of their own, for debugging a device; only root may start
    /// such a VM, and vmd logs a warning each time it does.
    pub sandbox: bool,
    /// The line of `sandbox no` (or `yes`), in [`Self::file`]; 0 when the
    /// block does not say.
    pub sandbox_line: u32,
    /// `restarts N` (ours): a device process that dies within 250 ms of
    /// its start N + 1 times in a row stops the VM; 0: a dead device
    /// process is never restarted (the VM stops, as with OpenBSD's vmd).
    /// `None`: the default, 10. Inherited by instances, which may set
    /// their own.
    pub restarts: Option<u32>,
}

/// `switch "name" { ... }`: on Linux a bridge that VM taps join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchConf {
    /// The switch's name, referenced by `interface { switch "name" }`.
    pub name: String,
    /// The file of the block.
    pub file: PathBuf,
    /// The line of `switch "name"`.
    pub line: u32,
    /// The bridge device; `None`: vmd creates one.
    pub interface: Option<String>,
    /// Interface group of the member taps.
    pub group: Option<String>,
    /// `locked lladdr` on every member tap.
    pub locked: bool,
    /// Routing domain of the member taps.
    pub rdomain: Option<u32>,
    /// Bring the bridge up (default) or leave it down.
    pub up: bool,
}
