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
//!
//! It also looks at what makes a first public release fail halfway, before anything is
//! created ([`Survey::problems`]): regions the account has not enabled, and for a public
//! release, per region, block public access for images (and for snapshots when they are
//! to be public) and the public AMIs the region would hold against the account's quota
//! (GetServiceQuota, else AWS's default, said so).

use std::collections::{BTreeMap, BTreeSet};

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use futures_util::future::join_all;

use super::announce::{self, AnnounceDecision};
use serde::Serialize;

use super::{PublishError, Release, ReleaseImage, resolve_regions};
use crate::ami;
use crate::aws::quotas::{self, Quota};
use crate::aws::{Ami, AwsError, Clients, RetryPolicy, Snapshot, ec2, lifecycle, ssm, tags};
use crate::state::journal::{Journal, Status, Step, StepKey};

use super::identity::Stamp;

/// What to look at (the run reads parameters when it writes them, not before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// Read every image's SSM parameters in every region.
    pub parameters: bool,
    /// Read the UEFI data of every AMI whose release image has some (validate).
    pub uefi: bool,
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
    /// Regions the release names that the account has not enabled (left out of
    /// `regions`).
    pub not_enabled: Vec<String>,
    /// Per region (as `regions`), what a public release depends on.
    pub readiness: Vec<Readiness>,
}

/// What a public release depends on in one region, looked at before anything is
/// created. Each is read only when the release needs it; a look-up that failed is kept
/// as its error.
#[derive(Debug)]
pub struct Readiness {
    /// Region.
    pub region: String,
    /// Block public access for AMIs (`block-new-sharing`, `unblocked`), when public.
    pub image_bpa: Option<Result<String, AwsError>>,
    /// Block public access for snapshots, when the snapshots are to be public.
    pub snapshot_bpa: Option<Result<String, AwsError>>,
    /// The account's public AMIs there (ids), when public.
    pub public_images: Option<Result<Vec<String>, AwsError>>,
    /// The public AMI quota there, when public.
    pub quota: Option<Result<Quota, AwsError>>,
}

/// Something that would make the publish fail halfway, in one region, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Region.
    pub region: String,
    /// `region`, `image-block-public-access`, `snapshot-block-public-access`,
    /// `public-ami-quota`.
    pub check: &'static str,
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub fix: String,
    /// True when the publish refuses to start because of it (false: the check itself
    /// could not be made).
    pub blocking: bool,
}

impl Problem {
    /// One line: `eu-west-1: image-block-public-access: ... -- ...`.
    pub fn line(&self) -> String {
        format!(
            "{}: {}{}: {} -- {}",
            self.region,
            if self.blocking { "" } else { "not checked: " },
            self.check,
            self.problem,
            self.fix
        )
    }
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
    /// The image file as it is now (an error when it cannot be read).
    pub current: Result<Stamp, String>,
    /// What the source AMI was made from, when recorded (its identity tag, else the
    /// journal's snapshot step).
    pub recorded: Option<Stamp>,
}

/// An AMI made from an earlier version of its image file: what `--replace` deregisters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    /// The AMI name.
    pub name: String,
    /// The image file.
    pub path: std::path::PathBuf,
    /// The source AMI.
    pub image_id: String,
    /// What changed, in words.
    pub change: String,
}

impl Stale {
    /// What is wrong, in words.
    pub fn what(&self) -> String {
        format!(
            "{}: {} changed since {} was made from it ({})",
            self.name,
            self.path.display(),
            self.image_id,
            self.change
        )
    }

    /// The ways out.
    pub fn ways_out(&self) -> &'static str {
        "give the release a new build date or name, or pass --replace to deregister it \
         (with its copies and snapshots) and publish the image again"
    }

    /// The refusal, one line, with the ways out.
    pub fn refusal(&self) -> String {
        format!("{}: {}", self.what(), self.ways_out())
    }
}

/// One thing `publish --replace` deletes: our AMI in a region (with its snapshots), made
/// from an earlier version of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// The AMI name.
    pub name: String,
    /// Region.
    pub region: String,
    /// The AMI to deregister.
    pub image_id: String,
    /// Its snapshots, deleted after it.
    pub snapshots: Vec<String>,
    /// True when its deregistration protection must be disabled first.
    pub unprotect: bool,
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
    /// SHA-256 of the AMI's UEFI data (`None` inside: it has none), read when the scope
    /// asks, the release image has UEFI data and the AMI exists.
    pub uefi: Option<Result<Option<String>, AwsError>>,
}

