//! One read-only survey of what exists for a release, and the decisions made from it.
//!
//! For every image and region: the AMI (by name; in the source region also by the id
//! the journal recorded), its launch permissions, its SSM parameters; in the source
//! region, the snapshot an earlier run uploaded (journal, then the `ec2ami:ami-name`
//! tag) and its state. `--plan`, `validate` and the run all decide from a survey, with
//! the functions below, so the plan says exactly what the run will do. Every listing is
//! batched: one DescribeImages per region for all of the release's names, one
//! GetParameters per ten parameter names and region, one DescribeSnapshots for every
//! image's tagged snapshots.

use std::collections::{BTreeMap, BTreeSet};

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use futures_util::future::join_all;

use super::announce::{self, AnnounceDecision};
use super::{PublishError, Release, ReleaseImage, resolve_regions};
use crate::ami;
use crate::aws::{Ami, AwsError, Clients, RetryPolicy, Snapshot, ec2, ssm, tags};
use crate::state::journal::{Journal, Status, Step, StepKey};

/// What to look at (the run reads parameters when it writes them, not before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// Read every image's SSM parameters in every region.
    pub parameters: bool,
}

/// What exists for a release.
#[derive(Debug)]
pub struct Survey {
    /// Where images are uploaded and registered.
    pub source: String,
    /// Every region, the source first.
    pub regions: Vec<String>,
    /// Regions whose failure is only a warning.
    pub best_effort: Vec<String>,
    /// Each image of the release, in file order.
    pub images: Vec<ImageSurvey>,
    /// The release announcement, when the release has one: to send, or sent by an
    /// earlier run (from the journal).
    pub announce: Option<AnnounceDecision>,
}

/// What exists for one image.
#[derive(Debug)]
pub struct ImageSurvey {
    /// The AMI name.
    pub name: String,
    /// Each region, in the survey's order (the source first).
    pub regions: Vec<RegionSurvey>,
    /// The snapshots of earlier uploads (only looked at when the AMI does not exist in
    /// the source region).
    pub snapshots: Option<SnapshotSurvey>,
}

/// What exists for one image in one region. A lookup that failed is kept as its error:
/// `validate` reports it as Unreachable, the plan and the run stop on it.
#[derive(Debug)]
pub struct RegionSurvey {
    /// Region.
    pub region: String,
    /// The AMI of that name, if any.
    pub ami: Result<Option<Ami>, AwsError>,
    /// Its launch permissions as words (`account:ID`...), read when the release grants
    /// accounts, organizations or OUs and the AMI exists.
    pub grants: Option<Result<BTreeSet<String>, AwsError>>,
    /// The values the image's parameters hold there (absent: no such parameter); not
    /// read when the scope leaves parameters out.
    pub parameters: Option<Result<BTreeMap<String, String>, AwsError>>,
    /// Whether every snapshot of the AMI is public, read when the release asks for
    /// public snapshots and the AMI exists.
    pub snapshots_public: Option<Result<bool, AwsError>>,
}

/// The snapshots earlier uploads of one image left in the source region.
#[derive(Debug, Default)]
pub struct SnapshotSurvey {
    /// The journal's snapshot step, with that snapshot as EC2 has it now.
    pub journal: Option<(Step, Option<Snapshot>)>,
    /// Snapshots tagged with the AMI name.
    pub tagged: Vec<Snapshot>,
}

