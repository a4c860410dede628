//! EC2 reads and the few writes every stage shares: the paged DescribeImages,
//! DescribeSnapshots, DescribeInstances and DescribeLaunchTemplateVersions listings,
//! look-ups by id, tags, snapshot deletion, and the enabled regions.

use aws_sdk_ec2::types::{Filter, Tag};

use super::model::{Ami, Snapshot};
use super::paging::all_pages;
use super::{AwsError, Call, Clients, RetryPolicy};

/// Largest page of DescribeImages, DescribeSnapshots and DescribeInstances (without a
/// page size AWS answers everything at once, which times out on large accounts).
pub const PAGE: i32 = 1000;
/// Largest page of DescribeLaunchTemplateVersions.
pub const TEMPLATE_PAGE: i32 = 200;

/// One filter with one value.
pub fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// One filter matching any of `values`.
pub fn filter_any<S: AsRef<str>>(name: &str, values: &[S]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(
            values.iter().map(|v| v.as_ref().to_string()).collect(),
        ))
        .build()
}

/// Which images to list.
#[derive(Debug, Clone, Default)]
pub struct ImageQuery {
    /// Filters.
    pub filters: Vec<Filter>,
    /// Deprecated images too (the owner sees them anyway).
    pub include_deprecated: bool,
    /// Disabled images too (they are hidden by default).
    pub include_disabled: bool,
}

impl ImageQuery {
    /// The account's images matching `filters` (not disabled ones).
    pub fn own(filters: Vec<Filter>) -> ImageQuery {
        ImageQuery {
            filters,
            ..ImageQuery::default()
        }
    }

    /// Every image of the account matching `filters`, deprecated and disabled ones
    /// included (a disabled image still holds its snapshots).
    pub fn everything(filters: Vec<Filter>) -> ImageQuery {
        ImageQuery {
            filters,
            include_deprecated: true,
            include_disabled: true,
        }
    }
}

/// The account's images in `clients`' region that `query` selects, every page.
pub async fn images(
    clients: &Clients,
    query: &ImageQuery,
    retry: &RetryPolicy,
) -> Result<Vec<Ami>, AwsError> {
    let region = clients.region();
    let mut out = Vec::new();
    all_pages(
        retry,
        &Call::new("DescribeImages", region),
        |token| {
            let mut req = clients
                .ec2
                .describe_images()
                .owners("self")
                .max_results(PAGE)
                .set_filters(Some(query.filters.clone()))
                .set_next_token(token);
            if query.include_deprecated {
                req = req.include_deprecated(true);
            }
            if query.include_disabled {
                req = req.include_disabled(true);
            }
            req.send()
        },
        |page| page.next_token(),
        |page| {
            out.extend(
                page.images()
                    .iter()
                    .filter_map(|i| Ami::from_sdk(region, i)),
            );
        },
    )
    .await?;
    Ok(out)
}

/// The account's images named any of `names` (100 names a request), not disabled ones.
pub async fn images_named(
    clients: &Clients,
    names: &[&str],
    retry: &RetryPolicy,
) -> Result<Vec<Ami>, AwsError> {
    let mut out = Vec::new();
    for chunk in names.chunks(100) {
        let q = ImageQuery::own(vec![filter_any("name", chunk)]);
        out.extend(images(clients, &q, retry).await?);
    }
    Ok(out)
}

/// Our image named `name` in `clients`' region, if any.
pub async fn image_named(
    clients: &Clients,
    name: &str,
    retry: &RetryPolicy,
) -> Result<Option<Ami>, AwsError> {
    Ok(images_named(clients, &[name], retry)
        .await?
        .into_iter()
        .next())
}

