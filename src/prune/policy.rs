//! The retention policy: per series, how many of the newest images to keep and the ages
//! that protect or expire one; from command-line flags or a TOML file with per-series
//! rules. [`decide`] applies a rule to one series; it is pure and knows nothing of AWS.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::series::Glob;
use crate::units::parse_duration;

/// Images younger than this are never touched unless the policy says otherwise.
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(86_400);

/// A policy that cannot be used; nothing has been looked at or deleted.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file cannot be read.
    #[error("cannot read policy file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The policy file is not valid TOML or not the expected shape.
    #[error("policy file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value makes no sense (from the file or the flags).
    #[error("{0}")]
    Invalid(String),
}

/// How to treat the images of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The series it applies to (`None`: the defaults, for series no rule matches).
    pub series: Option<Glob>,
    /// Keep this many of the newest.
    pub keep: Option<u32>,
    /// Keep every image (a RELEASE series).
    pub keep_all: bool,
    /// Never touch an image younger than this.
    pub min_age: Duration,
    /// Delete images older than this, even among the newest `keep`.
    pub max_age: Option<Duration>,
    /// Staged retirement: an image the policy lets go is first disabled, once older
    /// than this (from its build date; `Some(0)`: at once).
    pub disable_after: Option<Duration>,
    /// Staged retirement: a disabled image is deregistered this long after it was
    /// disabled.
    pub delete_after: Option<Duration>,
}

impl Rule {
    /// True when images are disabled before they are deleted.
    pub fn staged(&self) -> bool {
        self.disable_after.is_some() || self.delete_after.is_some()
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.keep_all {
            return f.write_str("keep all");
        }
        let mut parts = Vec::new();
        if let Some(k) = self.keep {
            parts.push(format!("keep {k}"));
        }
        if let Some(m) = self.max_age {
            parts.push(format!("max-age {}", human(m)));
        }
        if parts.is_empty() {
            parts.push("no keep or max-age: keeps everything".into());
        }
        parts.push(format!("min-age {}", human(self.min_age)));
        if self.staged() {
            parts.push(format!(
                "disable after {}",
                human(self.disable_after.unwrap_or_default())
            ));
            parts.push(match self.delete_after {
                Some(d) => format!("delete {} after disabling", human(d)),
                None => "never delete".into(),
            });
        }
        f.write_str(&parts.join(", "))
    }
}

/// The whole policy: rules tried in order, then the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// For series that no rule matches (and what rules inherit).
    pub defaults: Rule,
    /// Per-series rules; the first whose glob matches the series applies.
    pub rules: Vec<Rule>,
}

/// The policy options of the command line.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--keep N` (checked here, so that a negative number gets a clear message).
    pub keep: Option<i64>,
    /// `--min-age`.
    pub min_age: Option<Duration>,
    /// `--max-age`.
    pub max_age: Option<Duration>,
    /// `--disable-after`.
    pub disable_after: Option<Duration>,
    /// `--delete-after`.
    pub delete_after: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    keep: Option<i64>,
    min_age: Option<String>,
    max_age: Option<String>,
    disable_after: Option<String>,
    delete_after: Option<String>,
    #[serde(default, rename = "rule")]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    series: String,
    keep: Option<i64>,
    #[serde(default)]
    keep_all: bool,
    min_age: Option<String>,
    max_age: Option<String>,
    disable_after: Option<String>,
    delete_after: Option<String>,
}

/// A keep count: 0 or more.
pub fn check_keep(n: i64, what: &str) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| {
        if n < 0 {
            format!("{what} must be 0 or more, not {n}")
        } else {
            format!("{what} {n} is too large")
        }
    })
}

fn age(s: &Option<String>, what: &str) -> Result<Option<Duration>, String> {
    s.as_deref()
        .map(|s| parse_duration(s).map_err(|e| format!("{what}: {e}")))
        .transpose()
}

