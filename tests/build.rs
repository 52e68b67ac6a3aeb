//! Builds the test guest (tests/guest, a freestanding PVH ELF) with a nested
//! cargo and hands its path to the tests as `VMD_TEST_GUEST`.
//!
//! The guest is its own workspace with its own flags (.cargo/config.toml,
//! linker script) and target directory, so the outer build's cargo and
//! rustc settings must not leak into it.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// Variables the outer cargo sets that would change the nested build
/// (flags, target, target directory, jobserver, wrappers).
const LEAKING_VARS: &[&str] = &[
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
];

/// Prefixes of variables to drop as well: cargo's per-profile and
/// per-target settings, and everything it sets for build scripts.
const LEAKING_PREFIXES: &[&str] = &[
    "CARGO_PROFILE_",
    "CARGO_TARGET_",
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    "CARGO_PKG_",
    "CARGO_MANIFEST_",
    "DEP_",
];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let guest_dir = manifest_dir.join("guest");
    let target_dir = guest_dir.join("target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

    for path in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "link.ld",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(path).display());
    }

    let mut command = Command::new(&cargo);
    command
        .current_dir(&guest_dir)
        .args(["build", "--release", "--target-dir"])
        .arg(&target_dir);
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if LEAKING_VARS.contains(&key) || LEAKING_PREFIXES.iter().any(|p| key.starts_with(p)) {
            command.env_remove(key);
        }
    }
    let output = match command.output() {
        Ok(output) => output,
        Err(err) => {
            eprintln!(
                "error: cannot run {} for the test guest: {err}",
                cargo.to_string_lossy()
            );
            std::process::exit(1);
        }
    };
    if !output.status.success() {
        eprintln!(
            "error: building the test guest in {} failed ({}):",
            guest_dir.display(),
            output.status
        );
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        eprintln!("{}", String::from_utf8_lossy(&output.stdout));
        std::process::exit(1);
    }

    let elf = target_dir.join("release").join("vmd-test-guest");
    if !elf.is_file() {
        eprintln!(
            "error: the test guest build succeeded but {} is missing",
            elf.display()
        );
        std::process::exit(1);
    }
    println!("cargo:rustc-env=VMD_TEST_GUEST={}", elf.display());
}
