//! `dev-console`: a VM's console (virtio port and COM1) on a pty.

use std::process::ExitCode;

use clap::Parser;
use dev_console::config::{Cli, ConsoleConfig};

fn main() -> ExitCode {
    let cli = Cli::parse();
    ipc::logger::init("dev-console", ipc::logger::level_for_verbosity(cli.verbose));
    let result = ConsoleConfig::try_from(cli)
        .map_err(|e| ipc::error_chain(&e))
        .and_then(|config| dev_console::run(config).map_err(|e| ipc::error_chain(&e)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            log::error!("{message}");
            ExitCode::FAILURE
        }
    }
}