impl Survey {
    /// Look at everything `release` describes (read-only; `journal` is an earlier run's).
    pub async fn take(
        home: &Clients,
        release: &Release,
        journal: Option<&Journal>,
        scope: Scope,
        retry: &RetryPolicy,
    ) -> Result<Survey, PublishError> {
        let (source, regions, best_effort) = resolve_regions(home, release, retry).await?;
        let names: Vec<&str> = release.images.iter().map(|i| i.name()).collect();
        let grants_wanted = release.share.words().iter().any(|w| w != "public");

        // Per region, concurrently: the AMIs of every name, then their grants, and the
        // parameters of every image.
        let per_region = join_all(regions.iter().map(|region| {
            let names = &names;
            async move {
                let c = home.in_region(region);
                let found = ec2::images_named(&c, names, retry).await;
                let params = if scope.parameters {
                    let wanted: Vec<String> = release
                        .images
                        .iter()
                        .flat_map(|i| i.params_in(region))
                        .collect();
                    Some(ssm::get_parameters(&c, &wanted, retry).await)
                } else {
                    None
                };
                let public_snaps = match (&found, release.public_snapshots) {
                    (Ok(amis), true) => {
                        join_all(amis.iter().map(|a| async {
                            (
                                a.id.clone(),
                                ami::share::snapshots_public(&c, a, retry).await,
                            )
                        }))
                        .await
                    }
                    _ => Vec::new(),
                };
                let grants = match (&found, grants_wanted) {
                    (Ok(amis), true) => {
                        join_all(amis.iter().map(|a| async {
                            let words = ami::share::launch_permissions(&c, &a.id, retry).await;
                            (a.id.clone(), words.map(|w| w.into_iter().collect()))
                        }))
                        .await
                    }
                    _ => Vec::new(),
                };
                (found, params, grants, public_snaps)
            }
        }))
        .await;

        let src = home.in_region(&source);
        let mut images = Vec::new();
        for img in &release.images {
            let mut rs = Vec::new();
            for (region, (found, params, grants, public_snaps)) in regions.iter().zip(&per_region) {
                let ami = match found {
                    Ok(amis) => Ok(amis.iter().find(|a| a.name == img.name()).cloned()),
                    Err(e) => Err(e.clone()),
                };
                let ami = match ami {
                    Ok(None) if *region == source => {
                        recorded_ami(&src, img, journal, &source, retry).await
                    }
                    other => other,
                };
                let grants = match &ami {
                    Ok(Some(a)) if grants_wanted => grants
                        .iter()
                        .find(|(id, _)| *id == a.id)
                        .map(|(_, g)| g.clone()),
                    _ => None,
                };
                let snapshots_public = match &ami {
                    Ok(Some(a)) => public_snaps
                        .iter()
                        .find(|(id, _)| *id == a.id)
                        .map(|(_, p)| p.clone()),
                    _ => None,
                };
                let parameters = params.as_ref().map(|p| match p {
                    Ok(all) => Ok(img
                        .params_in(region)
                        .into_iter()
                        .filter_map(|n| all.get(&n).map(|v| (n, v.clone())))
                        .collect()),
                    Err(e) => Err(e.clone()),
                });
                rs.push(RegionSurvey {
                    region: region.clone(),
                    ami,
                    grants,
                    parameters,
                    snapshots_public,
                });
            }
            images.push(ImageSurvey {
                name: img.name().to_string(),
                regions: rs,
                snapshots: None,
            });
        }

        // The source region's snapshots, for the images that have no AMI there yet.
        let need: Vec<usize> = images
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.regions[0].ami, Ok(None)))
            .map(|(i, _)| i)
            .collect();
        if !need.is_empty() {
            let wanted: Vec<&str> = need.iter().map(|&i| images[i].name.as_str()).collect();
            let filter = ec2::filter_any(&format!("tag:{}", tags::AMI_NAME), &wanted);
            let tagged = ec2::snapshots(&src, vec![filter], retry).await?;
            for i in need {
                let name = images[i].name.clone();
                let recorded = match journal {
                    Some(j) => j.get(&StepKey::new(&name, "snapshot", &source, ""))?,
                    None => None,
                };
                let journal_snap = match recorded {
                    Some(step) => {
                        let id = step.resource_id.clone().unwrap_or_default();
                        let found = match tagged.iter().find(|s| s.id == id) {
                            Some(s) => Some(s.clone()),
                            None if id.is_empty() => None,
                            None => ec2::snapshot(&src, &id, retry).await?,
                        };
                        Some((step, found))
                    }
                    None => None,
                };
                images[i].snapshots = Some(SnapshotSurvey {
                    journal: journal_snap,
                    tagged: tagged
                        .iter()
                        .filter(|s| s.tag(tags::AMI_NAME) == Some(name.as_str()))
                        .cloned()
                        .collect(),
                });
            }
        }
        let announce = match (&release.announce, journal) {
            (Some(a), Some(j)) => Some(announce::decision(j.get(&a.step())?.as_ref())),
            (Some(_), None) => Some(AnnounceDecision::Send),
            (None, _) => None,
        };
        Ok(Survey {
            source,
            regions,
            best_effort,
            images,
            announce,
        })
    }

    /// The survey of `img`.
    pub fn image(&self, img: &ReleaseImage) -> &ImageSurvey {
        self.images
            .iter()
            .find(|s| s.name == img.name())
            .expect("every image of the release is surveyed")
    }
}

