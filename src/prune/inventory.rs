//! What one region holds that prune decides on: the account's images and snapshots, and
//! what uses an image (instances, launch templates, SSM parameters). Read-only; every
//! list is read page by page with a handful of requests per region, never one request
//! per image.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{Filter, Image as SdkImage, Snapshot as SdkSnapshot};
use futures_util::future::try_join4;

use crate::ami;
use crate::aws::{AwsError, Clients, RetryPolicy};
use crate::snapshot::{OWNERSHIP_TAG, OWNERSHIP_VALUE};

/// Largest page DescribeImages and DescribeSnapshots answer.
const DESCRIBE_PAGE: i32 = 1000;
/// Largest page DescribeLaunchTemplateVersions answers.
const TEMPLATE_PAGE: i32 = 200;
/// Largest page of GetParametersByPath, and the most names GetParameters takes.
const PARAMETER_PAGE: usize = 10;
/// Instance states that keep an AMI in use: running or stopped, and on the way to either.
const LIVE_STATES: &[&str] = &["pending", "running", "stopping", "stopped"];
/// A launch template's ImageId may name an SSM parameter instead of an AMI.
pub const RESOLVE_SSM: &str = "resolve:ssm:";

/// An AMI of the account.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// AMI id.
    pub id: String,
    /// Name.
    pub name: String,
    /// available, pending, failed, disabled...
    pub state: String,
    /// CreationDate, epoch seconds.
    pub created: i64,
    /// Launchable by everyone.
    pub public: bool,
    /// The snapshots its block device mappings name.
    pub snapshots: Vec<String>,
    /// Carries ec2ami's ownership tag.
    pub managed: bool,
    /// DeprecationTime as EC2 shows it, if set.
    pub deprecation: Option<String>,
}

/// An EBS snapshot of the account.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Snapshot id.
    pub id: String,
    /// Size for the estimate: the full snapshot size when EC2 reports it, else the
    /// volume size (an upper bound), in GiB.
    pub gib: f64,
    /// Description (CreateImage and CopyImage write the AMI id there).
    pub description: String,
    /// StartTime, epoch seconds.
    pub started: i64,
    /// State is `completed` (a pending one may be an upload in progress).
    pub completed: bool,
    /// Carries ec2ami's ownership tag.
    pub managed: bool,
}

/// A launch template's latest version, and the image it launches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRef {
    /// lt-...
    pub id: String,
    /// Its name.
    pub name: String,
    /// The latest version number.
    pub version: i64,
    /// Its ImageId: an AMI id or `resolve:ssm:NAME`.
    pub image: String,
}

/// What uses images in a region.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Users {
    /// AMI id -> instances (running, stopped or on the way) launched from it.
    pub instances: BTreeMap<String, Vec<String>>,
    /// Every launch template's latest version.
    pub templates: Vec<TemplateRef>,
    /// SSM parameter name -> value, for the parameters checked.
    pub parameters: BTreeMap<String, String>,
}

/// Which SSM parameters to check in a region.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParameterSources {
    /// Parameter names (those the publish journal recorded for this region).
    pub names: BTreeSet<String>,
    /// Paths read recursively (`--ssm-path`).
    pub paths: Vec<String>,
}

/// Everything prune needs to know about one region.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    /// Region.
    pub region: String,
    /// Every image the account owns there (deprecated and disabled ones included).
    pub images: Vec<Image>,
    /// Every snapshot the account owns there.
    pub snapshots: Vec<Snapshot>,
    /// What uses the images.
    pub users: Users,
}

fn tag_is<'a>(mut tags: impl Iterator<Item = (Option<&'a str>, Option<&'a str>)>) -> bool {
    tags.any(|(k, v)| k == Some(OWNERSHIP_TAG) && v == Some(OWNERSHIP_VALUE))
}

impl Image {
    /// Our view of an SDK image.
    pub fn from_sdk(img: &SdkImage) -> Option<Image> {
        Some(Image {
            id: img.image_id()?.to_string(),
            name: img.name().unwrap_or_default().to_string(),
            state: img
                .state()
                .map(|s| s.as_str())
                .unwrap_or("unknown")
                .to_string(),
            created: img
                .creation_date()
                .and_then(|d| {
                    aws_smithy_types::DateTime::from_str(
                        d,
                        aws_smithy_types::date_time::Format::DateTime,
                    )
                    .ok()
                })
                .map(|d| d.secs())
                .unwrap_or(0),
            public: img.public().unwrap_or(false),
            snapshots: img
                .block_device_mappings()
                .iter()
                .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
                .map(str::to_string)
                .collect(),
            managed: tag_is(img.tags().iter().map(|t| (t.key(), t.value()))),
            deprecation: img.deprecation_time().map(str::to_string),
        })
    }
}

