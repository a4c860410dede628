//! Inventories for the planner's tests: weekly builds named with their date.

use std::collections::BTreeSet;
use std::time::Duration;

pub(super) use super::super::inventory::{Image, Inventory, Snapshot};
use super::super::policy::{Flags, Policy};
pub(super) use super::super::series::{SeriesPattern, ymd};
pub(super) use super::{Action, DEFAULT_PRICE_PER_GB_MONTH, PlanOptions, RegionPlan, Selection};

pub(super) const DAY: i64 = 86_400;
pub(super) const NOW: i64 = 1_800_000_000; // 2027-01-15

pub(super) fn image(id: &str, name: &str, days_old: i64, snaps: &[&str]) -> Image {
    Image {
        id: id.into(),
        name: name.into(),
        state: "available".into(),
        created: NOW - days_old * DAY,
        public: false,
        snapshots: snaps.iter().map(|s| s.to_string()).collect(),
        managed: true,
        deprecation: None,
    }
}

pub(super) fn snap(id: &str, gib: f64, days_old: i64) -> Snapshot {
    Snapshot {
        id: id.into(),
        gib,
        description: String::new(),
        started: NOW - days_old * DAY,
        completed: true,
        managed: false,
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
                max_age: None,
            },
            None,
        )
        .unwrap(),
        include_public: false,
        orphans: true,
        price_per_gb_month: DEFAULT_PRICE_PER_GB_MONTH,
        now: NOW,
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
        .flat_map(|i| i.snapshots.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|s| snap(&s, 10.0, 30))
        .collect();
    Inventory {
        region: "us-east-1".into(),
        images,
        snapshots,
        users: Default::default(),
    }
}

pub(super) fn actions(p: &RegionPlan) -> Vec<(String, Action)> {
    p.series
        .iter()
        .flat_map(|s| &s.images)
        .map(|i| (i.image_id.clone(), i.action))
        .collect()
}
