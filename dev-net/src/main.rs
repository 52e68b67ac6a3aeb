//! `dev-net`: one virtio-net device on a tap, served over vhost-user.

use std::process::ExitCode;

use clap::Parser;
use dev_net::config::{Cli, NetConfig};

fn main() -> ExitCode {
    let cli = Cli::parse();
    ipc::logger::init("dev-net", ipc::logger::level_for_verbosity(cli.verbose));
    let result = NetConfig::try_from(cli)
        .map_err(|e| ipc::error_chain(&e))
        .and_then(|config| dev_net::run(config).map_err(|e| ipc::error_chain(&e)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            log::error!("{message}");
            ExitCode::FAILURE
        }
    }
}
