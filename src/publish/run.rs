//! Carry out a publish. Images are uploaded one after another (an upload already fills
//! the link with its own workers); as soon as an image's snapshot exists, the rest of
//! its pipeline (register, copies, sharing, deprecation) runs concurrently with the
//! next upload and with the other images' pipelines. The SSM parameters of every image
//! are written last, together.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, watch};

use super::survey::{
    PreflightDecision, Scope, SnapshotDecision, Survey, deprecation_set, missing_permissions,
};
use super::{ImageReport, PublishError, PublishOptions, PublishReport, RegionalAmi, ReleaseImage};
use crate::ami::{self, CopyLimiter, CopyOptions};
use crate::aws::{Clients, ec2, tags};
use crate::image::DiskImage;
use crate::params::{self, PutOptions, Wanted};
use crate::publish::Release;
use crate::snapshot::{self, UploadOptions};
use crate::state::journal::{Journal, Status, StepKey};

use super::identity::Stamp;

/// Publish `release` (clients `home` give credentials and endpoint; regions come from
/// the release). Stops cleanly when `shutdown` resolves: the upload in progress deletes
/// its unfinished snapshot, everything else is already in the journal.
///
/// A failing image does not stop the others: its error is in the report's `errors`.
pub async fn publish(
    home: &Clients,
    release: &Release,
    journal: &Journal,
    opts: &PublishOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(PublishReport, Vec<String>), PublishError> {
    let t0 = Instant::now();
    // What exists, looked up at once (one request per region, not per image): the run
    // decides from it as `--plan` does. Parameters are read when they are written.
    let scope = Scope {
        parameters: false,
        uefi: false,
    };
    let mut survey = Survey::take(home, release, Some(journal), scope, &opts.retry).await?;
    // An AMI made from an earlier version of its image file is refused, or with
    // --replace deregistered (ours only) and published again, before anything else.
    let stale = survey.stale(release);
    if !stale.is_empty() {
        if !opts.replace {
            return Err(PublishError::Stale(
                stale.iter().map(super::survey::Stale::refusal).collect(),
            ));
        }
        let reps = survey.replacements(release);
        let foreign: Vec<String> = stale
            .iter()
            .filter(|s| !reps.iter().any(|r| r.image_id == s.image_id))
            .map(|s| {
                format!(
                    "{}: {} was not made by ec2ami (no {} tag): --replace deregisters only \
                     what ec2ami made; deregister it yourself or give the release a new name",
                    s.name,
                    s.image_id,
                    tags::OWNERSHIP
                )
            })
            .collect();
        if !foreign.is_empty() {
            return Err(PublishError::Stale(foreign));
        }
        replace(home, &reps, journal, &opts.retry).await?;
        survey.forget_replaced(&reps);
    }
    // What would fail halfway is refused before the first upload.
    let blocking: Vec<String> = survey
        .problems(release)
        .iter()
        .filter(|p| p.blocking)
        .map(|p| p.line())
        .collect();
    if !blocking.is_empty() {
        return Err(PublishError::NotReady(blocking));
    }
    let mut known = ami::Inventory::new();
    for img in &survey.images {
        for r in &img.regions[1..] {
            let found = known.entry(r.region.clone()).or_default();
            if let Some(a) = r.ami.clone()? {
                found.push(a);
            }
        }
    }
    let (source, regions) = (survey.source.clone(), survey.regions.clone());
    let run = Run {
        known: Arc::new(known),
        src: home.in_region(&source),
        release,
        journal,
        opts,
        regions: regions.clone(),
        best_effort: survey.best_effort.clone(),
        survey: &survey,
        limiter: CopyLimiter::default(),
        waiter: ami::CopyWaiter::default(),
        token_salt: uuid::Uuid::new_v4().to_string(),
        stop: watch::channel(false),
    };

    let mut work = pin!(run.all());
    let results = tokio::select! {
        r = &mut work => r,
        _ = shutdown => {
            tracing::warn!("interrupted: stopping; the upload in progress cleans up");
            let _ = run.stop.0.send(true);
            work.await
        }
    };
    if *run.stop.0.borrow() {
        return Err(PublishError::Interrupted);
    }
    let mut errors = Vec::new();
    let mut published = Vec::new();
    for (img, r) in release.images.iter().zip(results) {
        match r {
            Ok(report) => published.push((img, report)),
            Err(e) => errors.push(format!("{}: {e}", img.name())),
        }
    }
    let mut refs: Vec<(&ReleaseImage, &mut ImageReport)> =
        published.iter_mut().map(|(i, r)| (*i, r)).collect();
    errors.extend(run.parameters(&mut refs).await?);
    // The announcement, once every image is in every region; its failure is a warning.
    let announcement = match (&release.announce, &survey.announce) {
        (Some(a), Some(decision)) if errors.is_empty() => {
            let amis: Vec<super::announce::Entry> = published
                .iter()
                .flat_map(|(img, r)| {
                    r.amis.iter().map(|a| super::announce::Entry {
                        region: a.region.clone(),
                        name: img.name().to_string(),
                        architecture: img.spec.arch.to_string(),
                        image_id: a.image_id.clone(),
                    })
                })
                .collect();
            let mut by_region = amis.clone();
            // Region by region in the release's order, images in file order.
            by_region.sort_by_key(|e| regions.iter().position(|r| *r == e.region));
            let report =
                super::announce::send(home, a, decision, &by_region, journal, &opts.retry).await?;
            if let Some(w) = &report.warning {
                tracing::warn!("{w}");
            }
            Some(report)
        }
        _ => None,
    };
    let images = published.into_iter().map(|(_, r)| r).collect();
    if errors.is_empty() {
        journal.finish()?;
    }
    let report = PublishReport {
        release: release.path.clone(),
        date: release.date.clone(),
        source_region: source,
        regions,
        images,
        seconds: crate::snapshot::secs(t0.elapsed()),
        announcement,
    };
    Ok((report, errors))
}

/// Deregister the AMIs `reps` names (disabling their deregistration protection first
/// when they have it) and delete their snapshots; the journal forgets them.
async fn replace(
    home: &Clients,
    reps: &[super::survey::Replacement],
    journal: &Journal,
    retry: &crate::aws::RetryPolicy,
) -> Result<(), PublishError> {
    for r in reps {
        let c = home.in_region(&r.region);
        if r.unprotect {
            crate::aws::lifecycle::disable_protection(&c, &r.image_id, retry).await?;
        }
        ec2::deregister_image(&c, &r.image_id, retry).await?;
        tracing::warn!(
            "--replace: deregistered {} `{}` in {} (made from an earlier version of its image)",
            r.image_id,
            r.name,
            r.region
        );
        for snap in &r.snapshots {
            ec2::delete_snapshot(&c, snap, retry).await?;
            tracing::warn!(
                "--replace: deleted {snap} in {} (of {})",
                r.region,
                r.image_id
            );
        }
        for kind in ["ami", "copy", "snapshot"] {
            journal.forget(&StepKey::new(&r.name, kind, &r.region, ""))?;
        }
    }
    Ok(())
}

struct Run<'a> {
    /// Clients in the source region.
    src: Clients,
    release: &'a Release,
    journal: &'a Journal,
    opts: &'a PublishOptions,
    /// Every region, the source first.
    regions: Vec<String>,
    best_effort: Vec<String>,
    limiter: CopyLimiter,
    /// Waits for every image's copies, one poll per region.
    waiter: ami::CopyWaiter,
    /// Makes this run's CopyImage ClientTokens.
    token_salt: String,
    /// Our images in the destination regions when the publish started.
    known: Arc<ami::Inventory>,
    /// What existed when the publish started.
    survey: &'a Survey,
    /// Set on Ctrl-C: no new step starts.
    stop: (watch::Sender<bool>, watch::Receiver<bool>),
}

