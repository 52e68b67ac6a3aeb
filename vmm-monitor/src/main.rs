//! `vmm-monitor`: run one virtual machine until it powers off, reboots or
//! crashes; the exit code says which (see `vmm_monitor::exit`).

use std::process::ExitCode;

use clap::Parser;
use ipc::logger;
use vmm_monitor::config::{Cli, VmConfig};
use vmm_monitor::devices::serial::ConsoleSink;
use vmm_monitor::exit::{VmEvent, EXIT_HOST_ERROR};
use vmm_monitor::vm;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logger::init("vmm-monitor", logger::level_for_verbosity(cli.verbose));
    let code = match run(cli) {
        Ok(event) => {
            match &event {
                VmEvent::Poweroff => log::info!("guest powered off"),
                VmEvent::Reboot => log::info!("guest asked to reboot"),
                VmEvent::Crash(fault) => log::error!("VM stopped: {fault}"),
                VmEvent::HostError(why) => log::error!("VM stopped: {why}"),
                VmEvent::DeviceDied { device, how } => {
                    log::error!("VM stopped: device process {device} {how}")
                }
            }
            event.exit_code()
        }
        Err(message) => {
            log::error!("{message}");
            EXIT_HOST_ERROR
        }
    };
    ExitCode::from(code as u8)
}

fn run(cli: Cli) -> Result<VmEvent, String> {
    let config = VmConfig::try_from(cli).map_err(|e| ipc::error_chain(&e))?;
    let console = ConsoleSink::stdout().map_err(|e| format!("cannot open the console: {e}"))?;
    vm::run(&config, console).map_err(|e| ipc::error_chain(&e))
}
