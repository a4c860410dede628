//! The prune plan: per region and series what is kept, what is deleted and why, the
//! snapshots freed and what they cost. [`plan_region`] is pure: it turns a region's
//! [`Inventory`] and the options into a [`RegionPlan`]; nothing here talks to AWS.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use std::time::Duration;

use super::guard::{Guard, guards, lifecycle_guards};
use super::inventory::{Image, Inventory};
use super::policy::{Aged, Policy, Rule, Verdict, decide, human};
use super::series::{Glob, SeriesPattern, ymd};
use crate::aws::lifecycle::Protection;
use crate::aws::rbin::{self, Kind};

/// Snapshot storage list price, USD per GB-month (EBS standard tier, us-east-1); the
/// default of `--price-per-gb-month`.
pub const DEFAULT_PRICE_PER_GB_MONTH: f64 = 0.05;

/// What the plan says the estimate is.
pub const ESTIMATE_NOTE: &str = "an estimate: each snapshot counts at its full size (or \
its volume size when EC2 does not report it), while EBS bills the blocks a snapshot \
stores beyond those it shares with others, so the real saving may be smaller";

/// Image states that may be deregistered (a pending copy is left alone).
const DELETABLE_STATES: &[&str] = &["available", "failed", "error", "invalid", "disabled"];

/// Which images are candidates.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Name globs (`--name`); empty: every name.
    pub names: Vec<Glob>,
    /// Only images with ec2ami's ownership tag (always so when no name glob is given).
    pub managed_only: bool,
}

impl Selection {
    /// Whether `img` is a candidate.
    pub fn selects(&self, img: &Image) -> bool {
        let managed_only = self.managed_only || self.names.is_empty();
        (!managed_only || img.managed)
            && (self.names.is_empty() || self.names.iter().any(|g| g.matches(&img.name)))
    }

    /// How the selection reads in a plan.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.names.iter().map(Glob::as_str).collect();
        match (names.is_empty(), self.managed_only) {
            (true, _) => "images with ec2ami's ownership tag".into(),
            (false, false) => format!("images named {}", names.join(" or ")),
            (false, true) => format!(
                "images with ec2ami's ownership tag named {}",
                names.join(" or ")
            ),
        }
    }
}

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

impl Action {
    fn label(self) -> &'static str {
        match self {
            Action::Keep => "keep",
            Action::Guarded => "guarded",
            Action::Delete => "delete",
            Action::Disable => "disable",
            Action::Unprotect => "unprotect",
        }
    }
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
        Plan {
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

    /// The plan as text: per region and series, one line per image.
    pub fn render(&self) -> String {
        let mut out = format!(
            "prune plan: {}; {}\npolicy: {}\n",
            self.selection,
            self.series_from,
            self.policy.join("; ")
        );
        for r in &self.regions {
            out.push_str(&format!("{}\n", r.region));
            if let Some(e) = &r.error {
                out.push_str(&format!("  NOT LOOKED AT: {e}\n"));
                continue;
            }
            out.push_str(&format!("  recycle bin: {}\n", r.recycle_bin));
            if r.series.is_empty() && r.orphans.is_empty() {
                out.push_str("  nothing selected\n");
            }
            for s in &r.series {
                out.push_str(&format!("  {}  [{}]\n", s.series, s.rule));
                for i in &s.images {
                    let mut why = if i.guards.is_empty() {
                        i.reason.clone()
                    } else {
                        let g: Vec<String> = i.guards.iter().map(|g| g.to_string()).collect();
                        format!("{}; kept: {}", i.reason, g.join("; "))
                    };
                    if let Some(r) = &i.recovery {
                        why.push_str(&format!("; {}", r.note));
                    }
                    out.push_str(&format!(
                        "    {:<8} {:<21} {}  {why}\n",
                        i.action.label(),
                        i.image_id,
                        i.built
                    ));
                    for sn in &i.snapshots {
                        out.push_str(&format!(
                            "      {:<8} {:<22} {:>8} GiB  {}{}\n",
                            sn.action.label(),
                            sn.snapshot_id,
                            fmt_gib(sn.gib),
                            sn.reason,
                            recovery_suffix(&sn.recovery)
                        ));
                    }
                }
            }
            if !r.orphans.is_empty() {
                out.push_str("  orphaned snapshots\n");
                for sn in &r.orphans {
                    out.push_str(&format!(
                        "    {:<8} {:<22} {:>8} GiB  {}{}\n",
                        sn.action.label(),
                        sn.snapshot_id,
                        fmt_gib(sn.gib),
                        sn.reason,
                        recovery_suffix(&sn.recovery)
                    ));
                }
            }
            if r.images_to_disable + r.images_to_unprotect > 0 {
                out.push_str(&format!(
                    "  {}: disable {} image(s); disable the protection of {} image(s) (deleted by a later run)\n",
                    r.region, r.images_to_disable, r.images_to_unprotect
                ));
            }
            out.push_str(&format!(
                "  {}: delete {} image(s) and {} snapshot(s), {} GiB, about ${:.2}/month\n",
                r.region,
                r.images_to_delete,
                r.snapshots_to_delete,
                fmt_gib(r.gib_freed),
                r.usd_per_month
            ));
        }
        out.push_str(&format!(
            "total: delete {} image(s) and {} snapshot(s) in {} region(s), freeing {} GiB, \
             about ${:.2}/month at ${}/GB-month ({})",
            self.images_to_delete,
            self.snapshots_to_delete,
            self.regions.len(),
            fmt_gib(self.gib_freed),
            self.usd_per_month,
            self.price_per_gb_month,
            self.estimate
        ));
        if self.images_to_disable + self.images_to_unprotect > 0 {
            out.push_str(&format!(
                "\nand disable {} image(s), disable the deregistration protection of {} image(s)",
                self.images_to_disable, self.images_to_unprotect
            ));
        }
        if let Some(note) = self.launches {
            out.push_str(&format!("\n{note}"));
        }
        let failed = self.failed_regions().len();
        if failed > 0 {
            out.push_str(&format!("\n{failed} region(s) could not be looked at"));
        }
        out
    }
}