/// The snapshot an image's AMI is (to be) made from.
struct Snap {
    id: String,
    reused: bool,
    /// Blocks this run sent.
    blocks: u64,
    /// What the image file was when it was uploaded, when known.
    stamp: Option<Stamp>,
}

type ImageResult = Result<ImageReport, PublishError>;

impl Run<'_> {
    fn source(&self) -> &str {
        &self.regions[0]
    }

    /// Resolves once a stop was asked for.
    fn stopped(&self) -> impl Future<Output = ()> + use<> {
        let mut rx = self.stop.1.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    async fn all(&self) -> Vec<ImageResult> {
        let n = self.release.images.len();
        let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Result<Snap, PublishError>)>();
        let uploads = async move {
            for (i, img) in self.release.images.iter().enumerate() {
                if *self.stop.1.borrow() {
                    break;
                }
                let r = match self.preflight(img).await {
                    Ok(()) => self.snapshot(img).await,
                    Err(e) => Err(e),
                };
                if let Ok(snap) = &r {
                    self.opts.tell(super::Event::Snapshot {
                        path: img.path.clone(),
                        snapshot_id: snap.id.clone(),
                        region: self.source().to_string(),
                        blocks: snap.blocks,
                        reused: snap.reused,
                    });
                }
                let _ = tx.send((i, r));
            }
        };
        let pipelines = async {
            let mut results: Vec<Option<ImageResult>> = (0..n).map(|_| None).collect();
            let mut running = FuturesUnordered::new();
            let mut open = true;
            loop {
                tokio::select! {
                    got = rx.recv(), if open => match got {
                        Some((i, Ok(snap))) => {
                            let img = &self.release.images[i];
                            running.push(async move {
                                let stopped = self.stopped();
                                let r = tokio::select! {
                                    r = self.rest(img, snap) => r,
                                    _ = stopped => Err(PublishError::Interrupted),
                                };
                                (i, r)
                            });
                        }
                        Some((i, Err(e))) => results[i] = Some(Err(e)),
                        None => open = false,
                    },
                    Some((i, r)) = running.next() => results[i] = Some(r),
                    else => break,
                }
            }
            results
        };
        let ((), results) = tokio::join!(uploads, pipelines);
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(PublishError::Interrupted)))
            .collect()
    }

    /// The AMI `a` as the survey found it (with its grants), if it existed then.
    fn surveyed(
        &self,
        img: &ReleaseImage,
        a: &RegionalAmi,
    ) -> Option<(&crate::aws::Ami, Option<std::collections::BTreeSet<String>>)> {
        let r = self
            .survey
            .image(img)
            .regions
            .iter()
            .find(|r| r.region == a.region)?;
        let found = r
            .ami
            .as_ref()
            .ok()?
            .as_ref()
            .filter(|f| f.id == a.image_id)?;
        let grants = r.grants.as_ref().and_then(|g| g.as_ref().ok()).cloned();
        Some((found, grants))
    }

    /// True when the survey saw every snapshot of the AMI `a` public.
    fn snapshots_public(&self, img: &ReleaseImage, a: &RegionalAmi) -> bool {
        let s = self.survey.image(img);
        s.regions.iter().any(|r| {
            r.region == a.region
                && matches!(&r.ami, Ok(Some(f)) if f.id == a.image_id)
                && matches!(r.snapshots_public, Some(Ok(true)))
        })
    }

    fn key(&self, img: &ReleaseImage, kind: &str, region: &str, target: &str) -> StepKey {
        StepKey::new(img.name(), kind, region, target)
    }

    /// Boot the image locally in the firmwares its boot mode promises, before anything
    /// of it is uploaded or registered (only the survey's read-only look-ups come
    /// first), as the survey decides: a pass is journaled, so a resumed publish does not
    /// boot it again, and an image whose AMI exists is not booted.
    async fn preflight(&self, img: &ReleaseImage) -> Result<(), PublishError> {
        let Some(opts) = &self.opts.preflight else {
            return Ok(());
        };
        let key = self.key(img, "preflight", "local", "");
        let passed = self
            .journal
            .get(&key)?
            .is_some_and(|s| s.status == Status::Done);
        if self.survey.image(img).preflight_decision(true, passed) != PreflightDecision::Boot {
            return Ok(());
        }
        tracing::info!(
            "pre-flight: {} ({}) before its upload",
            crate::boot::preflight::describe(img.spec.effective_boot_mode()),
            img.path.display()
        );
        let report = crate::boot::preflight::check(
            &img.path,
            &img.spec,
            &preflight_build(img, &self.release.date),
            opts,
            self.stopped(),
        )
        .await
        .map_err(|e| match e {
            crate::boot::preflight::PreflightError::Interrupted => PublishError::Interrupted,
            e => e.into(),
        })?;
        let firmwares: Vec<String> = report
            .firmwares
            .iter()
            .map(|f| f.key().to_string())
            .collect();
        self.journal
            .record(&key, Status::Done, None, Some(&firmwares.join(",")))?;
        Ok(())
    }

    /// Make sure the image's snapshot exists, as the survey decides: the AMI's if the
    /// AMI already exists, one an earlier run completed, or a new upload. Remains of
    /// interrupted uploads are deleted (and said so).
    async fn snapshot(&self, img: &ReleaseImage) -> Result<Snap, PublishError> {
        let (src, retry, journal) = (&self.src, &self.opts.retry, self.journal);
        let name = img.name();
        let k_ami = self.key(img, "ami", self.source(), "");
        let k_snap = self.key(img, "snapshot", self.source(), "");
        let recorded = journal.get(&k_snap)?.and_then(|s| s.resource_id);
        let survey = self.survey.image(img);
        if survey.source_ami()?.is_none() && journal.get(&k_ami)?.is_some() {
            // The AMI an earlier run recorded is gone.
            journal.forget(&k_ami)?;
        }
        let delete = match survey.snapshot_decision(recorded.clone()) {
            SnapshotDecision::FromAmi(id) => {
                return Ok(Snap {
                    id,
                    reused: true,
                    blocks: 0,
                    stamp: None,
                });
            }
            SnapshotDecision::Reuse {
                id,
                found_by,
                delete,
                left_alone,
            } => {
                self.leave_alone(&left_alone);
                for d in &delete {
                    self.delete_leftover(survey, d).await?;
                }
                let stamp = survey.snapshot_stamp(&id);
                if found_by == "tag" {
                    let detail = stamp.as_ref().map(Stamp::encode);
                    let detail = detail.as_deref().unwrap_or("found by tag");
                    journal.record(&k_snap, Status::Done, Some(&id), Some(detail))?;
                }
                return Ok(Snap {
                    id,
                    reused: true,
                    blocks: 0,
                    stamp,
                });
            }
            SnapshotDecision::Upload { delete, left_alone } => {
                self.leave_alone(&left_alone);
                delete
            }
        };
        // The pending snapshot of an interrupted upload of this image is continued by
        // the upload below, not deleted.
        let (continued, delete): (Vec<&String>, Vec<&String>) = delete.iter().partition(|d| {
            survey.pending_snapshot(d) && snapshot::resumable(&self.opts.index_dir, d)
        });
        for d in delete {
            self.delete_leftover(survey, d).await?;
        }
        if recorded.is_some() {
            journal.forget(&k_snap)?;
        }
        let parent = if img.parent_auto {
            let found =
                super::parent::auto_parent(src, name, &img.path, &self.opts.index_dir, retry)
                    .await?;
            match &found {
                Some(p) if p.indexed => {
                    tracing::info!("{name}: uploading against {} ({})", p.id, p.of)
                }
                Some(p) => tracing::info!(
                    "{name}: uploading against {} ({}), whose block index is built from the \
                     snapshot first",
                    p.id,
                    p.of
                ),
                None => tracing::info!(
                    "{name}: parent = \"auto\" found no earlier completed snapshot of its \
                     series: a full upload"
                ),
            }
            found.map(|p| p.id)
        } else {
            None
        };

        // Upload.
        let path = img.path.clone();
        let image_opts = self.opts.image;
        let image = tokio::task::spawn_blocking(move || DiskImage::open_with(&path, image_opts))
            .await
            .map_err(|e| PublishError::Upload(format!("image reader failed: {e}")))?
            .map_err(|e| PublishError::Upload(e.to_string()))?;
        let identity = image.identity().clone();
        let uopts = UploadOptions {
            description: Some(name.to_string()),
            // The state id: a rerun knows this snapshot for its own even if this run
            // dies before the journal hears of it.
            tags: vec![
                (tags::AMI_NAME.to_string(), name.to_string()),
                (tags::STATE_ID.to_string(), journal.state_id()?),
            ],
            workers: self.opts.workers,
            wait: Some(self.opts.wait),
            index_dir: self.opts.index_dir.clone(),
            retry: *retry,
            progress: self.opts.progress,
            parent,
            pending_timeout_minutes: Some(snapshot::DEFAULT_RESUME_WINDOW_MINUTES),
            ..UploadOptions::default()
        };
        tracing::info!("uploading {} for {name}", img.path.display());
        let report = snapshot::upload_with(src, image, &uopts, self.stopped(), |id| {
            if let Err(e) = journal.record(&k_snap, Status::Started, Some(id), None) {
                tracing::warn!("cannot journal snapshot {id}: {e}");
            }
        })
        .await
        .map_err(|e| {
            if e.interrupted() {
                // Say what became of the unfinished snapshot.
                tracing::warn!("{}: {e}", img.path.display());
                PublishError::Interrupted
            } else {
                PublishError::Upload(e.to_string())
            }
        })?;
        let (id, blocks) = (report.snapshot_id, report.blocks_written);
        // A leftover the upload was to continue but started over instead (it had
        // completed meanwhile, or changed): ours, and now of no use.
        for d in continued.into_iter().filter(|d| **d != id) {
            self.delete_leftover(survey, d).await?;
        }
        // What was uploaded: the file as opened (the upload checked it did not change
        // meanwhile) and the snapshot's aggregate checksum.
        let stamp = Stamp {
            checksum: Some(report.checksum.clone()),
            ..Stamp::from_identity(&identity)
        };
        let encoded = stamp.encode();
        ec2::create_tags(
            src,
            &id,
            &[
                (tags::UPLOADED, "true"),
                (tags::IMAGE_IDENTITY, encoded.as_str()),
            ],
            retry,
        )
        .await?;
        journal.record(&k_snap, Status::Done, Some(&id), Some(&encoded))?;
        Ok(Snap {
            id,
            reused: false,
            blocks,
            stamp: Some(stamp),
        })
    }

    /// Another publisher registered `winner` under the image's name while this run
    /// uploaded `snap`: this run's snapshot is deleted, and the winner's AMI adopted
    /// when it is ours and was made from the same content (same aggregate checksum);
    /// otherwise the image fails, saying so.
    async fn lost_race(
        &self,
        img: &ReleaseImage,
        snap: &Snap,
        winner: &str,
    ) -> Result<ami::Registered, PublishError> {
        let (src, retry) = (&self.src, &self.opts.retry);
        let found = ec2::image(src, winner, retry).await?;
        ec2::delete_snapshot(src, &snap.id, retry).await?;
        self.journal
            .forget(&self.key(img, "snapshot", self.source(), ""))?;
        let theirs = found
            .as_ref()
            .filter(|a| tags::is_managed(&a.tags))
            .and_then(|a| a.tag(tags::IMAGE_IDENTITY))
            .and_then(Stamp::decode)
            .and_then(|s| s.checksum);
        let ours = snap.stamp.as_ref().and_then(|s| s.checksum.clone());
        match (found, theirs, ours) {
            (Some(a), Some(t), Some(o)) if t == o => {
                tracing::warn!(
                    "{}: another publisher registered {} from the same content meanwhile: \
                     adopted it; deleted this run's snapshot {}",
                    img.name(),
                    a.id,
                    snap.id
                );
                ami::wait_available(src, &a.id, self.opts.wait, retry).await?;
                Ok(ami::Registered {
                    region: self.source().to_string(),
                    image_id: a.id.clone(),
                    snapshot_id: a.source_snapshot().unwrap_or_default(),
                    reused: true,
                })
            }
            _ => Err(PublishError::Upload(format!(
                "{winner} was registered as `{}` in {} by another publisher while this run \
                 uploaded {}, from other content (or not by ec2ami): deleted this run's \
                 snapshot {}; check {winner}, then run again",
                img.name(),
                self.source(),
                img.path.display(),
                snap.id
            ))),
        }
    }

    async fn delete_leftover(
        &self,
        survey: &super::survey::ImageSurvey,
        id: &str,
    ) -> Result<(), PublishError> {
        tracing::warn!(
            "deleting {id} in {}: unfinished snapshot ({})",
            self.source(),
            survey.leftover_why(id)
        );
        ec2::delete_snapshot(&self.src, id, &self.opts.retry).await?;
        Ok(())
    }

    /// Say which unfinished snapshots are left alone (another publisher's uploads).
    fn leave_alone(&self, ids: &[String]) {
        for id in ids {
            tracing::warn!(
                "leaving {id} in {} alone: another publisher's upload in progress (pending, \
                 not tagged with this state database's id)",
                self.source()
            );
        }
    }

    /// Everything after the snapshot: register, copy, share, deprecate, parameters.
    async fn rest(&self, img: &ReleaseImage, snap: Snap) -> ImageResult {
        let (src, retry, journal) = (&self.src, &self.opts.retry, self.journal);
        let source = self.source().to_string();

        let k_ami = self.key(img, "ami", &source, "");
        // The AMI carries what its image file was, for later runs and `validate`.
        let mut spec = img.spec.clone();
        if let Some(st) = &snap.stamp {
            spec.tags
                .push((tags::IMAGE_IDENTITY.to_string(), st.encode()));
        }
        let registered = match ami::register(src, &snap.id, &spec, self.opts.wait, retry).await {
            Ok(r) => r,
            // Another publisher (another state database) registered the name first.
            Err(ami::AmiError::NameTaken { image_id, .. }) if !snap.reused => {
                self.lost_race(img, &snap, &image_id).await?
            }
            Err(e) => return Err(e.into()),
        };
        journal.record(&k_ami, Status::Done, Some(&registered.image_id), None)?;
        let image_id = registered.image_id.clone();
        self.opts.tell(super::Event::Registered {
            image_id: image_id.clone(),
        });

        // Copies.
        let targets: Vec<String> = self.regions[1..].to_vec();
        if !targets.is_empty() {
            self.opts.tell(super::Event::Copying {
                regions: targets.clone(),
            });
        }
        let on_created: ami::OnCreated = {
            let (journal, name) = (journal.clone(), img.name().to_string());
            Arc::new(move |region: &str, id: &str| {
                let key = StepKey::new(&name, "copy", region, "");
                if let Err(e) = journal.record(&key, Status::Started, Some(id), None) {
                    tracing::warn!("cannot journal the copy {id} in {region}: {e}");
                }
            })
        };
        let copy_opts = CopyOptions {
            regions: targets,
            best_effort: self.best_effort.clone(),
            wait: self.opts.wait,
            retry: *retry,
            limiter: self.limiter.clone(),
            on_created: Some(on_created),
            token_salt: self.token_salt.clone(),
            known: Some(self.known.clone()),
            completion: self.release.copy_completion,
            protect: img.spec.protect,
            waiter: self.waiter.clone(),
        };
        let outcomes = ami::copy_to_regions(src, &image_id, &copy_opts).await?;
        ami::check_outcomes(&image_id, &outcomes)?;
        let mut amis = vec![RegionalAmi {
            region: source.clone(),
            image_id: image_id.clone(),
            snapshot_id: Some(registered.snapshot_id.clone()),
            reused: registered.reused,
        }];
        let mut warnings = Vec::new();
        for o in &outcomes {
            match (&o.image_id, &o.error) {
                (Some(id), None) => {
                    self.opts.tell(super::Event::Copied {
                        region: o.region.clone(),
                        image_id: id.clone(),
                    });
                    journal.record(
                        &self.key(img, "copy", &o.region, ""),
                        Status::Done,
                        Some(id),
                        None,
                    )?;
                    amis.push(RegionalAmi {
                        region: o.region.clone(),
                        image_id: id.clone(),
                        snapshot_id: None,
                        reused: o.reused,
                    });
                }
                (_, Some(e)) => warnings.push(format!("{}: {e}", o.region)),
                (None, None) => {}
            }
        }
        // Keep the order of the release's regions.
        amis.sort_by_key(|a| self.regions.iter().position(|r| *r == a.region));

        // Sharing (where the survey did not already see every permission) and public
        // snapshots.
        let mut permissions = Vec::new();
        let wanted = self.release.share.words();
        if !wanted.is_empty() {
            let targets: Vec<ami::Target> = amis
                .iter()
                .filter(|a| match self.surveyed(img, a) {
                    Some((found, grants)) => {
                        !missing_permissions(&wanted, found, grants.as_ref()).is_empty()
                    }
                    None => true,
                })
                .map(|a| ami::Target {
                    region: a.region.clone(),
                    image_id: a.image_id.clone(),
                })
                .collect();
            if !targets.is_empty() {
                ami::share(src, &targets, &self.release.share, retry).await?;
            }
            permissions = wanted;
            self.opts.tell(super::Event::Shared);
            for a in &amis {
                journal.record(
                    &self.key(img, "share", &a.region, &permissions.join(",")),
                    Status::Done,
                    Some(&a.image_id),
                    None,
                )?;
            }
        }
        if self.release.public_snapshots {
            let needed = amis.iter().filter(|a| !self.snapshots_public(img, a));
            join_all(needed.map(|a| async move {
                let clients = src.in_region(&a.region);
                ami::share::make_snapshots_public(&clients, &a.image_id, retry).await
            }))
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
            permissions.push("public-snapshots".into());
            self.opts.tell(super::Event::SnapshotsPublic);
        }

        // Deprecation: register set it on a new source AMI; every other AMI gets it
        // unless the survey saw it set already.
        if let Some(at) = img.spec.deprecate_at {
            let needed = amis.iter().filter(|a| match self.surveyed(img, a) {
                Some((found, _)) => !deprecation_set(found, at),
                None => a.region != source || registered.reused,
            });
            join_all(needed.map(|a| async move {
                let clients = src.in_region(&a.region);
                ami::register::deprecate(&clients, &a.image_id, at, retry).await
            }))
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        }

        Ok(ImageReport {
            name: img.name().to_string(),
            path: img.path.clone(),
            snapshot_id: registered.snapshot_id.clone(),
            snapshot_reused: snap.reused,
            amis,
            permissions,
            parameters: Vec::new(),
            warnings,
        })
    }

    /// The parameters of every published image, written together once every image is
    /// in every region (so a release's parameters change together), batched per region.
    /// Returns the errors, by image.
    async fn parameters(
        &self,
        published: &mut [(&ReleaseImage, &mut ImageReport)],
    ) -> Result<Vec<String>, PublishError> {
        let mut wanted = Vec::new();
        let mut owner = Vec::new();
        for (i, (img, report)) in published.iter().enumerate() {
            for a in &report.amis {
                for name in img.params_in(&a.region) {
                    let key = self.key(img, "param", &a.region, &name);
                    let ours = self.journal.get(&key)?.and_then(|s| s.resource_id);
                    wanted.push(Wanted {
                        region: a.region.clone(),
                        name,
                        value: a.image_id.clone(),
                        ours,
                    });
                    owner.push(i);
                }
            }
        }
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let popts = PutOptions {
            allow_clobber: self.release.ssm_overwrite,
            retry: self.opts.retry,
            ..PutOptions::default()
        };
        let outcomes = params::put(&self.src, &wanted, &popts).await;
        self.opts.tell(super::Event::Parameters);
        let mut errors = Vec::new();
        for (o, i) in outcomes.into_iter().zip(owner) {
            let (img, report) = &mut published[i];
            if o.error.is_none() && !matches!(o.change, params::Change::Refused { .. }) {
                self.journal.record(
                    &self.key(img, "param", &o.wanted.region, &o.wanted.name),
                    Status::Done,
                    Some(&o.wanted.value),
                    None,
                )?;
            } else {
                errors.push(format!("{}: {}", img.name(), o.describe()));
            }
            report.parameters.push(o);
        }
        Ok(errors)
    }
}

/// What build a pre-flight boots, for the history.
fn preflight_build(img: &ReleaseImage, date: &str) -> crate::history::BuildInfo {
    let v = |k: &str| img.vars.get(k).cloned();
    crate::history::BuildInfo {
        image_name: Some(img.name().to_string()),
        version: v("version"),
        branch: v("branch"),
        flavour: v("flavour"),
        fs: v("fs"),
        arch: v("arch"),
        build_date: v("date").or(Some(date.to_string())),
    }
    .normalized()
}