/// One image by id in `clients`' region (any owner; `None` if EC2 does not know it).
pub async fn image(
    clients: &Clients,
    image_id: &str,
    retry: &RetryPolicy,
) -> Result<Option<Ami>, AwsError> {
    let region = clients.region();
    let r = retry
        .send(&Call::new("DescribeImages", region).on(image_id), || {
            clients.ec2.describe_images().image_ids(image_id).send()
        })
        .await;
    match r {
        Ok(out) => Ok(out.images().first().and_then(|i| Ami::from_sdk(region, i))),
        Err(e) if e.has_code("InvalidAMIID.NotFound") => Ok(None),
        Err(e) => Err(e),
    }
}

/// The account's snapshots in `clients`' region matching `filters`, every page.
pub async fn snapshots(
    clients: &Clients,
    filters: Vec<Filter>,
    retry: &RetryPolicy,
) -> Result<Vec<Snapshot>, AwsError> {
    let region = clients.region();
    let mut out = Vec::new();
    all_pages(
        retry,
        &Call::new("DescribeSnapshots", region),
        |token| {
            clients
                .ec2
                .describe_snapshots()
                .owner_ids("self")
                .max_results(PAGE)
                .set_filters(Some(filters.clone()))
                .set_next_token(token)
                .send()
        },
        |page| page.next_token(),
        |page| {
            out.extend(
                page.snapshots()
                    .iter()
                    .filter_map(|s| Snapshot::from_sdk(region, s)),
            );
        },
    )
    .await?;
    Ok(out)
}

