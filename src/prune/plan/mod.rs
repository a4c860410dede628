//! The prune plan: per region and series what is kept, what is deleted and why, the
//! snapshots freed and what they cost. [`plan_region`] is pure: it turns a region's
//! [`Inventory`](super::inventory::Inventory) and the options into a [`RegionPlan`];
//! nothing here talks to AWS.
//!
//! The parts: `group` selects the candidates and groups them into series, `region`
//! plans one region (verdicts, guards, snapshots, orphans), `render` writes the plan as
//! text; the types below are the plan itself, and its JSON form.

#[cfg(test)]
mod fixtures;
mod group;
mod region;
mod render;

use std::time::Duration;

use serde::Serialize;

use super::guard::Guard;
use super::policy::Policy;
use super::series::{Glob, SeriesPattern};

pub use group::Selection;
pub use region::plan_region;

/// Snapshot storage list price, USD per GB-month (EBS standard tier, us-east-1); the
/// default of `--price-per-gb-month`.
pub const DEFAULT_PRICE_PER_GB_MONTH: f64 = 0.05;

/// What the plan says the estimate is.
pub const ESTIMATE_NOTE: &str = "an estimate: EBS bills a snapshot only for the blocks it \
does not share with others; a snapshot whose parent ec2ami recorded counts the blocks it \
holds itself (ListChangedBlocks), a parent whose children stay counts only the blocks none \
of them shares, and every other snapshot counts at its full size (its volume size when EC2 \
does not report it): those figures, marked upper bound, may be more than the real saving";

/// What the plan says when a snapshot to delete has children that stay.
pub const LINEAGE_NOTE: &str = "deleting a parent snapshot does not make its children \
unreadable: EBS keeps every block a child still uses, so the parent's full size is not \
saved, only the blocks no remaining child shares";

/// Everything the planner needs besides the inventory.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Which images are candidates.
    pub selection: Selection,
    /// How names split into series and dates.
    pub pattern: SeriesPattern,
    /// The retention policy.
    pub policy: Policy,
    /// Prune public images too.
    pub include_public: bool,
    /// Look for orphaned snapshots.
    pub orphans: bool,
    /// Snapshot storage price, USD per GB-month.
    pub price_per_gb_month: f64,
    /// The time the plan is made for, epoch seconds.
    pub now: i64,
    /// Disable the deregistration protection of images the policy deletes (instead of
    /// keeping them as guarded).
    pub unprotect: bool,
    /// Keep images launched within this window (their LastLaunchedTime).
    pub unused_for: Option<Duration>,
}

/// What the plan says about last-launched times.
pub const LAUNCH_LAG_NOTE: &str = "last-launched times are EC2's (LastLaunchedTime), which \
reports a launch up to 24 hours late: a launch in the last day may not show yet";

/// What happens to an image or snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The policy keeps it.
    Keep,
    /// The policy would delete it but a guard keeps it.
    Guarded,
    /// Deleted.
    Delete,
    /// Disabled (staged retirement: deleted by a later run).
    Disable,
    /// Its deregistration protection is disabled now; the 24-hour cooldown makes it
    /// deletable only by a later run.
    Unprotect,
}

/// Whether and until when a deleted image or snapshot can be restored from the Recycle
/// Bin.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recovery {
    /// Until when (epoch seconds), when a retention rule covers it.
    pub until: Option<i64>,
    /// As the plan says it.
    pub note: String,
}

/// A snapshot deleted with an image, or an orphan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotItem {
    /// Snapshot id.
    pub snapshot_id: String,
    /// Size counted in the estimate, GiB.
    pub gib: f64,
    /// Delete or keep.
    pub action: Action,
    /// Why.
    pub reason: String,
    /// For a deleted snapshot: whether the Recycle Bin keeps it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
    /// `gib` may be more than what deleting it saves (full or volume size, or lineage
    /// counts unknown).
    pub upper_bound: bool,
    /// Its parent snapshot, when ec2ami recorded one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Its children that stay (they keep the blocks they share with it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children_kept: Vec<String>,
}

/// One image of a series in the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageItem {
    /// AMI id.
    pub image_id: String,
    /// Name.
    pub name: String,
    /// Build date, YYYY-MM-DD.
    pub built: String,
    /// Where the date comes from: `name` or `creation`.
    pub date_from: &'static str,
    /// Keep, guarded or delete.
    pub action: Action,
    /// The policy's reason (and for guarded images, what the policy would have done).
    pub reason: String,
    /// What keeps a guarded image.
    pub guards: Vec<Guard>,
    /// Its snapshots: deleted with it, or kept and why.
    pub snapshots: Vec<SnapshotItem>,
    /// Deleted after its deregistration protection is disabled (`--unprotect`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unprotect: bool,
    /// For a deleted image: whether the Recycle Bin keeps it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
}

