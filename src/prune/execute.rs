//! Carry out a prune plan: every region at once, each region's deletions paced, and the
//! guards looked at again right before each deletion. A failure is recorded and the
//! rest goes on; an interruption stops new deletions and says what was left undone.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures_util::future::join_all;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use std::sync::Arc;

use super::guard::{guards, lifecycle_guards};
use super::inventory::{self, ParameterSources};
use super::plan::{Action, ImageItem, Plan, RegionPlan, SnapshotItem};
use super::series::ymd_hm;
use crate::ami::retire;
use crate::ami::share::launch_permissions;
use crate::aws::lifecycle::{self, Protection};
use crate::aws::{AwsError, Clients, RetryPolicy, ec2};
use crate::state::StateDb;

/// Default deletions per second in one region: EC2's sustained rate for mutating
/// calls (its token bucket refills 5 per second).
pub const DEFAULT_RATE: f64 = 5.0;

/// How to carry out a plan.
#[derive(Debug, Clone)]
pub struct ExecuteOptions {
    /// The retry layer for every call.
    pub retry: RetryPolicy,
    /// Public images may be deleted.
    pub include_public: bool,
    /// The SSM parameters to check again, per region.
    pub sources: BTreeMap<String, ParameterSources>,
    /// Deletions (deregistrations and snapshot deletions) per second in one region.
    pub rate: f64,
    /// Images launched within this window are kept (looked at again before each step).
    pub unused_for: Option<Duration>,
    /// Where the launch permissions of images prune disables are recorded (for
    /// `enable`).
    pub db: Option<Arc<StateDb>>,
}

/// What happened to one planned deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Deregistered or deleted.
    Deleted,
    /// Someone else removed it first.
    AlreadyGone,
    /// Not deleted: a guard appeared, or the snapshot is still in use.
    Skipped,
    /// The deletion failed.
    Failed,
    /// Not attempted: interrupted, or what it depends on failed.
    NotDone,
    /// Disabled (staged retirement).
    Disabled,
    /// Its deregistration protection was disabled; the cooldown leaves the deletion to
    /// a later run.
    Unprotected,
}

/// One planned deletion and its fate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// Region.
    pub region: String,
    /// `image` or `snapshot`.
    pub kind: &'static str,
    /// AMI or snapshot id.
    pub id: String,
    /// What happened.
    pub status: Status,
    /// The image's name or the snapshot's size; for others than `deleted`, why.
    pub detail: String,
    /// Snapshot size in GiB, as planned.
    pub gib: Option<f64>,
    /// Until when the Recycle Bin keeps it, as planned (deleted items).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recoverable_until: Option<i64>,
}

/// What a prune did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Every planned deletion, region by region, in order.
    pub outcomes: Vec<Outcome>,
    /// Images deregistered.
    pub images_deleted: usize,
    /// Snapshots deleted.
    pub snapshots_deleted: usize,
    /// Images disabled.
    pub images_disabled: usize,
    /// Images whose protection was disabled (deleted by a later run).
    pub images_unprotected: usize,
    /// GiB those snapshots held (as planned).
    pub gib_freed: f64,
    /// Deletions a fresh guard or use stopped.
    pub skipped: usize,
    /// Deletions that failed or were not attempted.
    pub failed: usize,
    /// Stopped by Ctrl-C or SIGTERM.
    pub interrupted: bool,
}

impl Report {
    fn new(outcomes: Vec<Outcome>, interrupted: bool) -> Report {
        let count = |kind: &str| {
            outcomes
                .iter()
                .filter(|o| o.kind == kind && o.status == Status::Deleted)
                .count()
        };
        let gib: f64 = outcomes
            .iter()
            .filter(|o| o.status == Status::Deleted)
            .filter_map(|o| o.gib)
            .sum();
        let with = |status: Status| outcomes.iter().filter(|o| o.status == status).count();
        Report {
            images_deleted: count("image"),
            snapshots_deleted: count("snapshot"),
            images_disabled: with(Status::Disabled),
            images_unprotected: with(Status::Unprotected),
            gib_freed: (gib * 100.0).round() / 100.0,
            skipped: outcomes
                .iter()
                .filter(|o| o.status == Status::Skipped)
                .count(),
            failed: outcomes
                .iter()
                .filter(|o| matches!(o.status, Status::Failed | Status::NotDone))
                .count(),
            interrupted,
            outcomes,
        }
    }