/// The snapshots earlier uploads of one image left in the source region.
#[derive(Debug, Default)]
pub struct SnapshotSurvey {
    /// The journal's snapshot step, with that snapshot as EC2 has it now.
    pub journal: Option<(Step, Option<Snapshot>)>,
    /// Snapshots tagged with the AMI name.
    pub tagged: Vec<Snapshot>,
    /// The id of this publish's state database (`ec2ami:state-id` on the snapshots it
    /// starts), when known.
    pub state_id: Option<String>,
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
        // Regions the account has not enabled are a problem to report, not the end of
        // the survey (unless the source region is one of them).
        let (resolved, not_enabled) = match resolve_regions(home, release, retry).await {
            Ok(r) => (r, Vec::new()),
            Err(e) => {
                let enabled = ec2::enabled_regions(home, retry).await?;
                let mut not_enabled: Vec<String> = Vec::new();
                for r in release.regions.iter().chain(&release.best_effort) {
                    if r != "all" && !enabled.contains(r) && !not_enabled.contains(r) {
                        not_enabled.push(r.clone());
                    }
                }
                let source_disabled = release
                    .source_region
                    .as_ref()
                    .or(release.regions.first())
                    .is_some_and(|s| not_enabled.contains(s));
                if not_enabled.is_empty() || source_disabled {
                    return Err(e);
                }
                let mut enabled_only = release.clone();
                enabled_only.regions.retain(|r| !not_enabled.contains(r));
                enabled_only
                    .best_effort
                    .retain(|r| !not_enabled.contains(r));
                (
                    resolve_regions(home, &enabled_only, retry).await?,
                    not_enabled,
                )
            }
        };
        let (source, regions, best_effort) = resolved;
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
                let uefi =
                    match (&found, scope.uefi) {
                        (Ok(amis), true) => {
                            let wanted: Vec<&Ami> =
                                amis.iter()
                                    .filter(|a| {
                                        release.images.iter().any(|i| {
                                            i.name() == a.name && i.spec.uefi_data.is_some()
                                        })
                                    })
                                    .collect();
                            join_all(wanted.into_iter().map(|a| async {
                                (a.id.clone(), uefi_digest(&c, &a.id, retry).await)
                            }))
                            .await
                        }
                        _ => Vec::new(),
                    };
                (found, params, grants, public_snaps, uefi)
            }
        }))
        .await;

        let src = home.in_region(&source);
        let mut images = Vec::new();
        for img in &release.images {
            let mut rs = Vec::new();
            for (region, (found, params, grants, public_snaps, uefi)) in
                regions.iter().zip(&per_region)
            {
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
                let uefi = match &ami {
                    Ok(Some(a)) => uefi
                        .iter()
                        .find(|(id, _)| *id == a.id)
                        .map(|(_, u)| u.clone()),
                    _ => None,
                };
                rs.push(RegionSurvey {
                    region: region.clone(),
                    ami,
                    grants,
                    parameters,
                    snapshots_public,
                    uefi,
                });
            }
            // What the source AMI was made from: its tag, else the journal's snapshot
            // step when that is the AMI's snapshot.
            let recorded = match &rs[0].ami {
                Ok(Some(a)) => match a.tag(tags::IMAGE_IDENTITY).and_then(Stamp::decode) {
                    Some(s) => Some(s),
                    None => match journal {
                        Some(j) => j
                            .get(&StepKey::new(img.name(), "snapshot", &source, ""))?
                            .filter(|st| {
                                st.resource_id.is_some() && st.resource_id == a.source_snapshot()
                            })
                            .and_then(|st| st.detail.as_deref().and_then(Stamp::decode)),
                        None => None,
                    },
                },
                _ => None,
            };
            images.push(ImageSurvey {
                name: img.name().to_string(),
                regions: rs,
                snapshots: None,
                current: Stamp::of(&img.path),
                recorded,
            });
        }

        // The source region's snapshots, for the images that have no AMI there yet.
        let need: Vec<usize> = images
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.regions[0].ami, Ok(None)))
            .map(|(i, _)| i)
            .collect();
        let state_id = match journal {
            Some(j) => Some(j.state_id()?),
            None => None,
        };
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
                    state_id: state_id.clone(),
                });
            }
        }
        let announce = match (&release.announce, journal) {
            (Some(a), Some(j)) => Some(announce::decision(j.get(&a.step())?.as_ref())),
            (Some(_), None) => Some(AnnounceDecision::Send),
            (None, _) => None,
        };
        let readiness = join_all(regions.iter().map(|r| readiness(home, release, r, retry))).await;
        Ok(Survey {
            source,
            regions,
            best_effort,
            images,
            announce,
            not_enabled,
            readiness,
        })
    }

    /// Take the snapshots tagged with state database id `id` for this publish's own
    /// (when the survey was taken without a journal: a plan before the first run).
    pub fn set_state_id(&mut self, id: &str) {
        for img in &mut self.images {
            if let Some(s) = &mut img.snapshots {
                s.state_id = Some(id.to_string());
            }
        }
    }

    /// The images whose AMI was made from an earlier version of their file.
    pub fn stale(&self, release: &Release) -> Vec<Stale> {
        release
            .images
            .iter()
            .filter_map(|img| self.image(img).stale(&img.path))
            .collect()
    }

    /// What `publish --replace` deletes for the stale images: in every region, our AMI
    /// of that name (the source AMI, or our copy of it) with its snapshots. AMIs that
    /// ec2ami did not make (no ownership tag) are never in it.
    pub fn replacements(&self, release: &Release) -> Vec<Replacement> {
        let now = crate::state::now_epoch();
        let mut out = Vec::new();
        for stale in self.stale(release) {
            let Some(img) = self.images.iter().find(|i| i.name == stale.name) else {
                continue;
            };
            for r in &img.regions {
                let Ok(Some(a)) = &r.ami else { continue };
                let ours = tags::is_managed(&a.tags)
                    && (a.id == stale.image_id
                        || a.tag(tags::SOURCE_IMAGE) == Some(stale.image_id.as_str()));
                if !ours {
                    continue;
                }
                out.push(Replacement {
                    name: stale.name.clone(),
                    region: r.region.clone(),
                    image_id: a.id.clone(),
                    snapshots: a.snapshot_ids().map(str::to_string).collect(),
                    unprotect: lifecycle::Protection::parse(a.protection.as_deref(), now)
                        .blocks_deregistration(),
                });
            }
        }
        out
    }

    /// The survey as it will be once `done` are deleted: those AMIs gone, their images
    /// to be uploaded afresh.
    pub fn forget_replaced(&mut self, done: &[Replacement]) {
        for img in &mut self.images {
            let mine: Vec<&Replacement> = done.iter().filter(|d| d.name == img.name).collect();
            if mine.is_empty() {
                continue;
            }
            for r in &mut img.regions {
                if mine.iter().any(|d| d.region == r.region) {
                    r.ami = Ok(None);
                    r.grants = None;
                    r.snapshots_public = None;
                    r.uefi = None;
                }
            }
            img.recorded = None;
            img.snapshots = Some(SnapshotSurvey::default());
        }
    }

    /// What the checks before anything is created found, one line per region of a
    /// public release (block public access, public AMIs against the quota and where the
    /// quota figure comes from), problems or not.
    pub fn readiness_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, ready) in self.readiness.iter().enumerate() {
            let mut parts = Vec::new();
            if let Some(Ok(b)) = &ready.image_bpa {
                parts.push(format!("AMI block public access {b}"));
            }
            if let Some(Ok(b)) = &ready.snapshot_bpa {
                parts.push(format!("snapshot block public access {b}"));
            }
            if let (Some(Ok(public)), Some(Ok(quota))) = (&ready.public_images, &ready.quota) {
                let new = self
                    .images
                    .iter()
                    .filter(|img| !matches!(&img.regions[i].ami, Ok(Some(a)) if a.public))
                    .count();
                parts.push(format!(
                    "public AMIs {} now + {new} to make public, quota {}",
                    public.len(),
                    quota.describe()
                ));
            }
            if !parts.is_empty() {
                out.push(format!("{}: {}", ready.region, parts.join("; ")));
            }
        }
        out
    }

    /// What would make this publish fail halfway, region by region, with what to do:
    /// regions not enabled; where AMIs would become public, block public access and
    /// the public AMI quota; where snapshots would become public, block public access
    /// for snapshots. The same look-ups serve `--plan`, `validate` and the run, which
    /// refuses to start on a blocking one.
    pub fn problems(&self, release: &Release) -> Vec<Problem> {
        let mut out: Vec<Problem> = self
            .not_enabled
            .iter()
            .map(|r| Problem {
                region: r.clone(),
                check: "region",
                problem: "not enabled for this account (or not a region)".into(),
                fix: format!(
                    "enable it (`aws account enable-region --region-name {r}`; opt-in regions \
                     take minutes to hours) or take it out of the release's regions"
                ),
                blocking: true,
            })
            .collect();
        for (i, ready) in self.readiness.iter().enumerate() {
            let region = &ready.region;
            // AMIs of the release that are not public there yet (missing ones included).
            let to_publish = self
                .images
                .iter()
                .filter(|img| !matches!(&img.regions[i].ami, Ok(Some(a)) if a.public))
                .count();
            let snaps_to_publish = self
                .images
                .iter()
                .filter(|img| !matches!(img.regions[i].snapshots_public, Some(Ok(true))))
                .count();
            let unchecked = |check, e: &AwsError| Problem {
                region: region.clone(),
                check,
                problem: format!("could not be looked at: {e}"),
                fix: "allow the call to check it beforehand, or check it by hand".into(),
                blocking: false,
            };
            if release.public() && to_publish > 0 {
                match &ready.image_bpa {
                    Some(Ok(state)) if state == "block-new-sharing" => out.push(Problem {
                        region: region.clone(),
                        check: "image-block-public-access",
                        problem: format!(
                            "block public access for AMIs is on ({state}): the {to_publish} \
                             AMI(s) to make public there would be refused"
                        ),
                        fix: format!(
                            "`aws ec2 disable-image-block-public-access --region {region}` \
                             (takes up to 10 minutes), or take the region out"
                        ),
                        blocking: true,
                    }),
                    Some(Err(e)) => out.push(unchecked("image-block-public-access", e)),
                    _ => {}
                }
                match (&ready.public_images, &ready.quota) {
                    (Some(Ok(public)), Some(Ok(quota))) => {
                        let would = public.len() + to_publish;
                        if would > quota.value as usize {
                            out.push(Problem {
                                region: region.clone(),
                                check: "public-ami-quota",
                                problem: format!(
                                    "{} public AMI(s) there now and {to_publish} to make public: \
                                     {would}, over the quota of {}",
                                    public.len(),
                                    quota.describe()
                                ),
                                fix: format!(
                                    "ask for at least {would} under Service Quotas > Amazon EC2 > \
                                     Public AMIs ({}) in {region}, or make older public AMIs \
                                     private or deregister them (`ec2ami prune --include-public`)",
                                    quotas::PUBLIC_AMIS
                                ),
                                blocking: true,
                            });
                        }
                    }
                    (Some(Err(e)), _) | (_, Some(Err(e))) => {
                        out.push(unchecked("public-ami-quota", e))
                    }
                    _ => {}
                }
            }
            if release.public_snapshots && snaps_to_publish > 0 {
                match &ready.snapshot_bpa {
                    Some(Ok(state)) if state != "unblocked" => out.push(Problem {
                        region: region.clone(),
                        check: "snapshot-block-public-access",
                        problem: format!(
                            "block public access for snapshots is on ({state}): making the \
                             snapshots public would be refused"
                        ),
                        fix: format!(
                            "`aws ec2 disable-snapshot-block-public-access --region {region}`, \
                             or set public_snapshots = false"
                        ),
                        blocking: true,
                    }),
                    Some(Err(e)) => out.push(unchecked("snapshot-block-public-access", e)),
                    _ => {}
                }
            }
        }
        out
    }

    /// The survey of `img`.
    pub fn image(&self, img: &ReleaseImage) -> &ImageSurvey {
        self.images
            .iter()
            .find(|s| s.name == img.name())
            .expect("every image of the release is surveyed")
    }
}

