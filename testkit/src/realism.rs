//! How much of AWS's time the moto world shows: new images and snapshots `pending` for
//! a number of polls and a time (the latency model, scaled down for tests), new images
//! invisible to DescribeImages for a few answers (eventual consistency), copies that
//! end `failed` in chosen regions, block-public-access changes that take effect late. The moto extension's realism section
//! (`testkit/src/moto_ext.py`) does the work; `testkit/WORLD.md` lists every way the
//! world deviates from AWS.

use std::time::Duration;

/// The realism settings of a moto world (all off by default: moto's instant world).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Realism {
    /// A new image or snapshot is `pending` in this many answers that show it.
    pub pending_polls: u32,
    /// A new image is missing from this many DescribeImages answers that would show it.
    pub invisible_polls: u32,
    /// At least this long `pending` after the operation that made it (`RegisterImage`,
    /// `CopyImage`, `CompleteSnapshot`).
    pub latency: Vec<(String, Duration)>,
    /// Copies to these regions end `failed` with a StateReason.
    pub fail_copies_to: Vec<String>,
    /// An image block-public-access change takes effect this long after it is asked for
    /// (AWS: up to 10 minutes), the old state in force until then.
    pub bpa_delay: Duration,
}

/// Seconds AWS takes for each asynchronous operation, roughly (an image copy of a small
/// image across regions takes minutes; a registration and a direct-API snapshot of a
/// few GiB seconds to a minute). [`Realism::scaled`] divides these down for tests.
pub const AWS_LATENCY_SECS: &[(&str, f64)] = &[
    ("CopyImage", 300.0),
    ("RegisterImage", 20.0),
    ("CompleteSnapshot", 60.0),
];

impl Realism {
    /// The latency model of [`AWS_LATENCY_SECS`] multiplied by `scale` (e.g. 0.01 makes
    /// a 5-minute copy take 3 s), with `pending_polls` polls at least.
    pub fn scaled(scale: f64, pending_polls: u32) -> Realism {
        Realism {
            pending_polls,
            latency: AWS_LATENCY_SECS
                .iter()
                .map(|(op, s)| (op.to_string(), Duration::from_secs_f64(s * scale)))
                .collect(),
            ..Realism::default()
        }
    }

    /// The environment of moto's process that asks the extension for these settings.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let latency = self
            .latency
            .iter()
            .map(|(op, d)| format!("{op}={}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(",");
        vec![
            ("MOTO_EXT_PENDING_POLLS", self.pending_polls.to_string()),
            ("MOTO_EXT_INVISIBLE_POLLS", self.invisible_polls.to_string()),
            ("MOTO_EXT_LATENCY", latency),
            ("MOTO_EXT_FAIL_COPIES_TO", self.fail_copies_to.join(",")),
            (
                "MOTO_EXT_BPA_DELAY",
                self.bpa_delay.as_secs_f64().to_string(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_every_setting() {
        let r = Realism {
            pending_polls: 2,
            invisible_polls: 1,
            latency: vec![("CopyImage".into(), Duration::from_millis(1500))],
            fail_copies_to: vec!["eu-west-1".into(), "us-west-2".into()],
            bpa_delay: Duration::from_millis(2500),
        };
        assert_eq!(
            r.env(),
            vec![
                ("MOTO_EXT_PENDING_POLLS", "2".to_string()),
                ("MOTO_EXT_INVISIBLE_POLLS", "1".to_string()),
                ("MOTO_EXT_LATENCY", "CopyImage=1.5".to_string()),
                ("MOTO_EXT_FAIL_COPIES_TO", "eu-west-1,us-west-2".to_string()),
                ("MOTO_EXT_BPA_DELAY", "2.5".to_string()),
            ]
        );
        let s = Realism::scaled(0.01, 1);
        assert_eq!(s.latency[0], ("CopyImage".into(), Duration::from_secs(3)));
        assert_eq!(Realism::default().env()[2].1, "");
    }
}
