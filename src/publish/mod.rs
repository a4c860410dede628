//! Publish a whole release: for every image of a [`Release`], upload it, register the
//! AMI, copy it to every region, share it, set its deprecation and write its SSM
//! parameters; then [`validate`] what exists against what should.
//!
//! Every step looks up what already exists before it creates anything (by name, by
//! ownership and source tags) and records each resource in the [journal] as soon as
//! AWS names it, so a publish killed at any moment (kill -9 included) is finished by
//! running the same command again, with nothing duplicated and nothing left behind
//! unreported.
//!
//! [journal]: crate::state::journal

pub mod announce;
pub mod compat;
pub(crate) mod identity;
pub(crate) mod parent;
pub mod plan;
pub(crate) mod release;
pub(crate) mod run;
pub(crate) mod survey;
pub mod validate;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::ami::{self, AmiError};
use crate::aws::{AwsError, Clients, RetryPolicy, ec2};
use crate::params::ParamError;
use crate::progress::ProgressMode;
use crate::state::journal::Journal;
use crate::state::{JobLock, StateDb, StateError};
use crate::units::today;

pub use release::{Release, ReleaseError, ReleaseFile, ReleaseImage};
pub use run::publish;

/// How to publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Concurrent block uploads per image.
    pub workers: usize,
    /// How long to wait for each AMI (and each copy) to become available.
    pub wait: Duration,
    /// Retry policy for every call.
    pub retry: RetryPolicy,
    /// How upload progress is shown.
    pub progress: ProgressMode,
    /// Where upload block indexes are kept.
    pub index_dir: PathBuf,
    /// Boot each image locally before its upload (`None`: no pre-flight).
    pub preflight: Option<crate::boot::preflight::PreflightOptions>,
    /// What images may do (backing files...).
    pub image: crate::image::ImageOptions,
    /// Told of each step as it finishes (progress lines such as compat's).
    pub events: Option<EventSink>,
    /// Deregister and publish again the AMIs (ours only) made from an earlier version
    /// of their image file, instead of refusing them.
    pub replace: bool,
}

/// A step of a publish, told as it finishes.
#[derive(Debug, Clone)]
pub enum Event {
    /// An image's snapshot exists in the source region.
    Snapshot {
        /// The disk image.
        path: PathBuf,
        /// The snapshot.
        snapshot_id: String,
        /// The source region.
        region: String,
        /// Blocks sent (0 when an earlier run's snapshot is reused).
        blocks: u64,
        /// True when an earlier run's snapshot is used.
        reused: bool,
    },
    /// The AMI is available in the source region.
    Registered {
        /// The AMI id.
        image_id: String,
    },
    /// Copies into these regions are starting.
    Copying {
        /// The destination regions.
        regions: Vec<String>,
    },
    /// The copy into a region is available.
    Copied {
        /// Region.
        region: String,
        /// The copy's id.
        image_id: String,
    },
    /// Launch permissions are in place in every region.
    Shared,
    /// The snapshots behind the AMIs are public in every region.
    SnapshotsPublic,
    /// Every image's parameters are written.
    Parameters,
}

/// Where [`Event`]s go.
#[derive(Clone)]
pub struct EventSink(pub Arc<dyn Fn(&Event) + Send + Sync>);

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}

impl PublishOptions {
    /// Tell the event sink, if any, of `event`.
    pub(crate) fn tell(&self, event: Event) {
        if let Some(sink) = &self.events {
            (sink.0)(&event);
        }
    }
}

/// Why a publish stopped.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The release cannot be published as written; nothing was created.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// An AWS call failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// An AMI step failed.
    #[error(transparent)]
    Ami(#[from] AmiError),
    /// A parameter step failed.
    #[error(transparent)]
    Params(#[from] ParamError),
    /// The journal failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// An upload failed (its unfinished snapshot was cleaned up, as the message says).
    #[error("{0}")]
    Upload(String),
    /// Another process is publishing the same release.
    #[error("{0}")]
    Busy(String),
    /// AMIs of the release were made from an earlier version of their image file
    /// (checked before anything is created): one line each, with the ways out.
    #[error("{}", .0.join("\n"))]
    Stale(Vec<String>),
    /// The publish would fail halfway (checked before anything is created): each
    /// problem, per region, with what to do.
    #[error(
        "{} problem(s) would make this publish fail halfway; nothing was created:\n{}",
        .0.len(),
        .0.join("\n")
    )]
    NotReady(Vec<String>),
    /// Some images failed; the others were published (each named).
    #[error("{}", .0.join("\n"))]
    Images(Vec<String>),
    /// The image did not boot locally; nothing of it was uploaded or registered.
    #[error(transparent)]
    Preflight(#[from] crate::boot::preflight::PreflightError),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted: what was done is in the journal; run the same command again to finish")]
    Interrupted,
}

/// One AMI in one region.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RegionalAmi {
    /// Region.
    pub region: String,
    /// AMI id.
    pub image_id: String,
    /// The snapshot behind it.
    pub snapshot_id: Option<String>,
    /// True when it already existed.
    pub reused: bool,
}

/// What a publish did for one image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    /// The AMI name.
    pub name: String,
    /// The disk image.
    pub path: PathBuf,
    /// The snapshot in the source region.
    pub snapshot_id: String,
    /// True when the snapshot already existed (no upload).
    pub snapshot_reused: bool,
    /// The AMI in every region: the source region first.
    pub amis: Vec<RegionalAmi>,
    /// Launch permissions given ("public", "account:ID", ...).
    pub permissions: Vec<String>,
    /// SSM parameters.
    pub parameters: Vec<crate::params::Outcome>,
    /// Regions that failed only as a warning (best effort).
    pub warnings: Vec<String>,
}

