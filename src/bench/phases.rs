//! The four phases of a boot, as ec2-boot-bench defines them, computed from the moments
//! a run observed; statistics over runs; the text ec2-boot-bench prints. All pure.

use std::fmt;

use serde::Serialize;

/// One phase of a boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The RunInstances API call itself.
    RunInstances,
    /// From RunInstances' answer until DescribeInstances says `running` with an address.
    PendingToRunning,
    /// From `running` until a SYN is answered by RST (the network stack is up).
    RunningToClosed,
    /// From the first RST until a SYN is answered by SYN/ACK (sshd is up).
    ClosedToOpen,
}

impl Phase {
    /// The four phases in order.
    pub const ALL: [Phase; 4] = [
        Phase::RunInstances,
        Phase::PendingToRunning,
        Phase::RunningToClosed,
        Phase::ClosedToOpen,
    ];

    /// Position in [`Phase::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The words ec2-boot-bench prints before the figure.
    pub fn ec2_boot_bench_label(self) -> &'static str {
        match self {
            Phase::RunInstances => "RunInstances API call took",
            Phase::PendingToRunning => "Moving from pending to running took",
            Phase::RunningToClosed => "Moving from running to port closed took",
            Phase::ClosedToOpen => "Moving from port closed to port open took",
        }
    }

    /// A short name for tables and plots.
    pub fn short(self) -> &'static str {
        match self {
            Phase::RunInstances => "RunInstances",
            Phase::PendingToRunning => "pending -> running",
            Phase::RunningToClosed => "running -> port closed",
            Phase::ClosedToOpen => "port closed -> port open",
        }
    }

    /// The snake_case name used in JSON and the database.
    pub fn key(self) -> &'static str {
        match self {
            Phase::RunInstances => "run_instances",
            Phase::PendingToRunning => "pending_to_running",
            Phase::RunningToClosed => "running_to_closed",
            Phase::ClosedToOpen => "closed_to_open",
        }
    }

    /// The phase named by [`Phase::key`].
    pub fn from_key(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.key() == s)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

/// The moments one run observed, in seconds from just before the RunInstances call
/// that launched the instance.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Marks {
    /// RunInstances answered.
    pub launched: Option<f64>,
    /// DescribeInstances said `running` with an address to probe.
    pub running: Option<f64>,
    /// The port answered RST (network stack up).
    pub closed: Option<f64>,
    /// The port answered SYN/ACK.
    pub open: Option<f64>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every phase measured.
    Ok,
    /// This phase did not end within the per-phase timeout.
    TimedOut(Phase),
    /// An API call failed or the instance died; the message says which.
    Failed(String),
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

impl RunStatus {
    /// `ok`, `timed_out`, `failed` or `interrupted`.
    pub fn key(&self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::TimedOut(_) => "timed_out",
            RunStatus::Failed(_) => "failed",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

/// The four phase durations of one run, in seconds; `None` where the phase did not
/// end (timed out, failed, or never reached). Never a made-up number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Phases(pub [Option<f64>; 4]);

impl Phases {
    /// The phases from the observed moments. As in ec2-boot-bench, a port seen open
    /// without ever being seen closed passed through "closed" too fast to be seen:
    /// closed is taken to be open.
    pub fn from_marks(m: &Marks) -> Phases {
        let closed = m.closed.or(m.open);
        let span = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some((b - a).max(0.0)),
            _ => None,
        };
        Phases([
            m.launched,
            span(m.launched, m.running),
            span(m.running, closed),
            span(closed, m.open),
        ])
    }

    /// The duration of `phase`.
    pub fn get(&self, phase: Phase) -> Option<f64> {
        self.0[phase.index()]
    }

    /// Launch to port open, when every phase ended.
    pub fn total(&self) -> Option<f64> {
        self.0.iter().copied().sum()
    }

    /// Every phase measured.
    pub fn complete(&self) -> bool {
        self.0.iter().all(Option::is_some)
    }
}

/// Smallest, median and largest of some figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Smallest.
    pub min: f64,
    /// Median (mean of the two middle figures for an even count).
    pub median: f64,
    /// Largest.
    pub max: f64,
    /// How many figures.
    pub count: usize,
}

impl Summary {
    /// The summary of `values` (`None` when empty). NaNs are ignored.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Summary> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            min: v[0],
            median,
            max: v[n - 1],
            count: n,
        })
    }
}

/// The median of `values` (`None` when empty).
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    Summary::of(values).map(|s| s.median)
}

/// Per-phase and total summaries over the complete runs given.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PhaseSummary {
    /// One per phase, in [`Phase::ALL`] order (`None`: no complete run).
    pub phases: [Option<Summary>; 4],
    /// Of the totals.
    pub total: Option<Summary>,
}

impl PhaseSummary {
    /// Summaries over the runs whose phases are all measured.
    pub fn of<'a>(runs: impl IntoIterator<Item = &'a Phases>) -> PhaseSummary {
        let complete: Vec<&Phases> = runs.into_iter().filter(|p| p.complete()).collect();
        let mut out = PhaseSummary::default();
        for phase in Phase::ALL {
            out.phases[phase.index()] = Summary::of(complete.iter().filter_map(|p| p.get(phase)));
        }
        out.total = Summary::of(complete.iter().filter_map(|p| p.total()));
        out
    }
}

