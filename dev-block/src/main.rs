//! `dev-block`: one virtio-blk disk served over vhost-user.

use std::process::ExitCode;

use clap::Parser;
use dev_block::config::{BlockConfig, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    ipc::logger::init("dev-block", ipc::logger::level_for_verbosity(cli.verbose));
    let result = BlockConfig::try_from(cli)
        .map_err(|e| ipc::error_chain(&e))
        .and_then(|config| dev_block::run(config).map_err(|e| ipc::error_chain(&e)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            log::error!("{message}");
            ExitCode::FAILURE
        }
    }
}
