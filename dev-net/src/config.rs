//! dev-net's command line, validated into a [`NetConfig`].
//!
//! Two ways to run:
//! - under the monitor: `--socket-fd 3 --tap-fd 4 --mac fe:e1:bb:d1:23:45
//!   [--locked]`: the vhost-user connection and the tap (opened by vmd with
//!   IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) are inherited; the process opens
//!   nothing by path and exits when the monitor hangs up;
//! - standalone, for debugging and other frontends: `--socket PATH --tap
//!   NAME --mac ...`: it creates (or attaches to) tap NAME itself (needs
//!   CAP_NET_ADMIN), listens on PATH, and listens again after each frontend.

use clap::Parser;
pub use dev_backend::process::Connection;
use dev_backend::process::{passed_fd, ConnectionArgs, FdError};
use dev_backend::SandboxArgs;

use crate::mac::{MacAddr, MacParseError};

/// `dev-net`: serve a tap as a vhost-user-net device.
#[derive(Debug, Parser)]
#[command(name = "dev-net", version, about = "vhost-user-net backend on a tap")]
pub struct Cli {
    /// The vhost-user connection: `--socket-fd FD` or `--socket PATH`.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// The sandbox: `--report-fd FD`, `--sandbox-user UID:GID`, `--no-sandbox`.
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Inherited tap fd, IFF_VNET_HDR set (under the monitor).
    #[arg(
        long,
        value_name = "FD",
        conflicts_with = "tap",
        required_unless_present = "tap"
    )]
    pub tap_fd: Option<i32>,
    /// Tap interface to create or attach to (standalone).
    #[arg(long, value_name = "NAME")]
    pub tap: Option<String>,
    /// The guest's MAC address.
    #[arg(long, value_name = "xx:xx:xx:xx:xx:xx")]
    pub mac: String,
    /// Drop frames from another source MAC and unicast frames to another
    /// MAC (vm.conf `locked lladdr`).
    #[arg(long)]
    pub locked: bool,
    /// Local interface: the guest's address, handed out by the built-in
    /// DHCP server (with --dhcp-host and --dhcp-host-mac).
    #[arg(long, value_name = "IP", requires_all = ["dhcp_host", "dhcp_host_mac"])]
    pub dhcp_guest: Option<std::net::Ipv4Addr>,
    /// Local interface: the host side's (the tap's) address: router, DNS
    /// server and DHCP server id.
    #[arg(long, value_name = "IP", requires = "dhcp_guest")]
    pub dhcp_host: Option<std::net::Ipv4Addr>,
    /// Local interface: the tap's MAC, the source of DHCP replies.
    #[arg(long, value_name = "xx:xx:xx:xx:xx:xx", requires = "dhcp_guest")]
    pub dhcp_host_mac: Option<String>,
    /// More log output (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Where the tap comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TapSource {
    /// An inherited fd.
    Fd(i32),
    /// An interface name to create or attach to.
    Create(String),
}

/// A validated dev-net configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The vhost-user connection.
    pub connection: Connection,
    /// The tap.
    pub tap: TapSource,
    /// The guest's MAC address (config space, lladdr lock).
    pub mac: MacAddr,
    /// `locked lladdr`.
    pub locked: bool,
    /// A local interface's built-in DHCP server, if this is one.
    pub dhcp: Option<crate::dhcp::DhcpConfig>,
    /// The sandbox options.
    pub sandbox: SandboxArgs,
}