/// One phase as ec2-boot-bench prints it (`%0.6f s`), or why there is no figure.
pub fn phase_line(phase: Phase, phases: &Phases, status: &RunStatus) -> String {
    let label = phase.ec2_boot_bench_label();
    match phases.get(phase) {
        Some(s) => format!("{label}: {s:.6} s"),
        None => match status {
            RunStatus::TimedOut(p) if *p == phase => format!("{label}: timed out"),
            RunStatus::Failed(_) if first_missing(phases) == Some(phase) => {
                format!("{label}: failed")
            }
            RunStatus::Interrupted if first_missing(phases) == Some(phase) => {
                format!("{label}: interrupted")
            }
            _ => format!("{label}: not reached"),
        },
    }
}

fn first_missing(phases: &Phases) -> Option<Phase> {
    Phase::ALL.into_iter().find(|p| phases.get(*p).is_none())
}

/// The four lines ec2-boot-bench prints for one run.
pub fn ec2_boot_bench_lines(phases: &Phases, status: &RunStatus) -> String {
    Phase::ALL
        .iter()
        .map(|p| phase_line(*p, phases, status))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A min / median / max table per phase and total.
pub fn summary_table(summary: &PhaseSummary) -> String {
    let mut rows = vec![[
        "phase".to_string(),
        "min s".to_string(),
        "median s".to_string(),
        "max s".to_string(),
    ]];
    let cells = |s: &Option<Summary>| match s {
        Some(s) => [
            format!("{:.3}", s.min),
            format!("{:.3}", s.median),
            format!("{:.3}", s.max),
        ],
        None => ["-".to_string(), "-".to_string(), "-".to_string()],
    };
    for phase in Phase::ALL {
        let [a, b, c] = cells(&summary.phases[phase.index()]);
        rows.push([phase.short().to_string(), a, b, c]);
    }
    let [a, b, c] = cells(&summary.total);
    rows.push(["total".to_string(), a, b, c]);
    let width = |i: usize| rows.iter().map(|r| r[i].len()).max().unwrap_or(0);
    let w = [width(0), width(1), width(2), width(3)];
    rows.iter()
        .map(|r| {
            format!(
                "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = w[0],
                w1 = w[1],
                w2 = w[2],
                w3 = w[3]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn phases_from_marks() {
        let p = Phases::from_marks(&Marks {
            launched: Some(1.5),
            running: Some(8.0),
            closed: Some(20.0),
            open: Some(26.5),
        });
        assert!(close(p.get(Phase::RunInstances), 1.5));
        assert!(close(p.get(Phase::PendingToRunning), 6.5));
        assert!(close(p.get(Phase::RunningToClosed), 12.0));
        assert!(close(p.get(Phase::ClosedToOpen), 6.5));
        assert!(close(p.total(), 26.5));
        assert!(p.complete());
    }

    #[test]
    fn open_without_closed_means_closed_equals_open() {
        let p = Phases::from_marks(&Marks {
            launched: Some(1.0),
            running: Some(2.0),
            closed: None,
            open: Some(5.0),
        });
        assert!(close(p.get(Phase::RunningToClosed), 3.0));
        assert!(close(p.get(Phase::ClosedToOpen), 0.0));
    }

    #[test]
    fn a_phase_that_did_not_end_has_no_figure() {
        let p = Phases::from_marks(&Marks {
            launched: Some(1.0),
            running: Some(2.0),
            closed: None,
            open: None,
        });
        assert_eq!(p.get(Phase::RunningToClosed), None);
        assert_eq!(p.get(Phase::ClosedToOpen), None);
        assert_eq!(p.total(), None);
        let text = ec2_boot_bench_lines(&p, &RunStatus::TimedOut(Phase::RunningToClosed));
        assert_eq!(
            text,
            "RunInstances API call took: 1.000000 s\n\
             Moving from pending to running took: 1.000000 s\n\
             Moving from running to port closed took: timed out\n\
             Moving from port closed to port open took: not reached"
        );
    }

    #[test]
    fn lines_match_ec2_boot_bench() {
        let p = Phases([Some(1.543152), Some(6.9), Some(12.25), Some(0.5)]);
        let text = ec2_boot_bench_lines(&p, &RunStatus::Ok);
        assert_eq!(
            text.lines().next().unwrap(),
            "RunInstances API call took: 1.543152 s"
        );
        assert_eq!(
            text.lines().nth(3).unwrap(),
            "Moving from port closed to port open took: 0.500000 s"
        );
    }

    #[test]
    fn summary_statistics() {
        let s = Summary::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max, s.count), (1.0, 2.0, 3.0, 3));
        assert_eq!(Summary::of([4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Summary::of([]), None);
        assert_eq!(median([f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn summary_skips_incomplete_runs() {
        let runs = [
            Phases([Some(1.0), Some(2.0), Some(3.0), Some(4.0)]),
            Phases([Some(1.0), Some(2.0), None, None]),
            Phases([Some(3.0), Some(2.0), Some(5.0), Some(6.0)]),
        ];
        let s = PhaseSummary::of(&runs);
        let total = s.total.unwrap();
        assert_eq!((total.min, total.max, total.count), (10.0, 16.0, 2));
        assert_eq!(s.phases[0].unwrap().median, 2.0);
        let table = summary_table(&s);
        assert!(table.contains("running -> port closed"), "{table}");
        assert!(
            table.lines().last().unwrap().starts_with("total"),
            "{table}"
        );
    }

    #[test]
    fn phase_keys_round_trip() {
        for p in Phase::ALL {
            assert_eq!(Phase::from_key(p.key()), Some(p));
        }
    }
}