/// The AMI the journal recorded in the source region, when a look-up by name did not
/// find it (a new image may not be visible by name yet).
async fn recorded_ami(
    src: &Clients,
    img: &ReleaseImage,
    journal: Option<&Journal>,
    source: &str,
    retry: &RetryPolicy,
) -> Result<Option<Ami>, AwsError> {
    let Some(j) = journal else {
        return Ok(None);
    };
    let step = j
        .get(&StepKey::new(img.name(), "ami", source, ""))
        .map_err(|e| AwsError::config(e.to_string()))?;
    match step.and_then(|s| s.resource_id) {
        Some(id) => Ok(ec2::image(src, &id, retry)
            .await?
            .filter(|a| a.name == img.name() && a.state != "deregistered")),
        None => Ok(None),
    }
}

/// Where an image's snapshot comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotDecision {
    /// The AMI exists in the source region: its snapshot; nothing to upload.
    FromAmi(String),
    /// A snapshot an earlier run uploaded completely; the leftovers of interrupted
    /// uploads are deleted.
    Reuse {
        /// The snapshot.
        id: String,
        /// How it was found: `journal` or `tag`.
        found_by: &'static str,
        /// Unfinished snapshots to delete.
        delete: Vec<String>,
    },
    /// Upload; the leftovers of interrupted uploads are deleted first.
    Upload {
        /// Unfinished snapshots to delete.
        delete: Vec<String>,
    },
}

impl ImageSurvey {
    /// The source region's survey.
    pub fn source(&self) -> &RegionSurvey {
        &self.regions[0]
    }

    /// The AMI in the source region (an error if it could not be looked up).
    pub fn source_ami(&self) -> Result<Option<&Ami>, AwsError> {
        self.source()
            .ami
            .as_ref()
            .map(Option::as_ref)
            .map_err(Clone::clone)
    }

    /// Where the snapshot comes from. A snapshot is reused only when its upload
    /// completed (journalled as done, or tagged `ec2ami:uploaded`) and EC2 says it is
    /// `completed`; any other snapshot an earlier upload of this image left is deleted.
    pub fn snapshot_decision(&self, journal_snapshot: Option<String>) -> SnapshotDecision {
        if let Ok(Some(ami)) = &self.source().ami {
            let id = ami
                .source_snapshot()
                .or(journal_snapshot)
                .unwrap_or_default();
            return SnapshotDecision::FromAmi(id);
        }
        let empty = SnapshotSurvey::default();
        let s = self.snapshots.as_ref().unwrap_or(&empty);
        let mut delete = Vec::new();
        if let Some((step, found)) = &s.journal {
            let id = step.resource_id.clone().unwrap_or_default();
            match found {
                Some(snap) if step.status == Status::Done && snap.completed() => {
                    return SnapshotDecision::Reuse {
                        id,
                        found_by: "journal",
                        delete,
                    };
                }
                Some(_) => delete.push(id),
                None => {}
            }
        }
        let mut reuse = None;
        for snap in &s.tagged {
            if delete.contains(&snap.id) {
                continue;
            }
            let complete = snap.tag(tags::UPLOADED).is_some() && snap.completed();
            if complete && reuse.is_none() {
                reuse = Some(snap.id.clone());
            } else {
                delete.push(snap.id.clone());
            }
        }
        match reuse {
            Some(id) => SnapshotDecision::Reuse {
                id,
                found_by: "tag",
                delete,
            },
            None => SnapshotDecision::Upload { delete },
        }
    }
}