/// One series in a region.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesPlan {
    /// The series (`{date}` stands for the build date).
    pub series: String,
    /// The rule applied.
    pub rule: String,
    /// Its images, newest first.
    pub images: Vec<ImageItem>,
}

/// The plan for one region.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionPlan {
    /// Region.
    pub region: String,
    /// Why the region could not be looked at (nothing is planned there).
    pub error: Option<String>,
    /// Every series of candidate images.
    pub series: Vec<SeriesPlan>,
    /// Orphaned snapshots found.
    pub orphans: Vec<SnapshotItem>,
    /// Images to deregister.
    pub images_to_delete: usize,
    /// Images to disable (staged retirement).
    pub images_to_disable: usize,
    /// Images whose protection is disabled now, to be deleted by a later run.
    pub images_to_unprotect: usize,
    /// Snapshots to delete (with images and orphans).
    pub snapshots_to_delete: usize,
    /// GiB the deleted snapshots hold (see [`ESTIMATE_NOTE`]).
    pub gib_freed: f64,
    /// The estimated saving, USD per month.
    pub usd_per_month: f64,
    /// The region's Recycle Bin retention rules, as the plan says them.
    pub recycle_bin: String,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The candidates.
    pub selection: String,
    /// How series were found.
    pub series_from: String,
    /// The policy's default rule, and each rule.
    pub policy: Vec<String>,
    /// Per region.
    pub regions: Vec<RegionPlan>,
    /// Images to deregister, all regions.
    pub images_to_delete: usize,
    /// Images to disable, all regions.
    pub images_to_disable: usize,
    /// Images whose protection is disabled now, all regions.
    pub images_to_unprotect: usize,
    /// Snapshots to delete, all regions.
    pub snapshots_to_delete: usize,
    /// GiB freed, all regions.
    pub gib_freed: f64,
    /// Estimated saving, USD per month.
    pub usd_per_month: f64,
    /// The price used.
    pub price_per_gb_month: f64,
    /// What kind of figure the saving is.
    pub estimate: &'static str,
    /// About last-launched times, when `--unused-for` guards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launches: Option<&'static str>,
    /// About lineage, when a snapshot to delete has children that stay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lineage: Option<&'static str>,
    /// True when some of the GiB freed are upper bounds.
    pub gib_freed_upper_bound: bool,
}

impl Plan {
    /// Assemble the regions' plans.
    pub fn new(regions: Vec<RegionPlan>, opts: &PlanOptions) -> Plan {
        let mut policy = vec![format!("default: {}", opts.policy.defaults)];
        policy.extend(opts.policy.rules.iter().map(|r| {
            format!(
                "series {}: {r}",
                r.series.as_ref().map(Glob::as_str).unwrap_or("*")
            )
        }));
        let gib: f64 = regions.iter().map(|r| r.gib_freed).sum();
        let deleted = || {
            regions.iter().flat_map(|r| {
                r.series
                    .iter()
                    .flat_map(|s| &s.images)
                    .flat_map(|i| &i.snapshots)
                    .chain(&r.orphans)
                    .filter(|s| s.action == Action::Delete)
            })
        };
        let lineage = deleted()
            .any(|s| !s.children_kept.is_empty())
            .then_some(LINEAGE_NOTE);
        let gib_freed_upper_bound = deleted().any(|s| s.upper_bound);
        Plan {
            lineage,
            gib_freed_upper_bound,
            selection: opts.selection.describe(),
            series_from: opts.pattern.describe(),
            policy,
            images_to_delete: regions.iter().map(|r| r.images_to_delete).sum(),
            images_to_disable: regions.iter().map(|r| r.images_to_disable).sum(),
            images_to_unprotect: regions.iter().map(|r| r.images_to_unprotect).sum(),
            launches: opts.unused_for.map(|_| LAUNCH_LAG_NOTE),
            snapshots_to_delete: regions.iter().map(|r| r.snapshots_to_delete).sum(),
            gib_freed: round2(gib),
            usd_per_month: round2(gib * opts.price_per_gb_month),
            price_per_gb_month: opts.price_per_gb_month,
            estimate: ESTIMATE_NOTE,
            regions,
        }
    }

    /// Regions that could not be looked at.
    pub fn failed_regions(&self) -> Vec<&RegionPlan> {
        self.regions.iter().filter(|r| r.error.is_some()).collect()
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A region that could not be looked at.
pub fn failed_region(region: &str, error: String) -> RegionPlan {
    RegionPlan {
        region: region.to_string(),
        error: Some(error),
        series: Vec::new(),
        orphans: Vec::new(),
        images_to_delete: 0,
        images_to_disable: 0,
        images_to_unprotect: 0,
        snapshots_to_delete: 0,
        gib_freed: 0.0,
        usd_per_month: 0.0,
        recycle_bin: "not looked at".into(),
    }
}
