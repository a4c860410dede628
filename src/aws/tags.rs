//! Every `ec2ami:*` tag key, in one place. Tags make what ec2ami creates findable and
//! self-describing: clean-up finds its own resources by the ownership tag, a rerun finds
//! what an interrupted one made, and `bench`, `prune` and `params put` know what build an
//! AMI is without its release file.

use std::collections::BTreeMap;

/// On every resource ec2ami creates (snapshots, AMIs, copies, instances, parameters).
pub const OWNERSHIP: &str = "ec2ami:managed-by";
/// The value of [`OWNERSHIP`].
pub const OWNERSHIP_VALUE: &str = "ec2ami";

/// On a snapshot: the size in bytes of the raw image it was made from, so a download
/// gives back exactly the image, not the whole GiB-rounded volume.
pub const IMAGE_SIZE: &str = "ec2ami:image-size";
/// On a snapshot a publish uploads: the AMI name it is for, so a rerun that lost its
/// journal still finds it.
pub const AMI_NAME: &str = "ec2ami:ami-name";
/// On a snapshot a publish uploaded completely: a snapshot with [`AMI_NAME`] and without
/// this one is the remains of an interrupted upload.
pub const UPLOADED: &str = "ec2ami:uploaded";
/// On a snapshot a publish uploaded and on the AMI registered from it: what the image
/// file was (size, modification time, the snapshot's aggregate checksum), so a rerun
/// and `validate` notice that the file changed since.
pub const IMAGE_IDENTITY: &str = "ec2ami:image-identity";

/// On a snapshot a publish starts: the id of the state database of that publish
/// ([`StateDb::id`](crate::state::StateDb::id)), so a rerun with the same database
/// knows a pending snapshot its journal never heard of (a run killed between
/// StartSnapshot's answer and its journal entry) for its own, and one with another id
/// for another publisher's upload in progress.
pub const STATE_ID: &str = "ec2ami:state-id";

/// On a snapshot uploaded incrementally: its parent snapshot (StartSnapshot's
/// ParentSnapshotId; EC2 does not report it), so prune knows the lineage.
pub const PARENT_SNAPSHOT: &str = "ec2ami:parent-snapshot";

/// On an AMI: the snapshot it was registered from.
pub const SOURCE_SNAPSHOT: &str = "ec2ami:source-snapshot";
/// On a copy: the AMI id it was copied from.
pub const SOURCE_IMAGE: &str = "ec2ami:source-image";
/// On a copy: the region it was copied from.
pub const SOURCE_REGION: &str = "ec2ami:source-region";

/// On an AMI ec2ami disabled (`disable`, or a staged `prune`): when (RFC 3339), so a
/// later prune knows how long it has been disabled (EC2 does not say).
pub const DISABLED_AT: &str = "ec2ami:disabled-at";

/// On a benchmark instance: the RunInstances ClientToken, so an instance whose launch
/// answer was lost is still found (and terminated).
pub const BENCH_TOKEN: &str = "ec2ami:bench-token";

/// The prefix of the build-variable tags a publish puts on every AMI.
pub const VAR_PREFIX: &str = "ec2ami:";
/// The build variables recorded as tags (`ec2ami:version`...), when the release defines
/// them.
pub const TAGGED_VARS: &[&str] = &["version", "branch", "flavour", "fs", "arch", "git"];
/// Build variable: OS version, e.g. `14.1`.
pub const VERSION: &str = "ec2ami:version";
/// Build variable: branch, e.g. `STABLE` or `14-STABLE`.
pub const BRANCH: &str = "ec2ami:branch";
/// Build variable: flavour, e.g. `base`, `cloud-init`, `small`.
pub const FLAVOUR: &str = "ec2ami:flavour";
/// Build variable: filesystem, `ufs` or `zfs`.
pub const FS: &str = "ec2ami:fs";
/// Build variable: architecture, `x86_64`/`amd64` or `arm64`.
pub const ARCH: &str = "ec2ami:arch";
/// On every AMI a publish makes: the build date, `YYYYMMDD`.
pub const BUILD_DATE: &str = "ec2ami:build-date";

/// Tags as a map, from any SDK tag list.
pub fn to_map<'a>(
    tags: impl IntoIterator<Item = (Option<&'a str>, Option<&'a str>)>,
) -> BTreeMap<String, String> {
    tags.into_iter()
        .filter_map(|(k, v)| Some((k?.to_string(), v.unwrap_or_default().to_string())))
        .collect()
}

/// True when `tags` carry ec2ami's ownership tag.
pub fn is_managed(tags: &BTreeMap<String, String>) -> bool {
    tags.get(OWNERSHIP).map(String::as_str) == Some(OWNERSHIP_VALUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_variable_tags_are_the_prefix_and_the_variable() {
        for (tag, var) in [
            (VERSION, "version"),
            (BRANCH, "branch"),
            (FLAVOUR, "flavour"),
            (FS, "fs"),
            (ARCH, "arch"),
        ] {
            assert!(TAGGED_VARS.contains(&var));
            assert_eq!(tag, format!("{VAR_PREFIX}{var}"));
        }
        assert_eq!(BUILD_DATE, format!("{VAR_PREFIX}build-date"));
    }

    #[test]
    fn every_key_is_ours_and_distinct() {
        let all = [
            OWNERSHIP,
            IMAGE_SIZE,
            AMI_NAME,
            UPLOADED,
            IMAGE_IDENTITY,
            STATE_ID,
            PARENT_SNAPSHOT,
            SOURCE_SNAPSHOT,
            SOURCE_IMAGE,
            SOURCE_REGION,
            BENCH_TOKEN,
            DISABLED_AT,
            VERSION,
            BRANCH,
            FLAVOUR,
            FS,
            ARCH,
            BUILD_DATE,
        ];
        let set: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len());
        assert!(all.iter().all(|k| k.starts_with("ec2ami:")));
    }
}