/// What a copy into one region will be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyDecision {
    /// Our copy of the source AMI exists.
    Reuse(String),
    /// Copy.
    Create,
    /// The name is held by an image that is not our copy of the source AMI.
    Refuse(String),
}

/// The copy into `region` (`dest`), given the source AMI's id when it exists.
pub fn copy_decision(source_id: Option<&str>, dest: Option<&Ami>) -> CopyDecision {
    match dest {
        None => CopyDecision::Create,
        Some(a) if source_id.is_some() && a.tag(tags::SOURCE_IMAGE) == source_id => {
            CopyDecision::Reuse(a.id.clone())
        }
        Some(a) => CopyDecision::Refuse(format!(
            "{} already holds the name and is {}",
            a.id,
            match a.tag(tags::SOURCE_IMAGE) {
                Some(s) => format!("a copy of {s}"),
                None => "not a copy made by ec2ami".into(),
            }
        )),
    }
}

/// The permissions of `wanted` (words) an AMI lacks: being public shows in
/// DescribeImages, the others in its launch permissions (`grants`). `None` for grants
/// means they were not read: every non-public permission is then taken as missing.
pub fn missing_permissions(
    wanted: &[String],
    ami: &Ami,
    grants: Option<&BTreeSet<String>>,
) -> Vec<String> {
    wanted
        .iter()
        .filter(|w| match w.as_str() {
            "public" => !ami.public,
            other => !grants.is_some_and(|g| g.contains(other)),
        })
        .cloned()
        .collect()
}

