//! The Recycle Bin: the region's retention rules for AMIs and snapshots (Recycle Bin's
//! ListRules and GetRule), what sits in the bin (EC2's ListImagesInRecycleBin and
//! ListSnapshotsInRecycleBin) and getting it back (RestoreImageFromRecycleBin,
//! RestoreSnapshotFromRecycleBin).
//!
//! A deregistered AMI or a deleted snapshot goes to the bin instead of away when a rule
//! of its kind covers it: a region-level rule (no resource tags) covers everything but
//! what carries one of its exclusion tags; a tag-level rule covers what carries one of
//! its tags. It stays there for the longest retention of the rules that cover it.

use std::collections::BTreeMap;

use aws_sdk_rbin::types::{ResourceTag, ResourceType};
use serde::Serialize;

use super::paging::all_pages;
use super::{AwsError, Call, Clients, RetryPolicy};

/// What a rule retains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// AMIs (EC2_IMAGE).
    Image,
    /// EBS snapshots (EBS_SNAPSHOT).
    Snapshot,
}

impl Kind {
    fn resource_type(self) -> ResourceType {
        match self {
            Kind::Image => ResourceType::Ec2Image,
            Kind::Snapshot => ResourceType::EbsSnapshot,
        }
    }
}

/// One retention rule of a region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionRule {
    /// The rule's identifier.
    pub id: String,
    /// What it retains.
    pub kind: Kind,
    /// How long deleted resources stay recoverable, in days.
    pub days: u32,
    /// Tag-level rule: the tags (key, value) of the resources it retains (any of them).
    pub tags: Vec<(String, String)>,
    /// Region-level rule: resources with any of these tags are not retained.
    pub exclude: Vec<(String, String)>,
    /// `available` (in force) or `pending` (not yet).
    pub status: String,
}

impl RetentionRule {
    /// Whether the rule retains a resource with `tags` once it is deleted.
    pub fn covers(&self, tags: &BTreeMap<String, String>) -> bool {
        let has = |(k, v): &(String, String)| tags.get(k) == Some(v);
        if self.status != "available" {
            return false;
        }
        if self.tags.is_empty() {
            !self.exclude.iter().any(has)
        } else {
            self.tags.iter().any(has)
        }
    }
}

/// How long a deleted resource of `kind` with `tags` stays recoverable under `rules`
/// (the longest covering rule), in days; `None` when no rule covers it.
pub fn retention(
    rules: &[RetentionRule],
    kind: Kind,
    tags: &BTreeMap<String, String>,
) -> Option<u32> {
    rules
        .iter()
        .filter(|r| r.kind == kind && r.covers(tags))
        .map(|r| r.days)
        .max()
}

