//! Checks of values from the command line and release files that AWS would refuse (or,
//! worse, accept): done before any request, so a bad value creates nothing.

use aws_smithy_types::DateTime;

/// AWS's limit on EnableImageDeprecation: at most 10 years ahead.
pub const MAX_DEPRECATION_SECS: i64 = 10 * 365 * 86_400;

/// For a public AMI AWS allows at most 2 years ahead.
pub const MAX_PUBLIC_DEPRECATION_SECS: i64 = 2 * 365 * 86_400;

/// A tag key a user may set: not in ec2ami's `ec2ami:` namespace (ownership, image
/// size, lineage and lookup keys that ec2ami sets and trusts) nor AWS's `aws:`.
pub fn user_tag_key(key: &str) -> Result<(), String> {
    let lower = key.to_ascii_lowercase();
    if lower.starts_with(crate::aws::tags::VAR_PREFIX) {
        return Err(format!(
            "tag `{}` is reserved: ec2ami sets and trusts the `ec2ami:` tags itself",
            crate::image::escaped(key)
        ));
    }
    if lower.starts_with("aws:") {
        return Err(format!(
            "tag `{}` is reserved: AWS does not allow `aws:` tags",
            crate::image::escaped(key)
        ));
    }
    if key.chars().count() > 128 {
        return Err(format!(
            "tag key `{}` is longer than AWS's 128 characters",
            crate::image::escaped(key)
        ));
    }
    Ok(())
}

/// A deprecation time AWS accepts at `now`: in the future, at most 10 years ahead (2
/// for a public AMI).
pub fn deprecation_time(at: DateTime, now: DateTime, public: bool) -> Result<(), String> {
    let shown = at
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_else(|_| at.secs().to_string());
    if at.secs() <= now.secs() {
        return Err(format!(
            "the deprecation time {shown} is in the past: EC2 refuses it (give a future date)"
        ));
    }
    let (limit, what) = if public {
        (
            MAX_PUBLIC_DEPRECATION_SECS,
            "2 years ahead for a public AMI",
        )
    } else {
        (MAX_DEPRECATION_SECS, "10 years ahead")
    };
    if at.secs() - now.secs() > limit {
        return Err(format!(
            "the deprecation time {shown} is beyond EC2's limit of {what}"
        ));
    }
    Ok(())
}

/// An EC2 resource id: `prefix-` and 8 or 17 lowercase hexadecimal digits, as EC2
/// makes them. Anything else (`snap-../../etc`, `ami-XYZ`) is refused before a request
/// can carry it to AWS (which answers a malformed id slowly, or a path in it oddly).
pub fn resource_id(s: &str, prefix: &str, what: &str) -> Result<String, String> {
    let ok = s
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|hex| {
            (hex.len() == 8 || hex.len() == 17)
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{}` is not {what} ({prefix}- and 8 or 17 hexadecimal digits)",
            crate::image::escaped(s)
        ))
    }
}

/// An AMI id (`ami-0123456789abcdef0`).
pub fn ami_id(s: &str) -> Result<String, String> {
    resource_id(s, "ami", "an AMI id")
}

/// A snapshot id (`snap-0123456789abcdef0`).
pub fn snapshot_id(s: &str) -> Result<String, String> {
    resource_id(s, "snap", "a snapshot id")
}

/// The geographic prefixes of AWS region names (every partition).
const REGION_AREAS: &[&str] = &["af", "ap", "ca", "cn", "eu", "il", "me", "mx", "sa", "us"];

/// The directions in AWS region names.
const REGION_DIRECTIONS: &[&str] = &[
    "central",
    "east",
    "west",
    "north",
    "south",
    "northeast",
    "northwest",
    "southeast",
    "southwest",
];

/// True for a name shaped as AWS names regions: an area, an optional partition word
/// (`gov`, `iso`, `isob`...), a direction and a number (`us-east-1`, `us-gov-west-1`,
/// `ap-southeast-7`). A region AWS adds later keeps that shape; `mars-1`, `us-east`,
/// `US-EAST-1` or a name with a path in it do not.
pub fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let (area, partition, direction, number) = match parts.as_slice() {
        [a, d, n] => (*a, None, *d, *n),
        [a, p, d, n] => (*a, Some(*p), *d, *n),
        _ => return false,
    };
    if let Some(p) = partition
        && !(p == "gov" || (p.starts_with("iso") && p.bytes().all(|b| b.is_ascii_lowercase())))
    {
        return false;
    }
    REGION_AREAS.contains(&area)
        && REGION_DIRECTIONS.contains(&direction)
        && (1..=2).contains(&number.len())
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// A region name (see [`is_region`]), checked before any request.
pub fn region(s: &str) -> Result<String, String> {
    if is_region(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{}` is not an AWS region name (such as us-east-1 or eu-west-3)",
            crate::image::escaped(s)
        ))
    }
}

/// A region name or `all` (every enabled region), for region lists.
pub fn region_or_all(s: &str) -> Result<String, String> {
    if s == "all" {
        Ok(s.to_string())
    } else {
        region(s).map_err(|e| format!("{e}, or `all`"))
    }
}

/// A TOML parse error on one line: where (line and column, 1-based) and what. The
/// TOML crate's own rendering spreads over several lines with the source quoted.
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let what = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    let Some(span) = e.span() else {
        return what;
    };
    let mut start = span.start.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    format!(
        "line {line}, column {column}: {}",
        crate::image::escaped(&what)
    )
}

/// The current time.
pub fn now() -> DateTime {
    DateTime::from(std::time::SystemTime::now())
}