/// What a publish did.
#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    /// The release file.
    pub release: PathBuf,
    /// The build date used.
    pub date: String,
    /// The region images were uploaded and registered in.
    pub source_region: String,
    /// Every region.
    pub regions: Vec<String>,
    /// Each image, in file order.
    pub images: Vec<ImageReport>,
    /// Wall time.
    pub seconds: f64,
    /// The release announcement, when the release has one and every image was published.
    pub announcement: Option<announce::AnnounceReport>,
}

impl PublishReport {
    /// The lines bsdec2-image-upload prints, one per AMI and region.
    pub fn created_lines(&self) -> Vec<String> {
        self.images
            .iter()
            .flat_map(|i| &i.amis)
            .map(|a| ami::created_line(&a.region, &a.image_id))
            .collect()
    }
}

/// A publish that holds its release: the per-release lock (two publishes of one release
/// cannot run at once) and the journal, whose first run fixed the build date.
#[derive(Debug)]
pub struct Session {
    /// The release's journal.
    pub journal: Journal,
    /// The build date the first run fixed (YYYYMMDD).
    pub date: String,
    _lock: JobLock,
}

/// Start (or resume) publishing the release `key` (`label` names it in messages and the
/// journal): take its lock, open its journal (recording today's date on a first run).
pub fn start(db: &Arc<StateDb>, key: &str, label: &str) -> Result<Session, PublishError> {
    let dir = db.path().parent().unwrap_or(Path::new("."));
    let lock = JobLock::acquire(dir, key)?.ok_or_else(|| {
        PublishError::Busy(format!(
            "{label} is being published by another ec2ami process (lock {}/locks/{key}.lock)",
            dir.display()
        ))
    })?;
    let vars = serde_json::json!({ "date": today() }).to_string();
    let journal = Journal::open(db, key, label, &vars)?;
    if journal.resumed() {
        tracing::info!("resuming the publish of {label}");
    }
    let date = journal_date(Some(&journal));
    Ok(Session {
        journal,
        date,
        _lock: lock,
    })
}

/// The journal an earlier run of release `key` left (read-only), and the build date it
/// fixed, or today's: what `--plan` and `validate` see.
pub fn recorded(db: &Arc<StateDb>, key: &str) -> Result<(Option<Journal>, String), PublishError> {
    let journal = Journal::find(db, key)?;
    let date = journal_date(journal.as_ref());
    Ok((journal, date))
}

/// The date an earlier run of the release fixed, or today.
fn journal_date(journal: Option<&Journal>) -> String {
    journal
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j.vars()).ok())
        .and_then(|v| v["date"].as_str().map(str::to_string))
        .unwrap_or_else(today)
}

/// The regions of a release, resolved: (source region, every region with the source
/// first, best-effort regions).
pub async fn resolve_regions(
    home: &Clients,
    release: &Release,
    retry: &RetryPolicy,
) -> Result<(String, Vec<String>, Vec<String>), PublishError> {
    let enabled = ec2::enabled_regions(home, retry).await?;
    let pick = |wanted: &[String]| {
        ec2::pick_regions(&enabled, wanted).map_err(|m| PublishError::Ami(AmiError::Invalid(m)))
    };
    let mut regions = pick(&release.regions)?;
    let best_effort = pick(&release.best_effort)?;
    let source = match &release.source_region {
        Some(s) => {
            pick(std::slice::from_ref(s))?;
            s.clone()
        }
        None if release.regions.iter().any(|r| r == "all") => home.region().to_string(),
        None => regions[0].clone(),
    };
    if best_effort.contains(&source) {
        return Err(PublishError::Release(ReleaseError::Release {
            path: release.path.clone(),
            message: format!("the source region {source} cannot be best effort"),
        }));
    }
    regions.retain(|r| *r != source);
    regions.insert(0, source.clone());
    for b in &best_effort {
        if !regions.contains(b) {
            regions.push(b.clone());
        }
    }
    Ok((source, regions, best_effort))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_lines_follow_images_then_regions() {
        let ami = |r: &str, id: &str| RegionalAmi {
            region: r.into(),
            image_id: id.into(),
            snapshot_id: None,
            reused: false,
        };
        let image = |name: &str, amis| ImageReport {
            name: name.into(),
            path: PathBuf::from("x.raw"),
            snapshot_id: "snap-1".into(),
            snapshot_reused: false,
            amis,
            permissions: vec![],
            parameters: vec![],
            warnings: vec![],
        };
        let report = PublishReport {
            release: PathBuf::from("r.toml"),
            date: "20261124".into(),
            source_region: "us-east-1".into(),
            regions: vec!["us-east-1".into(), "eu-west-1".into()],
            images: vec![
                image(
                    "a",
                    vec![ami("us-east-1", "ami-1"), ami("eu-west-1", "ami-2")],
                ),
                image("b", vec![ami("us-east-1", "ami-3")]),
            ],
            seconds: 1.0,
            announcement: None,
        };
        assert_eq!(
            report.created_lines(),
            [
                "Created AMI in us-east-1 region: ami-1",
                "Created AMI in eu-west-1 region: ami-2",
                "Created AMI in us-east-1 region: ami-3",
            ]
        );
    }
}
