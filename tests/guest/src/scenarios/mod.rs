//! Scenario registry and runner. A scenario is a name and a function that
//! prints its data lines and returns its verdict; `run` prints BEGIN and
//! the verdict around it and powers off. Add a scenario by writing a module
//! with a `SCENARIO` constant and listing it in [`ALL`].

use core::fmt::{self, Write};

use crate::bootinfo::BootInfo;
use crate::power;
use crate::sync::OnceCell;

mod blk_bench;
mod blk_common;
mod blk_discard;
mod blk_id;
mod blk_ro;
mod blk_rw;
mod blk_stall;
mod console;
mod demo;
mod echo;
mod fault;
mod hello;
mod mem;
mod net;
mod pci;
mod reboot;
mod smp;
mod ticker;
mod timer;

/// A test scenario.
pub struct Scenario {
    /// Name, as given by `test=` on the command line.
    pub name: &'static str,
    /// Runs the scenario; Ok means PASS.
    pub run: fn(&Ctx) -> Result<(), Reason>,
}

/// Every scenario, looked up by name.
const ALL: &[Scenario] = &[
    hello::SCENARIO,
    demo::SCENARIO,
    smp::SCENARIO,
    mem::SCENARIO,
    timer::SCENARIO,
    reboot::SCENARIO,
    fault::SCENARIO,
    pci::SCENARIO,
    blk_rw::SCENARIO,
    blk_id::SCENARIO,
    blk_discard::SCENARIO,
    blk_ro::SCENARIO,
    blk_bench::SCENARIO,
    blk_stall::SCENARIO,
    ticker::SCENARIO,
    echo::SCENARIO,
    console::SCENARIO,
    net::SCENARIO,
];

/// Scenario run when the command line names none.
const DEFAULT: &str = "hello";

/// What a scenario gets: the boot information (command line, memory map).
pub struct Ctx {
    /// Start info copy.
    pub boot: &'static BootInfo,
    /// The scenario's name, for its data lines.
    pub name: &'static str,
}

impl Ctx {
    /// The number the command line gives as `key=`, or `default`.
    pub fn number(&self, key: &str, default: u64) -> Result<u64, Reason> {
        match self.boot.arg(key).map(str::parse::<u64>) {
            None => Ok(default),
            Some(Ok(n)) => Ok(n),
            Some(Err(_)) => crate::fail!("{key}= takes a number"),
        }
    }
}

/// Capacity of a [`Reason`]: short, so that `Result<(), Reason>` stays
/// small (there is no allocator to box it).
const REASON_CAPACITY: usize = 120;

/// Why a scenario failed (a short line, cut at its capacity).
pub struct Reason {
    buf: [u8; REASON_CAPACITY],
    len: u8,
}

impl Reason {
    /// Formats a reason.
    pub fn new(args: fmt::Arguments) -> Reason {
        let mut reason = Reason {
            buf: [0; REASON_CAPACITY],
            len: 0,
        };
        let _ = reason.write_fmt(args);
        reason
    }

    /// The reason's text.
    pub fn as_str(&self) -> &str {
        let bytes = &self.buf[..usize::from(self.len)];
        match core::str::from_utf8(bytes) {
            Ok(s) => s,
            // Cut inside a character: keep the valid prefix.
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

impl Write for Reason {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            let len = usize::from(self.len);
            if len == REASON_CAPACITY {
                break;
            }
            // Keep the line one line.
            self.buf[len] = if b == b'\n' { b' ' } else { b };
            self.len += 1;
        }
        Ok(())
    }
}

impl From<&str> for Reason {
    fn from(s: &str) -> Reason {
        Reason::new(format_args!("{s}"))
    }
}

/// Returns `Err(Reason)` from the enclosing scenario, formatted.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => { return Err($crate::scenarios::Reason::new(format_args!($($arg)*))) };
}

/// Prints the PASS line now, for a scenario that keeps running after it
/// has passed (it must never return then: `run` would print a second
/// verdict).
pub fn print_pass(ctx: &Ctx) {
    crate::println!("VMDT PASS {}", ctx.name);
}

/// Name of the running scenario (for the panic handler).
static CURRENT: OnceCell<&'static str> = OnceCell::new();

/// The running scenario's name, or "boot" before one was chosen.
pub fn current() -> &'static str {
    CURRENT.get().copied().unwrap_or("boot")
}

/// Runs the scenario the command line names, prints its verdict, powers off.
pub fn run(boot: &'static BootInfo) -> ! {
    let name = boot.arg("test").unwrap_or(DEFAULT);
    CURRENT.set(name);
    crate::println!("VMDT BEGIN {name}");
    let verdict = match ALL.iter().find(|s| s.name == name) {
        Some(scenario) => (scenario.run)(&Ctx { boot, name }),
        None => Err(Reason::from("unknown scenario")),
    };
    match verdict {
        Ok(()) => crate::println!("VMDT PASS {name}"),
        Err(reason) => crate::println!("VMDT FAIL {name} {}", reason.as_str()),
    }
    power::poweroff()
}