    /// True when every planned deletion was done or deliberately skipped.
    pub fn ok(&self) -> bool {
        self.failed == 0 && !self.interrupted
    }

    /// One line per planned deletion, then a summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for o in &self.outcomes {
            let status = match o.status {
                Status::Deleted => "deleted",
                Status::AlreadyGone => "gone",
                Status::Skipped => "skipped",
                Status::Failed => "FAILED",
                Status::NotDone => "NOT DONE",
                Status::Disabled => "disabled",
                Status::Unprotected => "unprotect",
            };
            out.push_str(&format!(
                "{status:<9} {:<15} {:<22} {}\n",
                o.region, o.id, o.detail
            ));
        }
        if self.images_disabled + self.images_unprotected > 0 {
            out.push_str(&format!(
                "disabled {} image(s); disabled the protection of {} image(s) (a later run deletes them)\n",
                self.images_disabled, self.images_unprotected
            ));
        }
        out.push_str(&format!(
            "deleted {} image(s) and {} snapshot(s) ({} GiB); {} skipped; {} failed or not done{}",
            self.images_deleted,
            self.snapshots_deleted,
            self.gib_freed,
            self.skipped,
            self.failed,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        ));
        out
    }
}

/// Spaces one region's deletions `spacing` apart, and tells when to stop.
struct Pacer {
    spacing: Duration,
    next: Instant,
    stop: watch::Receiver<bool>,
}

impl Pacer {
    fn new(rate: f64, stop: watch::Receiver<bool>) -> Pacer {
        Pacer {
            spacing: Duration::from_secs_f64(1.0 / rate.max(0.001)),
            next: Instant::now(),
            stop,
        }
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Wait for the next deletion's turn: true to go on, false once interrupted (the
    /// wait ends at once then).
    async fn next(&mut self) -> bool {
        if self.stopped() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(self.next) => {}
            _ = self.stop.wait_for(|stop| *stop) => return false,
        }
        self.next = Instant::now() + self.spacing;
        !self.stopped()
    }
}

/// Carry out `plan`: deletes exactly what it lists (less what a fresh look finds
/// guarded or in use), every region concurrently. `shutdown` resolving stops new
/// deletions; the calls in flight finish, so nothing is left unreported.
pub async fn execute(
    home: &Clients,
    plan: &Plan,
    opts: &ExecuteOptions,
    shutdown: impl Future<Output = ()>,
) -> Report {
    let (stop, stopped) = watch::channel(false);
    let no_sources = ParameterSources::default();
    let work = join_all(plan.regions.iter().filter(|r| r.error.is_none()).map(|r| {
        let sources = opts.sources.get(&r.region).unwrap_or(&no_sources);
        run_region(home.in_region(&r.region), r, sources, opts, stopped.clone())
    }));
    tokio::pin!(work);
    tokio::pin!(shutdown);
    let mut interrupted = false;
    let outcomes = loop {
        tokio::select! {
            done = &mut work => break done,
            _ = &mut shutdown, if !interrupted => {
                tracing::warn!("interrupted: finishing the calls in flight, starting no new deletion");
                interrupted = true;
                stop.send_replace(true);
            }
        }
    };
    Report::new(outcomes.into_iter().flatten().collect(), interrupted)
}

