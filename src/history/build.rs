//! What build an AMI is: version, branch, flavour, filesystem, architecture and build
//! date, read from the tags `ec2ami publish` puts on every AMI (see
//! `aws::tags::TAGGED_VARS`), or parsed from a FreeBSD-style image name when the
//! tags are absent.

use serde::Serialize;

use crate::aws::tags::{
    ARCH as ARCH_TAG, BRANCH as BRANCH_TAG, BUILD_DATE as BUILD_DATE_TAG, FLAVOUR as FLAVOUR_TAG,
    FS as FS_TAG, VERSION as VERSION_TAG,
};

/// The build an AMI was made from; every field may be unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BuildInfo {
    /// AMI name.
    pub image_name: Option<String>,
    /// OS version, e.g. `14.1`.
    pub version: Option<String>,
    /// Branch, e.g. `14-STABLE` (a bare `STABLE` is qualified with the major version).
    pub branch: Option<String>,
    /// Flavour: base, cloud-init, small, builder...
    pub flavour: Option<String>,
    /// Filesystem, lower case: ufs, zfs.
    pub fs: Option<String>,
    /// Architecture: amd64 or arm64 (x86_64, which `publish` tags, and aarch64 are
    /// written so, so one series is not split by two spellings).
    pub arch: Option<String>,
    /// Build date, `YYYYMMDD`.
    pub build_date: Option<String>,
}