/// The largest text file ec2ami reads from an operator's list (history import): 64 MiB.
pub const MAX_TEXT_FILE: u64 = 64 << 20;

/// Read the file `path` as bytes: a regular file (never a FIFO or a device that blocks
/// or never ends) of at most `limit` bytes, read through a bounded reader.
pub fn read_regular_file(path: &std::path::Path, limit: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let shown = crate::image::escaped(&path.to_string_lossy());
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    if meta.len() > limit {
        return Err(format!(
            "{shown} is {} bytes, more than the {limit} bytes ec2ami reads",
            meta.len()
        ));
    }
    // O_NONBLOCK: a file swapped for a FIFO after the check does not block the open.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !file.metadata().map(|m| m.is_file()).unwrap_or(false) {
        return Err(format!("{shown} is not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!("{shown} grew past the {limit} bytes ec2ami reads"));
    }
    Ok(bytes)
}

/// Read the text file `path`: a regular file (never a FIFO or a device that blocks or
/// never ends) of at most `limit` bytes, read through a bounded reader.
pub fn read_text_file(path: &std::path::Path, limit: u64) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let shown = crate::image::escaped(&path.to_string_lossy());
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    if meta.len() > limit {
        return Err(format!(
            "{shown} is {} bytes, more than the {limit} bytes ec2ami reads",
            meta.len()
        ));
    }
    // O_NONBLOCK: a file swapped for a FIFO after the check does not block the open.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !file.metadata().map(|m| m.is_file()).unwrap_or(false) {
        return Err(format!("{shown} is not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!("{shown} grew past the {limit} bytes ec2ami reads"));
    }
    String::from_utf8(bytes).map_err(|e| format!("{shown} is not UTF-8 text: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_regular_files_are_read() {
        assert!(
            read_text_file(std::path::Path::new("/dev/zero"), 10)
                .unwrap_err()
                .contains("not a regular file")
        );
        let dir = tempfile::tempdir().unwrap();
        assert!(
            read_text_file(dir.path(), 10)
                .unwrap_err()
                .contains("not a regular file")
        );
        let f = dir.path().join("big");
        std::fs::write(&f, vec![b'a'; 11]).unwrap();
        assert!(
            read_text_file(&f, 10)
                .unwrap_err()
                .contains("more than the 10 bytes")
        );
        assert_eq!(read_text_file(&f, 11).unwrap(), "a".repeat(11));
    }

    #[test]
    fn reserved_tags_are_refused() {
        for k in [
            "ec2ami:managed-by",
            "EC2AMI:image-size",
            "ec2ami:version",
            "aws:x",
        ] {
            assert!(user_tag_key(k).is_err(), "{k}");
        }
        assert!(user_tag_key(&"k".repeat(129)).is_err());
        for k in ["branch", "ec2ami", "Name", "myec2ami:x"] {
            assert!(user_tag_key(k).is_ok(), "{k}");
        }
    }

    #[test]
    fn deprecation_times_within_the_limits() {
        let now = DateTime::from_secs(1_800_000_000);
        let at = |d: i64| DateTime::from_secs(now.secs() + d);
        assert!(
            deprecation_time(at(-1), now, false)
                .unwrap_err()
                .contains("past")
        );
        assert!(deprecation_time(at(0), now, false).is_err());
        assert!(deprecation_time(at(86_400), now, false).is_ok());
        assert!(deprecation_time(at(MAX_DEPRECATION_SECS), now, false).is_ok());
        let e = deprecation_time(at(MAX_DEPRECATION_SECS + 1), now, false).unwrap_err();
        assert!(e.contains("10 years"), "{e}");
        assert!(deprecation_time(at(3 * 365 * 86_400), now, true).is_err());
        assert!(deprecation_time(at(365 * 86_400), now, true).is_ok());
    }

    #[test]
    fn ids_have_ec2s_shape() {
        for ok in ["ami-0123456789abcdef0", "ami-12c6146b"] {
            assert!(ami_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ami-XYZ",
            "ami-",
            "snap-0123456789abcdef0",
            "ami-0123456789ABCDEF0",
            "ami-0123456789abcdef",
            "ami-../../etc/passwd",
            "ami-0123456789abcdef0 ",
            "",
        ] {
            let e = ami_id(bad).unwrap_err();
            assert!(e.contains("not an AMI id"), "{e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        assert!(snapshot_id("snap-0123456789abcdef0").is_ok());
        assert!(snapshot_id("snap-../../etc").is_err());
        assert!(snapshot_id("snap-0123\n456789abcdef0").is_err());
        let e = snapshot_id("snap-\u{1b}[31m").unwrap_err();
        assert!(!e.contains('\u{1b}'), "control characters escaped: {e}");
    }

    #[test]
    fn regions_have_aws_shape() {
        for ok in [
            "us-east-1",
            "ap-southeast-7",
            "us-gov-west-1",
            "us-isob-east-1",
            "il-central-1",
            "mx-central-1",
            "eu-south-2",
        ] {
            assert!(is_region(ok), "{ok}");
        }
        for bad in [
            "mars",
            "mars-east-1",
            "us-east",
            "US-EAST-1",
            "us-east-x",
            "us-nowhere-1",
            "us-east-100",
            "us-east-1/../x",
            "us-foo-east-1",
            "",
            "all",
        ] {
            assert!(!is_region(bad), "{bad}");
        }
        assert!(region_or_all("all").is_ok());
        assert!(region_or_all("mars").unwrap_err().contains("`all`"));
    }
}
