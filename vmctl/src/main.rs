//! `vmctl`: see the `vmctl` library.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::ExitCode::from(vmctl::run(&args))
}