impl BuildInfo {
    /// From an AMI's name and tags: tags first, the name for what they do not say.
    pub fn from_image(name: Option<&str>, tags: &[(String, String)]) -> BuildInfo {
        let tag = |k: &str| {
            tags.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        let from_tags = BuildInfo {
            image_name: name.map(str::to_string),
            version: tag(VERSION_TAG),
            branch: tag(BRANCH_TAG),
            flavour: tag(FLAVOUR_TAG),
            fs: tag(FS_TAG),
            arch: tag(ARCH_TAG),
            build_date: tag(BUILD_DATE_TAG),
        };
        let parsed = name.map(parse_freebsd_name).unwrap_or_default();
        from_tags.or(parsed).normalized()
    }

    /// Each field of `self`, or `other`'s where `self` has none.
    pub fn or(self, other: BuildInfo) -> BuildInfo {
        BuildInfo {
            image_name: self.image_name.or(other.image_name),
            version: self.version.or(other.version),
            branch: self.branch.or(other.branch),
            flavour: self.flavour.or(other.flavour),
            fs: self.fs.or(other.fs),
            arch: self.arch.or(other.arch),
            build_date: self.build_date.or(other.build_date),
        }
    }

    /// One spelling per value, so a series is not split by how a field was written:
    /// fs lower case, x86_64 as amd64, aarch64 as arm64, a bare branch word qualified
    /// with the major version (`STABLE` of 14.1 is `14-STABLE`), dates without dashes.
    pub fn normalized(mut self) -> BuildInfo {
        self.fs = self.fs.map(|f| f.to_ascii_lowercase());
        self.flavour = self.flavour.map(|f| f.to_ascii_lowercase());
        self.arch = self.arch.map(|a| match a.to_ascii_lowercase().as_str() {
            "x86_64" | "amd64" => "amd64".to_string(),
            "aarch64" | "arm64" => "arm64".to_string(),
            other => other.to_string(),
        });
        if let (Some(b), Some(v)) = (&self.branch, &self.version)
            && !b.chars().any(|c| c.is_ascii_digit())
            && let Some(major) = v.split('.').next().filter(|m| !m.is_empty())
        {
            self.branch = Some(format!("{major}-{}", b.to_ascii_uppercase()));
        }
        self.build_date = self.build_date.map(|d| d.replace('-', ""));
        self
    }
}

/// Parse a FreeBSD AMI name such as
/// `FreeBSD 14.1-STABLE-amd64-20241003 UEFI-PREFERRED base UFS` or
/// `FreeBSD 14.1-RELEASE-arm64 base ZFS`. Unrecognised parts are left unknown.
pub fn parse_freebsd_name(name: &str) -> BuildInfo {
    let mut words = name.split_whitespace();
    if words.next() != Some("FreeBSD") {
        return BuildInfo::default();
    }
    let Some(main) = words.next() else {
        return BuildInfo::default();
    };
    // 14.1-STABLE-amd64-20241003: version, branch word, arch, optional date.
    let parts: Vec<&str> = main.split('-').collect();
    let mut info = BuildInfo {
        image_name: Some(name.to_string()),
        ..BuildInfo::default()
    };
    if let Some(v) = parts
        .first()
        .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
    {
        info.version = Some(v.to_string());
    }
    if let Some(b) = parts.get(1) {
        info.branch = Some(b.to_string());
    }
    if let Some(a) = parts.get(2) {
        info.arch = Some(a.to_string());
    }
    if let Some(d) = parts.get(3).filter(|d| is_yyyymmdd(d)) {
        info.build_date = Some(d.to_string());
    }
    // The rest: an optional boot mode word, then flavour and filesystem.
    let rest: Vec<&str> = words
        .filter(|w| !matches!(*w, "UEFI" | "UEFI-PREFERRED" | "BIOS" | "LEGACY-BIOS"))
        .collect();
    for w in rest {
        match w {
            "UFS" | "ZFS" | "ufs" | "zfs" => info.fs = Some(w.to_string()),
            _ if info.flavour.is_none() => info.flavour = Some(w.to_string()),
            _ => {}
        }
    }
    info.normalized()
}

/// A plausible `YYYYMMDD`.
pub fn is_yyyymmdd(s: &str) -> bool {
    s.len() == 8
        && s.bytes().all(|b| b.is_ascii_digit())
        && (1..=12).contains(&s[4..6].parse::<u32>().unwrap_or(0))
        && (1..=31).contains(&s[6..8].parse::<u32>().unwrap_or(0))
}

/// Days since 1970-01-01 of a `YYYYMMDD` date (proleptic Gregorian), for plotting.
pub fn day_number(yyyymmdd: &str) -> Option<i64> {
    if !is_yyyymmdd(yyyymmdd) {
        return None;
    }
    let y: i64 = yyyymmdd[0..4].parse().ok()?;
    let m: i64 = yyyymmdd[4..6].parse().ok()?;
    let d: i64 = yyyymmdd[6..8].parse().ok()?;
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The `YYYYMMDD` of a day number (inverse of [`day_number`]).
pub fn date_of_day(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}")
}

/// `YYYYMMDD` written `YYYY-MM-DD` (anything else unchanged).
pub fn dashed(d: &str) -> String {
    if is_yyyymmdd(d) {
        format!("{}-{}-{}", &d[0..4], &d[4..6], &d[6..8])
    } else {
        d.to_string()
    }
}

/// The `YYYYMMDD` (UTC) of a Unix time.
pub fn date_of_epoch(secs: i64) -> String {
    date_of_day(secs.div_euclid(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_parse() {
        let b = parse_freebsd_name("FreeBSD 14.1-STABLE-amd64-20241003 UEFI-PREFERRED base UFS");
        assert_eq!(b.version.as_deref(), Some("14.1"));
        assert_eq!(b.branch.as_deref(), Some("14-STABLE"));
        assert_eq!(b.arch.as_deref(), Some("amd64"));
        assert_eq!(b.build_date.as_deref(), Some("20241003"));
        assert_eq!(b.flavour.as_deref(), Some("base"));
        assert_eq!(b.fs.as_deref(), Some("ufs"));
    }

    #[test]
    fn release_names_parse() {
        let b = parse_freebsd_name("FreeBSD 14.1-RELEASE-arm64 cloud-init ZFS");
        assert_eq!(b.branch.as_deref(), Some("14-RELEASE"));
        assert_eq!(b.arch.as_deref(), Some("arm64"));
        assert_eq!(b.build_date, None);
        assert_eq!(b.flavour.as_deref(), Some("cloud-init"));
        assert_eq!(b.fs.as_deref(), Some("zfs"));
        assert_eq!(parse_freebsd_name("Debian 12"), BuildInfo::default());
    }

    #[test]
    fn tags_win_over_the_name() {
        let tags = vec![
            (BRANCH_TAG.to_string(), "CURRENT".to_string()),
            (VERSION_TAG.to_string(), "15.0".to_string()),
            (ARCH_TAG.to_string(), "x86_64".to_string()),
            (BUILD_DATE_TAG.to_string(), "2024-11-21".to_string()),
        ];
        let b = BuildInfo::from_image(
            Some("FreeBSD 14.1-STABLE-amd64-20241003 UEFI-PREFERRED small ZFS"),
            &tags,
        );
        assert_eq!(b.branch.as_deref(), Some("15-CURRENT"));
        assert_eq!(b.version.as_deref(), Some("15.0"));
        assert_eq!(b.arch.as_deref(), Some("amd64"));
        assert_eq!(b.build_date.as_deref(), Some("20241121"));
        // What the tags do not say comes from the name.
        assert_eq!(b.flavour.as_deref(), Some("small"));
        assert_eq!(b.fs.as_deref(), Some("zfs"));
    }

    #[test]
    fn dates_convert_both_ways() {
        assert_eq!(day_number("19700101"), Some(0));
        assert_eq!(day_number("20000301"), Some(11_017));
        assert_eq!(day_number("2024133"), None);
        assert_eq!(day_number("20241301"), None);
        for d in ["19991231", "20000229", "20241003", "21000301"] {
            assert_eq!(date_of_day(day_number(d).unwrap()), d);
        }
        assert_eq!(date_of_epoch(1_727_913_600), "20241003");
        assert_eq!(dashed("20241003"), "2024-10-03");
        assert_eq!(dashed("soon"), "soon");
    }
}