/// What `release` depends on in `region` (only what it needs: nothing for a private
/// release).
async fn readiness(
    home: &Clients,
    release: &Release,
    region: &str,
    retry: &RetryPolicy,
) -> Readiness {
    let c = home.in_region(region);
    let public = release.public();
    let (image_bpa, public_images, quota, snapshot_bpa) = tokio::join!(
        async {
            match public {
                true => Some(lifecycle::image_block_public_access(&c, retry).await),
                false => None,
            }
        },
        async {
            match public {
                true => Some(
                    lifecycle::public_images(&c, retry)
                        .await
                        .map(|v| v.into_iter().map(|a| a.id).collect()),
                ),
                false => None,
            }
        },
        async {
            match public {
                true => Some(quotas::public_amis(&c, retry).await),
                false => None,
            }
        },
        async {
            match release.public_snapshots {
                true => Some(lifecycle::snapshot_block_public_access(&c, retry).await),
                false => None,
            }
        },
    );
    Readiness {
        region: region.to_string(),
        image_bpa,
        snapshot_bpa,
        public_images,
        quota,
    }
}

/// SHA-256 of an AMI's UEFI data (DescribeImageAttribute uefiData), `None` without.
async fn uefi_digest(
    c: &Clients,
    image_id: &str,
    retry: &RetryPolicy,
) -> Result<Option<String>, AwsError> {
    let out = retry
        .send(&c.call("DescribeImageAttribute").on(image_id), || {
            c.ec2
                .describe_image_attribute()
                .image_id(image_id)
                .attribute(aws_sdk_ec2::types::ImageAttributeName::UefiData)
                .send()
        })
        .await?;
    Ok(out
        .uefi_data()
        .and_then(|v| v.value())
        .filter(|v| !v.is_empty())
        .map(ami::uefi::digest))
}