fn pairs(tags: &[ResourceTag]) -> Vec<(String, String)> {
    tags.iter()
        .map(|t| {
            (
                t.resource_tag_key().to_string(),
                t.resource_tag_value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Every retention rule for AMIs and snapshots in `clients`' region: one paged
/// ListRules per kind, then GetRule for each (ListRules leaves out the tags).
pub async fn rules(clients: &Clients, retry: &RetryPolicy) -> Result<Vec<RetentionRule>, AwsError> {
    let region = clients.region();
    let mut out = Vec::new();
    for kind in [Kind::Image, Kind::Snapshot] {
        let mut ids = Vec::new();
        all_pages(
            retry,
            &Call::new("ListRules", region),
            |token| {
                clients
                    .rbin
                    .list_rules()
                    .resource_type(kind.resource_type())
                    .max_results(100)
                    .set_next_token(token)
                    .send()
            },
            |page| page.next_token(),
            |page| {
                ids.extend(
                    page.rules()
                        .iter()
                        .filter_map(|r| r.identifier().map(str::to_string)),
                );
            },
        )
        .await?;
        for id in ids {
            let rule = retry
                .send(&Call::new("GetRule", region).on(&id), || {
                    clients.rbin.get_rule().identifier(&id).send()
                })
                .await?;
            let days = rule
                .retention_period()
                .map(|p| p.retention_period_value())
                .unwrap_or(0);
            out.push(RetentionRule {
                id: id.clone(),
                kind,
                days: u32::try_from(days).unwrap_or(0),
                tags: pairs(rule.resource_tags()),
                exclude: pairs(rule.exclude_resource_tags()),
                status: rule
                    .status()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

/// Something in the Recycle Bin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Binned {
    /// AMI or snapshot id.
    pub id: String,
    /// The AMI's name (snapshots: their description).
    pub name: String,
    /// When it leaves the bin for good, epoch seconds.
    pub until: Option<i64>,
}

/// The AMIs among `ids` (all of them when empty) in `clients`' region's Recycle Bin.
pub async fn images_in_bin(
    clients: &Clients,
    ids: &[String],
    retry: &RetryPolicy,
) -> Result<Vec<Binned>, AwsError> {
    let mut out = Vec::new();
    let chunks: Vec<Vec<String>> = if ids.is_empty() {
        vec![Vec::new()]
    } else {
        ids.chunks(20).map(<[String]>::to_vec).collect()
    };
    for chunk in chunks {
        all_pages(
            retry,
            &Call::new("ListImagesInRecycleBin", clients.region()),
            |token| {
                let req = clients
                    .ec2
                    .list_images_in_recycle_bin()
                    .set_next_token(token);
                if chunk.is_empty() {
                    req.max_results(1000).send()
                } else {
                    req.set_image_ids(Some(chunk.clone())).send()
                }
            },
            |page| page.next_token(),
            |page| {
                out.extend(page.images().iter().filter_map(|i| {
                    Some(Binned {
                        id: i.image_id()?.to_string(),
                        name: i.name().unwrap_or_default().to_string(),
                        until: i.recycle_bin_exit_time().map(|t| t.secs()),
                    })
                }))
            },
        )
        .await?;
    }
    Ok(out)
}

/// The snapshots among `ids` (all of them when empty) in `clients`' region's Recycle Bin.
pub async fn snapshots_in_bin(
    clients: &Clients,
    ids: &[String],
    retry: &RetryPolicy,
) -> Result<Vec<Binned>, AwsError> {
    let mut out = Vec::new();
    let chunks: Vec<Vec<String>> = if ids.is_empty() {
        vec![Vec::new()]
    } else {
        ids.chunks(20).map(<[String]>::to_vec).collect()
    };
    for chunk in chunks {
        all_pages(
            retry,
            &Call::new("ListSnapshotsInRecycleBin", clients.region()),
            |token| {
                let req = clients
                    .ec2
                    .list_snapshots_in_recycle_bin()
                    .set_next_token(token);
                if chunk.is_empty() {
                    req.max_results(1000).send()
                } else {
                    req.set_snapshot_ids(Some(chunk.clone())).send()
                }
            },
            |page| page.next_token(),
            |page| {
                out.extend(page.snapshots().iter().filter_map(|s| {
                    Some(Binned {
                        id: s.snapshot_id()?.to_string(),
                        name: s.description().unwrap_or_default().to_string(),
                        until: s.recycle_bin_exit_time().map(|t| t.secs()),
                    })
                }))
            },
        )
        .await?;
    }
    Ok(out)
}

/// Bring AMI `image_id` back from the Recycle Bin.
pub async fn restore_image(
    clients: &Clients,
    image_id: &str,
    retry: &RetryPolicy,
) -> Result<(), AwsError> {
    retry
        .send(
            &Call::new("RestoreImageFromRecycleBin", clients.region()).on(image_id),
            || {
                clients
                    .ec2
                    .restore_image_from_recycle_bin()
                    .image_id(image_id)
                    .send()
            },
        )
        .await?;
    Ok(())
}

/// Bring snapshot `snapshot_id` back from the Recycle Bin.
pub async fn restore_snapshot(
    clients: &Clients,
    snapshot_id: &str,
    retry: &RetryPolicy,
) -> Result<(), AwsError> {
    retry
        .send(
            &Call::new("RestoreSnapshotFromRecycleBin", clients.region()).on(snapshot_id),
            || {
                clients
                    .ec2
                    .restore_snapshot_from_recycle_bin()
                    .snapshot_id(snapshot_id)
                    .send()
            },
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        kind: Kind,
        days: u32,
        tags: &[(&str, &str)],
        exclude: &[(&str, &str)],
    ) -> RetentionRule {
        let own = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        RetentionRule {
            id: "r".into(),
            kind,
            days,
            tags: own(tags),
            exclude: own(exclude),
            status: "available".into(),
        }
    }

    #[test]
    fn region_and_tag_level_rules_cover_what_they_say() {
        let tags: BTreeMap<String, String> = [("team".to_string(), "os".to_string())].into();
        let none = BTreeMap::new();
        let region = rule(Kind::Image, 7, &[], &[("keep-out", "yes")]);
        let tagged = rule(Kind::Image, 30, &[("team", "os")], &[]);
        let snaps = rule(Kind::Snapshot, 14, &[], &[]);
        let rules = vec![region.clone(), tagged, snaps];
        assert_eq!(
            retention(&rules, Kind::Image, &tags),
            Some(30),
            "the longest"
        );
        assert_eq!(retention(&rules, Kind::Image, &none), Some(7));
        assert_eq!(retention(&rules, Kind::Snapshot, &none), Some(14));
        let out: BTreeMap<String, String> = [("keep-out".to_string(), "yes".to_string())].into();
        assert_eq!(
            retention(std::slice::from_ref(&region), Kind::Image, &out),
            None,
            "excluded"
        );
        let mut pending = region;
        pending.status = "pending".into();
        assert_eq!(
            retention(&[pending], Kind::Image, &none),
            None,
            "not in force"
        );
    }
}