fn recovery_suffix(r: &Option<Recovery>) -> String {
    r.as_ref()
        .map(|r| format!("; {}", r.note))
        .unwrap_or_default()
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn fmt_gib(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
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

/// The AMI a snapshot's description says it was made for, as CreateImage
/// (`Created by CreateImage(i-...) for ami-... from vol-...`) and CopyImage (`Copied for
/// DestinationAmi ami-... from SourceAmi ami-... ...`) write it.
pub fn made_for_image(description: &str) -> Option<(&'static str, &str)> {
    let ami_at = |s: &str| -> Option<usize> {
        s.starts_with("ami-").then(|| {
            4 + s[4..]
                .find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(s.len() - 4)
        })
    };
    if let Some(rest) = description.strip_prefix("Created by CreateImage(") {
        let at = rest.find(" for ami-")? + " for ".len();
        let end = ami_at(&rest[at..])?;
        return Some(("CreateImage", &rest[at..at + end]));
    }
    if let Some(rest) = description.strip_prefix("Copied for DestinationAmi ") {
        let end = ami_at(rest)?;
        return Some(("CopyImage", &rest[..end]));
    }
    None
}

/// An image with what its name says.
struct Member<'a> {
    img: &'a Image,
    aged: Aged,
    date_from: &'static str,
}

/// Plan one region.
pub fn plan_region(inv: &Inventory, opts: &PlanOptions) -> RegionPlan {
    let snapshots: HashMap<&str, &super::inventory::Snapshot> =
        inv.snapshots.iter().map(|s| (s.id.as_str(), s)).collect();
    // Every image of the account maps into this, selected or not: a snapshot is
    // deleted only when every image using it is.
    let mut users: HashMap<&str, Vec<&str>> = HashMap::new();
    for img in &inv.images {
        for s in dedup(&img.snapshots) {
            users.entry(s).or_default().push(&img.id);
        }
    }
    let mut by_series: BTreeMap<String, Vec<Member>> = BTreeMap::new();
    let mut unmatched = Vec::new();
    for img in inv.images.iter().filter(|i| opts.selection.selects(i)) {
        match opts.pattern.split(&img.name) {
            Some(parts) => {
                let built = parts.date.unwrap_or(img.created);
                by_series.entry(parts.series).or_default().push(Member {
                    img,
                    aged: Aged {
                        built,
                        youngest: built.max(img.created),
                    },
                    date_from: if parts.date.is_some() {
                        "name"
                    } else {
                        "creation"
                    },
                });
            }
            None => unmatched.push(img),
        }
    }

    let mut series = Vec::new();
    for (name, mut members) in by_series {
        members.sort_by(|a, b| {
            (b.aged.built, b.img.created, &b.img.id).cmp(&(a.aged.built, a.img.created, &a.img.id))
        });
        let rule = opts.policy.rule_for(&name);
        let aged: Vec<Aged> = members.iter().map(|m| m.aged).collect();
        let verdicts = decide(rule, &aged, opts.now);
        let images = members
            .iter()
            .zip(verdicts)
            .map(|(m, v)| judge(m, v, rule, inv, opts))
            .collect();
        series.push(SeriesPlan {
            series: name,
            rule: rule.to_string(),
            images,
        });
    }
    if !unmatched.is_empty() {
        series.push(SeriesPlan {
            series: "(names the series pattern does not match)".into(),
            rule: "kept".into(),
            images: unmatched
                .into_iter()
                .map(|img| ImageItem {
                    image_id: img.id.clone(),
                    name: img.name.clone(),
                    built: ymd(img.created),
                    date_from: "creation",
                    action: Action::Keep,
                    reason: "its name does not match --series-pattern".into(),
                    guards: Vec::new(),
                    snapshots: Vec::new(),
                    unprotect: false,
                    recovery: None,
                })
                .collect(),
        });
    }

    // Snapshots: deleted with the last deleted image that uses them, and only when
    // every image using them is deleted.
    let order: Vec<String> = series
        .iter()
        .flat_map(|s| &s.images)
        .filter(|i| i.action == Action::Delete)
        .map(|i| i.image_id.clone())
        .collect();
    let position: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(n, id)| (id.as_str(), n))
        .collect();
    let by_id: HashMap<&str, &Image> = inv.images.iter().map(|i| (i.id.as_str(), i)).collect();
    let mut snapshot_items: HashMap<String, Vec<SnapshotItem>> = HashMap::new();
    for (n, id) in order.iter().enumerate() {
        let img = by_id[id.as_str()];
        let mut items = Vec::new();
        for s in dedup(&img.snapshots) {
            let item = |action, gib, reason: String| SnapshotItem {
                snapshot_id: s.to_string(),
                gib,
                action,
                reason,
                recovery: None,
            };
            let Some(snap) = snapshots.get(s) else {
                items.push(item(
                    Action::Keep,
                    0.0,
                    "not a snapshot of this account (or already gone)".into(),
                ));
                continue;
            };
            let others: Vec<&str> = users[s].iter().copied().filter(|u| u != id).collect();
            let kept: Vec<&str> = others
                .iter()
                .copied()
                .filter(|u| !position.contains_key(u))
                .collect();
            if !kept.is_empty() {
                items.push(item(
                    Action::Keep,
                    snap.gib,
                    format!("also used by {}, which stays", kept.join(", ")),
                ));
                continue;
            }
            let last = others.iter().map(|u| position[u]).max();
            match last {
                Some(l) if l > n => items.push(item(
                    Action::Keep,
                    snap.gib,
                    format!("also used by {}: deleted with that image", order[l]),
                )),
                _ => items.push(item(
                    Action::Delete,
                    snap.gib,
                    if others.is_empty() {
                        "used only by this image".into()
                    } else {
                        format!("also used by {}, deleted before", others.join(", "))
                    },
                )),
            }
        }
        snapshot_items.insert(id.to_string(), items);
    }
    for s in &mut series {
        for i in &mut s.images {
            if let Some(items) = snapshot_items.remove(&i.image_id) {
                i.snapshots = items;
            }
        }
    }

    let orphans = if opts.orphans {
        orphans(inv, &users, opts)
    } else {
        Vec::new()
    };
    let deleted_snapshots = series
        .iter()
        .flat_map(|s| &s.images)
        .flat_map(|i| &i.snapshots)
        .chain(&orphans)
        .filter(|s| s.action == Action::Delete);
    let (count, gib) = deleted_snapshots.fold((0, 0.0), |(n, g), s| (n + 1, g + s.gib));
    let with = |a: Action| {
        series
            .iter()
            .flat_map(|s| &s.images)
            .filter(|i| i.action == a)
            .count()
    };
    let (images_to_disable, images_to_unprotect) = (with(Action::Disable), with(Action::Unprotect));
    let mut plan = RegionPlan {
        region: inv.region.clone(),
        error: None,
        images_to_delete: order.len(),
        images_to_disable,
        images_to_unprotect,
        snapshots_to_delete: count,
        gib_freed: round2(gib),
        usd_per_month: round2(gib * opts.price_per_gb_month),
        recycle_bin: String::new(),
        series,
        orphans,
    };
    recoverability(&mut plan, inv, opts.now);
    plan
}

