//! The control-path pieces every vmd-rs process links.
//!
//! - [`logger`]: the one log facility of a process, its level switchable
//!   while it runs (today by SIGUSR1/SIGUSR2; `vmctl log` will send the
//!   level as a message once vmd and this crate's framing exist).

pub mod logger;

/// An error and each of its causes, joined by ": ", for the one line a
/// process logs (and reports to its parent) before it exits.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}