impl Snapshot {
    /// Our view of an SDK snapshot.
    pub fn from_sdk(s: &SdkSnapshot) -> Option<Snapshot> {
        let gib = match s.full_snapshot_size_in_bytes() {
            Some(b) if b > 0 => b as f64 / (1u64 << 30) as f64,
            _ => f64::from(s.volume_size().unwrap_or(0)),
        };
        Some(Snapshot {
            id: s.snapshot_id()?.to_string(),
            gib,
            description: s.description().unwrap_or_default().to_string(),
            started: s.start_time().map(|t| t.secs()).unwrap_or(0),
            completed: s.state().is_some_and(|st| st.as_str() == "completed"),
            managed: tag_is(s.tags().iter().map(|t| (t.key(), t.value()))),
        })
    }
}

/// Read everything prune needs in `clients`' region.
pub async fn scan(
    clients: &Clients,
    sources: &ParameterSources,
    retry: &RetryPolicy,
) -> Result<Inventory, AwsError> {
    let (images, snapshots, instances, templates) = try_join4(
        images(clients, Vec::new(), retry),
        snapshots(clients, retry),
        instances(clients, None, retry),
        latest_templates(clients, retry),
    )
    .await?;
    let parameters = parameters(clients, sources, &templates, retry).await?;
    Ok(Inventory {
        region: clients.region().to_string(),
        images,
        snapshots,
        users: Users {
            instances,
            templates,
            parameters,
        },
    })
}

/// What uses `image_id` now (the guards' re-check right before a deletion).
pub async fn users_of(
    clients: &Clients,
    image_id: &str,
    sources: &ParameterSources,
    retry: &RetryPolicy,
) -> Result<Users, AwsError> {
    let (instances, templates) = futures_util::future::try_join(
        instances(clients, Some(image_id), retry),
        latest_templates(clients, retry),
    )
    .await?;
    let parameters = parameters(clients, sources, &templates, retry).await?;
    Ok(Users {
        instances,
        templates,
        parameters,
    })
}

/// The account's images matching `filters` (deprecated and disabled ones too: a
/// disabled image still holds its snapshots), every page.
pub async fn images(
    clients: &Clients,
    filters: Vec<Filter>,
    retry: &RetryPolicy,
) -> Result<Vec<Image>, AwsError> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    let what = format!("DescribeImages in {}", clients.region());
    loop {
        let page = retry
            .run(&what, || async {
                clients
                    .ec2
                    .describe_images()
                    .owners("self")
                    .include_deprecated(true)
                    .include_disabled(true)
                    .max_results(DESCRIBE_PAGE)
                    .set_filters(Some(filters.clone()))
                    .set_next_token(token.clone())
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("DescribeImages", e))
            })
            .await?;
        out.extend(page.images().iter().filter_map(Image::from_sdk));
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return Ok(out),
        }
    }
}

/// The account's images that map `snapshot_id` now.
pub async fn images_using_snapshot(
    clients: &Clients,
    snapshot_id: &str,
    retry: &RetryPolicy,
) -> Result<Vec<String>, AwsError> {
    let found = images(
        clients,
        vec![ami::filter("block-device-mapping.snapshot-id", snapshot_id)],
        retry,
    )
    .await?;
    Ok(found.into_iter().map(|i| i.id).collect())
}

/// One image of the account by id, `None` once it is gone.
pub async fn image(
    clients: &Clients,
    image_id: &str,
    retry: &RetryPolicy,
) -> Result<Option<Image>, AwsError> {
    Ok(ami::describe_one(clients, image_id, retry)
        .await?
        .as_ref()
        .and_then(Image::from_sdk))
}

async fn snapshots(clients: &Clients, retry: &RetryPolicy) -> Result<Vec<Snapshot>, AwsError> {
    let all = crate::snapshot::ec2::describe_own(clients, Vec::new(), retry).await?;
    Ok(all.iter().filter_map(Snapshot::from_sdk).collect())
}

/// One snapshot of the account by id, `None` once it is gone.
pub async fn snapshot(
    clients: &Clients,
    snapshot_id: &str,
    retry: &RetryPolicy,
) -> Result<Option<Snapshot>, AwsError> {
    Ok(
        crate::snapshot::ec2::describe_one(clients, snapshot_id, retry)
            .await?
            .as_ref()
            .and_then(Snapshot::from_sdk),
    )
}

