//! `vmm-monitor`: run one virtual machine until it powers off, reboots or
//! crashes; the exit code says which (see `vmm_monitor::exit`).
//!
//! Two modes: the VM from the command line (`--kernel ...`), or, with
//! `--control-fd N`, the VM vmd sends over the socket at fd N (see
//! `vmm_monitor::control`).

use std::process::ExitCode;

use clap::Parser;
use ipc::logger;
use vmm_monitor::config::{Cli, VmConfig};
use vmm_monitor::devices::serial::ConsoleSink;
use vmm_monitor::exit::{VmEvent, EXIT_HOST_ERROR};
use vmm_monitor::{control, vm};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logger::init("vmm-monitor", logger::level_for_verbosity(cli.verbose));
    if let Some(fd) = cli.launcher_fd {
        return ExitCode::from(vmm_monitor::launcher::serve(fd) as u8);
    }
    if let Some(fd) = cli.control_fd {
        return ExitCode::from(control::run(fd, cli.report_fd) as u8);
    }
    let code = match run(cli) {
        Ok(event) => {
            match &event {
                VmEvent::Poweroff | VmEvent::Reboot | VmEvent::Stopped => log::info!("{event}"),
                _ => log::error!("VM stopped: {event}"),
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
