//! The regression check: each series' newest build against the median of the builds
//! before it. A build is slow when its median total boot time exceeds threshold x that
//! baseline, or when none of its runs finished because they timed out (an image that
//! no longer boots is the worst regression of all).

use serde::Serialize;

use super::{BuildPoint, SeriesKey};
use crate::bench::{Phase, phases::median};

/// How strict the check is.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// A build is slow above this multiple of the baseline.
    pub threshold: f64,
    /// Builds before the newest whose medians make the baseline.
    pub window: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            threshold: 1.5,
            window: 5,
        }
    }
}

/// What the check says about one series.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// The newest build is within threshold x baseline.
    Ok {
        /// The newest build.
        newest: String,
        /// Its median total, seconds.
        newest_s: f64,
        /// Median of the previous builds' medians, seconds.
        baseline_s: f64,
        /// newest / baseline.
        ratio: f64,
    },
    /// The newest build is slow.
    Regression {
        /// The first slow build of the slow streak that ends with the newest.
        first_bad: String,
        /// Its date.
        first_bad_date: String,
        /// The build before it.
        last_good: Option<String>,
        /// Its date.
        last_good_date: Option<String>,
        /// The newest build's median total (`None`: every run timed out).
        newest_s: Option<f64>,
        /// The baseline before the first slow build, seconds.
        baseline_s: f64,
        /// newest / baseline (`None`: every run timed out).
        ratio: Option<f64>,
        /// The phase whose median grew the most.
        worst_phase: Option<Phase>,
    },
    /// Fewer than two builds with a measured median.
    NotEnoughHistory {
        /// Builds in the series.
        builds: usize,
    },
}

impl Verdict {
    /// True for [`Verdict::Regression`].
    pub fn is_regression(&self) -> bool {
        matches!(self, Verdict::Regression { .. })
    }
}

/// One series checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesCheck {
    /// The series.
    pub series: String,
    /// Its key.
    pub key: SeriesKey,
    /// The verdict.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// The baseline before build `i`: median of the medians of up to `window` earlier
/// builds that have one.
fn baseline(builds: &[BuildPoint], i: usize, window: usize) -> Option<f64> {
    median(
        builds[..i]
            .iter()
            .rev()
            .filter_map(BuildPoint::median_total)
            .take(window),
    )
}

fn slow(b: &BuildPoint, base: f64, threshold: f64) -> bool {
    match b.median_total() {
        Some(m) => m > threshold * base,
        None => b.timed_out > 0,
    }
}

/// The phase whose median in `newest` exceeds its baseline (median over the window
/// before `first_bad`) by the most seconds.
fn worst_phase(builds: &[BuildPoint], first_bad: usize, window: usize) -> Option<Phase> {
    let newest = builds.last()?;
    Phase::ALL
        .into_iter()
        .filter_map(|p| {
            let now = newest.stats.phases[p.index()]?.median;
            let before = median(
                builds[..first_bad]
                    .iter()
                    .rev()
                    .filter_map(|b| b.stats.phases[p.index()].map(|s| s.median))
                    .take(window),
            )?;
            Some((p, now - before))
        })
        .filter(|(_, grew)| *grew > 0.0)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(p, _)| p)
}

/// Check one series (builds in date order).
pub fn check_builds(builds: &[BuildPoint], opts: &CheckOptions) -> Verdict {
    let window = opts.window.max(1);
    let n = builds.len();
    let Some(newest) = builds.last() else {
        return Verdict::NotEnoughHistory { builds: 0 };
    };
    let Some(base) = baseline(builds, n - 1, window) else {
        return Verdict::NotEnoughHistory { builds: n };
    };
    if !slow(newest, base, opts.threshold) {
        let m = newest.median_total().unwrap_or(0.0);
        return Verdict::Ok {
            newest: newest.label.clone(),
            newest_s: m,
            baseline_s: base,
            ratio: m / base,
        };
    }
    // Walk back through the slow streak ending with the newest build, each build
    // judged against the builds before it.
    let mut first_bad = n - 1;
    while first_bad >= 1 {
        let i = first_bad - 1;
        match baseline(builds, i, window) {
            Some(b) if slow(&builds[i], b, opts.threshold) => first_bad = i,
            _ => break,
        }
    }
    let base = baseline(builds, first_bad, window).unwrap_or(base);
    let last_good = first_bad.checked_sub(1).map(|i| &builds[i]);
    Verdict::Regression {
        first_bad: builds[first_bad].label.clone(),
        first_bad_date: builds[first_bad].date.clone(),
        last_good: last_good.map(|b| b.label.clone()),
        last_good_date: last_good.map(|b| b.date.clone()),
        newest_s: newest.median_total(),
        baseline_s: base,
        ratio: newest.median_total().map(|m| m / base),
        worst_phase: worst_phase(builds, first_bad, window),
    }
}

/// Check every series.
pub fn check_all(series: &[(SeriesKey, Vec<BuildPoint>)], opts: &CheckOptions) -> Vec<SeriesCheck> {
    series
        .iter()
        .map(|(key, builds)| SeriesCheck {
            series: key.to_string(),
            key: key.clone(),
            verdict: check_builds(builds, opts),
        })
        .collect()
}