/// Whether `ami` lacks the protection `img` asks for (a missing AMI lacks it).
pub fn protection_missing(img: &ReleaseImage, ami: Option<&Ami>, now: i64) -> bool {
    match (img.spec.protect, ami) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(p), Some(a)) => p.missing_on(a, now),
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

/// How long an unfinished upload another publisher (another state database) may be
/// making is left alone: a pending snapshot without `ec2ami:uploaded` younger than this.
pub const IN_PROGRESS_SECS: i64 = 3600;

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
        /// Another publisher's uploads in progress, left alone.
        left_alone: Vec<String>,
    },
    /// Upload; the leftovers of interrupted uploads are deleted first.
    Upload {
        /// Unfinished snapshots to delete.
        delete: Vec<String>,
        /// Another publisher's uploads in progress, left alone.
        left_alone: Vec<String>,
    },
}

/// Whether an image is booted locally (the pre-flight) before its upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreflightDecision {
    /// No boot: the pre-flight is off, or the AMI exists in the source region already
    /// (nothing of it is uploaded or registered).
    Skip,
    /// An earlier run's pre-flight of it passed (journalled): not booted again.
    Passed,
    /// Boot it in the firmwares its boot mode promises.
    Boot,
}

impl ImageSurvey {
    /// The pre-flight of this image when pre-flights are `on`, given whether an earlier
    /// run's pre-flight `passed`.
    pub fn preflight_decision(&self, on: bool, passed: bool) -> PreflightDecision {
        if !on || matches!(self.source().ami, Ok(Some(_))) {
            PreflightDecision::Skip
        } else if passed {
            PreflightDecision::Passed
        } else {
            PreflightDecision::Boot
        }
    }