impl Policy {
    /// The policy from the command-line flags and, if given, a policy file (`path` and
    /// its text). Flags override the file's top-level defaults; rules inherit what they
    /// do not set from the defaults.
    pub fn build(flags: &Flags, file: Option<(&Path, &str)>) -> Result<Policy, PolicyError> {
        let invalid = PolicyError::Invalid;
        let raw = match file {
            Some((path, text)) => {
                Some(
                    toml::from_str::<RawPolicy>(text).map_err(|e| PolicyError::Parse {
                        path: path.to_owned(),
                        message: crate::validate_input::toml_error(text, &e),
                    })?,
                )
            }
            None => None,
        };
        let in_file = |e: String| match file {
            Some((path, _)) => PolicyError::Parse {
                path: path.to_owned(),
                message: e,
            },
            None => invalid(e),
        };
        let keep = match flags.keep {
            Some(k) => Some(check_keep(k, "--keep").map_err(invalid)?),
            None => match raw.as_ref().and_then(|r| r.keep) {
                Some(k) => Some(check_keep(k, "keep").map_err(in_file)?),
                None => None,
            },
        };
        let min_age = match flags.min_age {
            Some(d) => Some(d),
            None => {
                age(&raw.as_ref().and_then(|r| r.min_age.clone()), "min_age").map_err(in_file)?
            }
        };
        let max_age = match flags.max_age {
            Some(d) => Some(d),
            None => {
                age(&raw.as_ref().and_then(|r| r.max_age.clone()), "max_age").map_err(in_file)?
            }
        };
        let disable_after = match flags.disable_after {
            Some(d) => Some(d),
            None => age(
                &raw.as_ref().and_then(|r| r.disable_after.clone()),
                "disable_after",
            )
            .map_err(in_file)?,
        };
        let delete_after = match flags.delete_after {
            Some(d) => Some(d),
            None => age(
                &raw.as_ref().and_then(|r| r.delete_after.clone()),
                "delete_after",
            )
            .map_err(in_file)?,
        };
        let defaults = Rule {
            series: None,
            keep,
            keep_all: false,
            min_age: min_age.unwrap_or(DEFAULT_MIN_AGE),
            max_age,
            disable_after,
            delete_after,
        };
        let mut rules = Vec::new();
        for (i, r) in raw
            .map(|r| r.rules)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let what = format!("rule {} (series `{}`)", i + 1, r.series);
            let err = |m: String| in_file(format!("{what}: {m}"));
            if r.keep_all && r.keep.is_some() {
                return Err(err("give keep or keep_all, not both".into()));
            }
            let keep = r
                .keep
                .map(|k| check_keep(k, "keep"))
                .transpose()
                .map_err(err)?;
            if !r.keep_all
                && keep.is_none()
                && r.max_age.is_none()
                && r.min_age.is_none()
                && r.disable_after.is_none()
                && r.delete_after.is_none()
            {
                return Err(err(
                    "sets nothing: give keep, keep_all, min_age, max_age, disable_after or \
                     delete_after"
                        .into(),
                ));
            }
            rules.push(Rule {
                series: Some(Glob::new(&r.series)),
                keep: if r.keep_all {
                    None
                } else {
                    keep.or(defaults.keep)
                },
                keep_all: r.keep_all,
                min_age: age(&r.min_age, "min_age")
                    .map_err(err)?
                    .unwrap_or(defaults.min_age),
                max_age: if r.keep_all {
                    None
                } else {
                    age(&r.max_age, "max_age")
                        .map_err(err)?
                        .or(defaults.max_age)
                },
                disable_after: age(&r.disable_after, "disable_after")
                    .map_err(err)?
                    .or(defaults.disable_after),
                delete_after: age(&r.delete_after, "delete_after")
                    .map_err(err)?
                    .or(defaults.delete_after),
            });
        }
        if rules.is_empty() && defaults.keep.is_none() && defaults.max_age.is_none() {
            return Err(invalid(
                "no retention policy: give --keep N, --max-age DURATION or --policy FILE".into(),
            ));
        }
        Ok(Policy { defaults, rules })
    }

    /// The rule for `series`: the first rule whose glob matches, else the defaults.
    pub fn rule_for(&self, series: &str) -> &Rule {
        self.rules
            .iter()
            .find(|r| r.series.as_ref().is_some_and(|g| g.matches(series)))
            .unwrap_or(&self.defaults)
    }
}

/// One image of a series, as [`decide`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aged {
    /// When it was built (the date in its name, else its creation), epoch seconds.
    pub built: i64,
    /// The later of that and its creation: min-age counts from here, so a copy made
    /// yesterday of an old build is still young.
    pub youngest: i64,
}

/// Why an image is kept or deleted by the policy (guards come later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Among the `keep` newest.
    Newest(u32),
    /// Younger than min-age.
    Young(Duration),
    /// The rule keeps every image.
    KeepAll,
    /// The rule has neither keep nor max-age.
    NoLimit,
    /// Beyond the `keep` newest (and older than min-age).
    BeyondKeep(u32),
    /// Older than max-age (and than min-age).
    Expired(Duration),
}

