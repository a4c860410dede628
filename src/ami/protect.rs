//! Deregistration protection as a release asks for it (`register --protect[=cooldown]`,
//! `protect = true | "cooldown"`), and time-based copies (`copy --completion 30m`,
//! `copy_completion = "30m"`), both checked before any request.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::aws::lifecycle::{self, Protection};
use crate::aws::{Ami, AwsError, Clients, RetryPolicy};
use crate::units::parse_duration;

/// Deregistration protection wanted on an image and each copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Protect {
    /// With the 24-hour cooldown: disabling protection keeps the image undeletable for
    /// 24 hours more.
    pub cooldown: bool,
}

impl Protect {
    /// `--protect` (no value, or `true`), `--protect=cooldown`.
    pub fn parse(s: &str) -> Result<Protect, String> {
        match s.trim() {
            "" | "true" | "on" => Ok(Protect { cooldown: false }),
            "cooldown" => Ok(Protect { cooldown: true }),
            other => Err(format!(
                "`{other}` is not a protection: give --protect, or --protect=cooldown for the \
                 24-hour cooldown"
            )),
        }
    }

    /// Whether `ami` lacks this protection (not protected, cooling down, or protected
    /// without the cooldown asked for).
    pub fn missing_on(&self, ami: &Ami, now: i64) -> bool {
        match Protection::parse(ami.protection.as_deref(), now) {
            Protection::On { cooldown } => cooldown != self.cooldown,
            Protection::Off | Protection::Cooling { .. } => true,
        }
    }

    /// Enable it on `image_id`.
    pub async fn apply(
        &self,
        clients: &Clients,
        image_id: &str,
        retry: &RetryPolicy,
    ) -> Result<(), AwsError> {
        lifecycle::enable_protection(clients, image_id, self.cooldown, retry).await?;
        tracing::info!(
            "{image_id} in {} is protected from deregistration{}",
            clients.region(),
            if self.cooldown {
                " (24-hour cooldown)"
            } else {
                ""
            }
        );
        Ok(())
    }
}

impl fmt::Display for Protect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.cooldown {
            "protected, 24-hour cooldown"
        } else {
            "protected"
        })
    }
}

/// The time-based copy limits AWS documents for SnapshotCopyCompletionDurationMinutes:
/// 15-minute steps from 15 minutes to 48 hours.
pub const COMPLETION_STEP_MINUTES: u32 = 15;
/// The longest completion duration AWS takes (48 hours).
pub const COMPLETION_MAX_MINUTES: u32 = 2880;

/// A time-based copy: every snapshot of the copy completes within this many minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Completion {
    /// Minutes (a multiple of 15, 15 to 2880).
    pub minutes: u32,
}

impl Completion {
    /// `30m`, `2h`, `1d`...: checked against AWS's steps and limits.
    pub fn parse(s: &str) -> Result<Completion, String> {
        let d = parse_duration(s).map_err(|e| format!("copy completion: {e}"))?;
        Completion::from_duration(d, s)
    }

    fn from_duration(d: Duration, written: &str) -> Result<Completion, String> {
        let secs = d.as_secs_f64();
        let step = f64::from(COMPLETION_STEP_MINUTES * 60);
        if (secs / step).fract() != 0.0 {
            return Err(format!(
                "copy completion `{written}` is not a multiple of 15 minutes (AWS takes \
                 15-minute steps: 15m, 30m, 45m, 1h...)"
            ));
        }
        let minutes = (secs / 60.0) as u64;
        if minutes < u64::from(COMPLETION_STEP_MINUTES)
            || minutes > u64::from(COMPLETION_MAX_MINUTES)
        {
            return Err(format!(
                "copy completion `{written}` is out of range: AWS takes 15 minutes to 48 hours \
                 (2880 minutes)"
            ));
        }
        Ok(Completion {
            minutes: minutes as u32,
        })
    }
}

impl fmt::Display for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "time-based, within {} minutes", self.minutes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protection_is_parsed_and_compared() {
        assert_eq!(Protect::parse("").unwrap(), Protect { cooldown: false });
        assert_eq!(
            Protect::parse("cooldown").unwrap(),
            Protect { cooldown: true }
        );
        assert!(Protect::parse("forever").is_err());
        let mut ami = Ami::from_sdk(
            "us-east-1",
            &aws_sdk_ec2::types::Image::builder()
                .image_id("ami-1")
                .build(),
        )
        .unwrap();
        let p = Protect { cooldown: true };
        assert!(p.missing_on(&ami, 0));
        ami.protection = Some("enabled".into());
        assert!(p.missing_on(&ami, 0), "without the cooldown asked for");
        ami.protection = Some("enabled-with-cooldown".into());
        assert!(!p.missing_on(&ami, 0));
    }

    #[test]
    fn completion_follows_aws_steps_and_limits() {
        assert_eq!(Completion::parse("30m").unwrap().minutes, 30);
        assert_eq!(Completion::parse("2h").unwrap().minutes, 120);
        assert_eq!(Completion::parse("48h").unwrap().minutes, 2880);
        assert_eq!(Completion::parse("15m").unwrap().minutes, 15);
        for (bad, needle) in [
            ("20m", "multiple of 15"),
            ("90s", "multiple of 15"),
            ("0m", "out of range"),
            ("49h", "out of range"),
            ("3d", "out of range"),
            ("soon", "not a duration"),
        ] {
            let e = Completion::parse(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
