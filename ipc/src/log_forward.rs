//! Another process's output, passed on under its name: the monitor reads
//! each device process's stdout and stderr through a pipe (the device
//! never holds the monitor's own stderr, which is vmd's log) and logs
//! every line as that device's.
//!
//! A sandboxed device may be in a guest's hands, so its lines are
//! untrusted: each is cut at [`MAX_LINE`] bytes, control characters are
//! shown as `\xNN` (no terminal escapes, no forged line breaks), and a
//! line is passed on as written only if it starts with the device's own
//! name and pid as its logger writes them (`dev-block[42] `). Anything
//! else (a panic message, a line claiming to be vmd's) is logged as that
//! device's `stderr:` text, at warning level. So every line in the log
//! that names a device came from that device, and no line from a device
//! names anything else first.

use std::io::Read;

/// Longest line passed on; the rest of a longer line follows as another.
pub const MAX_LINE: usize = 4096;

/// One line of a process's output, made safe and classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// Its level: the one its logger wrote, or warning for other output.
    pub level: log::Level,
    /// The line for stderr, starting with the process's name and pid.
    pub stderr_line: String,
    /// The text for syslog, after the tag.
    pub text: String,
}

/// Shows control characters (but tab) as `\xNN`; invalid UTF-8 as U+FFFD.
fn sanitize(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if (c.is_control() && c != '\t') || c == '\u{2028}' || c == '\u{2029}' {
            for byte in c.to_string().bytes() {
                out.push_str(&format!("\\x{byte:02x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses `"  12.345678 INFO  target: message"` (the logger's format after
/// the name) into its level and `"target: message"`.
fn parse_record(rest: &str) -> Option<(log::Level, &str)> {
    let rest = rest.trim_start();
    let (stamp, rest) = rest.split_once(' ')?;
    let (secs, micros) = stamp.split_once('.')?;
    if secs.is_empty()
        || micros.len() != 6
        || !secs
            .bytes()
            .chain(micros.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let rest = rest.trim_start();
    let (level, message) = rest.split_once(' ')?;
    let level: log::Level = level.parse().ok()?;
    Some((level, message.trim_start()))
}

/// Classifies one line `bytes` (no newline) of process `program[pid]`.
pub fn classify(program: &str, pid: u32, bytes: &[u8]) -> Forwarded {
    let text = sanitize(bytes);
    let tag = format!("{program}[{pid}]");
    if let Some(rest) = text.strip_prefix(&tag).filter(|r| r.starts_with(' ')) {
        if let Some((level, message)) = parse_record(rest) {
            return Forwarded {
                level,
                stderr_line: format!("{tag}{rest}"),
                text: message.to_string(),
            };
        }
    }
    Forwarded {
        level: log::Level::Warn,
        stderr_line: format!("{tag} {} WARN  stderr: {text}", crate::logger::stamp()),
        text: format!("stderr: {text}"),
    }
}

/// Passes on every line `output` yields as process `program[pid]`'s,
/// until it ends (the process and every copy of its write end are gone).
pub fn forward(program: &str, pid: u32, output: impl Read) {
    let tag = format!("{program}[{pid}]");
    each_line(program, pid, output, |line| {
        crate::logger::emit_foreign(line.level, &line.stderr_line, &tag, &line.text)
    });
}

/// Calls `emit` with every line of `output`, classified, until it ends.
fn each_line(program: &str, pid: u32, mut output: impl Read, mut sink: impl FnMut(Forwarded)) {
    let mut emit = |line: &[u8]| sink(classify(program, pid, line));
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut buffer = [0u8; 4096];
    loop {
        let n = match output.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for &byte in &buffer[..n] {
            if byte == b'\n' {
                emit(&line);
                line.clear();
            } else {
                line.push(byte);
                if line.len() == MAX_LINE {
                    emit(&line);
                    line.clear();
                }
            }
        }
    }
    if !line.is_empty() {
        emit(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_of_its_own_logger_passes_as_written_with_its_level() {
        let line = b"dev-block[42]    0.001271 INFO  dev_backend::sandbox: sandboxed";
        let out = classify("dev-block", 42, line);
        assert_eq!(out.level, log::Level::Info);
        assert_eq!(out.stderr_line, String::from_utf8_lossy(line));
        assert_eq!(out.text, "dev_backend::sandbox: sandboxed");
    }

    #[test]
    fn a_line_naming_another_process_is_this_ones_stderr() {
        for forged in [
            &b"vmd[1]    0.000001 ERROR vmm_monitor::vmd: vm 2 stopped"[..],
            b"dev-block[43]    0.000001 INFO  x: another pid",
            b"dev-blockX[42]    0.000001 INFO  x: a longer name",
            b"dev-block[42] not a record",
            b"thread 'main' panicked at src/main.rs:1:1",
        ] {
            let out = classify("dev-block", 42, forged);
            assert_eq!(out.level, log::Level::Warn, "{out:?}");
            assert!(out.stderr_line.starts_with("dev-block[42] "), "{out:?}");
            assert!(out.stderr_line.contains(" WARN  stderr: "), "{out:?}");
            assert!(out.text.starts_with("stderr: "), "{out:?}");
        }
    }

    #[test]
    fn control_characters_cannot_forge_lines_or_drive_a_terminal() {
        let out = classify(
            "dev-net",
            7,
            b"dev-net[7]    0.000001 INFO  x: a\rvmd[1] forged\x1b[2J\x00 end",
        );
        assert!(!out.stderr_line.contains(['\r', '\x1b', '\0']), "{out:?}");
        assert!(out.stderr_line.contains("\\x0d") && out.stderr_line.contains("\\x1b"));
        let lossy = classify("dev-net", 7, b"\xff\xfe bytes");
        assert!(lossy.text.contains('\u{fffd}'), "{lossy:?}");
    }

    #[test]
    fn output_is_split_into_lines_and_long_lines_are_cut() {
        // Every line arrives, a long one in MAX_LINE pieces, a last one
        // without its newline too.
        let mut input = b"one\ntwo\n".to_vec();
        input.extend_from_slice(&vec![b'a'; MAX_LINE + 10]);
        input.extend_from_slice(b"\nlast");
        let mut texts = Vec::new();
        each_line("dev-console", 9, &input[..], |l| texts.push(l.text));
        let lengths: Vec<usize> = texts.iter().map(|t| t.len() - "stderr: ".len()).collect();
        assert_eq!(lengths, [3, 3, MAX_LINE, 10, 4], "{texts:?}");
        assert!(texts[0].ends_with("one") && texts[4].ends_with("last"));
    }
}
