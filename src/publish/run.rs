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

use super::{
    AMI_NAME_TAG, ImageReport, PublishError, PublishOptions, PublishReport, RegionalAmi,
    ReleaseImage, UPLOADED_TAG, resolve_regions,
};
use crate::ami::{self, CopyLimiter, CopyOptions, RegionalImage};
use crate::aws::Clients;
use crate::image::DiskImage;
use crate::params::{self, PutOptions, Wanted};
use crate::publish::Release;
use crate::snapshot::{self, UploadOptions, ec2 as snap_ec2};
use crate::state::journal::{Journal, Status, StepKey};

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
    let (source, regions, best_effort) = resolve_regions(home, release, &opts.retry).await?;
    // Every image's copies, looked up at once: one request per region, not per image.
    let names: Vec<&str> = release.images.iter().map(|i| i.name()).collect();
    let known = ami::inventory(home, &regions[1..], &names, &opts.retry).await?;
    let run = Run {
        known: Arc::new(known),
        src: home.in_region(&source),
        release,
        journal,
        opts,
        regions: regions.clone(),
        best_effort,
        limiter: CopyLimiter::default(),
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
    };
    Ok((report, errors))
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
    /// Makes this run's CopyImage ClientTokens.
    token_salt: String,
    /// Our images in the destination regions when the publish started.
    known: Arc<ami::Inventory>,
    /// Set on Ctrl-C: no new step starts.
    stop: (watch::Sender<bool>, watch::Receiver<bool>),
}

/// The snapshot an image's AMI is (to be) made from.
struct Snap {
    id: String,
    reused: bool,
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

    fn key(&self, img: &ReleaseImage, kind: &str, region: &str, target: &str) -> StepKey {
        StepKey::new(img.name(), kind, region, target)
    }