/// Say for each deletion whether the Recycle Bin keeps it, and until when.
fn recoverability(plan: &mut RegionPlan, inv: &Inventory, now: i64) {
    let rules = match &inv.rules {
        Ok(r) => r,
        Err(e) => {
            plan.recycle_bin = format!("rules could not be read ({e}): recoverability unknown");
            let unknown = || {
                Some(Recovery {
                    until: None,
                    note: "recoverability unknown (Recycle Bin rules not read)".into(),
                })
            };
            for i in plan.series.iter_mut().flat_map(|s| &mut s.images) {
                if i.action == Action::Delete {
                    i.recovery = unknown();
                }
                for sn in i
                    .snapshots
                    .iter_mut()
                    .filter(|s| s.action == Action::Delete)
                {
                    sn.recovery = unknown();
                }
            }
            for sn in plan
                .orphans
                .iter_mut()
                .filter(|s| s.action == Action::Delete)
            {
                sn.recovery = unknown();
            }
            return;
        }
    };
    let count = |k: Kind| {
        rules
            .iter()
            .filter(|r| r.kind == k && r.status == "available")
            .count()
    };
    plan.recycle_bin = match (count(Kind::Image), count(Kind::Snapshot)) {
        (0, 0) => "no retention rule: what is deleted is gone for good".into(),
        (i, s) => format!("{i} retention rule(s) for AMIs, {s} for snapshots"),
    };
    let say = |kind: Kind, tags: &BTreeMap<String, String>| {
        Some(match rbin::retention(rules, kind, tags) {
            Some(days) => {
                let until = now + i64::from(days) * 86_400;
                Recovery {
                    until: Some(until),
                    note: format!(
                        "recoverable from the Recycle Bin until {} ({days}-day rule)",
                        ymd(until)
                    ),
                }
            }
            None => Recovery {
                until: None,
                note: "not recoverable: no Recycle Bin rule covers it".into(),
            },
        })
    };
    let empty = BTreeMap::new();
    let image_tags: HashMap<&str, &BTreeMap<String, String>> = inv
        .images
        .iter()
        .map(|i| (i.id.as_str(), &i.tags))
        .collect();
    let snap_tags: HashMap<&str, &BTreeMap<String, String>> = inv
        .snapshots
        .iter()
        .map(|s| (s.id.as_str(), &s.tags))
        .collect();
    for i in plan.series.iter_mut().flat_map(|s| &mut s.images) {
        if i.action == Action::Delete {
            i.recovery = say(
                Kind::Image,
                image_tags
                    .get(i.image_id.as_str())
                    .copied()
                    .unwrap_or(&empty),
            );
        }
        for sn in i
            .snapshots
            .iter_mut()
            .filter(|s| s.action == Action::Delete)
        {
            sn.recovery = say(
                Kind::Snapshot,
                snap_tags
                    .get(sn.snapshot_id.as_str())
                    .copied()
                    .unwrap_or(&empty),
            );
        }
    }
    for sn in plan
        .orphans
        .iter_mut()
        .filter(|s| s.action == Action::Delete)
    {
        sn.recovery = say(
            Kind::Snapshot,
            snap_tags
                .get(sn.snapshot_id.as_str())
                .copied()
                .unwrap_or(&empty),
        );
    }
}

