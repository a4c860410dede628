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

/// The current time.
pub fn now() -> DateTime {
    DateTime::from(std::time::SystemTime::now())
}

/// The largest text file ec2ami reads from an operator's list (history import): 64 MiB.
pub const MAX_TEXT_FILE: u64 = 64 << 20;

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
}