impl Verdict {
    /// True when the policy deletes the image.
    pub fn deletes(&self) -> bool {
        matches!(self, Verdict::BeyondKeep(_) | Verdict::Expired(_))
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Newest(1) => write!(f, "the newest"),
            Verdict::Newest(k) => write!(f, "one of the {k} newest"),
            Verdict::Young(d) => write!(f, "younger than min-age {}", human(*d)),
            Verdict::KeepAll => write!(f, "the rule keeps every image"),
            Verdict::NoLimit => write!(f, "the rule sets no keep or max-age"),
            Verdict::BeyondKeep(0) => write!(f, "keep 0"),
            Verdict::BeyondKeep(1) => write!(f, "older than the newest"),
            Verdict::BeyondKeep(k) => write!(f, "older than the {k} newest"),
            Verdict::Expired(d) => write!(f, "older than max-age {}", human(*d)),
        }
    }
}

/// Apply `rule` to one series, `images` newest first, at time `now` (epoch seconds).
pub fn decide(rule: &Rule, images: &[Aged], now: i64) -> Vec<Verdict> {
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    images
        .iter()
        .enumerate()
        .map(|(rank, img)| {
            if now.saturating_sub(img.youngest) < secs(rule.min_age) {
                return Verdict::Young(rule.min_age);
            }
            if rule.keep_all {
                return Verdict::KeepAll;
            }
            if let Some(max) = rule.max_age
                && now.saturating_sub(img.built) > secs(max)
            {
                return Verdict::Expired(max);
            }
            match rule.keep {
                Some(k) if (rank as u64) < u64::from(k) => Verdict::Newest(k),
                Some(k) => Verdict::BeyondKeep(k),
                None => Verdict::NoLimit,
            }
        })
        .collect()
}