/// One region's deletions, in plan order.
async fn run_region(
    clients: Clients,
    plan: &RegionPlan,
    sources: &ParameterSources,
    opts: &ExecuteOptions,
    stop: watch::Receiver<bool>,
) -> Vec<Outcome> {
    let mut r = RegionRun {
        clients,
        sources,
        opts,
        pacer: Pacer::new(opts.rate, stop),
        out: Vec::new(),
        recovery: plan
            .series
            .iter()
            .flat_map(|s| &s.images)
            .flat_map(|i| {
                let own = i
                    .recovery
                    .as_ref()
                    .and_then(|r| r.until)
                    .map(|u| (i.image_id.clone(), u));
                own.into_iter().chain(i.snapshots.iter().filter_map(|sn| {
                    sn.recovery
                        .as_ref()
                        .and_then(|r| r.until)
                        .map(|u| (sn.snapshot_id.clone(), u))
                }))
            })
            .chain(plan.orphans.iter().filter_map(|sn| {
                sn.recovery
                    .as_ref()
                    .and_then(|r| r.until)
                    .map(|u| (sn.snapshot_id.clone(), u))
            }))
            .collect(),
    };
    for img in plan
        .series
        .iter()
        .flat_map(|s| &s.images)
        .filter(|i| matches!(i.action, Action::Disable | Action::Unprotect))
    {
        if !r.pacer.next().await {
            r.not_done_image(&img.image_id, &img.name, &[]);
            continue;
        }
        r.stage(img).await;
    }
    for img in plan
        .series
        .iter()
        .flat_map(|s| &s.images)
        .filter(|i| i.action == Action::Delete)
    {
        let snaps: Vec<&SnapshotItem> = img
            .snapshots
            .iter()
            .filter(|s| s.action == Action::Delete)
            .collect();
        if !r.pacer.next().await {
            r.not_done_image(&img.image_id, &img.name, &snaps);
            continue;
        }
        match r.image(img).await {
            ImageFate::Gone => {
                for s in &snaps {
                    if r.pacer.next().await {
                        r.snapshot(s).await;
                        continue;
                    }
                    let detail = format!(
                        "interrupted after {} was deregistered: delete it with \
                         `aws ec2 delete-snapshot --region {} --snapshot-id {}`",
                        img.image_id,
                        r.clients.region(),
                        s.snapshot_id
                    );
                    r.record(
                        "snapshot",
                        &s.snapshot_id,
                        Status::NotDone,
                        detail,
                        Some(s.gib),
                    );
                }
            }
            // A guarded image keeps its snapshots, as planned keeping goes; one that
            // failed leaves them undone.
            fate => {
                let status = match fate {
                    ImageFate::Guarded => Status::Skipped,
                    _ => Status::NotDone,
                };
                for s in &snaps {
                    let detail = format!("kept with {}, which was not deregistered", img.image_id);
                    r.record("snapshot", &s.snapshot_id, status, detail, Some(s.gib));
                }
            }
        }
    }
    for s in plan.orphans.iter().filter(|s| s.action == Action::Delete) {
        if r.pacer.next().await {
            r.snapshot(s).await;
        } else {
            r.record(
                "snapshot",
                &s.snapshot_id,
                Status::NotDone,
                "interrupted".into(),
                Some(s.gib),
            );
        }
    }
    r.out
}

/// Where an image stands after [`RegionRun::image`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImageFate {
    /// Deregistered (now or before): its snapshots may go.
    Gone,
    /// A guard appeared: kept.
    Guarded,
    /// Looking at it or deregistering it failed.
    Failed,
}

struct RegionRun<'a> {
    clients: Clients,
    sources: &'a ParameterSources,
    opts: &'a ExecuteOptions,
    pacer: Pacer,
    out: Vec<Outcome>,
    /// Until when the plan expects the Recycle Bin to keep each deletion.
    recovery: std::collections::HashMap<String, i64>,
}

