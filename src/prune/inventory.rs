//! What one region holds that prune decides on: the account's images and snapshots, and
//! what uses an image (instances, launch templates, SSM parameters). Read-only; every
//! list is read page by page with a handful of requests per region, never one request
//! per image.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::Filter;
use futures_util::future::try_join4;

use crate::aws::ec2::{self, ImageQuery};
use crate::aws::rbin::{self, RetentionRule};
use crate::aws::{AwsError, Clients, RetryPolicy, ssm};

pub use crate::aws::ec2::TemplateRef;

/// A launch template's ImageId may name an SSM parameter instead of an AMI.
pub const RESOLVE_SSM: &str = "resolve:ssm:";

/// An AMI of the account: ec2ami's one view of an AMI.
pub use crate::aws::Ami as Image;
/// An EBS snapshot of the account.
pub use crate::aws::Snapshot;

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
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    /// Region.
    pub region: String,
    /// Every image the account owns there (deprecated and disabled ones included).
    pub images: Vec<Image>,
    /// Every snapshot the account owns there.
    pub snapshots: Vec<Snapshot>,
    /// What uses the images.
    pub users: Users,
    /// The region's Recycle Bin retention rules for AMIs and snapshots, or why they
    /// could not be read.
    pub rules: Result<Vec<RetentionRule>, String>,
    /// Child snapshot id -> its lineage, for the snapshots whose parent is known (the
    /// [`PARENT_SNAPSHOT`](crate::aws::tags::PARENT_SNAPSHOT) tag) and present.
    pub lineage: BTreeMap<String, Lineage>,
}

/// A child snapshot's parent and what ListChangedBlocks says they share.
#[derive(Debug, Clone, PartialEq)]
pub struct Lineage {
    /// The parent snapshot.
    pub parent: String,
    /// The counts, or why they are not known.
    pub changed: Result<Changed, String>,
}

/// ListChangedBlocks between a parent (first) and its child (second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    /// Block size in bytes.
    pub block_size: u64,
    /// Blocks the child holds itself (written since the parent): what it is billed for.
    pub own: u64,
    /// Blocks of the parent the child does not share (it wrote its own there): what
    /// deleting the parent can free while the child stays.
    pub replaced: u64,
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
        ec2::latest_templates(clients, retry),
    )
    .await?;
    let parameters = parameters(clients, sources, &templates, retry).await?;
    // Recoverability is information, not a precondition: a region whose rules cannot
    // be read is still pruned, and the plan says recoverability is unknown there.
    let rules = rbin::rules(clients, retry).await.map_err(|e| e.to_string());
    let lineage = lineage(clients, &snapshots, retry).await;
    Ok(Inventory {
        region: clients.region().to_string(),
        images,
        snapshots,
        users: Users {
            instances,
            templates,
            parameters,
        },
        rules,
        lineage,
    })
}

/// The lineage of every completed snapshot whose parent (by ec2ami's tag) is a
/// completed snapshot of the region: ListChangedBlocks (tokens only, a few requests per
/// child), a few at a time. A failure leaves that child's counts unknown, not the scan.
async fn lineage(
    clients: &Clients,
    snapshots: &[Snapshot],
    retry: &RetryPolicy,
) -> BTreeMap<String, Lineage> {
    use futures_util::StreamExt;
    let present: BTreeSet<&str> = snapshots
        .iter()
        .filter(|s| s.completed())
        .map(|s| s.id.as_str())
        .collect();
    let pairs: Vec<(String, String)> = snapshots
        .iter()
        .filter(|s| s.completed())
        .filter_map(|s| {
            let parent = s.tag(crate::aws::tags::PARENT_SNAPSHOT)?;
            (present.contains(parent) && parent != s.id).then(|| (s.id.clone(), parent.to_string()))
        })
        .collect();
    futures_util::stream::iter(pairs)
        .map(|(child, parent)| async move {
            let changed = changed_blocks(clients, &parent, &child, retry)
                .await
                .map_err(|e| e.to_string());
            if let Err(e) = &changed {
                tracing::warn!("{child}: the blocks it shares with {parent} are unknown: {e}");
            }
            (child, Lineage { parent, changed })
        })
        .buffer_unordered(8)
        .collect()
        .await
}

async fn changed_blocks(
    clients: &Clients,
    first: &str,
    second: &str,
    retry: &RetryPolicy,
) -> Result<Changed, AwsError> {
    let call = clients.call("ListChangedBlocks").on(second);
    let mut out = Changed {
        block_size: crate::snapshot::AWS_BLOCK_SIZE,
        own: 0,
        replaced: 0,
    };
    crate::aws::paging::all_pages(
        retry,
        &call,
        |token| {
            clients
                .ebs
                .list_changed_blocks()
                .first_snapshot_id(first)
                .second_snapshot_id(second)
                .max_results(10_000)
                .set_next_token(token)
                .send()
        },
        |page| page.next_token(),
        |page| {
            if let Some(bs) = page.block_size().filter(|&b| b > 0) {
                out.block_size = bs as u64;
            }
            for b in page.changed_blocks() {
                out.own += u64::from(b.second_block_token().is_some());
                out.replaced += u64::from(b.first_block_token().is_some());
            }
        },
    )
    .await?;
    Ok(out)
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
        ec2::latest_templates(clients, retry),
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
    ec2::images(clients, &ImageQuery::everything(filters), retry).await
}

/// The account's images that map `snapshot_id` now.
pub async fn images_using_snapshot(
    clients: &Clients,
    snapshot_id: &str,
    retry: &RetryPolicy,
) -> Result<Vec<String>, AwsError> {
    let found = images(
        clients,
        vec![ec2::filter("block-device-mapping.snapshot-id", snapshot_id)],
        retry,
    )
    .await?;
    Ok(found.into_iter().map(|i| i.id).collect())
}

/// One image of the account by id (a disabled one too), `None` once it is gone.
pub async fn image(
    clients: &Clients,
    image_id: &str,
    retry: &RetryPolicy,
) -> Result<Option<Image>, AwsError> {
    let ids = [image_id.to_string()];
    Ok(crate::aws::lifecycle::images_by_id(clients, &ids, retry)
        .await?
        .first()
        .cloned())
}

async fn snapshots(clients: &Clients, retry: &RetryPolicy) -> Result<Vec<Snapshot>, AwsError> {
    ec2::snapshots(clients, Vec::new(), retry).await
}

/// One snapshot of the account by id, `None` once it is gone.
pub async fn snapshot(
    clients: &Clients,
    snapshot_id: &str,
    retry: &RetryPolicy,
) -> Result<Option<Snapshot>, AwsError> {
    ec2::snapshot(clients, snapshot_id, retry).await
}

/// AMI id -> live instances (pending, running, stopping, stopped), optionally only those
/// launched from `image_id`.
async fn instances(
    clients: &Clients,
    image_id: Option<&str>,
    retry: &RetryPolicy,
) -> Result<BTreeMap<String, Vec<String>>, AwsError> {
    let mut filters = vec![ec2::filter_any("instance-state-name", ec2::LIVE_STATES)];
    if let Some(id) = image_id {
        filters.push(ec2::filter("image-id", id));
    }
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in ec2::instances(clients, filters, retry).await? {
        if let Some(img) = i.image_id {
            out.entry(img)
                .or_default()
                .push(format!("{} ({})", i.id, i.state));
        }
    }
    Ok(out)
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
    let names: Vec<String> = names.into_iter().collect();
    let mut out = ssm::get_parameters(clients, &names, retry).await?;
    for path in &sources.paths {
        out.extend(ssm::parameters_by_path(clients, path, retry).await?);
    }
    Ok(out)
}