    /// The source AMI, when it was made from an earlier version of the image file
    /// (`path`) than the one there now.
    pub fn stale(&self, path: &std::path::Path) -> Option<Stale> {
        let ami = self.source().ami.as_ref().ok()?.as_ref()?;
        let change = self
            .recorded
            .as_ref()?
            .change(self.current.as_ref().ok()?)?;
        Some(Stale {
            name: self.name.clone(),
            path: path.to_path_buf(),
            image_id: ami.id.clone(),
            change,
        })
    }

    /// The identity recorded for the earlier upload `snapshot_id` (its tag, else the
    /// journal's detail), to carry onto the AMI registered from it.
    pub fn snapshot_stamp(&self, snapshot_id: &str) -> Option<Stamp> {
        let s = self.snapshots.as_ref()?;
        let tagged = s
            .tagged
            .iter()
            .chain(s.journal.as_ref().and_then(|(_, f)| f.as_ref()))
            .find(|snap| snap.id == snapshot_id)
            .and_then(|snap| snap.tag(tags::IMAGE_IDENTITY).and_then(Stamp::decode));
        tagged.or_else(|| {
            s.journal
                .as_ref()
                .filter(|(st, _)| st.resource_id.as_deref() == Some(snapshot_id))
                .and_then(|(st, _)| st.detail.as_deref().and_then(Stamp::decode))
        })
    }

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

