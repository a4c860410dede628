//! `ec2ami restore`: bring deleted AMIs and their snapshots back from the Recycle Bin,
//! either named (each AMI with the snapshots its mappings name) or exactly what the
//! last prune deleted (its journalled report).

use futures_util::future::join_all;
use serde::Serialize;

use crate::aws::lifecycle::images_by_id;
use crate::aws::{Clients, RetryPolicy, rbin};
use crate::state::lifecycle::Deleted;

/// What became of one thing to restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restored {
    /// Region.
    pub region: String,
    /// `image` or `snapshot`.
    pub kind: String,
    /// AMI or snapshot id.
    pub id: String,
    /// `restored`, `not-in-bin` (gone for good, never binned, or already restored) or
    /// `failed`.
    pub status: &'static str,
    /// The AWS error, or what the bin said.
    pub detail: String,
}

impl Restored {
    /// One line of the report.
    pub fn line(&self) -> String {
        format!(
            "{:<10} {:<15} {:<8} {:<22} {}",
            self.status, self.region, self.kind, self.id, self.detail
        )
    }
}

/// Restore exactly `items` (a prune's deletions): per region, the images, then the
/// snapshots, each looked for in the bin first.
pub async fn restore_items(
    home: &Clients,
    items: &[Deleted],
    retry: &RetryPolicy,
) -> Vec<Restored> {
    let mut regions: Vec<&str> = items.iter().map(|d| d.region.as_str()).collect();
    regions.sort();
    regions.dedup();
    let work = regions.into_iter().map(|region| async move {
        let c = home.in_region(region);
        let ids = |kind: &str| -> Vec<String> {
            items
                .iter()
                .filter(|d| d.region == region && d.kind == kind)
                .map(|d| d.id.clone())
                .collect()
        };
        let mut out = restore_images(&c, &ids("image"), retry).await;
        out.extend(restore_snapshots(&c, &ids("snapshot"), retry).await);
        out
    });
    join_all(work).await.into_iter().flatten().collect()
}

/// Restore the AMIs `ids`, looked for in each of `regions`, each with the snapshots
/// its block device mappings name.
pub async fn restore_named(
    home: &Clients,
    ids: &[String],
    regions: &[String],
    retry: &RetryPolicy,
) -> Vec<Restored> {
    let work = regions.iter().map(|region| async move {
        let c = home.in_region(region);
        let binned = match rbin::images_in_bin(&c, ids, retry).await {
            Ok(b) => b,
            Err(e) => {
                return vec![Restored {
                    region: region.clone(),
                    kind: "image".into(),
                    id: ids.join(","),
                    status: "failed",
                    detail: format!("could not look in the Recycle Bin: {e}"),
                }];
            }
        };
        let here: Vec<String> = binned.into_iter().map(|b| b.id).collect();
        if here.is_empty() {
            return Vec::new();
        }
        let mut out = restore_images(&c, &here, retry).await;
        let restored: Vec<String> = out
            .iter()
            .filter(|r| r.status == "restored")
            .map(|r| r.id.clone())
            .collect();
        let snapshots: Vec<String> = match images_by_id(&c, &restored, retry).await {
            Ok(amis) => amis.iter().flat_map(|a| a.snapshots()).collect(),
            Err(e) => {
                out.push(Restored {
                    region: region.clone(),
                    kind: "snapshot".into(),
                    id: restored.join(","),
                    status: "failed",
                    detail: format!("could not read the restored images' snapshots: {e}"),
                });
                Vec::new()
            }
        };
        if !snapshots.is_empty() {
            // Only those in the bin: a snapshot that was never deleted needs nothing.
            match rbin::snapshots_in_bin(&c, &snapshots, retry).await {
                Ok(b) => {
                    let ids: Vec<String> = b.into_iter().map(|s| s.id).collect();
                    out.extend(restore_snapshots(&c, &ids, retry).await);
                }
                Err(e) => out.push(Restored {
                    region: region.clone(),
                    kind: "snapshot".into(),
                    id: snapshots.join(","),
                    status: "failed",
                    detail: format!("could not look in the Recycle Bin: {e}"),
                }),
            }
        }
        out
    });
    join_all(work).await.into_iter().flatten().collect()
}

async fn restore_images(c: &Clients, ids: &[String], retry: &RetryPolicy) -> Vec<Restored> {
    if ids.is_empty() {
        return Vec::new();
    }
    let binned = rbin::images_in_bin(c, ids, retry).await;
    let mut out = Vec::new();
    for id in ids {
        let r = |status, detail: String| Restored {
            region: c.region().to_string(),
            kind: "image".into(),
            id: id.clone(),
            status,
            detail,
        };
        match &binned {
            Err(e) => out.push(r(
                "failed",
                format!("could not look in the Recycle Bin: {e}"),
            )),
            Ok(b) if !b.iter().any(|x| &x.id == id) => out.push(r(
                "not-in-bin",
                "not in the Recycle Bin (never kept, expired, or restored already)".into(),
            )),
            Ok(b) => {
                let name = b.iter().find(|x| &x.id == id).map(|x| x.name.clone());
                match rbin::restore_image(c, id, retry).await {
                    Ok(()) => out.push(r("restored", format!("`{}`", name.unwrap_or_default()))),
                    Err(e) => out.push(r("failed", e.to_string())),
                }
            }
        }
    }
    out
}

async fn restore_snapshots(c: &Clients, ids: &[String], retry: &RetryPolicy) -> Vec<Restored> {
    if ids.is_empty() {
        return Vec::new();
    }
    let binned = rbin::snapshots_in_bin(c, ids, retry).await;
    let mut out = Vec::new();
    for id in ids {
        let r = |status, detail: String| Restored {
            region: c.region().to_string(),
            kind: "snapshot".into(),
            id: id.clone(),
            status,
            detail,
        };
        match &binned {
            Err(e) => out.push(r(
                "failed",
                format!("could not look in the Recycle Bin: {e}"),
            )),
            Ok(b) if !b.iter().any(|x| &x.id == id) => out.push(r(
                "not-in-bin",
                "not in the Recycle Bin (never kept, expired, or restored already)".into(),
            )),
            Ok(_) => match rbin::restore_snapshot(c, id, retry).await {
                Ok(()) => out.push(r("restored", String::new())),
                Err(e) => out.push(r("failed", e.to_string())),
            },
        }
    }
    out
}