/// One snapshot by id (`None` if EC2 does not know it).
pub async fn snapshot(
    clients: &Clients,
    snapshot_id: &str,
    retry: &RetryPolicy,
) -> Result<Option<Snapshot>, AwsError> {
    let region = clients.region();
    let r = retry
        .send(
            &Call::new("DescribeSnapshots", region).on(snapshot_id),
            || {
                clients
                    .ec2
                    .describe_snapshots()
                    .snapshot_ids(snapshot_id)
                    .send()
            },
        )
        .await;
    match r {
        Ok(out) => Ok(out
            .snapshots()
            .first()
            .and_then(|s| Snapshot::from_sdk(region, s))),
        Err(e) if e.has_code("InvalidSnapshot.NotFound") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Delete `snapshot_id`: `true` when deleted, `false` when it was already gone. Right
/// after DeregisterImage EC2 may still call the snapshot in use for a moment, so that
/// answer is worth a few attempts (not the whole policy: a snapshot really in use stays
/// so).
pub async fn delete_snapshot(
    clients: &Clients,
    snapshot_id: &str,
    retry: &RetryPolicy,
) -> Result<bool, AwsError> {
    let retry = RetryPolicy {
        max_attempts: retry.max_attempts.min(6),
        ..*retry
    };
    let r = retry
        .send_with(
            &Call::new("DeleteSnapshot", clients.region()).on(snapshot_id),
            |e| e.has_code("InvalidSnapshot.InUse"),
            || {
                clients
                    .ec2
                    .delete_snapshot()
                    .snapshot_id(snapshot_id)
                    .send()
            },
        )
        .await;
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.has_code("InvalidSnapshot.NotFound") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deregister `image_id`: `true` when deregistered, `false` when it was already gone.
pub async fn deregister_image(
    clients: &Clients,
    image_id: &str,
    retry: &RetryPolicy,
) -> Result<bool, AwsError> {
    let r = retry
        .send(
            &Call::new("DeregisterImage", clients.region()).on(image_id),
            || clients.ec2.deregister_image().image_id(image_id).send(),
        )
        .await;
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.has_code("InvalidAMIID.NotFound") || e.has_code("InvalidAMIID.Unavailable") => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Add tags to a resource (snapshot, image...).
pub async fn create_tags(
    clients: &Clients,
    resource_id: &str,
    tags: &[(&str, &str)],
    retry: &RetryPolicy,
) -> Result<(), AwsError> {
    let tags: Vec<Tag> = tags
        .iter()
        .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
        .collect();
    retry
        .send(
            &Call::new("CreateTags", clients.region()).on(resource_id),
            || {
                clients
                    .ec2
                    .create_tags()
                    .resources(resource_id)
                    .set_tags(Some(tags.clone()))
                    .send()
            },
        )
        .await?;
    Ok(())
}

/// An instance, as the stages that look at instances need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRef {
    /// i-...
    pub id: String,
    /// The AMI it was launched from.
    pub image_id: Option<String>,
    /// pending, running, stopping, stopped, shutting-down, terminated.
    pub state: String,
}

/// Instance states that are not (being) terminated.
pub const LIVE_STATES: &[&str] = &["pending", "running", "stopping", "stopped"];

/// The instances in `clients`' region matching `filters`, every page.
pub async fn instances(
    clients: &Clients,
    filters: Vec<Filter>,
    retry: &RetryPolicy,
) -> Result<Vec<InstanceRef>, AwsError> {
    let mut out = Vec::new();
    all_pages(
        retry,
        &Call::new("DescribeInstances", clients.region()),
        |token| {
            clients
                .ec2
                .describe_instances()
                .set_filters(Some(filters.clone()))
                .max_results(PAGE)
                .set_next_token(token)
                .send()
        },
        |page| page.next_token(),
        |page| {
            for i in page.reservations().iter().flat_map(|r| r.instances()) {
                if let Some(id) = i.instance_id() {
                    out.push(InstanceRef {
                        id: id.to_string(),
                        image_id: i.image_id().map(str::to_string),
                        state: i
                            .state()
                            .and_then(|s| s.name())
                            .map(|n| n.as_str())
                            .unwrap_or("unknown")
                            .to_string(),
                    });
                }
            }
        },
    )
    .await?;
    Ok(out)
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

/// The latest version of every launch template in the region that names an image.
pub async fn latest_templates(
    clients: &Clients,
    retry: &RetryPolicy,
) -> Result<Vec<TemplateRef>, AwsError> {
    let mut out = Vec::new();
    all_pages(
        retry,
        &Call::new("DescribeLaunchTemplateVersions", clients.region()),
        |token| {
            clients
                .ec2
                .describe_launch_template_versions()
                .versions("$Latest")
                .max_results(TEMPLATE_PAGE)
                .set_next_token(token)
                .send()
        },
        |page| page.next_token(),
        |page| {
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
        },
    )
    .await?;
    Ok(out)
}

/// The regions enabled for the account (opt-in regions only once opted in), sorted.
pub async fn enabled_regions(
    clients: &Clients,
    retry: &RetryPolicy,
) -> Result<Vec<String>, AwsError> {
    let out = retry
        .send(&Call::new("DescribeRegions", clients.region()), || {
            clients.ec2.describe_regions().send()
        })
        .await?;
    let mut regions: Vec<String> = out
        .regions()
        .iter()
        .filter(|r| r.opt_in_status() != Some("not-opted-in"))
        .filter_map(|r| r.region_name().map(str::to_string))
        .collect();
    regions.sort();
    Ok(regions)
}

/// A region list resolved: `all` means every enabled region; otherwise the names are
/// checked against the enabled ones. `Err` names the unknown or disabled ones.
pub async fn resolve_regions(
    clients: &Clients,
    wanted: &[String],
    retry: &RetryPolicy,
) -> Result<Result<Vec<String>, String>, AwsError> {
    let enabled = enabled_regions(clients, retry).await?;
    Ok(pick_regions(&enabled, wanted))
}

/// [`resolve_regions`] against a known list of enabled regions.
pub fn pick_regions(enabled: &[String], wanted: &[String]) -> Result<Vec<String>, String> {
    if wanted.iter().any(|r| r == "all") {
        return Ok(enabled.to_vec());
    }
    let unknown: Vec<&str> = wanted
        .iter()
        .filter(|r| !enabled.contains(r))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "unknown or disabled region(s): {} (enabled: {})",
            unknown.join(", "),
            enabled.join(", ")
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for r in wanted {
        if !out.contains(r) {
            out.push(r.clone());
        }
    }
    Ok(out)
}

/// Import an OpenSSH public key as key pair `name`, tagged as ec2ami's.
pub async fn import_key_pair(
    clients: &Clients,
    name: &str,
    public_key: &str,
    retry: &RetryPolicy,
) -> Result<(), AwsError> {
    use aws_sdk_ec2::primitives::Blob;
    use aws_sdk_ec2::types::{ResourceType, TagSpecification};
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::KeyPair)
        .tags(
            Tag::builder()
                .key(super::tags::OWNERSHIP)
                .value(super::tags::OWNERSHIP_VALUE)
                .build(),
        )
        .build();
    retry
        .send(
            &Call::new("ImportKeyPair", clients.region()).on(name),
            || {
                clients
                    .ec2
                    .import_key_pair()
                    .key_name(name)
                    .public_key_material(Blob::new(public_key.as_bytes()))
                    .tag_specifications(tags.clone())
                    .send()
            },
        )
        .await?;
    Ok(())
}

/// Delete key pair `name` (already gone is success: EC2 answers success for an
/// unknown name, moto and older answers NotFound).
pub async fn delete_key_pair(
    clients: &Clients,
    name: &str,
    retry: &RetryPolicy,
) -> Result<(), AwsError> {
    let r = retry
        .send(
            &Call::new("DeleteKeyPair", clients.region()).on(name),
            || clients.ec2.delete_key_pair().key_name(name).send(),
        )
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.has_code("InvalidKeyPair.NotFound") => Ok(()),
        Err(e) => Err(e),
    }
}

/// The instance's console output, the latest (GetConsoleOutput with Latest, as Nitro
/// instances answer it), decoded; empty when there is none yet.
pub async fn console_output(
    clients: &Clients,
    instance_id: &str,
    retry: &RetryPolicy,
) -> Result<String, AwsError> {
    use base64::Engine;
    let out = retry
        .send(
            &Call::new("GetConsoleOutput", clients.region()).on(instance_id),
            || {
                clients
                    .ec2
                    .get_console_output()
                    .instance_id(instance_id)
                    .latest(true)
                    .send()
            },
        )
        .await?;
    let encoded = out.output().unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| {
            AwsError::local(
                "GetConsoleOutput",
                super::ErrorClass::Permanent,
                format!("the console output is not base64: {e}"),
            )
        })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A screenshot of the instance's screen (GetConsoleScreenshot), as image bytes (PNG
/// or JPEG, as EC2 sends it).
pub async fn console_screenshot(
    clients: &Clients,
    instance_id: &str,
    retry: &RetryPolicy,
) -> Result<Vec<u8>, AwsError> {
    use base64::Engine;
    let out = retry
        .send(
            &Call::new("GetConsoleScreenshot", clients.region()).on(instance_id),
            || {
                clients
                    .ec2
                    .get_console_screenshot()
                    .instance_id(instance_id)
                    .wake_up(true)
                    .send()
            },
        )
        .await?;
    base64::engine::general_purpose::STANDARD
        .decode(out.image_data().unwrap_or_default().trim())
        .map_err(|e| {
            AwsError::local(
                "GetConsoleScreenshot",
                super::ErrorClass::Permanent,
                format!("the screenshot is not base64: {e}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_picked_from_the_enabled_ones() {
        let enabled: Vec<String> = ["eu-west-1", "us-east-1", "us-west-2"]
            .map(String::from)
            .to_vec();
        let want = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(pick_regions(&enabled, &want(&["all"])).unwrap(), enabled);
        assert_eq!(
            pick_regions(&enabled, &want(&["us-west-2", "eu-west-1", "us-west-2"])).unwrap(),
            want(&["us-west-2", "eu-west-1"])
        );
        let e = pick_regions(&enabled, &want(&["us-east-1", "mars-north-1"])).unwrap_err();
        assert!(
            e.starts_with("unknown or disabled region(s): mars-north-1 (enabled: eu-west-1"),
            "{e}"
        );
    }
}
