//! A progress bar for long copies (`vmctl create -i`), drawn on stderr
//! only when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Least time between two redraws: about ten a second.
const REDRAW_EVERY: Duration = Duration::from_millis(100);
/// Cells of the bar between the brackets.
const BAR_WIDTH: usize = 30;

/// A progress bar on stderr (or, in tests, any writer).
///
/// # Invariants
/// Nothing is written when `out` is `None` ([`Progress::new`] when stderr
/// is not a terminal); once something was drawn, [`Progress::finish`] (or
/// drop) ends the line with exactly one newline.
#[derive(Debug)]
pub struct Progress<W: Write = std::io::Stderr> {
    out: Option<W>,
    drawn: bool,
    last: Option<Instant>,
    /// Redraws so far.
    draws: u64,
}

impl Progress {
    /// A bar that draws on stderr if that is a terminal.
    pub fn new() -> Self {
        let err = std::io::stderr();
        Self::to(err.is_terminal().then_some(err))
    }
}

impl<W: Write> Progress<W> {
    /// A bar that draws on `out`, or nowhere.
    fn to(out: Option<W>) -> Self {
        Self {
            out,
            drawn: false,
            last: None,
            draws: 0,
        }
    }

    /// Reports `done` of `total` bytes; redraws if enough time passed or
    /// the work is complete.
    pub fn update(&mut self, done: u64, total: u64) {
        let Some(out) = self.out.as_mut() else {
            return;
        };
        let now = Instant::now();
        let due = self
            .last
            .is_none_or(|t| now.duration_since(t) >= REDRAW_EVERY);
        if !due && done < total {
            return;
        }
        self.last = Some(now);
        self.drawn = true;
        self.draws += 1;
        // A progress bar that cannot be drawn is not worth failing for.
        let _ = write!(out, "\r{}", render(done, total, BAR_WIDTH));
        let _ = out.flush();
    }

    /// Ends the bar's line, if one was drawn.
    pub fn finish(&mut self) {
        if let (true, Some(out)) = (self.drawn, self.out.as_mut()) {
            self.drawn = false;
            let _ = writeln!(out);
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl<W: Write> Drop for Progress<W> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `[#####     ]  52% 1.2G/2.3G` with a bar of `width` cells.
pub fn render(done: u64, total: u64, width: usize) -> String {
    let done = done.min(total);
    let frac = if total == 0 {
        1.0
    } else {
        done as f64 / total as f64
    };
    let filled = ((frac * width as f64) as usize).min(width);
    format!(
        "[{}{}] {:3}% {}/{}",
        "#".repeat(filled),
        " ".repeat(width - filled),
        (frac * 100.0) as u32,
        human(done),
        human(total)
    )
}

/// A byte count with a binary suffix and one decimal: `512B`, `1.5K`,
/// `2.3G`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_half_way_fills_half_the_bar() {
        assert_eq!(
            render(1 << 29, 1 << 30, 10),
            "[#####     ]  50% 512.0M/1.0G"
        );
    }

    #[test]
    fn render_ends_full_and_clamps() {
        assert_eq!(render(10, 10, 4), "[####] 100% 10B/10B");
        assert_eq!(render(20, 10, 4), "[####] 100% 10B/10B");
        assert_eq!(render(0, 0, 2), "[##] 100% 0B/0B");
        assert_eq!(render(0, 1 << 20, 2), "[  ]   0% 0B/1.0M");
    }

    #[test]
    fn human_picks_the_unit() {
        assert_eq!(human(1023), "1023B");
        assert_eq!(human(1536), "1.5K");
        assert_eq!(human(5 << 40), "5.0T");
    }

    #[test]
    fn progress_disabled_never_draws() {
        let mut p = Progress::<Vec<u8>>::to(None);
        p.update(1, 2);
        p.update(2, 2);
        assert!(!p.drawn);
        assert_eq!(p.draws, 0);
    }

    #[test]
    fn progress_throttles_but_draws_the_end() {
        let mut p = Progress::to(Some(Vec::new()));
        p.update(1, 100);
        p.update(2, 100);
        assert_eq!(p.draws, 1, "redrawn within {REDRAW_EVERY:?}");
        p.update(100, 100);
        assert_eq!(p.draws, 2, "the end is always drawn");
        assert!(p.drawn);
        p.finish();
        p.finish();
        assert!(!p.drawn);
        let text = String::from_utf8(p.out.take().unwrap()).unwrap();
        let full = format!("\r{}", render(100, 100, BAR_WIDTH));
        assert_eq!(text, format!("\r{}{full}\n", render(1, 100, BAR_WIDTH)));
    }
}
