//! Errors of the vm.conf parser; each names a file and a line.

use std::fmt;
use std::path::PathBuf;

use crate::config::SizeError;

/// Most errors kept for one configuration; past it the parser stops
/// recording and says so, as a page of errors is enough to act on.
pub const MAX_ERRORS: usize = 50;

/// One problem in a configuration, at a place in a file.
///
/// Displays as `file:line: message` (`file: message` when the problem is not
/// on a line, such as an unreadable file or a bad `-D`).
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file the problem is in (`-D` for command-line macros).
    pub file: PathBuf,
    /// 1-based line; 0 when the problem is not on a line.
    pub line: u32,
    /// What is wrong.
    pub kind: ErrorKind,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.kind)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.kind)
        }
    }
}

/// Every error found in a configuration, in file order (up to [`MAX_ERRORS`]).
///
/// Displays one error per line, as `vmd -n` prints them.
#[derive(Debug, Default, thiserror::Error)]
pub struct ConfigErrors {
    /// The errors, in the order found.
    pub errors: Vec<ConfigError>,
    /// More errors than [`MAX_ERRORS`] were found; the rest were dropped.
    pub truncated: bool,
}

impl ConfigErrors {
    /// Records an error, or notes the truncation once the cap is reached.
    pub fn push(&mut self, error: ConfigError) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(error);
        } else {
            self.truncated = true;
        }
    }

    /// True when no error was recorded.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        if self.truncated {
            write!(f, "\ntoo many errors, stopped after {MAX_ERRORS}")?;
        }
        Ok(())
    }
}

/// What is wrong at a place in a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// A file (the configuration or an include) could not be read.
    #[error("cannot read {}: {reason}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        reason: String,
    },
    /// A quoted string runs to the end of its line.
    #[error("unterminated quoted string")]
    UnterminatedString,
    /// A word where a keyword was expected.
    #[error("unknown keyword '{0}'")]
    UnknownKeyword(String),
    /// A token that does not fit the grammar here.
    #[error("malformed line: expected {expected}, found {found}")]
    Unexpected {
        /// What the grammar wants here.
        expected: &'static str,
        /// What is there, described.
        found: String,
    },
    /// A block opened with `{` and never closed.
    #[error("missing '}}' before the end of the file")]
    UnclosedBlock,
    /// `$name` with no definition.
    #[error("macro '{0}' not defined")]
    UndefinedMacro(String),
    /// A macro name that is empty, has other characters than letters,
    /// digits and `_`, or is a keyword.
    #[error("invalid macro name '{0}' (letters, digits and '_' only, not a keyword)")]
    BadMacroName(String),
    /// Macros that expand into each other without end.
    #[error("macro '{0}' expands too deeply (a macro using itself?)")]
    MacroTooDeep(String),
    /// A `-D` argument without `=`.
    #[error("'{0}': a define is name=value")]
    BadDefine(String),
    /// A file that includes itself, directly or not.
    #[error("include loop: {} is already being read", .0.display())]
    IncludeLoop(PathBuf),
    /// A size that does not parse.
    #[error("bad size: {0}")]
    BadSize(#[source] SizeError),
    /// Guest memory outside what a VM may have.
    #[error("memory {value} bytes out of range ({min} to {max} bytes)")]
    MemoryRange {
        /// The size given, rounded down to whole MiB.
        value: u64,
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
    },
    /// A number that does not parse or is out of its range.
    #[error("bad {what} '{text}': expected a number from {min} to {max}")]
    BadNumber {
        /// What the number is for.
        what: &'static str,
        /// The text given.
        text: String,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// A second VM of the same name.
    #[error("vm \"{0}\" is already defined")]
    DuplicateVm(String),
    /// A second switch of the same name.
    #[error("switch \"{0}\" is already defined")]
    DuplicateSwitch(String),
    /// A VM or switch name vmctl would refuse.
    #[error("invalid name \"{name}\": {why}")]
    BadName {
        /// The name.
        name: String,
        /// What rule it breaks.
        why: &'static str,
    },
    /// A network interface name Linux would refuse.
    #[error("invalid interface name \"{0}\" (1 to 15 characters, no '/', ':' or spaces)")]
    BadIfName(String),
    /// An Ethernet address that does not parse or is not a unicast one.
    #[error("invalid lladdr '{0}': expected a unicast xx:xx:xx:xx:xx:xx")]
    BadMac(String),
    /// An address prefix that does not parse or does not fit its use.
    #[error("invalid prefix '{text}': {why}")]
    BadPrefix {
        /// The text given.
        text: String,
        /// What is wrong.
        why: &'static str,
    },
    /// An owner that is not `user`, `user:group` or `:group`.
    #[error("invalid owner '{0}': expected user, user:group or :group")]
    BadOwner(String),
    /// A disk format other than raw or qcow2.
    #[error("unknown disk format '{0}' (raw or qcow2)")]
    BadFormat(String),
    /// A boot device other than cdrom, disk or net.
    #[error("unknown boot device '{0}' (cdrom, disk or net)")]
    BadBootDevice(String),
    /// An option given twice in one block.
    #[error("{0} specified twice")]
    Twice(&'static str),
    /// More network interfaces than a VM may have.
    #[error("too many interfaces: {count} (at most {max})")]
    TooManyInterfaces {
        /// How many were asked for.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// More disks than a VM may have.
    #[error("too many disks: {count} (at most {max})")]
    TooManyDisks {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An interface on a switch no `switch` block defines.
    #[error("switch \"{0}\" is not defined")]
    UndefinedSwitch(String),
    /// `vm "p" instance "c"` where no VM "p" was defined before.
    #[error("instance of unknown vm \"{0}\" (the parent must be defined first)")]
    UnknownParent(String),
    /// An instance setting what its parent's `allow instance` does not permit.
    #[error("vm \"{parent}\" does not allow instances to set {item}")]
    NotAllowed {
        /// The parent VM.
        parent: String,
        /// The setting refused.
        item: &'static str,
    },
    /// A path named by the configuration does not exist.
    #[error("{what} {} does not exist", path.display())]
    Missing {
        /// disk, cdrom or boot image.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
}
