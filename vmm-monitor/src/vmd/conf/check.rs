//! Checks over the whole configuration, after parsing.

use std::path::Path;

use super::errors::{ConfigError, ConfigErrors, ErrorKind};
use super::model::Config;

/// Every interface's switch must be defined by a `switch` block (anywhere
/// in the configuration).
pub(super) fn switches_defined(config: &Config, errors: &mut ConfigErrors) {
    for vm in &config.vms {
        for iface in &vm.interfaces {
            let Some(switch) = &iface.switch else {
                continue;
            };
            if !config.switches.iter().any(|s| &s.name == switch) {
                errors.push(ConfigError {
                    file: vm.file.clone(),
                    line: iface.line,
                    kind: ErrorKind::UndefinedSwitch(switch.clone()),
                });
            }
        }
    }
}

/// Checks that every disk, CD-ROM and boot image named exists.
///
/// Kept apart from parsing: the files belong to the host, not to the
/// configuration's syntax; `vmd -n` runs it after [`super::parse_config`].
/// A relative path is taken from vmd's working directory.
pub fn validate_paths(config: &Config) -> Result<(), ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let mut check = |file: &Path, line: u32, what, path: &Path| {
        if !path.exists() {
            let kind = ErrorKind::Missing {
                what,
                path: path.to_path_buf(),
            };
            errors.push(ConfigError {
                file: file.to_path_buf(),
                line,
                kind,
            });
        }
    };
    for vm in &config.vms {
        if let Some(boot) = &vm.boot {
            check(&vm.file, vm.line, "boot image", boot);
        }
        if let Some(initrd) = &vm.initrd {
            check(&vm.file, vm.line, "initrd", initrd);
        }
        if let Some(cdrom) = &vm.cdrom {
            check(&vm.file, vm.line, "cdrom", cdrom);
        }
        for disk in &vm.disks {
            check(&vm.file, disk.line, "disk", &disk.path);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}