/// AMI id -> live instances (pending, running, stopping, stopped), optionally only those
/// launched from `image_id`.
async fn instances(
    clients: &Clients,
    image_id: Option<&str>,
    retry: &RetryPolicy,
) -> Result<BTreeMap<String, Vec<String>>, AwsError> {
    let mut filters = vec![
        Filter::builder()
            .name("instance-state-name")
            .set_values(Some(LIVE_STATES.iter().map(|s| s.to_string()).collect()))
            .build(),
    ];
    if let Some(id) = image_id {
        filters.push(ami::filter("image-id", id));
    }
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut token: Option<String> = None;
    let what = format!("DescribeInstances in {}", clients.region());
    loop {
        let page = retry
            .run(&what, || async {
                clients
                    .ec2
                    .describe_instances()
                    .set_filters(Some(filters.clone()))
                    .max_results(DESCRIBE_PAGE)
                    .set_next_token(token.clone())
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("DescribeInstances", e))
            })
            .await?;
        for i in page.reservations().iter().flat_map(|r| r.instances()) {
            if let (Some(img), Some(id)) = (i.image_id(), i.instance_id()) {
                let state = i
                    .state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str())
                    .unwrap_or("unknown");
                out.entry(img.to_string())
                    .or_default()
                    .push(format!("{id} ({state})"));
            }
        }
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return Ok(out),
        }
    }
}

/// The latest version of every launch template in the region.
async fn latest_templates(
    clients: &Clients,
    retry: &RetryPolicy,
) -> Result<Vec<TemplateRef>, AwsError> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    let what = format!("DescribeLaunchTemplateVersions in {}", clients.region());
    loop {
        let page = retry
            .run(&what, || async {
                clients
                    .ec2
                    .describe_launch_template_versions()
                    .versions("$Latest")
                    .max_results(TEMPLATE_PAGE)
                    .set_next_token(token.clone())
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("DescribeLaunchTemplateVersions", e))
            })
            .await?;
        for v in page.launch_template_versions() {
            let Some(image) = v.launch_template_data().and_then(|d| d.image_id()) else {
                continue;
            };
            out.push(TemplateRef {
                id: v.launch_template_id().unwrap_or_default().to_string(),
                name: v.launch_template_name().unwrap_or_default().to_string(),
                version: v.version_number().unwrap_or(0),
                image: image.to_string(),
            });
        }
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return Ok(out),
        }
    }
}

/// The values of the parameters `sources` names, those under its paths, and those
/// launch templates resolve their image through.
async fn parameters(
    clients: &Clients,
    sources: &ParameterSources,
    templates: &[TemplateRef],
    retry: &RetryPolicy,
) -> Result<BTreeMap<String, String>, AwsError> {
    let mut names: BTreeSet<String> = sources.names.clone();
    names.extend(
        templates
            .iter()
            .filter_map(|t| t.image.strip_prefix(RESOLVE_SSM))
            .map(str::to_string),
    );
    let mut out = BTreeMap::new();
    let names: Vec<String> = names.into_iter().collect();
    for batch in names.chunks(PARAMETER_PAGE) {
        let what = format!("GetParameters in {}", clients.region());
        let got = retry
            .run(&what, || async {
                clients
                    .ssm
                    .get_parameters()
                    .set_names(Some(batch.to_vec()))
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("GetParameters", e))
            })
            .await?;
        // Names that no longer exist come back as InvalidParameters: nothing to guard.
        for p in got.parameters() {
            if let (Some(n), Some(v)) = (p.name(), p.value()) {
                out.insert(n.to_string(), v.to_string());
            }
        }
        // A `resolve:ssm:NAME:3` selector answers under its plain name; keep the asked one.
        for asked in batch {
            if let Some((plain, _)) = asked.rsplit_once(':')
                && let Some(v) = out.get(plain).cloned()
            {
                out.entry(asked.clone()).or_insert(v);
            }
        }
    }
    for path in &sources.paths {
        let mut token: Option<String> = None;
        let what = format!("GetParametersByPath {path} in {}", clients.region());
        loop {
            let page = retry
                .run(&what, || async {
                    clients
                        .ssm
                        .get_parameters_by_path()
                        .path(path)
                        .recursive(true)
                        .max_results(PARAMETER_PAGE as i32)
                        .set_next_token(token.clone())
                        .send()
                        .await
                        .map_err(|e| AwsError::from_sdk("GetParametersByPath", e))
                })
                .await?;
            for p in page.parameters() {
                if let (Some(n), Some(v)) = (p.name(), p.value()) {
                    out.insert(n.to_string(), v.to_string());
                }
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
    }
    Ok(out)
}
