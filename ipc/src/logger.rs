//! A process's log: one line per record on stderr, level switchable at
//! run time.
//!
//! Records go through the `log` facade. The level is `log`'s global maximum,
//! an atomic: SIGUSR1 raises it one step, SIGUSR2 lowers it one step, and
//! [`set_level`] sets it (vmd and the monitor call it on a control
//! message). A SIGUSR1 queued with a value ([`send_level`]: sigqueue(3),
//! the value 1 + the level's index) sets that level outright: this is how a
//! monitor passes `vmctl log` on to its device processes. The signals are
//! taken by a thread of their own, which logs each change ("log level set
//! to DEBUG"); a thread started before [`init`] may still catch one in a
//! handler that only touches that atomic, which is async-signal-safe.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

use log::{LevelFilter, Log, Metadata, Record};

/// Environment variable that sends the log to syslog instead of stderr;
/// a detached vmd sets it, and the monitors and devices it starts inherit it.
pub const SYSLOG_ENV: &str = "VMD_LOG_SYSLOG";

struct StderrLogger {
    program: &'static str,
    /// The pid in log lines: the host's view of this process.
    pid: u32,
    start: Instant,
    syslog: Option<std::os::unix::net::UnixDatagram>,
}

static LOGGER: OnceLock<StderrLogger> = OnceLock::new();

const LEVELS: [LevelFilter; 6] = [
    LevelFilter::Off,
    LevelFilter::Error,
    LevelFilter::Warn,
    LevelFilter::Info,
    LevelFilter::Debug,
    LevelFilter::Trace,
];

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if let Some(socket) = &self.syslog {
            let line = format!(
                "<{}>{}[{}]: {}: {}",
                syslog_priority(record.level()),
                self.program,
                self.pid,
                record.target(),
                record.args()
            );
            // Nowhere else to report a lost log line.
            let _ = socket.send(line.as_bytes());
            return;
        }
        let elapsed = self.start.elapsed();
        let line = format!(
            "{}[{}] {:>4}.{:06} {:<5} {}: {}\n",
            self.program,
            self.pid,
            elapsed.as_secs(),
            elapsed.subsec_micros(),
            record.level(),
            record.target(),
            record.args()
        );
        // One write per record so that lines from vCPU threads never interleave;
        // a log line that cannot be written has nowhere else to go.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// The syslog priority of a record: daemon facility (3 << 3) with the
/// level's severity.
fn syslog_priority(level: log::Level) -> u8 {
    let severity = match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    };
    (3 << 3) | severity
}

/// Passes on a record another process logged ([`crate::log_forward`]):
/// to stderr as `stderr_line` (formatted under that process's name), or,
/// when this process logs to syslog, as `tag` (e.g. `dev-block[42]`) at
/// `level` with `text`.
pub(crate) fn emit_foreign(level: log::Level, stderr_line: &str, tag: &str, text: &str) {
    match LOGGER.get().and_then(|l| l.syslog.as_ref()) {
        Some(socket) => {
            let line = format!("<{}>{tag}: {text}", syslog_priority(level));
            // Nowhere else to report a lost log line.
            let _ = socket.send(line.as_bytes());
        }
        None => {
            let mut line = String::with_capacity(stderr_line.len() + 1);
            line.push_str(stderr_line);
            line.push('\n');
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }
}

/// This process's log time stamp ("seconds.micros" since its logger
/// started), for a line it writes on another's behalf.
pub(crate) fn stamp() -> String {
    let elapsed = LOGGER.get().map(|l| l.start.elapsed()).unwrap_or_default();
    format!("{:>4}.{:06}", elapsed.as_secs(), elapsed.subsec_micros())
}

/// Installs the logger for `program` at `level`, and the SIGUSR1/SIGUSR2
/// handlers that change the level while the process runs. Calling it again
/// only changes the level.
pub fn init(program: &'static str, level: LevelFilter) {
    let logger = LOGGER.get_or_init(|| StderrLogger {
        program,
        pid: host_pid(),
        start: Instant::now(),
        syslog: std::env::var_os(SYSLOG_ENV).and_then(|_| {
            let socket = std::os::unix::net::UnixDatagram::unbound().ok()?;
            socket.connect("/dev/log").ok()?;
            Some(socket)
        }),
    });
    if log::set_logger(logger).is_ok() {
        install_signal_handlers();
        start_signal_thread();
    }
    set_level(level);
}

/// Environment variable with this process's pid as the host sees it, for
/// a process started in a pid namespace of its own (where it is pid 1).
pub const HOST_PID_ENV: &str = "VMD_LOG_PID";

/// The pid log lines show: `$VMD_LOG_PID` if set to a number (a device
/// process in its own pid namespace, whose monitor set it), else ours.
fn host_pid() -> u32 {
    std::env::var(HOST_PID_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&p| p > 0)
        .unwrap_or_else(std::process::id)
}

/// Sets the log level of this process.
pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}

