//! Which series an AMI belongs to and when it was built, from its name: FreeBSD's weekly
//! names carry the build date (`FreeBSD 14.1-STABLE-amd64-20241003 UEFI-PREFERRED base
//! UFS`), and the name without the date is the series. Plus the small glob matcher the
//! selection, policy rules and `deprecate --series` use.

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use regex_lite::Regex;

/// What stands for the date in a series name: `FreeBSD 14.1-STABLE-amd64-{date} ...`.
pub const DATE_PLACEHOLDER: &str = "{date}";

/// How names split into series and build dates.
#[derive(Debug, Clone, Default)]
pub enum SeriesPattern {
    /// The last `YYYYMMDD` in the name (a valid date) is the build date; the name with
    /// it replaced by `{date}` is the series; a name without one is a series of its own.
    #[default]
    DateInName,
    /// A regular expression with a named group `date` (and optionally `series`): names
    /// it does not match belong to no series.
    Regex(Regex),
}

/// An AMI name, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameParts {
    /// The series (the name with the date replaced by `{date}`).
    pub series: String,
    /// The build date in the name (midnight UTC, epoch seconds), if there is one.
    pub date: Option<i64>,
}

impl SeriesPattern {
    /// A `--series-pattern`: must compile and have a named group `date`.
    pub fn parse(pattern: &str) -> Result<SeriesPattern, String> {
        let re = Regex::new(pattern)
            .map_err(|e| format!("--series-pattern `{pattern}` is not a valid regex: {e}"))?;
        if !re.capture_names().any(|n| n == Some("date")) {
            return Err(format!(
                "--series-pattern `{pattern}` has no named group `date` (write (?P<date>[0-9]{{8}}))"
            ));
        }
        Ok(SeriesPattern::Regex(re))
    }

    /// The series and build date of `name`; `None` when a pattern does not match it.
    pub fn split(&self, name: &str) -> Option<NameParts> {
        match self {
            SeriesPattern::DateInName => Some(match last_date(name) {
                Some((start, end, date)) => NameParts {
                    series: format!("{}{DATE_PLACEHOLDER}{}", &name[..start], &name[end..]),
                    date: Some(date),
                },
                None => NameParts {
                    series: name.to_string(),
                    date: None,
                },
            }),
            SeriesPattern::Regex(re) => {
                let caps = re.captures(name)?;
                let date_match = caps.name("date");
                let date = date_match.and_then(|m| parse_date_digits(m.as_str()));
                let series = match (caps.name("series"), date_match) {
                    (Some(s), _) => s.as_str().to_string(),
                    (None, Some(m)) => format!(
                        "{}{DATE_PLACEHOLDER}{}",
                        &name[..m.start()],
                        &name[m.end()..]
                    ),
                    (None, None) => name.to_string(),
                };
                Some(NameParts { series, date })
            }
        }
    }

    /// How the pattern reads in a plan.
    pub fn describe(&self) -> String {
        match self {
            SeriesPattern::DateInName => "series: the name without its YYYYMMDD date".into(),
            SeriesPattern::Regex(re) => format!("series: --series-pattern {}", re.as_str()),
        }
    }
}

/// The last run of exactly 8 digits in `name` that is a valid date (years 1990 to 2199):
/// its byte range and the date.
fn last_date(name: &str) -> Option<(usize, usize, i64)> {
    let bytes = name.as_bytes();
    let mut found = None;
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i - start == 8
            && let Some(d) = parse_date_digits(&name[start..i])
        {
            found = Some((start, i, d));
        }
    }
    found
}

/// A date written with 8 digits, separators allowed (`20241003`, `2024-10-03`): midnight
/// UTC in epoch seconds, if it is a real date between 1990 and 2199.
pub fn parse_date_digits(s: &str) -> Option<i64> {
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    if digits.len() != 8 {
        return None;
    }
    let (y, rest) = digits.split_at(4);
    let (m, d) = rest.split_at(2);
    let year: u32 = y.parse().ok()?;
    if !(1990..2200).contains(&year) {
        return None;
    }
    let t = DateTime::from_str(&format!("{y}-{m}-{d}T00:00:00Z"), Format::DateTime).ok()?;
    Some(t.secs())
}

/// Epoch seconds as `YYYY-MM-DD` (UTC).
pub fn ymd(secs: i64) -> String {
    DateTime::from_secs(secs)
        .fmt(Format::DateTime)
        .ok()
        .and_then(|s| s.get(..10).map(str::to_string))
        .unwrap_or_else(|| secs.to_string())
}