impl RegionRun<'_> {
    fn record(
        &mut self,
        kind: &'static str,
        id: &str,
        status: Status,
        detail: String,
        gib: Option<f64>,
    ) {
        let region = self.clients.region().to_string();
        match status {
            Status::Deleted => tracing::info!("deleted {kind} {id} in {region} ({detail})"),
            Status::AlreadyGone => tracing::info!("{kind} {id} in {region} was already gone"),
            Status::Skipped => tracing::warn!("kept {kind} {id} in {region}: {detail}"),
            Status::Failed | Status::NotDone => {
                tracing::error!("{kind} {id} in {region} not deleted: {detail}")
            }
            Status::Disabled => tracing::info!("disabled {kind} {id} in {region} ({detail})"),
            Status::Unprotected => tracing::info!("{kind} {id} in {region}: {detail}"),
        }
        let recoverable_until = match status {
            Status::Deleted => self.recovery.get(id).copied(),
            _ => None,
        };
        self.out.push(Outcome {
            region,
            kind,
            id: id.to_string(),
            status,
            detail,
            gib,
            recoverable_until,
        });
    }

    fn not_done_image(&mut self, image_id: &str, name: &str, snaps: &[&SnapshotItem]) {
        self.record(
            "image",
            image_id,
            Status::NotDone,
            format!("interrupted before `{name}` was deregistered"),
            None,
        );
        for s in snaps {
            self.record(
                "snapshot",
                &s.snapshot_id,
                Status::NotDone,
                "interrupted".into(),
                Some(s.gib),
            );
        }
    }

    /// Look again: the image as it is now (`None` once gone) and what guards it now
    /// (its protection aside).
    async fn look_again(
        &self,
        image_id: &str,
    ) -> Result<Option<(inventory::Image, Vec<String>)>, AwsError> {
        let retry = self.opts.retry;
        let Some(img) = inventory::image(&self.clients, image_id, &retry).await? else {
            return Ok(None);
        };
        let users = inventory::users_of(&self.clients, image_id, self.sources, &retry).await?;
        let now = crate::state::now_epoch();
        let mut g = guards(image_id, img.public, &users, self.opts.include_public);
        g.extend(lifecycle_guards(&img, self.opts.unused_for, now));
        Ok(Some((img, g.iter().map(|g| g.to_string()).collect())))
    }

    /// A staged step: disable the image, or disable its protection (the cooldown leaves
    /// the deletion to a later run).
    async fn stage(&mut self, item: &ImageItem) {
        let id = item.image_id.as_str();
        let retry = self.opts.retry;
        let (img, why) = match self.look_again(id).await {
            Err(e) => {
                let detail = format!("could not look at it again: {e}");
                return self.record("image", id, Status::Failed, detail, None);
            }
            Ok(None) => {
                let detail = "already deregistered".into();
                return self.record("image", id, Status::AlreadyGone, detail, None);
            }
            Ok(Some(found)) => found,
        };
        if !why.is_empty() {
            let detail = format!("guarded since the plan: {}", why.join("; "));
            return self.record("image", id, Status::Skipped, detail, None);
        }
        if item.action == Action::Disable {
            if img.state == "disabled" {
                let detail = "already disabled".into();
                return self.record("image", id, Status::Skipped, detail, None);
            }
            let result = async {
                let perms = launch_permissions(&self.clients, id, &retry).await?;
                let mut perms = perms;
                if img.public && !perms.iter().any(|p| p == "public") {
                    perms.insert(0, "public".into());
                }
                retire::disable_one(&self.clients, id, &perms, self.opts.db.as_deref(), &retry)
                    .await
                    .map_err(|e| {
                        AwsError::local(
                            "DisableImage",
                            crate::aws::ErrorClass::Permanent,
                            e.to_string(),
                        )
                    })?;
                Ok::<_, AwsError>(perms)
            }
            .await;
            return match result {
                Ok(perms) => {
                    let lost = if perms.is_empty() {
                        "it had no launch permissions".to_string()
                    } else {
                        format!(
                            "its launch permissions ({}) recorded for `ec2ami enable`",
                            perms.join(", ")
                        )
                    };
                    self.record(
                        "image",
                        id,
                        Status::Disabled,
                        format!("`{}`; {lost}", item.name),
                        None,
                    )
                }
                Err(e) => self.record("image", id, Status::Failed, e.to_string(), None),
            };
        }
        self.unprotect(id).await;
    }

    /// Disable the protection of `id` and say when it becomes deletable.
    async fn unprotect(&mut self, id: &str) -> bool {
        let retry = self.opts.retry;
        if let Err(e) = lifecycle::disable_protection(&self.clients, id, &retry).await {
            self.record("image", id, Status::Failed, e.to_string(), None);
            return false;
        }
        let now = crate::state::now_epoch();
        let state = match inventory::image(&self.clients, id, &retry).await {
            Ok(Some(img)) => Protection::parse(img.protection.as_deref(), now),
            Ok(None) => Protection::Off,
            Err(e) => {
                let detail = format!("protection disabled, but looking at it again failed: {e}");
                self.record("image", id, Status::Failed, detail, None);
                return false;
            }
        };
        match state {
            Protection::Off => true,
            Protection::Cooling { until } => {
                let detail = format!(
                    "deregistration protection disabled; its cooldown runs until {}: run prune \
                     again after then to delete it",
                    ymd_hm(until)
                );
                self.record("image", id, Status::Unprotected, detail, None);
                false
            }
            Protection::On { .. } => {
                let detail = "still protected after DisableImageDeregistrationProtection".into();
                self.record("image", id, Status::Failed, detail, None);
                false
            }
        }
    }

    /// Look again, then deregister (disabling its protection first when the plan says
    /// so).
    async fn image(&mut self, item: &ImageItem) -> ImageFate {
        let (image_id, name) = (item.image_id.as_str(), item.name.as_str());
        let retry = self.opts.retry;
        match self.look_again(image_id).await {
            Err(e) => {
                self.record(
                    "image",
                    image_id,
                    Status::Failed,
                    format!("could not look at it again: {e}"),
                    None,
                );
                return ImageFate::Failed;
            }
            Ok(None) => {
                self.record(
                    "image",
                    image_id,
                    Status::AlreadyGone,
                    "already deregistered".into(),
                    None,
                );
                return ImageFate::Gone;
            }
            Ok(Some((_, g))) if !g.is_empty() => {
                self.record(
                    "image",
                    image_id,
                    Status::Skipped,
                    format!("guarded since the plan: {}", g.join("; ")),
                    None,
                );
                return ImageFate::Guarded;
            }
            Ok(Some((img, _))) => {
                let now = crate::state::now_epoch();
                let p = Protection::parse(img.protection.as_deref(), now);
                if p.blocks_deregistration() {
                    if !item.unprotect {
                        let detail = format!(
                            "protected from deregistration since the plan ({}): pass --unprotect",
                            img.protection.as_deref().unwrap_or("enabled")
                        );
                        self.record("image", image_id, Status::Skipped, detail, None);
                        return ImageFate::Guarded;
                    }
                    if !self.unprotect(image_id).await {
                        return ImageFate::Guarded;
                    }
                }
            }
        }
        let result = retry
            .send(&self.clients.call("DeregisterImage").on(image_id), || {
                self.clients
                    .ec2
                    .deregister_image()
                    .image_id(image_id)
                    .send()
            })
            .await;
        match result {
            Ok(_) => {
                self.record(
                    "image",
                    image_id,
                    Status::Deleted,
                    format!("`{name}`"),
                    None,
                );
                ImageFate::Gone
            }
            // A retried call whose first answer was lost finds the image gone.
            Err(e)
                if e.has_code("InvalidAMIID.NotFound")
                    || e.has_code("InvalidAMIID.Unavailable") =>
            {
                self.record(
                    "image",
                    image_id,
                    Status::AlreadyGone,
                    "already deregistered".into(),
                    None,
                );
                ImageFate::Gone
            }
            Err(e) => {
                self.record("image", image_id, Status::Failed, e.to_string(), None);
                ImageFate::Failed
            }
        }
    }

    /// Look again (no image may map it), then delete.
    async fn snapshot(&mut self, s: &SnapshotItem) {
        let retry = self.opts.retry;
        let id = s.snapshot_id.as_str();
        let gib = Some(s.gib);
        let check = async {
            if inventory::snapshot(&self.clients, id, &retry)
                .await?
                .is_none()
            {
                return Ok::<_, AwsError>(None);
            }
            inventory::images_using_snapshot(&self.clients, id, &retry)
                .await
                .map(Some)
        };
        match check.await {
            Err(e) => {
                let detail = format!("could not look at it again: {e}");
                return self.record("snapshot", id, Status::Failed, detail, gib);
            }
            Ok(None) => {
                let detail = "already deleted".into();
                return self.record("snapshot", id, Status::AlreadyGone, detail, gib);
            }
            Ok(Some(users)) if !users.is_empty() => {
                let detail = format!("in use by {} since the plan", users.join(", "));
                return self.record("snapshot", id, Status::Skipped, detail, gib);
            }
            Ok(Some(_)) => {}
        }
        // No image maps it (just checked): an "in use" answer right after DeregisterImage
        // is retried a few times by the one DeleteSnapshot path.
        match ec2::delete_snapshot(&self.clients, id, &retry).await {
            Ok(true) => {
                let detail = format!("{} GiB", s.gib);
                self.record("snapshot", id, Status::Deleted, detail, gib)
            }
            Ok(false) => {
                let detail = "already deleted".into();
                self.record("snapshot", id, Status::AlreadyGone, detail, gib)
            }
            Err(e) => self.record("snapshot", id, Status::Failed, e.to_string(), gib),
        }
    }
}
