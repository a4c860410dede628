//! The EC2 side of snapshots: find ours, tag, delete.

use aws_sdk_ec2::types::{Filter, Snapshot, Tag};

use crate::aws::{AwsError, Clients, RetryPolicy};

/// Snapshots a page: AWS's largest (without it, AWS answers everything at once, which
/// times out on accounts with many snapshots).
const PAGE: i32 = 1000;

/// Our snapshots in `clients`' region matching `filters` (every page).
pub async fn describe_own(
    clients: &Clients,
    filters: Vec<Filter>,
    retry: &RetryPolicy,
) -> Result<Vec<Snapshot>, AwsError> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = retry
            .run(
                &format!("DescribeSnapshots in {}", clients.region()),
                || async {
                    clients
                        .ec2
                        .describe_snapshots()
                        .owner_ids("self")
                        .max_results(PAGE)
                        .set_filters(Some(filters.clone()))
                        .set_next_token(token.clone())
                        .send()
                        .await
                        .map_err(|e| AwsError::from_sdk("DescribeSnapshots", e))
                },
            )
            .await?;
        out.extend(page.snapshots().iter().cloned());
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return Ok(out),
        }
    }
}

/// One snapshot by id (`None` if EC2 does not know it).
pub async fn describe_one(
    clients: &Clients,
    snapshot_id: &str,
    retry: &RetryPolicy,
) -> Result<Option<Snapshot>, AwsError> {
    let r = retry
        .run(&format!("DescribeSnapshots {snapshot_id}"), || async {
            clients
                .ec2
                .describe_snapshots()
                .snapshot_ids(snapshot_id)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("DescribeSnapshots", e))
        })
        .await;
    match r {
        Ok(out) => Ok(out.snapshots().first().cloned()),
        Err(e) if e.has_code("InvalidSnapshot.NotFound") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Delete `snapshot_id`; a snapshot that is already gone counts as deleted.
pub async fn delete(
    clients: &Clients,
    snapshot_id: &str,
    retry: &RetryPolicy,
) -> Result<(), AwsError> {
    let r = retry
        .run(&format!("DeleteSnapshot {snapshot_id}"), || async {
            clients
                .ec2
                .delete_snapshot()
                .snapshot_id(snapshot_id)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("DeleteSnapshot", e))
        })
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.has_code("InvalidSnapshot.NotFound") => Ok(()),
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
        .run(&format!("CreateTags {resource_id}"), || async {
            clients
                .ec2
                .create_tags()
                .resources(resource_id)
                .set_tags(Some(tags.clone()))
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("CreateTags", e))
        })
        .await?;
    Ok(())
}

/// The value of tag `key` on `snapshot`.
pub fn tag<'a>(snapshot: &'a Snapshot, key: &str) -> Option<&'a str> {
    snapshot
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}