/// Epoch seconds as `YYYY-MM-DD HH:MM UTC`.
pub fn ymd_hm(secs: i64) -> String {
    DateTime::from_secs(secs)
        .fmt(Format::DateTime)
        .ok()
        .and_then(|s| s.get(..16).map(|t| format!("{} UTC", t.replace('T', " "))))
        .unwrap_or_else(|| secs.to_string())
}

/// A shell-style glob: `*` any run of characters, `?` one character, everything else
/// literal (AMI names may contain `[` and `]`, so there are no classes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    /// A glob from its text (any text is a valid glob).
    pub fn new(pattern: &str) -> Glob {
        Glob(pattern.to_string())
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let p: Vec<char> = self.0.chars().collect();
        let t: Vec<char> = text.chars().collect();
        // Iterative matching with backtracking to the last `*`: linear in practice,
        // never exponential.
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
                pi += 1;
                ti += 1;
            } else if pi < p.len() && p[pi] == '*' {
                star = Some((pi, ti));
                pi += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == '*')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FREEBSD: &str = "FreeBSD 14.1-STABLE-amd64-20241003 UEFI-PREFERRED base UFS";

    #[test]
    fn the_date_in_the_name_is_removed_from_the_series() {
        let p = SeriesPattern::default().split(FREEBSD).unwrap();
        assert_eq!(
            p.series,
            "FreeBSD 14.1-STABLE-amd64-{date} UEFI-PREFERRED base UFS"
        );
        assert_eq!(p.date, Some(1_727_913_600)); // 2024-10-03T00:00:00Z
        assert_eq!(ymd(p.date.unwrap()), "2024-10-03");
        // Another week of the same series.
        let q = SeriesPattern::default()
            .split("FreeBSD 14.1-STABLE-amd64-20241010 UEFI-PREFERRED base UFS")
            .unwrap();
        assert_eq!(q.series, p.series);
        assert_eq!(q.date.unwrap() - p.date.unwrap(), 7 * 86_400);
    }

    #[test]
    fn names_without_a_valid_date_are_their_own_series() {
        let name = "FreeBSD 14.1-RELEASE-amd64 UEFI-PREFERRED base UFS";
        let p = SeriesPattern::default().split(name).unwrap();
        assert_eq!(p.series, name);
        assert_eq!(p.date, None);
        // 8 digits that are no date, and longer digit runs, are not dates.
        for n in ["build 20241399", "build 123456789", "build 19000101"] {
            assert_eq!(SeriesPattern::default().split(n).unwrap().date, None, "{n}");
        }
        // The last date wins.
        let p = SeriesPattern::default()
            .split("x 20240101 y 20240202")
            .unwrap();
        assert_eq!(p.series, "x 20240101 y {date}");
    }

    #[test]
    fn a_series_pattern_needs_a_date_group_and_chooses_the_split() {
        assert!(
            SeriesPattern::parse("(unclosed")
                .unwrap_err()
                .contains("not a valid regex")
        );
        assert!(
            SeriesPattern::parse("^MyOS .*$")
                .unwrap_err()
                .contains("no named group `date`")
        );
        let p = SeriesPattern::parse(r"^MyOS (?P<series>\S+) built (?P<date>\d{4}-\d{2}-\d{2})$")
            .unwrap();
        let parts = p.split("MyOS 15-CURRENT built 2026-11-20").unwrap();
        assert_eq!(parts.series, "15-CURRENT");
        assert_eq!(ymd(parts.date.unwrap()), "2026-11-20");
        assert_eq!(p.split("Other 15-CURRENT built 2026-11-20"), None);
        // Without a series group the date is replaced in the name.
        let p = SeriesPattern::parse(r"-(?P<date>\d{8})-").unwrap();
        assert_eq!(
            p.split("a-20260101-b").unwrap().series,
            "a-{date}-b",
            "only the group's text is replaced"
        );
    }

    #[test]
    fn globs_match_whole_names() {
        let g = Glob::new("FreeBSD 14.*-STABLE-*");
        assert!(g.matches("FreeBSD 14.1-STABLE-amd64-20241003 base UFS"));
        assert!(!g.matches("FreeBSD 13.4-STABLE-amd64"));
        assert!(!g.matches("xFreeBSD 14.1-STABLE-"));
        assert!(Glob::new("*").matches(""));
        assert!(Glob::new("a?c").matches("abc"));
        assert!(!Glob::new("a?c").matches("ac"));
        assert!(
            Glob::new("[x]*").matches("[x] name"),
            "brackets are literal"
        );
        assert!(Glob::new("*a*a*a*b").matches(&format!("{}b", "a".repeat(40))));
        assert!(!Glob::new("*a*a*a*b").matches(&"a".repeat(60)));
    }
}