/// The plan line of one image given the policy's verdict: kept, guarded, disabled
/// (staged retirement), unprotected (a cooldown to wait out) or deleted.
fn judge(
    m: &Member,
    verdict: Verdict,
    rule: &Rule,
    inv: &Inventory,
    opts: &PlanOptions,
) -> ImageItem {
    let img = m.img;
    let mut item = ImageItem {
        image_id: img.id.clone(),
        name: img.name.clone(),
        built: ymd(m.aged.built),
        date_from: m.date_from,
        action: Action::Keep,
        reason: verdict.to_string(),
        guards: Vec::new(),
        snapshots: Vec::new(),
        unprotect: false,
        recovery: None,
    };
    if !verdict.deletes() {
        return item;
    }
    if !DELETABLE_STATES.contains(&img.state.as_str()) {
        item.reason = format!("{verdict}, but its state is {}", img.state);
        return item;
    }
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    // Staged retirement: disable first, delete a chosen time after.
    let stage = if !rule.staged() {
        Action::Delete
    } else if img.state != "disabled" {
        let wait = rule.disable_after.unwrap_or_default();
        if opts.now.saturating_sub(m.aged.built) < secs(wait) {
            item.reason = format!("{verdict}; disabled once older than {}", human(wait));
            return item;
        }
        Action::Disable
    } else {
        let Some(after) = rule.delete_after else {
            item.reason =
                format!("{verdict}; disabled, and the policy deletes nothing (no delete_after)");
            return item;
        };
        let (since, known) = match img.disabled_at {
            Some(t) => (t, true),
            None => (m.aged.built, false),
        };
        let due = since.saturating_add(secs(after));
        let when = if known {
            format!("disabled on {}", ymd(since))
        } else {
            "disabled by other means (no ec2ami:disabled-at tag: counted from its build date)"
                .into()
        };
        if opts.now < due {
            item.reason = format!("{verdict}; {when}, deleted from {}", ymd(due));
            return item;
        }
        item.reason = format!("{verdict}; {when}, {} ago or more", human(after));
        Action::Delete
    };
    let mut g = guards(&img.id, img.public, &inv.users, opts.include_public);
    g.extend(lifecycle_guards(img, opts.unused_for, opts.now));
    if stage == Action::Delete {
        match Protection::parse(img.protection.as_deref(), opts.now) {
            Protection::Off => {}
            Protection::On { cooldown: false } if opts.unprotect => item.unprotect = true,
            Protection::On { cooldown: true } if opts.unprotect && g.is_empty() => {
                item.action = Action::Unprotect;
                item.reason = format!(
                    "{}; its protection has a 24-hour cooldown: disabled now, deletable from {} \
                     by a later run",
                    item.reason,
                    crate::prune::series::ymd_hm(opts.now + 86_400)
                );
                return item;
            }
            Protection::On { cooldown } => g.push(Guard::Protected { cooldown }),
            Protection::Cooling { until } => g.push(Guard::CoolingDown {
                until: crate::prune::series::ymd_hm(until),
            }),
        }
    }
    if g.is_empty() {
        item.action = stage;
    } else {
        item.action = Action::Guarded;
        item.guards = g;
    }
    item
}

