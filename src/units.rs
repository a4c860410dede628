//! Durations and dates as release engineers write them: `90s`, `10m`, `730d`,
//! `2027-06-30`.

use std::time::Duration;

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;

/// Parse a duration: a number with an optional unit ms, s, m, h or d (`90s`, `10m`, `2h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 90s, 10m, 2h)"))?;
    let mult = match unit.trim() {
        "ms" => 0.001,
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        "w" => 7.0 * 86400.0,
        u => {
            return Err(format!(
                "unknown duration unit `{u}` in `{s}` (use s, m, h, d or w)"
            ));
        }
    };
    if !n.is_finite() || n < 0.0 {
        return Err(format!("`{s}` is not a positive duration"));
    }
    Ok(Duration::from_secs_f64(n * mult))
}

/// Parse `YYYY-MM-DD` (midnight UTC) or an RFC 3339 time.
pub fn parse_date(s: &str) -> Result<DateTime, String> {
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    DateTime::from_str(&full, Format::DateTime)
        .map_err(|_| format!("`{s}` is not a date (2027-06-30 or 2027-06-30T12:00:00Z)"))
}

/// Today (UTC) as YYYYMMDD.
pub fn today() -> String {
    let now = DateTime::from(std::time::SystemTime::now());
    let s = now.fmt(Format::DateTime).unwrap_or_default();
    s.get(..10).unwrap_or("19700101").replace('-', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(
            parse_duration("2w").unwrap(),
            Duration::from_secs(14 * 86400)
        );
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn dates_parse() {
        assert_eq!(parse_date("2027-06-30").unwrap().secs(), 1_814_313_600);
        assert!(parse_date("2027-06-30T12:00:00Z").is_ok());
        assert!(parse_date("next week").is_err());
        let t = today();
        assert_eq!(t.len(), 8);
        assert!(t.starts_with("20"), "{t}");
    }
}