/// A command line that cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// An fd below 3 (stdin/stdout/stderr are not passed resources).
    #[error(transparent)]
    Fd(#[from] FdError),
    /// One fd given for both the socket and the tap.
    #[error("--socket-fd and --tap-fd are both {0}")]
    SameFd(i32),
    /// A bad MAC address.
    #[error("--mac")]
    Mac(#[from] MacParseError),
    /// A group (multicast) address cannot be an interface's.
    #[error("--mac: {0} is a multicast address")]
    GroupMac(MacAddr),
    /// A required option is missing.
    #[error("{0} is required")]
    Missing(&'static str),
}

impl TryFrom<Cli> for NetConfig {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Self, ConfigError> {
        let connection = cli
            .connection
            .connection()?
            .ok_or(ConfigError::Missing("--socket-fd or --socket"))?;
        cli.sandbox.validate()?;
        let tap = match (cli.tap_fd, cli.tap) {
            (Some(fd), _) => TapSource::Fd(passed_fd("tap-fd", fd)?),
            (None, Some(name)) => TapSource::Create(name),
            (None, None) => return Err(ConfigError::Missing("--tap-fd or --tap")),
        };
        let mut fds = connection.passed_fds();
        if let TapSource::Fd(fd) = tap {
            fds.push(fd);
        }
        fds.sort_unstable();
        if let Some(w) = fds.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::SameFd(w[0]));
        }
        let mac: MacAddr = cli.mac.parse()?;
        if mac.is_group() {
            return Err(ConfigError::GroupMac(mac));
        }
        let dhcp = match (cli.dhcp_guest, cli.dhcp_host, cli.dhcp_host_mac) {
            (Some(guest), Some(host), Some(host_mac)) => {
                let host_mac: MacAddr = host_mac.parse()?;
                let addrs = crate::addr::LocalAddrs { host, guest };
                Some(crate::dhcp::DhcpConfig::local(mac, host_mac, &addrs))
            }
            _ => None,
        };
        Ok(Self {
            connection,
            tap,
            mac,
            locked: cli.locked,
            dhcp,
            sandbox: cli.sandbox,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<NetConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("dev-net").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        NetConfig::try_from(cli).map_err(|e| ipc::error_chain(&e))
    }

    #[test]
    fn config_monitor_mode_takes_fds() {
        let c = parse(&[
            "--socket-fd",
            "3",
            "--tap-fd",
            "4",
            "--mac",
            "fe:e1:bb:d1:23:45",
            "--locked",
        ])
        .unwrap();
        assert_eq!(c.connection, Connection::fd(3));
        assert_eq!(c.tap, TapSource::Fd(4));
        assert_eq!(c.mac.to_string(), "fe:e1:bb:d1:23:45");
        assert!(c.locked);
    }

    #[test]
    fn config_standalone_mode_takes_names() {
        let c = parse(&[
            "--socket",
            "/tmp/n.sock",
            "--tap",
            "tap7",
            "--mac",
            "fe:e1:bb:d1:0:1",
        ])
        .unwrap();
        assert_eq!(c.connection, Connection::Listen("/tmp/n.sock".into()));
        assert_eq!(c.tap, TapSource::Create("tap7".into()));
        assert!(!c.locked);
    }

    #[test]
    fn config_errors_name_the_option() {
        let m = ["--mac", "fe:e1:bb:d1:23:45"];
        let with = |a: &[&str]| parse(&[a, &m[..]].concat());
        assert_eq!(
            with(&["--socket-fd", "2", "--tap-fd", "4"]).unwrap_err(),
            "--socket-fd: fd 2 is not a passed fd (3 or more)"
        );
        assert_eq!(
            with(&["--socket-fd", "3", "--tap-fd", "3"]).unwrap_err(),
            "--socket-fd and --tap-fd are both 3"
        );
        assert!(parse(&["--socket-fd", "3", "--tap-fd", "4", "--mac", "zz"])
            .unwrap_err()
            .starts_with("--mac: 'zz' is not a MAC address"));
        assert_eq!(
            parse(&[
                "--socket-fd",
                "3",
                "--tap-fd",
                "4",
                "--mac",
                "01:00:5e:0:0:1"
            ])
            .unwrap_err(),
            "--mac: 01:00:5e:00:00:01 is a multicast address"
        );
        assert!(with(&["--socket-fd", "3"]).is_err(), "a tap is required");
        assert!(
            parse(&["--socket-fd", "3", "--tap-fd", "4"]).is_err(),
            "a MAC is required"
        );
        assert!(with(&["--socket-fd", "3", "--socket", "s", "--tap", "t"]).is_err());
    }
}
