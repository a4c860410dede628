//! Progress on stderr: a bar with bytes, MiB/s and ETA on a terminal; a plain log line
//! every few seconds otherwise; nothing when quiet.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// An interactive bar (stderr is a terminal).
    Bar,
    /// Periodic log lines (stderr is a file or pipe).
    Log,
    /// Nothing.
    Quiet,
}

impl ProgressMode {
    /// The mode for this process: quiet if asked, a bar on a terminal, log lines otherwise.
    pub fn detect(quiet: bool) -> Self {
        if quiet {
            ProgressMode::Quiet
        } else if std::io::stderr().is_terminal() {
            ProgressMode::Bar
        } else {
            ProgressMode::Log
        }
    }
}

/// A byte counter shown according to a [`ProgressMode`].
pub struct Progress {
    label: String,
    bar: Option<ProgressBar>,
    log: Option<Mutex<LogState>>,
}

struct LogState {
    total: u64,
    start: Instant,
    last: Instant,
    done: u64,
    every: Duration,
}

impl Progress {
    /// Start showing progress of `label` towards `total` bytes.
    pub fn new(mode: ProgressMode, label: &str, total: u64) -> Progress {
        let now = Instant::now();
        let (bar, log) = match mode {
            ProgressMode::Bar => {
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                    )
                    .expect("valid template"),
                );
                bar.set_message(label.to_string());
                (Some(bar), None)
            }
            ProgressMode::Log => (
                None,
                Some(Mutex::new(LogState {
                    total,
                    start: now,
                    last: now,
                    done: 0,
                    every: log_interval(),
                })),
            ),
            ProgressMode::Quiet => (None, None),
        };
        Progress {
            label: label.to_string(),
            bar,
            log,
        }
    }

    /// Grow the total by `bytes` (when the amount of work is learnt as it goes).
    pub fn inc_total(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc_length(bytes);
        }
        if let Some(log) = &self.log {
            log.lock().expect("progress lock").total += bytes;
        }
    }

    /// Count `bytes` more as done.
    pub fn inc(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
        if let Some(log) = &self.log {
            let mut s = log.lock().expect("progress lock");
            s.done += bytes;
            let now = Instant::now();
            if now.duration_since(s.last) >= s.every {
                s.last = now;
                self.log_line(&s, now);
            }
        }
    }

    fn log_line(&self, s: &LogState, now: Instant) {
        let secs = now.duration_since(s.start).as_secs_f64().max(1e-3);
        let rate = s.done as f64 / secs;
        let pct = if s.total > 0 {
            100.0 * s.done as f64 / s.total as f64
        } else {
            100.0
        };
        let eta = if rate > 0.0 {
            format!("{:.0}s", (s.total.saturating_sub(s.done)) as f64 / rate)
        } else {
            "?".into()
        };
        tracing::info!(
            "{}: {:.1}/{:.1} MiB ({pct:.0}%), {:.1} MiB/s, ETA {eta}",
            self.label,
            s.done as f64 / MIB,
            s.total as f64 / MIB,
            rate / MIB
        );
    }

    /// Stop showing progress.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if let Some(log) = &self.log {
            let s = log.lock().expect("progress lock");
            self.log_line(&s, Instant::now());
        }
    }
}

const MIB: f64 = 1048576.0;

fn log_interval() -> Duration {
    std::env::var("EC2AMI_PROGRESS_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(5))
}
