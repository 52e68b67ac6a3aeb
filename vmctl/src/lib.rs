//! vmctl(8) for vmd-rs: start, stop, list and manage VMs through vmd, and
//! create disk images.
//!
//! Map:
//! - [`commands`]: the command table, each command's arguments, output.
//! - [`getopt`]: POSIX-style option parsing.
//! - [`client`]: one request to vmd over its control socket.
//! - [`console`]: `vmctl console`: the terminal relay and its escapes.
//! - [`output`]: the status table and its JSON form.
//! - [`create`], [`progress`]: `vmctl create`, which needs no vmd.

pub mod client;
pub mod commands;
pub mod console;
pub mod create;
pub mod getopt;
pub mod output;
pub mod progress;

/// Runs vmctl with `args` (without the program name); returns the exit
/// status after printing what vmctl prints.
pub fn run(args: &[String]) -> u8 {
    let mut args = args;
    let mut verbose = 0u8;
    while let Some(first) = args.first() {
        match first.as_str() {
            "-v" => verbose = verbose.saturating_add(1),
            "-h" | "--help" => {
                print!("{}", commands::usage());
                return 0;
            }
            "-V" | "--version" => {
                println!("vmctl {}", env!("CARGO_PKG_VERSION"));
                return 0;
            }
            _ => break,
        }
        args = &args[1..];
    }
    ipc::logger::init("vmctl", ipc::logger::level_for_verbosity(verbose));
    let Some((word, rest)) = args.split_first() else {
        eprint!("{}", commands::usage());
        return 1;
    };
    let outcome = commands::lookup(word).and_then(|command| commands::run(command, rest));
    match outcome {
        Ok(()) => 0,
        Err(commands::Failure(message)) => {
            eprintln!("vmctl: {message}");
            1
        }
    }
}