/// A duration as written on the command line: `3d`, `12h`, `90m`, `45s`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_800_000_000;

    fn weekly(n: usize) -> Vec<Aged> {
        (0..n)
            .map(|i| {
                let t = NOW - DAY - 7 * DAY * i as i64;
                Aged {
                    built: t,
                    youngest: t,
                }
            })
            .collect()
    }

    fn flags(keep: Option<i64>) -> Flags {
        Flags {
            keep,
            ..Flags::default()
        }
    }

    #[test]
    fn keep_n_keeps_the_newest_and_min_age_protects_the_young() {
        let mut p = Policy::build(&flags(Some(2)), None).unwrap();
        p.defaults.min_age = Duration::from_secs(10 * DAY as u64);
        let v = decide(&p.defaults, &weekly(5), NOW);
        assert_eq!(
            v,
            vec![
                Verdict::Young(p.defaults.min_age),
                Verdict::Young(p.defaults.min_age),
                Verdict::BeyondKeep(2),
                Verdict::BeyondKeep(2),
                Verdict::BeyondKeep(2),
            ]
        );
        p.defaults.min_age = Duration::ZERO;
        let v = decide(&p.defaults, &weekly(3), NOW);
        assert_eq!(
            v,
            vec![
                Verdict::Newest(2),
                Verdict::Newest(2),
                Verdict::BeyondKeep(2)
            ]
        );
        assert_eq!(v.iter().filter(|v| v.deletes()).count(), 1);
    }

    #[test]
    fn a_fresh_copy_of_an_old_build_is_young() {
        let p = Policy::build(&flags(Some(0)), None).unwrap();
        let old_copy = Aged {
            built: NOW - 100 * DAY,
            youngest: NOW - 3_600,
        };
        assert_eq!(
            decide(&p.defaults, &[old_copy], NOW),
            vec![Verdict::Young(DEFAULT_MIN_AGE)]
        );
    }

    #[test]
    fn max_age_expires_even_the_newest() {
        let p = Policy::build(
            &Flags {
                keep: Some(3),
                min_age: Some(Duration::ZERO),
                max_age: Some(Duration::from_secs(10 * DAY as u64)),
                ..Flags::default()
            },
            None,
        )
        .unwrap();
        let v = decide(&p.defaults, &weekly(4), NOW);
        assert_eq!(v[0], Verdict::Newest(3));
        assert_eq!(v[1], Verdict::Newest(3), "8 days old");
        assert!(matches!(v[2], Verdict::Expired(_)), "15 days old");
        assert!(matches!(v[3], Verdict::Expired(_)));
        assert_eq!(v[2].to_string(), "older than max-age 10d");
    }

    #[test]
    fn a_policy_file_has_per_series_rules_that_inherit_the_defaults() {
        let text = r#"
keep = 2
min_age = "3d"

[[rule]]
series = "FreeBSD *-RELEASE-*"
keep_all = true

[[rule]]
series = "FreeBSD *-STABLE-*"
keep = 4

[[rule]]
series = "FreeBSD *-CURRENT-*"
max_age = "30d"
"#;
        let p = Policy::build(&Flags::default(), Some((Path::new("p.toml"), text))).unwrap();
        let release = p.rule_for("FreeBSD 14.1-RELEASE-amd64 base UFS");
        assert!(release.keep_all);
        assert_eq!(release.to_string(), "keep all");
        let stable = p.rule_for("FreeBSD 14.1-STABLE-amd64-{date} base UFS");
        assert_eq!(stable.keep, Some(4));
        assert_eq!(stable.min_age, Duration::from_secs(3 * 86_400));
        let current = p.rule_for("FreeBSD 15.0-CURRENT-arm64-{date} base ZFS");
        assert_eq!(current.keep, Some(2), "inherited");
        assert_eq!(current.to_string(), "keep 2, max-age 30d, min-age 3d");
        let other = p.rule_for("MyOS 1-{date}");
        assert_eq!(other, &p.defaults);
        // --keep overrides the file's default, not a rule's own keep.
        let p = Policy::build(&flags(Some(7)), Some((Path::new("p.toml"), text))).unwrap();
        assert_eq!(p.defaults.keep, Some(7));
        assert_eq!(p.rule_for("FreeBSD 14.1-STABLE-x").keep, Some(4));
        assert_eq!(p.rule_for("FreeBSD 15.0-CURRENT-x").keep, Some(7));
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        let e = Policy::build(&flags(Some(-1)), None)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "--keep must be 0 or more, not -1");
        let e = Policy::build(&Flags::default(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no retention policy"), "{e}");
        let bad = |text: &str| {
            Policy::build(&Flags::default(), Some((Path::new("p.toml"), text)))
                .unwrap_err()
                .to_string()
        };
        assert!(bad("keep = -3").contains("keep must be 0 or more, not -3"));
        assert!(bad("kept = 3").contains("unknown field `kept`"));
        assert!(bad("keep = 1\n[[rule]]\nseries = \"x\"\n").contains("sets nothing"));
        assert!(bad("[[rule]]\nseries = \"x\"\nkeep = 1\nkeep_all = true\n").contains("not both"));
        assert!(bad("max_age = \"soon\"").contains("max_age"));
        assert!(bad("[[rule]]\nseries = \"x\"\nkeep = -2\n").contains("rule 1 (series `x`)"));
    }

    #[test]
    fn staged_retirement_is_read_from_flags_and_file() {
        let text = "keep = 2\ndisable_after = \"0d\"\ndelete_after = \"14d\"\n\n[[rule]]\nseries = \"X*\"\ndelete_after = \"30d\"\n";
        let p = Policy::build(&Flags::default(), Some((Path::new("p.toml"), text))).unwrap();
        assert!(p.defaults.staged());
        assert_eq!(
            p.defaults.delete_after,
            Some(Duration::from_secs(14 * 86_400))
        );
        let x = p.rule_for("X1");
        assert_eq!(x.delete_after, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(x.disable_after, Some(Duration::ZERO), "inherited");
        assert!(x.to_string().contains("delete 30d after disabling"), "{x}");
        let f = Flags {
            keep: Some(1),
            disable_after: Some(Duration::from_secs(86_400)),
            ..Flags::default()
        };
        let p = Policy::build(&f, None).unwrap();
        assert!(
            p.defaults
                .to_string()
                .ends_with("disable after 1d, never delete")
        );
        let e = Policy::build(
            &Flags::default(),
            Some((Path::new("p.toml"), "keep = 1\ndelete_after = \"soon\"")),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("delete_after"), "{e}");
    }

    #[test]
    fn durations_read_as_written() {
        assert_eq!(human(Duration::from_secs(3 * 86_400)), "3d");
        assert_eq!(human(Duration::from_secs(7_200)), "2h");
        assert_eq!(human(Duration::from_secs(90)), "90s");
        assert_eq!(human(Duration::ZERO), "0s");
    }
}
