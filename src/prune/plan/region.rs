//! Per-region planning: the policy's verdict for each series, the guards, which
//! snapshots go with the deleted images, and the orphaned snapshots; pure, from a
//! region's [`Inventory`].

use std::collections::{BTreeSet, HashMap};

use super::super::guard::guards;
use super::super::inventory::Inventory;
use super::super::policy::{Aged, Verdict, decide, human};
use super::super::series::ymd;
use super::group::{Groups, Member, dedup, group, snapshot_users};
use super::{Action, ImageItem, PlanOptions, RegionPlan, SeriesPlan, SnapshotItem, round2};
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
            .map(|(m, v)| judge(m, v, inv, opts))
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
    let deleted_snapshots = series
        .iter()
        .flat_map(|s| &s.images)
        .flat_map(|i| &i.snapshots)
        .chain(&orphans)
        .filter(|s| s.action == Action::Delete);
    let (count, gib) = deleted_snapshots.fold((0, 0.0), |(n, g), s| (n + 1, g + s.gib));
    RegionPlan {
        region: inv.region.clone(),
        error: None,
        images_to_delete: order.len(),
        snapshots_to_delete: count,
        gib_freed: round2(gib),
        usd_per_month: round2(gib * opts.price_per_gb_month),
        series,
        orphans,
    }
}

/// The plan line of one image given the policy's verdict: kept, guarded or deleted.
fn judge(m: &Member, verdict: Verdict, inv: &Inventory, opts: &PlanOptions) -> ImageItem {
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
    };
    if !verdict.deletes() {
        return item;
    }
    if !DELETABLE_STATES.contains(&img.state.as_str()) {
        item.reason = format!("{verdict}, but its state is {}", img.state);
        return item;
    }
    let g = guards(&img.id, img.public, &inv.users, opts.include_public);
    if g.is_empty() {
        item.action = Action::Delete;
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
        });
    }
    out
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