/// One line per series for the terminal.
pub fn describe(c: &SeriesCheck) -> String {
    match &c.verdict {
        Verdict::Ok {
            newest,
            newest_s,
            baseline_s,
            ratio,
        } => format!(
            "ok          {}: {newest} {newest_s:.2} s, baseline {baseline_s:.2} s ({ratio:.2}x)",
            c.series
        ),
        Verdict::Regression {
            first_bad,
            first_bad_date,
            last_good,
            last_good_date,
            newest_s,
            baseline_s,
            ratio,
            worst_phase,
        } => {
            let now = match (newest_s, ratio) {
                (Some(s), Some(r)) => {
                    format!("newest {s:.2} s vs baseline {baseline_s:.2} s ({r:.2}x)")
                }
                _ => format!("newest build: every run timed out (baseline {baseline_s:.2} s)"),
            };
            let good = match (last_good, last_good_date) {
                (Some(l), Some(d)) => format!("last good build {l} ({d})"),
                _ => "no good build before it".to_string(),
            };
            let phase = worst_phase
                .map(|p| format!("; most of it in {p}"))
                .unwrap_or_default();
            format!(
                "REGRESSION  {}: {now}; {good}; first bad build {first_bad} ({first_bad_date}){phase}",
                c.series
            )
        }
        Verdict::NotEnoughHistory { builds } => format!(
            "no verdict  {}: {builds} build(s), not enough history",
            c.series
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::series;
    use crate::history::tests::bench_of;

    /// A series of weekly builds with these median totals (each from 5 runs at ±2 %).
    fn weekly(medians: &[f64]) -> Vec<BuildPoint> {
        let benchmarks: Vec<_> = medians
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let date = crate::history::build::date_of_day(20_000 + 7 * i as i64);
                let totals: Vec<f64> = [0.98, 0.99, 1.0, 1.01, 1.02]
                    .iter()
                    .map(|f| m * f)
                    .collect();
                bench_of(&format!("build{i}"), &date, "c5.xlarge", &totals)
            })
            .collect();
        series(&benchmarks).remove(0).1
    }

    /// Deterministic noise: each value in [base*(1-amp), base*(1+amp)].
    fn noisy(n: usize, base: f64, amp: f64, seed: u64) -> Vec<f64> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n)
            .map(|_| base * (1.0 + amp * (2.0 * rng.f64() - 1.0)))
            .collect()
    }

    #[test]
    fn a_threefold_regression_is_caught_and_named() {
        let mut m = noisy(12, 25.0, 0.10, 1);
        m.push(75.0);
        let builds = weekly(&m);
        let v = check_builds(&builds, &CheckOptions::default());
        match &v {
            Verdict::Regression {
                first_bad,
                last_good,
                ratio,
                worst_phase,
                ..
            } => {
                assert_eq!(first_bad, "build12");
                assert_eq!(last_good.as_deref(), Some("build11"));
                assert!(ratio.unwrap() > 2.5, "{v:?}");
                // 40 % of the total is running -> closed in the synthetic runs.
                assert_eq!(*worst_phase, Some(Phase::RunningToClosed));
            }
            other => panic!("not caught: {other:?}"),
        }
    }

    #[test]
    fn ten_percent_noise_stays_quiet() {
        for seed in 0..200 {
            let builds = weekly(&noisy(15, 25.0, 0.10, seed));
            let v = check_builds(&builds, &CheckOptions::default());
            assert!(!v.is_regression(), "seed {seed}: {v:?}");
        }
    }

    #[test]
    fn the_streak_is_walked_back_to_the_first_bad_build() {
        // 5 GB -> 6 GB root disk: boot 3x slower for two weeks before anyone looked.
        let builds = weekly(&[25.0, 24.5, 25.5, 25.2, 24.8, 75.0, 76.0]);
        match check_builds(&builds, &CheckOptions::default()) {
            Verdict::Regression {
                first_bad,
                last_good,
                baseline_s,
                ..
            } => {
                assert_eq!(first_bad, "build5");
                assert_eq!(last_good.as_deref(), Some("build4"));
                assert!((baseline_s - 25.0).abs() < 0.6, "{baseline_s}");
            }
            other => panic!("not caught: {other:?}"),
        }
    }

    #[test]
    fn a_fix_is_not_a_regression_and_short_history_gives_no_verdict() {
        let builds = weekly(&[25.0, 25.0, 8.0]);
        assert!(matches!(
            check_builds(&builds, &CheckOptions::default()),
            Verdict::Ok { .. }
        ));
        let one = weekly(&[25.0]);
        assert_eq!(
            check_builds(&one, &CheckOptions::default()),
            Verdict::NotEnoughHistory { builds: 1 }
        );
    }

    #[test]
    fn a_build_that_never_boots_is_a_regression() {
        let mut builds = weekly(&[25.0, 25.0, 25.0]);
        let last = builds.last_mut().unwrap();
        last.stats = Default::default();
        last.timed_out = 5;
        let v = check_builds(&builds, &CheckOptions::default());
        assert!(v.is_regression(), "{v:?}");
        let line = describe(&SeriesCheck {
            series: "s".into(),
            key: SeriesKey {
                branch: None,
                flavour: None,
                fs: None,
                arch: None,
                instance_type: "t".into(),
                firmware: None,
            },
            verdict: v,
        });
        assert!(line.contains("every run timed out"), "{line}");
    }

    #[test]
    fn the_window_limits_the_baseline() {
        // Old builds were slow; the last three are fast: with window 3 the baseline is
        // the fast ones, and a return to the old speed is caught.
        let builds = weekly(&[60.0, 60.0, 60.0, 60.0, 20.0, 20.0, 20.0, 60.0]);
        let v = check_builds(
            &builds,
            &CheckOptions {
                threshold: 1.5,
                window: 3,
            },
        );
        assert!(v.is_regression(), "{v:?}");
    }
}
