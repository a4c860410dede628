//! `parent = "auto"`: the snapshot an image's upload is made incremental against, the
//! newest completed snapshot ec2ami uploaded for another build of the same series (the
//! AMI name with its build date taken out). When no block index of it is kept here (a
//! fresh CI runner, a lost state directory), the upload builds one from the snapshot.

use std::path::Path;

use crate::aws::{AwsError, Clients, RetryPolicy, ec2, model::Snapshot, tags};
use crate::prune::series::SeriesPattern;

/// The parent `parent = "auto"` picks for an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AutoParent {
    pub id: String,
    /// The AMI name it was uploaded for.
    pub of: String,
    /// Its block index is kept in the index directory (otherwise the upload builds it
    /// from the snapshot first).
    pub indexed: bool,
}

/// The parent for an image named `name`, read from `image`, if there is one.
pub(crate) async fn auto_parent(
    clients: &Clients,
    name: &str,
    image: &Path,
    index_dir: &Path,
    retry: &RetryPolicy,
) -> Result<Option<AutoParent>, AwsError> {
    let series = SeriesPattern::default().split(name).map(|p| p.series);
    let Some(series) = series else {
        return Ok(None);
    };
    let found = ec2::snapshots(
        clients,
        vec![
            ec2::filter(&format!("tag:{}", tags::OWNERSHIP), tags::OWNERSHIP_VALUE),
            ec2::filter("tag-key", tags::AMI_NAME),
        ],
        retry,
    )
    .await?;
    // A child's volume is at least its parent's: a build that shrank below an earlier
    // one's volume is not uploaded against it. (Unreadable: the upload says why.)
    let volume_gib = crate::image::DiskImage::probe(image)
        .map(|(size, _)| crate::snapshot::volume_size_gib(size))
        .unwrap_or(u64::MAX);
    Ok(
        pick(&found, name, &series, volume_gib).map(|(id, of)| AutoParent {
            indexed: crate::snapshot::kept_index(index_dir, &id).is_some(),
            id,
            of,
        }),
    )
}

/// The newest completed, fully uploaded snapshot of `series` other than `name`'s own
/// that can be the parent of an unencrypted volume of `volume_gib` (not encrypted, not
/// larger): (snapshot id, its AMI name).
fn pick(found: &[Snapshot], name: &str, series: &str, volume_gib: u64) -> Option<(String, String)> {
    let pattern = SeriesPattern::default();
    found
        .iter()
        .filter(|s| s.completed() && s.tag(tags::UPLOADED).is_some())
        .filter(|s| !s.encrypted && u64::try_from(s.volume_size).is_ok_and(|g| g <= volume_gib))
        .filter_map(|s| Some((s, s.tag(tags::AMI_NAME)?)))
        .filter(|(_, n)| *n != name)
        .filter(|(_, n)| pattern.split(n).is_some_and(|p| p.series == series))
        .max_by_key(|(s, _)| s.started)
        .map(|(s, n)| (s.id.clone(), n.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn snap(id: &str, name: &str, started: i64, state: &str, uploaded: bool) -> Snapshot {
        let mut tags = BTreeMap::new();
        tags.insert(tags::AMI_NAME.to_string(), name.to_string());
        if uploaded {
            tags.insert(tags::UPLOADED.to_string(), "true".to_string());
        }
        Snapshot {
            region: "us-east-1".into(),
            id: id.into(),
            state: state.into(),
            state_message: None,
            progress: None,
            volume_size: 1,
            full_size: None,
            description: String::new(),
            started,
            encrypted: false,
            owner: None,
            tags,
        }
    }

    #[test]
    fn the_newest_completed_build_of_the_series_is_the_parent() {
        let name = "FreeBSD 15.0-amd64-20261209 UFS";
        let found = vec![
            snap(
                "snap-old",
                "FreeBSD 15.0-amd64-20261125 UFS",
                1,
                "completed",
                true,
            ),
            snap(
                "snap-new",
                "FreeBSD 15.0-amd64-20261202 UFS",
                2,
                "completed",
                true,
            ),
            snap(
                "snap-pending",
                "FreeBSD 15.0-amd64-20261205 UFS",
                3,
                "pending",
                true,
            ),
            snap(
                "snap-partial",
                "FreeBSD 15.0-amd64-20261206 UFS",
                4,
                "completed",
                false,
            ),
            snap(
                "snap-zfs",
                "FreeBSD 15.0-amd64-20261207 ZFS",
                5,
                "completed",
                true,
            ),
            snap("snap-self", name, 6, "completed", true),
            // Newer, but of a larger volume than this build's, or encrypted: not a parent.
            Snapshot {
                volume_size: 2,
                ..snap(
                    "snap-big",
                    "FreeBSD 15.0-amd64-20261208 UFS",
                    7,
                    "completed",
                    true,
                )
            },
            Snapshot {
                encrypted: true,
                ..snap(
                    "snap-enc",
                    "FreeBSD 15.0-amd64-20261208 UFS",
                    8,
                    "completed",
                    true,
                )
            },
        ];
        let series = SeriesPattern::default().split(name).unwrap().series;
        assert_eq!(
            pick(&found, name, &series, 1),
            Some(("snap-new".into(), "FreeBSD 15.0-amd64-20261202 UFS".into()))
        );
        // A build that grew to 2 GiB may use the 2 GiB one.
        assert_eq!(
            pick(&found, name, &series, 2).map(|(id, _)| id),
            Some("snap-big".into())
        );
        assert_eq!(pick(&found[..1], "Other-20261209", "Other-{date}", 1), None);
    }
}