/// Snapshots no image uses that are ours to delete: made by ec2ami, or by CreateImage or
/// CopyImage for an image that no longer exists.
fn orphans(
    inv: &Inventory,
    users: &HashMap<&str, Vec<&str>>,
    opts: &PlanOptions,
) -> Vec<SnapshotItem> {
    let images: BTreeSet<&str> = inv.images.iter().map(|i| i.id.as_str()).collect();
    let min_age = opts.policy.defaults.min_age;
    let mut out = Vec::new();
    for s in &inv.snapshots {
        if users.contains_key(s.id.as_str()) {
            continue;
        }
        let why = if s.managed {
            "made by ec2ami, used by no image".to_string()
        } else {
            match made_for_image(&s.description) {
                Some((op, ami)) if !images.contains(ami) => {
                    format!("made by {op} for {ami}, which no longer exists")
                }
                _ => continue,
            }
        };
        let (action, reason) = if !s.completed {
            (Action::Keep, format!("{why}; not completed yet"))
        } else if opts.now.saturating_sub(s.started) < min_age.as_secs() as i64 {
            (
                Action::Keep,
                format!("{why}; younger than min-age {}", human(min_age)),
            )
        } else {
            (Action::Delete, why)
        };
        out.push(SnapshotItem {
            snapshot_id: s.id.clone(),
            gib: s.gib,
            action,
            reason,
            recovery: None,
        });
    }
    out
}

