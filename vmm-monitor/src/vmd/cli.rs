//! `vmd [-dnv] [-D macro=value] [-f file]`.

use std::path::PathBuf;

use clap::Parser;

/// Default configuration file.
pub const DEFAULT_CONF: &str = "/etc/vm.conf";

/// vmd: the virtual machine daemon.
#[derive(Debug, Parser)]
#[command(
    name = "vmd",
    version,
    about = "The virtual machine daemon: runs the VMs of vm.conf and serves vmctl",
    after_help = "The control socket is /run/vmd/vmd.sock, or $VMD_SOCKET; monitors' sockets go beside it.\n\
                  SIGHUP reloads the configuration (as vmctl reload)."
)]
pub struct Cli {
    /// Stay in the foreground and log to stderr (without it: detach and log to syslog).
    #[arg(short = 'd')]
    pub foreground: bool,
    /// Check the configuration, print `configuration OK` or its errors, and exit.
    #[arg(short = 'n')]
    pub check_only: bool,
    /// More log output; repeat for more.
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Define macro `name` as `value`, overriding the file's own.
    #[arg(short = 'D', value_name = "macro=value")]
    pub define: Vec<String>,
    /// The configuration file.
    #[arg(short = 'f', value_name = "file", default_value = DEFAULT_CONF)]
    pub file: PathBuf,
}
