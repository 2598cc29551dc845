//! Progress of a long replay: a redrawn bar with events done, events/s and ETA on a
//! terminal, a plain line every few seconds otherwise (logs, CI, `kubectl logs`).
//! Written to stderr, so stdout keeps only the final summary.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// A bar redrawn in place.
    Bar,
    /// A plain line every few seconds.
    Lines,
    /// Nothing.
    Off,
}

const BAR_REDRAW: Duration = Duration::from_millis(100);
const LINE_EVERY: Duration = Duration::from_secs(5);
const BAR_WIDTH: usize = 30;

/// One progress display.
#[derive(Debug)]
pub struct Progress {
    mode: ProgressMode,
    total: u64,
    done: u64,
    started: Instant,
    last_shown: Option<Instant>,
}

impl Progress {
    /// `total` is the number of events expected (the log may grow meanwhile).
    pub fn new(mode: ProgressMode, total: u64) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Lines,
            other => other,
        };
        Self {
            mode,
            total,
            done: 0,
            started: Instant::now(),
            last_shown: None,
        }
    }

    pub fn update(&mut self, done: u64) {
        self.done = done;
        self.total = self.total.max(done);
        let every = match self.mode {
            ProgressMode::Bar => BAR_REDRAW,
            ProgressMode::Lines => LINE_EVERY,
            ProgressMode::Auto | ProgressMode::Off => return,
        };
        if self.last_shown.is_some_and(|at| at.elapsed() < every) {
            return;
        }
        self.last_shown = Some(Instant::now());
        self.show();
    }

    /// Shows the final state (and ends the bar's line).
    pub fn finish(&mut self, done: u64) {
        self.done = done;
        self.total = self.total.max(done);
        match self.mode {
            ProgressMode::Bar => {
                self.show();
                eprintln!();
            }
            ProgressMode::Lines => self.show(),
            ProgressMode::Auto | ProgressMode::Off => {}
        }
    }

    fn show(&self) {
        let status = status_line(self.done, self.total, self.started.elapsed());
        let mut stderr = std::io::stderr().lock();
        // Progress is best effort: a closed stderr must not fail the replay.
        let _ = match self.mode {
            ProgressMode::Bar => {
                let filled = (self.done * BAR_WIDTH as u64)
                    .checked_div(self.total)
                    .map_or(BAR_WIDTH, |filled| {
                        usize::try_from(filled).unwrap_or(BAR_WIDTH)
                    });
                write!(
                    stderr,
                    "\r\x1b[2K[{}{}] {status}",
                    "#".repeat(filled),
                    "-".repeat(BAR_WIDTH - filled.min(BAR_WIDTH))
                )
            }
            _ => writeln!(stderr, "replay: {status}"),
        };
        let _ = stderr.flush();
    }
}

/// "450,000/1,000,000 events (45.0%) · 52,310 events/s · ETA 0:11".
pub fn status_line(done: u64, total: u64, elapsed: Duration) -> String {
    let rate = per_second(done, elapsed);
    let percent = if total == 0 {
        100.0
    } else {
        done as f64 * 100.0 / total as f64
    };
    let eta = if rate > 0.0 {
        format_duration(Duration::from_secs_f64(
            total.saturating_sub(done) as f64 / rate,
        ))
    } else {
        "?".to_owned()
    };
    format!(
        "{}/{} events ({percent:.1}%) · {} events/s · ETA {eta}",
        thousands(done),
        thousands(total),
        thousands(rate.round() as u64)
    )
}

/// Events per second over `elapsed`.
pub fn per_second(events: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        events as f64 / seconds
    } else {
        0.0
    }
}

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 75 s → "1:15", 3700 s → "1:01:40".
pub fn format_duration(duration: Duration) -> String {
    let total = duration.as_secs();
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    if hours > 0 {
        format!("{hours}:{minutes:02}:{seconds:02}")
    } else {
        format!("{minutes}:{seconds:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_durations_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(format_duration(Duration::from_secs(75)), "1:15");
        assert_eq!(format_duration(Duration::from_secs(3_700)), "1:01:40");
    }

    #[test]
    fn the_status_line_has_rate_and_eta() {
        let line = status_line(500_000, 1_000_000, Duration::from_secs(10));
        assert_eq!(
            line,
            "500,000/1,000,000 events (50.0%) · 50,000 events/s · ETA 0:10"
        );
        assert!(status_line(0, 10, Duration::ZERO).ends_with("ETA ?"));
    }
}