fn dedup(v: &[String]) -> Vec<&str> {
    let mut seen = BTreeSet::new();
    v.iter()
        .map(String::as_str)
        .filter(|s| seen.insert(*s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::inventory::Snapshot;
    use crate::prune::policy::Flags;
    use std::time::Duration;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_800_000_000; // 2027-01-15

    fn image(id: &str, name: &str, days_old: i64, snaps: &[&str]) -> Image {
        Image {
            id: id.into(),
            name: name.into(),
            state: "available".into(),
            created: NOW - days_old * DAY,
            public: false,
            snapshots: snaps.iter().map(|s| s.to_string()).collect(),
            managed: true,
            deprecation: None,
            protection: None,
            last_launched: None,
            disabled_at: None,
            tags: Default::default(),
        }
    }

    fn snap(id: &str, gib: f64, days_old: i64) -> Snapshot {
        Snapshot {
            id: id.into(),
            gib,
            description: String::new(),
            started: NOW - days_old * DAY,
            completed: true,
            managed: false,
            tags: Default::default(),
        }
    }

    fn opts(keep: i64) -> PlanOptions {
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
    fn weekly(prefix: &str, weeks: i64) -> Vec<Image> {
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

    fn inventory(images: Vec<Image>) -> Inventory {
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
            rules: Ok(Vec::new()),
        }
    }

    fn actions(p: &RegionPlan) -> Vec<(String, Action)> {
        p.series
            .iter()
            .flat_map(|s| &s.images)
            .map(|i| (i.image_id.clone(), i.action))
            .collect()
    }

    #[test]
    fn keeps_the_newest_of_each_series_and_frees_their_snapshots() {
        let mut imgs = weekly("A", 4);
        imgs.extend(weekly("B", 2));
        let p = plan_region(&inventory(imgs), &opts(2));
        assert_eq!(p.series.len(), 2);
        assert_eq!(p.series[0].series, "MyOS 15.0-A-{date} base");
        use Action::*;
        assert_eq!(
            actions(&p),
            vec![
                ("ami-A0".into(), Keep),
                ("ami-A1".into(), Keep),
                ("ami-A2".into(), Delete),
                ("ami-A3".into(), Delete),
                ("ami-B0".into(), Keep),
                ("ami-B1".into(), Keep),
            ]
        );
        assert_eq!(p.images_to_delete, 2);
        assert_eq!(p.snapshots_to_delete, 2);
        assert_eq!(p.gib_freed, 20.0);
        assert_eq!(p.usd_per_month, 1.0);
        let a2 = &p.series[0].images[2];
        assert_eq!(a2.reason, "older than the 2 newest");
        assert_eq!(a2.snapshots[0].action, Delete);
        assert_eq!(a2.date_from, "name");
    }

    #[test]
    fn a_snapshot_another_image_keeps_is_not_deleted_and_a_shared_one_goes_last() {
        let mut imgs = weekly("A", 3);
        // A kept image of another series uses A2's snapshot.
        imgs.push(image("ami-gold", "MyOS golden", 10, &["snap-A2"]));
        // Two old images, both deleted, share one snapshot (BIOS and UEFI variants).
        imgs.push(image("ami-U", "MyOS uefi-20200101", 400, &["snap-old"]));
        imgs.push(image("ami-U2", "MyOS uefi-20200108", 393, &["snap-x"]));
        imgs.push(image("ami-L", "MyOS bios-20200101", 400, &["snap-old"]));
        imgs.push(image("ami-L2", "MyOS bios-20200108", 393, &["snap-y"]));
        let p = plan_region(&inventory(imgs), &opts(1));
        let item = |id: &str| {
            p.series
                .iter()
                .flat_map(|s| &s.images)
                .find(|i| i.image_id == id)
                .unwrap()
                .clone()
        };
        let a2 = item("ami-A2");
        assert_eq!(a2.action, Action::Delete);
        assert_eq!(a2.snapshots[0].action, Action::Keep);
        assert_eq!(a2.snapshots[0].reason, "also used by ami-gold, which stays");
        let (l, u) = (item("ami-L"), item("ami-U"));
        assert_eq!((l.action, u.action), (Action::Delete, Action::Delete));
        // Series order: "MyOS bios-{date}" before "MyOS uefi-{date}".
        assert_eq!(l.snapshots[0].action, Action::Keep);
        assert!(
            l.snapshots[0].reason.contains("deleted with that image"),
            "{:?}",
            l.snapshots
        );
        assert_eq!(u.snapshots[0].action, Action::Delete);
        // snap-old counted once.
        let deleted: Vec<&str> = p
            .series
            .iter()
            .flat_map(|s| &s.images)
            .flat_map(|i| &i.snapshots)
            .filter(|s| s.action == Action::Delete)
            .map(|s| s.snapshot_id.as_str())
            .collect();
        assert_eq!(deleted, vec!["snap-A1", "snap-old"]);
        assert_eq!(p.snapshots_to_delete, 2);
    }

    #[test]
    fn guards_keep_images_the_policy_would_delete() {
        let mut imgs = weekly("A", 5);
        imgs[3].public = true;
        let mut inv = inventory(imgs);
        inv.users
            .parameters
            .insert("/myos/latest".into(), "ami-A2".into());
        inv.users
            .instances
            .insert("ami-A4".into(), vec!["i-1 (stopped)".into()]);
        let p = plan_region(&inv, &opts(1));
        use Action::*;
        assert_eq!(
            actions(&p),
            vec![
                ("ami-A0".into(), Keep),
                ("ami-A1".into(), Delete),
                ("ami-A2".into(), Guarded),
                ("ami-A3".into(), Guarded),
                ("ami-A4".into(), Guarded),
            ]
        );
        let a2 = &p.series[0].images[2];
        assert_eq!(
            a2.guards,
            vec![Guard::Parameter {
                name: "/myos/latest".into()
            }]
        );
        assert!(a2.snapshots.is_empty(), "a guarded image frees nothing");
        let mut o = opts(1);
        o.include_public = true;
        let p = plan_region(&inv, &o);
        assert_eq!(actions(&p)[3], ("ami-A3".into(), Delete));
    }

    #[test]
    fn selection_is_by_tag_unless_names_are_given() {
        let mut imgs = weekly("A", 3);
        imgs[2].managed = false;
        imgs.push(image("ami-other", "Other 20200101", 100, &[]));
        imgs[3].managed = false;
        let inv = inventory(imgs);
        let p = plan_region(&inv, &opts(0));
        assert_eq!(actions(&p).len(), 2, "only tagged ones");
        let mut o = opts(0);
        o.selection.names = vec![Glob::new("MyOS *")];
        assert_eq!(plan_region(&inv, &o).series[0].images.len(), 3);
        o.selection.managed_only = true;
        assert_eq!(plan_region(&inv, &o).series[0].images.len(), 2);
    }

    #[test]
    fn pending_images_and_young_ones_are_kept() {
        let mut imgs = weekly("A", 3);
        imgs[2].state = "pending".into();
        imgs.push(image("ami-new", "MyOS 15.0-A-20200101 base", 0, &[]));
        let p = plan_region(&inventory(imgs), &opts(0));
        let s = &p.series[0].images;
        // ami-new is dated 2020 by its name but was created today: young.
        let new = s.iter().find(|i| i.image_id == "ami-new").unwrap();
        assert_eq!(new.action, Action::Keep);
        assert_eq!(new.reason, "younger than min-age 2d");
        let pending = s.iter().find(|i| i.image_id == "ami-A2").unwrap();
        assert_eq!(pending.action, Action::Keep);
        assert_eq!(pending.reason, "keep 0, but its state is pending");
    }

    #[test]
    fn orphans_are_ours_or_made_for_missing_images() {
        let imgs = weekly("A", 1);
        let mut inv = inventory(imgs);
        let mut add = |id: &str, desc: &str, managed: bool, days: i64| {
            let mut s = snap(id, 8.0, days);
            s.description = desc.into();
            s.managed = managed;
            inv.snapshots.push(s);
        };
        add("snap-ours", "", true, 10);
        add("snap-young", "", true, 1);
        add(
            "snap-gone",
            "Created by CreateImage(i-0abc) for ami-0dead from vol-1",
            false,
            10,
        );
        add(
            "snap-copy",
            "Copied for DestinationAmi ami-0gone from SourceAmi ami-1 for SourceSnapshot snap-1. Task created on 1,700,000,000,000.",
            false,
            10,
        );
        add(
            "snap-live",
            "Created by CreateImage(i-0abc) for ami-A0 from vol-1",
            false,
            10,
        );
        add("snap-foreign", "my backup", false, 10);
        let p = plan_region(&inv, &opts(1));
        let o: Vec<(&str, Action)> = p
            .orphans
            .iter()
            .map(|s| (s.snapshot_id.as_str(), s.action))
            .collect();
        assert_eq!(
            o,
            vec![
                ("snap-ours", Action::Delete),
                ("snap-young", Action::Keep),
                ("snap-gone", Action::Delete),
                ("snap-copy", Action::Delete),
            ]
        );
        assert_eq!(
            p.orphans[2].reason,
            "made by CreateImage for ami-0dead, which no longer exists"
        );
        assert_eq!(p.snapshots_to_delete, 3);
        let mut no = opts(1);
        no.orphans = false;
        assert!(plan_region(&inv, &no).orphans.is_empty());
    }

    #[test]
    fn staged_retirement_disables_first_and_deletes_a_chosen_time_after() {
        let mut imgs = weekly("A", 4);
        // A2 was disabled 20 days ago, A3 5 days ago.
        imgs[2].state = "disabled".into();
        imgs[2].disabled_at = Some(NOW - 20 * DAY);
        imgs[3].state = "disabled".into();
        imgs[3].disabled_at = Some(NOW - 5 * DAY);
        let mut o = opts(1);
        o.policy.defaults.disable_after = Some(Duration::ZERO);
        o.policy.defaults.delete_after = Some(Duration::from_secs(14 * DAY as u64));
        let p = plan_region(&inventory(imgs), &o);
        use Action::*;
        assert_eq!(
            actions(&p),
            vec![
                ("ami-A0".into(), Keep),
                ("ami-A1".into(), Disable),
                ("ami-A2".into(), Delete),
                ("ami-A3".into(), Keep),
            ]
        );
        let a3 = &p.series[0].images[3];
        assert!(a3.reason.contains("deleted from"), "{}", a3.reason);
        assert!(
            p.series[0].images[1].snapshots.is_empty(),
            "a disabled image frees nothing"
        );
        assert_eq!((p.images_to_disable, p.images_to_delete), (1, 1));
        // disable_after counts from the build date.
        o.policy.defaults.disable_after = Some(Duration::from_secs(30 * DAY as u64));
        let p = plan_region(&inventory(weekly("A", 3)), &o);
        assert_eq!(actions(&p)[1], ("ami-A1".into(), Keep));
        assert!(
            p.series[0].images[1]
                .reason
                .contains("disabled once older than 30d")
        );
    }

    #[test]
    fn protection_guards_unless_unprotect_and_a_cooldown_waits_for_a_later_run() {
        let mut imgs = weekly("A", 4);
        imgs[1].protection = Some("enabled".into());
        imgs[2].protection = Some("enabled-with-cooldown".into());
        let until = aws_smithy_types::DateTime::from_secs(NOW + 3600)
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .unwrap();
        imgs[3].protection = Some(format!("disabled-until {until}"));
        let inv = inventory(imgs);
        use Action::*;
        let p = plan_region(&inv, &opts(0));
        assert!(
            actions(&p).iter().skip(1).all(|(_, a)| *a == Guarded),
            "{:?}",
            actions(&p)
        );
        assert!(
            p.series[0].images[1].guards[0]
                .to_string()
                .contains("--unprotect")
        );
        let mut o = opts(0);
        o.unprotect = true;
        let p = plan_region(&inv, &o);
        let imgs = &p.series[0].images;
        assert_eq!((imgs[1].action, imgs[1].unprotect), (Delete, true));
        assert_eq!(imgs[2].action, Unprotect);
        assert!(
            imgs[2].reason.contains("deletable from"),
            "{}",
            imgs[2].reason
        );
        assert_eq!(imgs[3].action, Guarded);
        assert!(
            imgs[3].guards[0]
                .to_string()
                .contains("cooldown runs until")
        );
    }

    #[test]
    fn recently_launched_images_are_kept_with_unused_for() {
        let mut imgs = weekly("A", 3);
        imgs[2].last_launched = Some(NOW - 3 * DAY);
        let inv = inventory(imgs);
        let mut o = opts(0);
        o.unused_for = Some(Duration::from_secs(30 * DAY as u64));
        let p = plan_region(&inv, &o);
        let a2 = &p.series[0].images[2];
        assert_eq!(a2.action, Action::Guarded);
        assert!(
            a2.guards[0].to_string().contains("within --unused-for 30d"),
            "{:?}",
            a2.guards
        );
        o.unused_for = Some(Duration::from_secs(2 * DAY as u64));
        assert_eq!(
            plan_region(&inv, &o).series[0].images[2].action,
            Action::Delete
        );
    }

    #[test]
    fn the_plan_says_what_the_recycle_bin_keeps() {
        use crate::aws::rbin::{Kind, RetentionRule};
        let mut inv = inventory(weekly("A", 2));
        inv.rules = Ok(vec![RetentionRule {
            id: "r1".into(),
            kind: Kind::Image,
            days: 7,
            tags: vec![],
            exclude: vec![],
            status: "available".into(),
        }]);
        let p = plan_region(&inv, &opts(1));
        let a1 = &p.series[0].images[1];
        assert_eq!(a1.recovery.as_ref().unwrap().until, Some(NOW + 7 * DAY));
        let snap = &a1.snapshots[0];
        assert!(
            snap.recovery
                .as_ref()
                .unwrap()
                .note
                .starts_with("not recoverable")
        );
        assert!(
            p.recycle_bin.contains("1 retention rule(s) for AMIs"),
            "{}",
            p.recycle_bin
        );
        inv.rules = Err("AccessDeniedException".into());
        let p = plan_region(&inv, &opts(1));
        assert!(
            p.series[0].images[1]
                .recovery
                .as_ref()
                .unwrap()
                .note
                .contains("unknown")
        );
    }

    #[test]
    fn descriptions_name_the_image() {
        assert_eq!(
            made_for_image(
                "Created by CreateImage(i-0123456789abcdef0) for ami-0123456789abcdef0 from vol-0aa"
            ),
            Some(("CreateImage", "ami-0123456789abcdef0"))
        );
        assert_eq!(
            made_for_image("Created by CreateImage(i-1) for ami-42"),
            Some(("CreateImage", "ami-42"))
        );
        assert_eq!(
            made_for_image(
                "Copied for DestinationAmi ami-0b from SourceAmi ami-0a for SourceSnapshot snap-1. Task created on 1."
            ),
            Some(("CopyImage", "ami-0b"))
        );
        assert_eq!(
            made_for_image("Created by CreateImage(i-1) for nothing"),
            None
        );
        assert_eq!(made_for_image("[Copied snap-1 from us-east-1]"), None);
    }

    #[test]
    fn the_text_plan_says_what_and_why() {
        let mut imgs = weekly("A", 3);
        imgs[2].public = true;
        let p = plan_region(&inventory(imgs), &opts(1));
        let plan = Plan::new(vec![p], &opts(1));
        let text = plan.render();
        for needle in [
            "us-east-1\n",
            "MyOS 15.0-A-{date} base  [keep 1, min-age 2d]",
            "keep     ami-A0",
            "delete   ami-A1",
            "older than the newest",
            "guarded  ami-A2",
            "kept: public (pass --include-public",
            "delete   snap-A1",
            "total: delete 1 image(s) and 1 snapshot(s) in 1 region(s), freeing 10 GiB, about $0.50/month",
            "an estimate",
        ] {
            assert!(text.contains(needle), "`{needle}` not in:\n{text}");
        }
    }
}
