//! vm.conf(5): the configuration of vmd.
//!
//! [`parse_config`] reads a file (and its `include`s) into a [`Config`],
//! reporting every error as `file:line: message`; [`validate_paths`] then
//! checks that the images it names exist.
//!
//! Map:
//! - [`lexer`]: text into tokens (comments, continuations, quoting).
//! - [`macros`]: `name="value"`, `$name`, `-D` overrides.
//! - `parser`: the token stream and the top-level statements.
//! - `vm`, `blocks`, `instance`: vm, interface, switch and `allow
//!   instance` blocks; instance inheritance.
//! - [`values`]: names, sizes, addresses and owners.
//! - [`model`]: the resulting configuration.
//! - [`errors`]: the errors.

mod blocks;
mod check;
pub mod errors;
mod instance;
pub mod lexer;
pub mod macros;
pub mod model;
mod parser;
pub mod values;
mod vm;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use check::validate_paths;
pub use errors::{ConfigError, ConfigErrors, ErrorKind, MAX_ERRORS};
pub use macros::split_define;
pub use model::*;
pub use vm::{MAX_DISKS, MAX_INTERFACES};

/// Reads and parses the configuration file `path` (with its `include`s,
/// relative to the including file's directory), the macros `defines` (from
/// `-D`) overriding the file's own.
pub fn parse_config(path: &Path, defines: &[(String, String)]) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_str(path, &text, defines),
        Err(e) => {
            let mut errors = ConfigErrors::default();
            let kind = ErrorKind::Read {
                path: path.to_path_buf(),
                reason: e.to_string(),
            };
            errors.push(ConfigError {
                file: path.to_path_buf(),
                line: 0,
                kind,
            });
            Err(errors)
        }
    }
}

/// Parses `text` as if read from the file `name` (includes are relative to
/// its directory).
pub fn parse_str(
    name: impl AsRef<Path>,
    text: &str,
    defines: &[(String, String)],
) -> Result<Config, ConfigErrors> {
    let mut parser = parser::Parser::new(name.as_ref(), text, defines);
    parser.run();
    check::switches_defined(&parser.config, &mut parser.errors);
    if parser.errors.is_empty() {
        Ok(parser.config)
    } else {
        Err(parser.errors)
    }
}