    /// Whether the snapshot `id` (one of this image's, as the survey saw it) is still
    /// `pending`: only such an interrupted upload can be continued; a completed one an
    /// interrupted run left (killed after CompleteSnapshot, before its journal entry or
    /// its `ec2ami:uploaded` tag) is deleted like any other leftover.
    pub fn pending_snapshot(&self, id: &str) -> bool {
        self.snapshots.as_ref().is_some_and(|s| {
            s.tagged
                .iter()
                .chain(s.journal.as_ref().and_then(|(_, f)| f.as_ref()))
                .any(|snap| snap.id == id && snap.state == "pending")
        })
    }

    /// Why the unfinished snapshot `id` the decision deletes is a leftover, in words.
    pub fn leftover_why(&self, id: &str) -> &'static str {
        let s = self.snapshots.as_ref();
        let ours = s.is_some_and(|s| {
            s.tagged
                .iter()
                .any(|snap| snap.id == id && own_unfinished(snap, s.state_id.as_deref()))
        });
        if ours {
            "pending, left by an interrupted run of this state database"
        } else {
            "interrupted upload"
        }
    }

    /// Where the snapshot comes from. A snapshot is reused only when its upload
    /// completed (journalled as done, or tagged `ec2ami:uploaded`) and EC2 says it is
    /// `completed`; any other snapshot an earlier upload of this image left is deleted,
    /// except a recent unfinished one that is not ours: neither in the journal nor
    /// tagged with this state database's id, it is another publisher's upload in
    /// progress, left alone.
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
        // A snapshot of an earlier version of the file is not reused.
        let stale = |recorded: Option<Stamp>| match (&self.current, recorded) {
            (Ok(now), Some(then)) => then.change(now).is_some(),
            _ => false,
        };
        let tagged_stamp = |snap: &Snapshot| snap.tag(tags::IMAGE_IDENTITY).and_then(Stamp::decode);
        if let Some((step, found)) = &s.journal {
            let id = step.resource_id.clone().unwrap_or_default();
            let recorded = found
                .as_ref()
                .and_then(tagged_stamp)
                .or_else(|| step.detail.as_deref().and_then(Stamp::decode));
            let was_stale = stale(recorded);
            match found {
                Some(_) if was_stale => delete.push(id),
                Some(snap) if step.status == Status::Done && snap.completed() => {
                    return SnapshotDecision::Reuse {
                        id,
                        found_by: "journal",
                        delete,
                        left_alone: Vec::new(),
                    };
                }
                Some(_) => delete.push(id),
                None => {}
            }
        }
        let mut reuse = None;
        let mut left_alone = Vec::new();
        let now = crate::state::now_epoch();
        for snap in &s.tagged {
            if delete.contains(&snap.id) {
                continue;
            }
            // Unfinished, recent and not ours (not in this journal, not tagged with this
            // state database's id): another publisher's upload in progress, left alone.
            // One tagged with our id is the upload of a run of ours killed before its
            // journal entry: a leftover.
            let journalled = s
                .journal
                .as_ref()
                .and_then(|(st, _)| st.resource_id.as_deref())
                == Some(snap.id.as_str());
            if !journalled
                && unfinished(snap)
                && !own_unfinished(snap, s.state_id.as_deref())
                && now - snap.started < IN_PROGRESS_SECS
            {
                left_alone.push(snap.id.clone());
                continue;
            }
            let complete = snap.tag(tags::UPLOADED).is_some() && snap.completed();
            if complete && reuse.is_none() && !stale(tagged_stamp(snap)) {
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
                left_alone,
            },
            None => SnapshotDecision::Upload { delete, left_alone },
        }
    }
}