/// The level for `-v` given `count` times: warnings by default, then info,
/// debug, trace.
pub fn level_for_verbosity(count: u8) -> LevelFilter {
    LEVELS[(2 + count as usize).min(LEVELS.len() - 1)]
}

fn step_level(up: bool) {
    let current = LEVELS
        .iter()
        .position(|l| *l == log::max_level())
        .unwrap_or(2);
    let next = if up {
        (current + 1).min(LEVELS.len() - 1)
    } else {
        current.saturating_sub(1).max(1)
    };
    log::set_max_level(LEVELS[next]);
}

/// Sets the log level of process `pid` to `level` by a queued SIGUSR1
/// carrying the level (the process must use this logger).
pub fn send_level(pid: u32, level: LevelFilter) -> std::io::Result<()> {
    let index = LEVELS.iter().position(|l| *l == level).unwrap_or(2);
    let value = libc::sigval {
        sival_ptr: (index + 1) as *mut libc::c_void,
    };
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: sigqueue takes plain values; the pointer member only carries
    // an integer and is never dereferenced.
    if unsafe { libc::sigqueue(pid, libc::SIGUSR1, value) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What a level signal asks for: `Some(index)` for an absolute level
/// (queued with a value in range), `None` for one step.
fn queued_level(code: libc::c_int, value: usize) -> Option<usize> {
    (code == libc::SI_QUEUE && (1..=LEVELS.len()).contains(&value)).then(|| value - 1)
}

extern "C" fn on_level_signal(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler;
    // reading its code and value fields does not allocate or lock.
    let (code, value) = unsafe { ((*info).si_code, (*info).si_value().sival_ptr as usize) };
    match queued_level(code, value) {
        Some(index) if signal == libc::SIGUSR1 => log::set_max_level(LEVELS[index]),
        _ => step_level(signal == libc::SIGUSR1),
    }
}

/// Takes SIGUSR1/SIGUSR2 on a thread of their own (sigwaitinfo), so that a
/// level change can be logged — which a signal handler may not do. The
/// signals are blocked in the calling thread and so in every thread it
/// starts later; call [`init`] before starting threads. A thread that
/// existed before still gets them through the handler (no log line).
fn start_signal_thread() {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset fill it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGUSR2);
    }
    // SAFETY: changes this thread's mask with a valid set.
    if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("log-level".into())
        .spawn(move || loop {
            // SAFETY: siginfo_t is plain data that sigwaitinfo fills.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `set` and `info` are valid for the call.
            let signal = unsafe { libc::sigwaitinfo(&set, &mut info) };
            if signal < 0 {
                continue;
            }
            // SAFETY: sigwaitinfo filled `info` for `signal`.
            let value = unsafe { info.si_value().sival_ptr as usize };
            match queued_level(info.si_code, value) {
                Some(index) if signal == libc::SIGUSR1 => log::set_max_level(LEVELS[index]),
                _ => step_level(signal == libc::SIGUSR1),
            }
            log::info!("log level set to {}", log::max_level());
        });
    if spawned.is_err() {
        // The handlers still change the level, silently.
        // SAFETY: restores this thread's mask with a valid set.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}

fn install_signal_handlers() {
    for signal in [libc::SIGUSR1, libc::SIGUSR2] {
        // SAFETY: an all-zero sigaction is a valid starting point; the fields
        // that matter are set below.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_level_signal
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as usize;
        action.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
        // SAFETY: installs a handler that only stores to an atomic (through
        // log::set_max_level), which is async-signal-safe; `action` is valid.
        let ret = unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
        if ret != 0 {
            log::warn!("cannot install the log level handler for signal {signal}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_maps_to_levels() {
        assert_eq!(level_for_verbosity(0), LevelFilter::Warn);
        assert_eq!(level_for_verbosity(1), LevelFilter::Info);
        assert_eq!(level_for_verbosity(2), LevelFilter::Debug);
        assert_eq!(level_for_verbosity(9), LevelFilter::Trace);
    }

    #[test]
    fn queued_values_name_absolute_levels() {
        assert_eq!(queued_level(libc::SI_QUEUE, 5), Some(4));
        assert_eq!(LEVELS[4], LevelFilter::Debug);
        assert_eq!(queued_level(libc::SI_QUEUE, 0), None);
        assert_eq!(queued_level(libc::SI_QUEUE, 7), None);
        assert_eq!(queued_level(libc::SI_USER, 5), None);
    }

    #[test]
    fn level_steps_stay_between_error_and_trace() {
        log::set_max_level(LevelFilter::Trace);
        step_level(true);
        assert_eq!(log::max_level(), LevelFilter::Trace);
        for _ in 0..10 {
            step_level(false);
        }
        assert_eq!(log::max_level(), LevelFilter::Error);
        step_level(true);
        assert_eq!(log::max_level(), LevelFilter::Warn);
    }
}