/// True when `ami` already carries the deprecation time `at` (EC2 keeps it to the
/// minute).
pub fn deprecation_set(ami: &Ami, at: DateTime) -> bool {
    ami.deprecation
        .as_deref()
        .and_then(|d| DateTime::from_str(d, Format::DateTime).ok())
        .is_some_and(|have| (have.secs() - at.secs()).abs() < 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn snap(id: &str, state: &str, uploaded: bool) -> Snapshot {
        let mut t = BTreeMap::new();
        t.insert(tags::AMI_NAME.to_string(), "MyOS 1".to_string());
        if uploaded {
            t.insert(tags::UPLOADED.to_string(), "true".to_string());
        }
        Snapshot {
            region: "us-east-1".into(),
            id: id.into(),
            state: state.into(),
            state_message: None,
            progress: None,
            volume_size: 1,
            full_size: None,
            description: String::new(),
            started: 0,
            encrypted: false,
            owner: None,
            tags: t,
        }
    }

    fn step(id: &str, status: Status) -> Step {
        Step {
            key: StepKey::new("MyOS 1", "snapshot", "us-east-1", ""),
            resource_id: Some(id.into()),
            status,
            detail: None,
        }
    }

    fn image(journal: Option<(Step, Option<Snapshot>)>, tagged: Vec<Snapshot>) -> ImageSurvey {
        ImageSurvey {
            name: "MyOS 1".into(),
            regions: vec![RegionSurvey {
                region: "us-east-1".into(),
                ami: Ok(None),
                grants: None,
                parameters: None,
                snapshots_public: None,
            }],
            snapshots: Some(SnapshotSurvey { journal, tagged }),
        }
    }

    #[test]
    fn a_journalled_snapshot_is_reused_only_when_done_and_completed() {
        let done = image(
            Some((
                step("snap-1", Status::Done),
                Some(snap("snap-1", "completed", true)),
            )),
            vec![snap("snap-1", "completed", true)],
        );
        assert_eq!(
            done.snapshot_decision(None),
            SnapshotDecision::Reuse {
                id: "snap-1".into(),
                found_by: "journal",
                delete: vec![]
            }
        );
        // Journalled as done, but EC2 still has it pending: not reused, deleted.
        let pending = image(
            Some((
                step("snap-1", Status::Done),
                Some(snap("snap-1", "pending", true)),
            )),
            vec![snap("snap-1", "pending", true)],
        );
        assert_eq!(
            pending.snapshot_decision(None),
            SnapshotDecision::Upload {
                delete: vec!["snap-1".into()]
            }
        );
        // Started (interrupted upload): deleted; a completed tagged one is reused.
        let started = image(
            Some((
                step("snap-1", Status::Started),
                Some(snap("snap-1", "pending", false)),
            )),
            vec![
                snap("snap-1", "pending", false),
                snap("snap-2", "completed", true),
                snap("snap-3", "completed", false),
            ],
        );
        assert_eq!(
            started.snapshot_decision(None),
            SnapshotDecision::Reuse {
                id: "snap-2".into(),
                found_by: "tag",
                delete: vec!["snap-1".into(), "snap-3".into()]
            }
        );
        // Nothing: upload.
        assert_eq!(
            image(None, vec![]).snapshot_decision(None),
            SnapshotDecision::Upload { delete: vec![] }
        );
    }

    fn ami(id: &str, source: Option<&str>, public: bool) -> Ami {
        let mut a = Ami::from_sdk(
            "eu-west-1",
            &aws_sdk_ec2::types::Image::builder()
                .image_id(id)
                .name("MyOS 1")
                .public(public)
                .build(),
        )
        .unwrap();
        if let Some(s) = source {
            a.tags.insert(tags::SOURCE_IMAGE.into(), s.into());
        }
        a
    }

    #[test]
    fn copies_are_reused_only_when_they_are_copies_of_the_source() {
        assert_eq!(copy_decision(Some("ami-src"), None), CopyDecision::Create);
        assert_eq!(
            copy_decision(Some("ami-src"), Some(&ami("ami-c", Some("ami-src"), false))),
            CopyDecision::Reuse("ami-c".into())
        );
        assert!(matches!(
            copy_decision(Some("ami-src"), Some(&ami("ami-c", Some("ami-old"), false))),
            CopyDecision::Refuse(m) if m.contains("a copy of ami-old")
        ));
        assert!(matches!(
            copy_decision(None, Some(&ami("ami-c", None, false))),
            CopyDecision::Refuse(m) if m.contains("not a copy made by ec2ami")
        ));
    }

    #[test]
    fn missing_permissions_are_found() {
        let wanted = vec!["public".to_string(), "account:123456789012".to_string()];
        let a = ami("ami-1", None, true);
        let granted: BTreeSet<String> = ["account:123456789012".to_string()].into();
        assert!(missing_permissions(&wanted, &a, Some(&granted)).is_empty());
        assert_eq!(
            missing_permissions(&wanted, &a, None),
            vec!["account:123456789012".to_string()]
        );
        let private = ami("ami-2", None, false);
        assert_eq!(
            missing_permissions(&wanted, &private, Some(&granted)),
            vec!["public".to_string()]
        );
    }

    #[test]
    fn deprecation_is_compared_to_the_minute() {
        let mut a = ami("ami-1", None, false);
        let at = DateTime::from_str("2027-06-30T00:00:00Z", Format::DateTime).unwrap();
        assert!(!deprecation_set(&a, at));
        a.deprecation = Some("2027-06-30T00:00:00.000Z".into());
        assert!(deprecation_set(&a, at));
        a.deprecation = Some("2027-06-30T00:05:00.000Z".into());
        assert!(!deprecation_set(&a, at));
    }
}
