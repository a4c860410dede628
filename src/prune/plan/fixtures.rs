//! Inventories for the planner's tests: weekly builds named with their date.

use std::collections::BTreeSet;
use std::time::Duration;

pub(super) use super::super::inventory::{Image, Inventory, Snapshot};
use super::super::policy::{Flags, Policy};
pub(super) use super::super::series::{SeriesPattern, ymd};
pub(super) use super::{Action, DEFAULT_PRICE_PER_GB_MONTH, PlanOptions, RegionPlan, Selection};
use crate::aws::model::Mapping;
use crate::aws::tags;

pub(super) const DAY: i64 = 86_400;
pub(super) const NOW: i64 = 1_800_000_000; // 2027-01-15

/// An available AMI carrying the ownership tag, made `days_old` ago, mapping `snaps`.
pub(super) fn image(id: &str, name: &str, days_old: i64, snaps: &[&str]) -> Image {
    Image {
        region: "us-east-1".into(),
        id: id.into(),
        name: name.into(),
        description: None,
        state: "available".into(),
        state_reason: None,
        public: false,
        created: NOW - days_old * DAY,
        owner: None,
        architecture: None,
        boot_mode: None,
        ena: false,
        sriov: None,
        imds: None,
        tpm: None,
        root_device: Some("/dev/sda1".into()),
        mappings: snaps
            .iter()
            .enumerate()
            .map(|(n, s)| Mapping {
                device: format!("/dev/sd{}", (b'a' + n as u8) as char),
                ebs: true,
                snapshot_id: Some(s.to_string()),
                volume_size: None,
                volume_type: None,
            })
            .collect(),
        deprecation: None,
        protection: None,
        last_launched: None,
        tags: [(
            tags::OWNERSHIP.to_string(),
            tags::OWNERSHIP_VALUE.to_string(),
        )]
        .into(),
    }
}

/// A completed snapshot of `gib` GiB (full size as EC2 reports it), started `days_old`
/// ago, without the ownership tag.
pub(super) fn snap(id: &str, gib: f64, days_old: i64) -> Snapshot {
    Snapshot {
        region: "us-east-1".into(),
        id: id.into(),
        state: "completed".into(),
        state_message: None,
        progress: None,
        volume_size: gib.ceil() as i32,
        full_size: Some((gib * (1u64 << 30) as f64) as i64),
        description: String::new(),
        started: NOW - days_old * DAY,
        encrypted: false,
        owner: None,
        tags: Default::default(),
    }
}

pub(super) fn opts(keep: i64) -> PlanOptions {
    PlanOptions {
        selection: Selection::default(),
        pattern: SeriesPattern::default(),
        policy: Policy::build(
            &Flags {
                keep: Some(keep),
                min_age: Some(Duration::from_secs(2 * DAY as u64)),
                ..Flags::default()
            },
            None,
        )
        .unwrap(),
        include_public: false,
        orphans: true,
        price_per_gb_month: DEFAULT_PRICE_PER_GB_MONTH,
        now: NOW,
        unprotect: false,
        unused_for: None,
    }
}

/// Weekly builds named with their date (from NOW), newest first.
pub(super) fn weekly(prefix: &str, weeks: i64) -> Vec<Image> {
    (0..weeks)
        .map(|w| {
            let t = NOW - (1 + 7 * w) * DAY;
            let date = ymd(t).replace('-', "");
            image(
                &format!("ami-{prefix}{w}"),
                &format!("MyOS 15.0-{prefix}-{date} base"),
                1 + 7 * w,
                &[&format!("snap-{prefix}{w}")],
            )
        })
        .collect()
}

pub(super) fn inventory(images: Vec<Image>) -> Inventory {
    let snapshots = images
        .iter()
        .flat_map(|i| i.snapshots())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|s| snap(&s, 10.0, 30))
        .collect();
    Inventory {
        region: "us-east-1".into(),
        images,
        snapshots,
        users: Default::default(),
        rules: Ok(Vec::new()),
        lineage: Default::default(),
    }
}

pub(super) fn actions(p: &RegionPlan) -> Vec<(String, Action)> {
    p.series
        .iter()
        .flat_map(|s| &s.images)
        .map(|i| (i.image_id.clone(), i.action))
        .collect()
}