    /// Boot the image locally in the firmwares its boot mode promises, before anything
    /// about it is asked of AWS; a pass is journaled, so a resumed publish does not boot
    /// it again.
    async fn preflight(&self, img: &ReleaseImage) -> Result<(), PublishError> {
        let Some(opts) = &self.opts.preflight else {
            return Ok(());
        };
        let key = self.key(img, "preflight", "local", "");
        if self
            .journal
            .get(&key)?
            .is_some_and(|s| s.status == Status::Done)
        {
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

    /// Make sure the image's snapshot exists: the AMI's if the AMI already exists, one
    /// an earlier run completed, or a new upload. Remains of interrupted uploads are
    /// deleted (and said so).
    async fn snapshot(&self, img: &ReleaseImage) -> Result<Snap, PublishError> {
        let (src, retry, journal) = (&self.src, &self.opts.retry, self.journal);
        let name = img.name();
        let k_ami = self.key(img, "ami", self.source(), "");
        let k_snap = self.key(img, "snapshot", self.source(), "");

        // The AMI already exists: nothing to upload.
        let mut existing = None;
        if let Some(id) = journal.get(&k_ami)?.and_then(|s| s.resource_id) {
            existing = ami::describe_one(src, &id, retry).await?;
            if existing.is_none() {
                journal.forget(&k_ami)?;
            }
        }
        if existing.is_none() {
            existing = ami::find_by_name(src, name, retry).await?;
        }
        if let Some(image) = existing {
            let snap = ami::register::source_snapshot(&image)
                .or_else(|| {
                    journal
                        .get(&k_snap)
                        .ok()
                        .flatten()
                        .and_then(|s| s.resource_id)
                })
                .unwrap_or_default();
            return Ok(Snap {
                id: snap,
                reused: true,
            });
        }

        // A snapshot an earlier run made (journal first, then by tag).
        if let Some(step) = journal.get(&k_snap)? {
            let id = step.resource_id.clone().unwrap_or_default();
            let found = snap_ec2::describe_one(src, &id, retry).await?;
            let usable = step.status == Status::Done
                && found
                    .as_ref()
                    .is_some_and(|s| s.state().is_some_and(|st| st.as_str() == "completed"));
            if usable {
                return Ok(Snap { id, reused: true });
            }
            if found.is_some() {
                self.delete_leftover(&id).await?;
            }
            journal.forget(&k_snap)?;
        }
        let tagged = snap_ec2::describe_own(
            src,
            vec![ami::filter(&format!("tag:{AMI_NAME_TAG}"), name)],
            retry,
        )
        .await?;
        let mut reuse = None;
        for s in &tagged {
            let id = s.snapshot_id().unwrap_or_default().to_string();
            let complete = snap_ec2::tag(s, UPLOADED_TAG).is_some()
                && s.state().is_some_and(|st| st.as_str() == "completed");
            if complete && reuse.is_none() {
                reuse = Some(id);
            } else {
                self.delete_leftover(&id).await?;
            }
        }
        if let Some(id) = reuse {
            journal.record(&k_snap, Status::Done, Some(&id), Some("found by tag"))?;
            return Ok(Snap { id, reused: true });
        }

        // Upload.
        let path = img.path.clone();
        let image = tokio::task::spawn_blocking(move || DiskImage::open(&path))
            .await
            .map_err(|e| PublishError::Upload(format!("image reader failed: {e}")))?
            .map_err(|e| PublishError::Upload(e.to_string()))?;
        let uopts = UploadOptions {
            description: Some(name.to_string()),
            tags: vec![(AMI_NAME_TAG.to_string(), name.to_string())],
            workers: self.opts.workers,
            wait: Some(self.opts.wait),
            index_dir: self.opts.index_dir.clone(),
            retry: *retry,
            progress: self.opts.progress,
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
        let id = report.snapshot_id;
        snap_ec2::create_tags(src, &id, &[(UPLOADED_TAG, "true")], retry).await?;
        journal.record(&k_snap, Status::Done, Some(&id), None)?;
        Ok(Snap { id, reused: false })
    }

    async fn delete_leftover(&self, id: &str) -> Result<(), PublishError> {
        tracing::warn!(
            "deleting {id} in {}: the unfinished snapshot of an interrupted upload",
            self.source()
        );
        snap_ec2::delete(&self.src, id, &self.opts.retry).await?;
        Ok(())
    }

    /// Everything after the snapshot: register, copy, share, deprecate, parameters.
    async fn rest(&self, img: &ReleaseImage, snap: Snap) -> ImageResult {
        let (src, retry, journal) = (&self.src, &self.opts.retry, self.journal);
        let source = self.source().to_string();

        let k_ami = self.key(img, "ami", &source, "");
        let registered = ami::register(src, &snap.id, &img.spec, self.opts.wait, retry).await?;
        journal.record(&k_ami, Status::Done, Some(&registered.image_id), None)?;
        let image_id = registered.image_id.clone();

        // Copies.
        let targets: Vec<String> = self.regions[1..].to_vec();
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
        };
        let outcomes = ami::copy_to_regions(src, &image_id, &copy_opts).await?;
        ami::check_outcomes(&image_id, &outcomes)?;
        let mut amis = vec![RegionalAmi {
            region: source.clone(),
            image_id: image_id.clone(),
            snapshot_id: Some(snap.id.clone()),
            reused: registered.reused,
        }];
        let mut warnings = Vec::new();
        for o in &outcomes {
            match (&o.image_id, &o.error) {
                (Some(id), None) => {
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

        // Sharing and public snapshots.
        let mut permissions = Vec::new();
        if !self.release.share.permissions().is_empty() {
            let regional: Vec<RegionalImage> = amis
                .iter()
                .map(|a| RegionalImage {
                    region: a.region.clone(),
                    image_id: a.image_id.clone(),
                    name: img.name().to_string(),
                    state: "available".into(),
                    public: false,
                })
                .collect();
            ami::share(src, &regional, &self.release.share, retry).await?;
            permissions = describe_permissions(&self.release.share);
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
            join_all(amis.iter().map(|a| async move {
                let clients = src.in_region(&a.region);
                ami::share::make_snapshots_public(&clients, &a.image_id, retry).await
            }))
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
            permissions.push("public-snapshots".into());
        }

        // Deprecation: register set it on the source; copies need their own.
        if let Some(at) = img.spec.deprecate_at {
            join_all(amis.iter().skip(1).map(|a| async move {
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
            snapshot_id: snap.id,
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

/// The permissions of `share`, as words for reports.
pub(crate) fn describe_permissions(share: &crate::ami::ShareSpec) -> Vec<String> {
    let mut p = Vec::new();
    if share.public {
        p.push("public".to_string());
    }
    p.extend(share.accounts.iter().map(|a| format!("account:{a}")));
    p.extend(share.orgs.iter().map(|a| format!("org:{a}")));
    p.extend(share.ous.iter().map(|a| format!("ou:{a}")));
    p
}
