//! Per-region planning: the policy's verdict for each series, the guards, which
//! snapshots go with the deleted images, and the orphaned snapshots; pure, from a
//! region's [`Inventory`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use super::super::guard::{Guard, guards, lifecycle_guards};
use super::super::inventory::{Inventory, Lineage};
use super::super::policy::{Aged, Rule, Verdict, decide, human};
use super::super::series::ymd;
use super::group::{Groups, Member, dedup, group, snapshot_users};
use super::{
    Action, ImageItem, PlanOptions, Recovery, RegionPlan, SeriesPlan, SnapshotItem, round2,
};
use crate::aws::lifecycle::Protection;
use crate::aws::rbin::{self, Kind};
use crate::aws::{Ami as Image, Snapshot};

/// Image states that may be deregistered (a pending copy is left alone).
const DELETABLE_STATES: &[&str] = &["available", "failed", "error", "invalid", "disabled"];

/// Plan one region.
pub fn plan_region(inv: &Inventory, opts: &PlanOptions) -> RegionPlan {
    let snapshots: HashMap<&str, &Snapshot> =
        inv.snapshots.iter().map(|s| (s.id.as_str(), s)).collect();
    let users = snapshot_users(&inv.images);
    let Groups {
        series: by_series,
        unmatched,
    } = group(&inv.images, &opts.selection, &opts.pattern);

    let mut series = Vec::new();
    for (name, members) in by_series {
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
        for s in dedup(img.snapshot_ids()) {
            let item = |action, gib, reason: String| SnapshotItem {
                snapshot_id: s.to_string(),
                gib,
                action,
                reason,
                recovery: None,
                upper_bound: false,
                parent: None,
                children_kept: Vec::new(),
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
                    snap.gib(),
                    format!("also used by {}, which stays", kept.join(", ")),
                ));
                continue;
            }
            let last = others.iter().map(|u| position[u]).max();
            match last {
                Some(l) if l > n => items.push(item(
                    Action::Keep,
                    snap.gib(),
                    format!("also used by {}: deleted with that image", order[l]),
                )),
                _ => items.push(item(
                    Action::Delete,
                    snap.gib(),
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
    let mut orphans = orphans;
    lineage_costs(&mut series, &mut orphans, inv);
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
        let (since, known) = match img.disabled_at() {
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
        let why = if s.managed() {
            "made by ec2ami, used by no image".to_string()
        } else {
            match made_for_image(&s.description) {
                Some((op, ami)) if !images.contains(ami) => {
                    format!("made by {op} for {ami}, which no longer exists")
                }
                _ => continue,
            }
        };
        let (action, reason) = if !s.completed() {
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
            gib: s.gib(),
            action,
            reason,
            recovery: None,
            upper_bound: false,
            parent: None,
            children_kept: Vec::new(),
        });
    }
    out
}

/// What deleting each snapshot saves, honest about lineage: a child counts the blocks it
/// holds itself; a parent whose children stay counts only the blocks every one of them
/// replaced (at most the fewest any child replaced: an upper bound with more than one);
/// a snapshot counted at its full or volume size is an upper bound, since EBS bills only
/// the blocks it does not share.
fn lineage_costs(series: &mut [super::SeriesPlan], orphans: &mut [SnapshotItem], inv: &Inventory) {
    const GIB: f64 = (1u64 << 30) as f64;
    let snaps: HashMap<&str, &Snapshot> =
        inv.snapshots.iter().map(|s| (s.id.as_str(), s)).collect();
    let deleted: HashSet<String> = series
        .iter()
        .flat_map(|s| &s.images)
        .flat_map(|i| &i.snapshots)
        .chain(orphans.iter())
        .filter(|s| s.action == Action::Delete)
        .map(|s| s.snapshot_id.clone())
        .collect();
    let mut children: HashMap<&str, Vec<(&str, &Lineage)>> = HashMap::new();
    for (child, l) in &inv.lineage {
        children
            .entry(l.parent.as_str())
            .or_default()
            .push((child, l));
    }
    let items = series
        .iter_mut()
        .flat_map(|s| s.images.iter_mut())
        .flat_map(|i| i.snapshots.iter_mut())
        .chain(orphans.iter_mut());
    for item in items {
        let Some(snap) = snaps.get(item.snapshot_id.as_str()) else {
            continue;
        };
        let id = item.snapshot_id.as_str();
        let mut notes = Vec::new();
        // Counted at its full (or volume) size: EBS may share its blocks.
        let (mut gib, mut upper) = (snap.gib(), true);
        let is_child = inv.lineage.get(id);
        if let Some(l) = is_child {
            item.parent = Some(l.parent.clone());
            match &l.changed {
                Ok(c) => {
                    gib = (c.own * c.block_size) as f64 / GIB;
                    upper = false;
                    notes.push(format!(
                        "child of {}: counts the {} blocks it holds itself",
                        l.parent, c.own
                    ));
                }
                Err(_) => notes.push(format!(
                    "child of {}: the blocks they share are unknown, counted whole",
                    l.parent
                )),
            }
        }
        let kept: Vec<&(&str, &Lineage)> = children
            .get(id)
            .map(|v| v.iter().filter(|(c, _)| !deleted.contains(*c)).collect())
            .unwrap_or_default();
        if !kept.is_empty() {
            item.children_kept = kept.iter().map(|(c, _)| c.to_string()).collect();
            let names = item.children_kept.join(", ");
            let replaced: Option<Vec<u64>> = kept
                .iter()
                .map(|(_, l)| l.changed.as_ref().ok().map(|c| c.replaced * c.block_size))
                .collect();
            let (verb, which) = if kept.len() > 1 {
                ("stay", "the fewest any of them")
            } else {
                ("stays", "it")
            };
            match replaced.and_then(|v| v.into_iter().min()) {
                Some(bytes) => {
                    // Freed: its blocks that no remaining child shares, at most those
                    // the child that shares most did not share; exact for one child of
                    // a snapshot that is not itself a child.
                    let was = gib;
                    gib = gib.min(bytes as f64 / GIB);
                    upper = kept.len() > 1 || is_child.is_some() || (gib == was && upper);
                    notes.push(format!(
                        "parent of {names}, which {verb} readable: EBS keeps the blocks they \
                         share; counts the {} blocks {which} replaced",
                        bytes / crate::snapshot::AWS_BLOCK_SIZE
                    ));
                }
                None => {
                    upper = true;
                    notes.push(format!(
                        "parent of {names}, which {verb} readable (EBS keeps the blocks \
                         they share); how many it shares is unknown"
                    ));
                }
            }
        }
        item.gib = round2(gib);
        item.upper_bound = upper;
        if !notes.is_empty() {
            item.reason = format!("{}; {}", item.reason, notes.join("; "));
        }
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

#[cfg(test)]
mod tests {
    use super::super::Guard;
    use super::super::fixtures::*;
    use super::*;
    use crate::aws::tags;

    fn lineage(inv: &mut Inventory, child: &str, parent: &str, own: u64, replaced: u64) {
        use super::super::super::inventory::Changed;
        inv.lineage.insert(
            child.into(),
            Lineage {
                parent: parent.into(),
                changed: Ok(Changed {
                    block_size: 512 * 1024,
                    own,
                    replaced,
                }),
            },
        );
    }

    fn snapshot_item<'a>(p: &'a RegionPlan, id: &str) -> &'a SnapshotItem {
        p.series
            .iter()
            .flat_map(|s| &s.images)
            .flat_map(|i| &i.snapshots)
            .find(|s| s.snapshot_id == id)
            .unwrap()
    }

    #[test]
    fn lineage_makes_the_estimate_honest() {
        // Each week's snapshot is a child of the week before's; the 2 newest stay.
        let mut inv = inventory(weekly("A", 4));
        lineage(&mut inv, "snap-A0", "snap-A1", 100, 90);
        lineage(&mut inv, "snap-A1", "snap-A2", 200, 150);
        lineage(&mut inv, "snap-A2", "snap-A3", 300, 280);
        let p = plan_region(&inv, &opts(2));
        // The oldest: no parent, its only child deleted too: its full size, which EBS
        // may share (an upper bound).
        let a3 = snapshot_item(&p, "snap-A3");
        assert_eq!(
            (a3.action, a3.gib, a3.upper_bound),
            (Action::Delete, 10.0, true)
        );
        assert!(a3.children_kept.is_empty());
        // A child whose own child stays: at most the 150 blocks (75 MiB) that child
        // replaced, fewer than the 300 it holds itself.
        let a2 = snapshot_item(&p, "snap-A2");
        assert_eq!(a2.action, Action::Delete);
        assert_eq!(a2.parent.as_deref(), Some("snap-A3"));
        assert_eq!(a2.children_kept, vec!["snap-A1".to_string()]);
        assert_eq!(a2.gib, 0.07);
        assert!(a2.upper_bound);
        assert!(
            a2.reason
                .contains("parent of snap-A1, which stays readable"),
            "{}",
            a2.reason
        );
        assert_eq!(p.gib_freed, 10.07);
        let plan = super::super::Plan::new(vec![p], &opts(2));
        assert_eq!(plan.lineage, Some(super::super::LINEAGE_NOTE));
        assert!(plan.gib_freed_upper_bound);
        assert!(
            plan.render()
                .contains("does not make its children unreadable")
        );
    }

    #[test]
    fn a_parent_with_one_child_kept_counts_what_the_child_replaced() {
        let mut inv = inventory(weekly("B", 3));
        // B1 stays and replaced 2048 of B2's blocks (1 GiB); B0 is B1's child.
        lineage(&mut inv, "snap-B1", "snap-B2", 4096, 2048);
        lineage(&mut inv, "snap-B0", "snap-B1", 10, 10);
        let p = plan_region(&inv, &opts(2));
        let b2 = snapshot_item(&p, "snap-B2");
        assert_eq!(
            (b2.action, b2.gib, b2.upper_bound),
            (Action::Delete, 1.0, false)
        );
        assert_eq!(p.gib_freed, 1.0);
        // Counts unknown: the full size, an upper bound, and said so.
        let mut inv = inventory(weekly("B", 3));
        inv.lineage.insert(
            "snap-B1".into(),
            Lineage {
                parent: "snap-B2".into(),
                changed: Err("AccessDenied".into()),
            },
        );
        let p = plan_region(&inv, &opts(2));
        let b2 = snapshot_item(&p, "snap-B2");
        assert_eq!((b2.gib, b2.upper_bound), (10.0, true));
        assert!(
            b2.reason.contains("how many it shares is unknown"),
            "{}",
            b2.reason
        );
        // A deleted child counts only the blocks it holds itself, exactly.
        let mut inv = inventory(weekly("C", 4));
        lineage(&mut inv, "snap-C3", "snap-C9", 1024, 0);
        let p = plan_region(&inv, &opts(2));
        let c3 = snapshot_item(&p, "snap-C3");
        assert_eq!((c3.gib, c3.upper_bound), (0.5, false));
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
            if managed {
                s.tags
                    .insert(tags::OWNERSHIP.into(), tags::OWNERSHIP_VALUE.into());
            }
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

    fn rfc3339(secs: i64) -> String {
        aws_smithy_types::DateTime::from_secs(secs)
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .unwrap()
    }

    #[test]
    fn staged_retirement_disables_first_and_deletes_a_chosen_time_after() {
        let mut imgs = weekly("A", 4);
        // A2 was disabled 20 days ago, A3 5 days ago.
        imgs[2].state = "disabled".into();
        imgs[2]
            .tags
            .insert(tags::DISABLED_AT.into(), rfc3339(NOW - 20 * DAY));
        imgs[3].state = "disabled".into();
        imgs[3]
            .tags
            .insert(tags::DISABLED_AT.into(), rfc3339(NOW - 5 * DAY));
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
}
