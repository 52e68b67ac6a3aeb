//! `vmd`: the virtual machine daemon (see `vmm_monitor::vmd`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    vmm_monitor::vmd::run(vmm_monitor::vmd::cli::Cli::parse())
}
