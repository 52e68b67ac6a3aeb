//! vm.conf macros: `name="value"` definitions, `-D name=value` overrides.

use std::collections::HashMap;

use super::errors::ErrorKind;
use super::lexer::is_macro_char;

/// Every keyword of the grammar; none may be a macro name.
pub const KEYWORDS: &[&str] = &[
    "allow",
    "boot",
    "cdrom",
    "cmdline",
    "cpus",
    "delay",
    "device",
    "disable",
    "disk",
    "down",
    "enable",
    "format",
    "group",
    "include",
    "inet6",
    "initrd",
    "instance",
    "interface",
    "interfaces",
    "lladdr",
    "local",
    "locked",
    "memory",
    "net",
    "owner",
    "parallel",
    "prefix",
    "rdomain",
    "restarts",
    "sandbox",
    "socket",
    "staggered",
    "start",
    "switch",
    "up",
    "vm",
];

/// The macro table.
///
/// # Invariants
/// A macro defined from the command line (`-D`) is never replaced by a
/// definition in the file: the command line overrides the file, as in vmd.
#[derive(Debug, Default)]
pub struct Macros {
    /// Name to (value, defined on the command line).
    table: HashMap<String, (String, bool)>,
}

/// Checks a macro name: letters, digits and `_`, not a keyword.
pub fn check_name(name: &str) -> Result<(), ErrorKind> {
    if name.is_empty() || !name.chars().all(is_macro_char) || KEYWORDS.contains(&name) {
        return Err(ErrorKind::BadMacroName(name.into()));
    }
    Ok(())
}

impl Macros {
    /// A table holding the command-line defines; returns the bad ones apart.
    pub fn with_defines(defines: &[(String, String)]) -> (Self, Vec<ErrorKind>) {
        let mut macros = Macros::default();
        let mut errors = Vec::new();
        for (name, value) in defines {
            match check_name(name) {
                Ok(()) => {
                    macros.table.insert(name.clone(), (value.clone(), true));
                }
                Err(e) => errors.push(e),
            }
        }
        (macros, errors)
    }

    /// Defines (or redefines) a macro from the file, unless `-D` set it.
    pub fn define(&mut self, name: &str, value: String) -> Result<(), ErrorKind> {
        check_name(name)?;
        match self.table.get(name) {
            Some((_, true)) => {}
            _ => {
                self.table.insert(name.into(), (value, false));
            }
        }
        Ok(())
    }

    /// The value of a macro, if defined.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.table.get(name).map(|(v, _)| v.as_str())
    }
}

/// Splits a `-D` argument `name=value` (for vmd's command line).
pub fn split_define(arg: &str) -> Result<(String, String), ErrorKind> {
    match arg.split_once('=') {
        Some((name, value)) => {
            check_name(name)?;
            Ok((name.into(), value.into()))
        }
        None => Err(ErrorKind::BadDefine(arg.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macros_define_then_get_value() {
        let mut m = Macros::default();
        m.define("ram_1", "1G".into()).unwrap();
        assert_eq!(m.get("ram_1"), Some("1G"));
        m.define("ram_1", "2G".into()).unwrap();
        assert_eq!(m.get("ram_1"), Some("2G"));
    }

    #[test]
    fn macros_command_line_define_not_overridden() {
        let (mut m, errors) = Macros::with_defines(&[("ram".into(), "4G".into())]);
        assert!(errors.is_empty());
        m.define("ram", "1G".into()).unwrap();
        assert_eq!(m.get("ram"), Some("4G"));
    }

    #[test]
    fn macros_keyword_or_bad_char_name_refused() {
        assert!(matches!(
            check_name("memory"),
            Err(ErrorKind::BadMacroName(_))
        ));
        assert!(matches!(check_name("a-b"), Err(ErrorKind::BadMacroName(_))));
        assert!(matches!(check_name(""), Err(ErrorKind::BadMacroName(_))));
        assert!(check_name("a_1B").is_ok());
    }

    #[test]
    fn split_define_without_equals_refused() {
        assert!(matches!(split_define("x"), Err(ErrorKind::BadDefine(_))));
        assert_eq!(split_define("x=a=b").unwrap(), ("x".into(), "a=b".into()));
    }
}
