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

pub mod compat;
pub mod plan;
pub mod release;
mod run;
pub mod validate;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::ami::{self, AmiError};
use crate::aws::{AwsError, Clients, RetryPolicy};
use crate::params::ParamError;
use crate::progress::ProgressMode;
use crate::state::StateError;

pub use release::{Release, ReleaseError, ReleaseFile, ReleaseImage};
pub use run::publish;

/// Tag on snapshots a publish uploads: the AMI name they are for, so a rerun that lost
/// its journal still finds them.
pub const AMI_NAME_TAG: &str = "ec2ami:ami-name";
/// Tag a publish adds to a snapshot once its upload has completed: a snapshot with the
/// name tag and without this one is the remains of an interrupted upload.
pub const UPLOADED_TAG: &str = "ec2ami:uploaded";

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
    /// Some images failed; the others were published (each named).
    #[error("{}", .0.join("\n"))]
    Images(Vec<String>),
    /// The image did not boot locally; nothing of it was sent to AWS.
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
}

impl PublishReport {
    /// The lines bsdec2-image-upload prints, one per AMI and region.
    pub fn created_lines(&self) -> Vec<String> {
        self.images
            .iter()
            .flat_map(|i| &i.amis)
            .map(|a| created_line(&a.region, &a.image_id))
            .collect()
    }
}

/// The line FreeBSD's release scripts grep, as bsdec2-image-upload prints it.
pub fn created_line(region: &str, image_id: &str) -> String {
    format!("Created AMI in {region} region: {image_id}")
}

/// The regions of a release, resolved: (source region, every region with the source
/// first, best-effort regions).
pub async fn resolve_regions(
    home: &Clients,
    release: &Release,
    retry: &RetryPolicy,
) -> Result<(String, Vec<String>, Vec<String>), PublishError> {
    let mut regions = ami::resolve_regions(home, &release.regions, retry).await?;
    let best_effort = if release.best_effort.is_empty() {
        Vec::new()
    } else {
        ami::resolve_regions(home, &release.best_effort, retry).await?
    };
    let source = match &release.source_region {
        Some(s) => {
            ami::resolve_regions(home, std::slice::from_ref(s), retry).await?;
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