/// A snapshot started and not uploaded completely: pending, without `ec2ami:uploaded`.
fn unfinished(snap: &Snapshot) -> bool {
    snap.state == "pending" && snap.tag(tags::UPLOADED).is_none()
}

/// An unfinished snapshot started by a publish with the state database `state_id`.
fn own_unfinished(snap: &Snapshot, state_id: Option<&str>) -> bool {
    unfinished(snap) && state_id.is_some() && snap.tag(tags::STATE_ID) == state_id
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
                uefi: None,
            }],
            snapshots: Some(SnapshotSurvey {
                journal,
                tagged,
                state_id: Some("state-a".into()),
            }),
            current: Err("not read".into()),
            recorded: None,
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
                delete: vec![],
                left_alone: vec![]
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
                delete: vec!["snap-1".into()],
                left_alone: vec![]
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
                delete: vec!["snap-1".into(), "snap-3".into()],
                left_alone: vec![]
            }
        );
        // Nothing: upload.
        assert_eq!(
            image(None, vec![]).snapshot_decision(None),
            SnapshotDecision::Upload {
                delete: vec![],
                left_alone: vec![]
            }
        );
    }

    #[test]
    fn an_unjournalled_pending_snapshot_is_ours_only_with_our_state_id() {
        let now = crate::state::now_epoch();
        let pending = |id: &str, state_id: Option<&str>, started: i64| {
            let mut s = snap(id, "pending", false);
            s.started = started;
            if let Some(v) = state_id {
                s.tags.insert(tags::STATE_ID.into(), v.into());
            }
            s
        };
        // Killed between StartSnapshot's answer and the journal entry: tagged with our
        // id, in no journal: a leftover, deleted (and said so).
        let ours = image(None, vec![pending("snap-1", Some("state-a"), now)]);
        assert_eq!(
            ours.snapshot_decision(None),
            SnapshotDecision::Upload {
                delete: vec!["snap-1".into()],
                left_alone: vec![]
            }
        );
        assert_eq!(
            ours.leftover_why("snap-1"),
            "pending, left by an interrupted run of this state database"
        );
        // Another database's, or untagged, and recent: another publisher's upload in
        // progress, left alone.
        let theirs = image(
            None,
            vec![
                pending("snap-2", Some("state-b"), now),
                pending("snap-3", None, now),
            ],
        );
        assert_eq!(
            theirs.snapshot_decision(None),
            SnapshotDecision::Upload {
                delete: vec![],
                left_alone: vec!["snap-2".into(), "snap-3".into()]
            }
        );
        // Another's, but older than an upload in progress can be: deleted.
        let old = image(
            None,
            vec![pending(
                "snap-4",
                Some("state-b"),
                now - IN_PROGRESS_SECS - 1,
            )],
        );
        assert_eq!(
            old.snapshot_decision(None),
            SnapshotDecision::Upload {
                delete: vec!["snap-4".into()],
                left_alone: vec![]
            }
        );
        assert_eq!(old.leftover_why("snap-4"), "interrupted upload");
        // Without a known state id (no journal), nothing is taken for ours.
        let mut unknown = image(None, vec![pending("snap-1", Some("state-a"), now)]);
        unknown.snapshots.as_mut().unwrap().state_id = None;
        assert_eq!(
            unknown.snapshot_decision(None),
            SnapshotDecision::Upload {
                delete: vec![],
                left_alone: vec!["snap-1".into()]
            }
        );
    }

    #[test]
    fn a_preflight_boots_what_is_to_be_registered_and_not_twice() {
        let new = image(None, vec![]);
        assert_eq!(
            new.preflight_decision(false, false),
            PreflightDecision::Skip
        );
        assert_eq!(new.preflight_decision(true, false), PreflightDecision::Boot);
        assert_eq!(
            new.preflight_decision(true, true),
            PreflightDecision::Passed
        );
        // The AMI exists: nothing of the image is uploaded or registered again.
        let mut there = image(None, vec![]);
        there.regions[0].ami = Ok(Some(ami("ami-1", None, false)));
        assert_eq!(
            there.preflight_decision(true, false),
            PreflightDecision::Skip
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
