//! vmd: the daemon that reads vm.conf(5), runs one monitor per VM, and
//! serves vmctl(8) on its control socket.
//!
//! Map of the module:
//! - [`conf`]: the vm.conf parser, its model ([`conf::Config`]) and its checks.
//! - [`cli`]: vmd's command line.
//! - [`access`]: owners and peers: who may do what.
//! - [`spec`]: what a VM runs, from vm.conf or from `vmctl start`.
//! - [`resources`]: the files vmd opens (and locks) for a VM.
//! - [`link`]: starting a monitor and talking to it.
//! - [`net`]: each VM interface's tap: made, named, addressed, bridged.
//! - [`registry`]: the table of VMs.
//! - [`daemon`]: the shared state; starting VMs, their ends, configurations.
//! - [`requests`]: one control request, checked and carried out.
//! - [`console`]: attaching `vmctl console` to a VM's console.
//! - [`server`]: the control socket.
//! - [`adopt`]: taking back the VMs a previous vmd left running.
//! - [`sandbox`]: the uid and gid of each VM's sandboxed processes.
//!
//! vmd is the only process that opens files by path; monitors get them as
//! fds. Monitors run in their own sessions and survive vmd: a vmd killed
//! and started again re-adopts them through their sockets in the run
//! directory.

pub mod access;
pub mod adopt;
pub mod cli;
pub mod conf;
pub mod console;
pub mod daemon;
pub mod link;
pub mod net;
pub mod registry;
pub mod requests;
pub mod resources;
pub mod sandbox;
pub mod server;
pub mod spec;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use ipc::monitor::LogLevel;
use nix::sys::signal::{SigSet, Signal};

use self::cli::Cli;
use self::daemon::{Settings, Vmd};

/// Runs vmd as `cli` says; returns its exit code.
pub fn run(cli: Cli) -> ExitCode {
    let level = ipc::logger::level_for_verbosity(cli.verbose.saturating_add(1));
    let mut defines = Vec::new();
    for define in &cli.define {
        match conf::split_define(define) {
            Ok(pair) => defines.push(pair),
            Err(e) => {
                eprintln!("vmd: -D {define}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let config = match conf::parse_config(&cli.file, &defines) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    // What the file names must exist and resolve: errors for -n; at
    // startup a missing image only fails its own VM (logged below).
    let missing = conf::validate_paths(&config).err();
    let unresolved = daemon::resolve_errors(&config);
    if cli.check_only {
        let mut problems: Vec<String> = missing.iter().map(|e| e.to_string()).collect();
        problems.extend(unresolved);
        if problems.is_empty() {
            println!("configuration OK");
            return ExitCode::SUCCESS;
        }
        eprintln!("{}", problems.join("\n"));
        return ExitCode::FAILURE;
    }
    if !unresolved.is_empty() {
        eprintln!("{}", unresolved.join("\n"));
        return ExitCode::FAILURE;
    }
    // SIGHUP, SIGTERM and SIGINT are taken by a thread of their own
    // (sigwait); block them before any other thread (the logger's first)
    // exists.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        eprintln!("vmd: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    // Bind before detaching, so that "already running" reaches the caller.
    let socket = ipc::control::socket_path();
    let listener = match server::bind(&socket, config.globals.socket_owner.as_ref()) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("vmd: {}", ipc::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    if !cli.foreground {
        // Keep the working directory: relative paths mean the same with
        // and without -d.
        if let Err(e) = nix::unistd::daemon(true, false) {
            eprintln!("vmd: cannot detach: {e}");
            let _ = std::fs::remove_file(&socket);
            return ExitCode::FAILURE;
        }
        // SAFETY: no other thread exists yet (set_var's precondition).
        unsafe { std::env::set_var(ipc::logger::SYSLOG_ENV, "1") };
    }
    ipc::logger::init("vmd", level);
    if let Some(missing) = missing {
        for line in missing.to_string().lines() {
            log::warn!("{line} (that VM cannot start until it does)");
        }
    }
    let startup = Startup {
        defines,
        config,
        level: LogLevel::from_filter(level),
        signals,
        socket,
        listener,
    };
    match serve(&cli, startup) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            log::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// What `run` hands to `serve`.
struct Startup {
    defines: Vec<(String, String)>,
    config: conf::Config,
    level: LogLevel,
    signals: SigSet,
    socket: PathBuf,
    listener: std::os::unix::net::UnixListener,
}

fn serve(cli: &Cli, startup: Startup) -> Result<(), String> {
    let Startup {
        defines,
        config,
        level,
        signals,
        socket,
        listener,
    } = startup;
    let run_dir = socket
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/vmd"));
    let monitor = crate::device_proc::sibling_binary("vmm-monitor").map_err(|e| e.to_string())?;
    let conf_path = std::fs::canonicalize(&cli.file).unwrap_or_else(|_| cli.file.clone());
    let vmd = Vmd::new(
        Settings {
            conf_path,
            defines,
            run_dir: run_dir.clone(),
            monitor,
        },
        level,
    );
    let adopted = adopt::adopt_all(&vmd, &run_dir);
    let to_start = vmd
        .apply_config(&config, daemon::ConfigMode::Replace)
        .map_err(|r| r.message)?;
    log::info!(
        "vmd started: {} vm(s) configured, {adopted} re-adopted, control socket {}",
        config.vms.len(),
        socket.display()
    );
    vmd.start_staggered(to_start);
    spawn_signal_thread(vmd.clone(), signals, socket.clone())?;
    let error = server::serve(vmd, listener);
    Err(format!("control socket {}: {error}", socket.display()))
}

/// SIGHUP reloads the configuration; SIGTERM and SIGINT end vmd, leaving
/// the VMs running for the next vmd to re-adopt.
fn spawn_signal_thread(vmd: Arc<Vmd>, signals: SigSet, socket: PathBuf) -> Result<(), String> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match signals.wait() {
                Ok(Signal::SIGHUP) => {
                    let peer = access::Peer {
                        uid: 0,
                        groups: vec![0],
                        pid: std::process::id() as i32,
                    };
                    requests::handle(&vmd, &peer, ipc::control::Request::Reload, &mut |r| {
                        if let ipc::control::Response::Error { message, .. } = r {
                            log::error!("reload on SIGHUP failed: {message}");
                        }
                    });
                }
                Ok(signal) => {
                    let running = vmd
                        .lock()
                        .vms
                        .iter()
                        .filter(|v| registry::is_live(v.state))
                        .count();
                    log::info!(
                        "{signal}: vmd exits; {running} running vm(s) keep running for the next vmd to re-adopt"
                    );
                    let _ = std::fs::remove_file(&socket);
                    std::process::exit(0);
                }
                Err(e) => {
                    log::error!("sigwait: {e}");
                    return;
                }
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the signal thread: {e}"))
}
