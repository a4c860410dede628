//! Share AMIs (public, accounts, organizations, OUs) in every region where they exist,
//! or revoke that; when AWS refuses, say why and what to do.

use aws_sdk_ec2::types::{
    LaunchPermission, LaunchPermissionModifications, OperationType, PermissionGroup,
    SnapshotAttributeName,
};
use futures_util::future::join_all;
use serde::Serialize;

use super::AmiError;
use crate::aws::{AwsError, Clients, RetryPolicy, ec2};

/// Who gets (or loses) launch permission.
#[derive(Debug, Clone, Default)]
pub struct ShareSpec {
    /// Everyone (group `all`).
    pub public: bool,
    /// AWS account ids.
    pub accounts: Vec<String>,
    /// Organization ARNs.
    pub orgs: Vec<String>,
    /// Organizational unit ARNs.
    pub ous: Vec<String>,
    /// Remove instead of add.
    pub revoke: bool,
}

impl ShareSpec {
    /// The launch permissions named.
    pub fn permissions(&self) -> Vec<LaunchPermission> {
        let mut p = Vec::new();
        if self.public {
            p.push(
                LaunchPermission::builder()
                    .group(PermissionGroup::All)
                    .build(),
            );
        }
        p.extend(
            self.accounts
                .iter()
                .map(|a| LaunchPermission::builder().user_id(a).build()),
        );
        p.extend(
            self.orgs
                .iter()
                .map(|a| LaunchPermission::builder().organization_arn(a).build()),
        );
        p.extend(self.ous.iter().map(|a| {
            LaunchPermission::builder()
                .organizational_unit_arn(a)
                .build()
        }));
        p
    }

    /// The permissions named, as words for plans, journals and reports: `public`,
    /// `account:ID`, `org:ARN`, `ou:ARN`.
    pub fn words(&self) -> Vec<String> {
        self.permissions()
            .iter()
            .filter_map(permission_word)
            .collect()
    }

    /// Check the ids and ARNs before any request.
    pub fn validate(&self) -> Result<(), AmiError> {
        if self.permissions().is_empty() {
            return Err(AmiError::Invalid(
                "nothing to share: give --public, --account, --org or --ou".into(),
            ));
        }
        if let Some(a) = self
            .accounts
            .iter()
            .find(|a| a.len() != 12 || !a.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(AmiError::Invalid(format!(
                "`{a}` is not an AWS account id (12 digits)"
            )));
        }
        if let Some(a) = self
            .orgs
            .iter()
            .chain(&self.ous)
            .find(|a| !a.starts_with("arn:aws"))
        {
            return Err(AmiError::Invalid(format!("`{a}` is not an ARN")));
        }
        Ok(())
    }
}

/// One regional image's result.
#[derive(Debug, Clone, Serialize)]
pub struct Shared {
    /// Region.
    pub region: String,
    /// AMI.
    pub image_id: String,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// A launch permission as a word: `public`, `account:ID`, `org:ARN` or `ou:ARN`.
pub fn permission_word(p: &LaunchPermission) -> Option<String> {
    if p.group() == Some(&PermissionGroup::All) {
        Some("public".to_string())
    } else if let Some(a) = p.user_id() {
        Some(format!("account:{a}"))
    } else if let Some(o) = p.organization_arn() {
        Some(format!("org:{o}"))
    } else {
        p.organizational_unit_arn().map(|o| format!("ou:{o}"))
    }
}

/// An AMI to share: its region and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Region.
    pub region: String,
    /// AMI id there.
    pub image_id: String,
}

/// Apply `spec` to every image in `images` (each in its region), concurrently. Fails
/// after all are done if any failed, naming each.
pub async fn share(
    home: &Clients,
    images: &[Target],
    spec: &ShareSpec,
    retry: &RetryPolicy,
) -> Result<Vec<Shared>, AmiError> {
    spec.validate()?;
    let perms = spec.permissions();
    let mods = if spec.revoke {
        LaunchPermissionModifications::builder()
            .set_remove(Some(perms))
            .build()
    } else {
        LaunchPermissionModifications::builder()
            .set_add(Some(perms))
            .build()
    };
    let results = join_all(images.iter().map(|img| {
        let mods = mods.clone();
        async move {
            let clients = home.in_region(&img.region);
            let r = retry
                .send(
                    &clients.call("ModifyImageAttribute").on(&img.image_id),
                    || {
                        clients
                            .ec2
                            .modify_image_attribute()
                            .image_id(&img.image_id)
                            .launch_permission(mods.clone())
                            .send()
                    },
                )
                .await;
            let error = match r {
                Ok(_) => None,
                Err(e) => Some(explain(&clients, spec, e, retry).await),
            };
            Shared {
                region: img.region.clone(),
                image_id: img.image_id.clone(),
                error,
            }
        }
    }))
    .await;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|s| {
            s.error
                .as_ref()
                .map(|e| format!("{} in {}: {e}", s.image_id, s.region))
        })
        .collect();
    if failed.is_empty() {
        Ok(results)
    } else {
        Err(AmiError::Regions(failed))
    }
}

/// Say why making an image public failed and what to do.
async fn explain(clients: &Clients, spec: &ShareSpec, e: AwsError, retry: &RetryPolicy) -> String {
    if !spec.public || spec.revoke {
        return e.to_string();
    }
    if e.has_code("ResourceLimitExceeded") {
        return format!(
            "{e} -- the account's quota of public AMIs in {} is reached (5 on new \
             accounts): make older images private or deregister them, or ask for more \
             under Service Quotas > Amazon EC2 > Public AMIs",
            clients.region()
        );
    }
    let state = retry
        .send(&clients.call("GetImageBlockPublicAccessState"), || {
            clients.ec2.get_image_block_public_access_state().send()
        })
        .await;
    match state {
        Ok(s) if s.image_block_public_access_state() == Some("block-new-sharing") => format!(
            "{e} -- block public access for AMIs is on in {r}: turn it off with \
             `aws ec2 disable-image-block-public-access --region {r}` (it takes up to \
             10 minutes), then run this again",
            r = clients.region()
        ),
        _ => e.to_string(),
    }
}

/// The launch permissions of `image_id` as words: `public`, `account:ID`, `org:ARN`,
/// `ou:ARN`.
pub async fn launch_permissions(
    clients: &Clients,
    image_id: &str,
    retry: &RetryPolicy,
) -> Result<Vec<String>, AwsError> {
    let out = retry
        .send(&clients.call("DescribeImageAttribute").on(image_id), || {
            clients
                .ec2
                .describe_image_attribute()
                .image_id(image_id)
                .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
                .send()
        })
        .await?;
    Ok(out
        .launch_permissions()
        .iter()
        .filter_map(permission_word)
        .collect())
}

/// True when anyone may create a volume from every snapshot behind `ami`.
pub async fn snapshots_public(
    clients: &Clients,
    ami: &crate::aws::Ami,
    retry: &RetryPolicy,
) -> Result<bool, AwsError> {
    for s in ami.snapshots() {
        let out = retry
            .send(&clients.call("DescribeSnapshotAttribute").on(&s), || {
                clients
                    .ec2
                    .describe_snapshot_attribute()
                    .snapshot_id(&s)
                    .attribute(SnapshotAttributeName::CreateVolumePermission)
                    .send()
            })
            .await?;
        let public = out
            .create_volume_permissions()
            .iter()
            .any(|p| p.group() == Some(&PermissionGroup::All));
        if !public {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Make the snapshots behind `image_id` (in `clients`' region) public: anyone may
/// create a volume from them (bsdec2-image-upload's `--publicsnap`).
pub async fn make_snapshots_public(
    clients: &Clients,
    image_id: &str,
    retry: &RetryPolicy,
) -> Result<Vec<String>, AmiError> {
    let img = ec2::image(clients, image_id, retry).await?.ok_or_else(|| {
        AmiError::Invalid(format!("{image_id} not found in {}", clients.region()))
    })?;
    let snapshots = img.snapshots();
    for s in &snapshots {
        retry
            .send(&clients.call("ModifySnapshotAttribute").on(s), || {
                clients
                    .ec2
                    .modify_snapshot_attribute()
                    .snapshot_id(s)
                    .attribute(SnapshotAttributeName::CreateVolumePermission)
                    .operation_type(OperationType::Add)
                    .group_names("all")
                    .send()
            })
            .await?;
    }
    Ok(snapshots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked() {
        assert!(ShareSpec::default().validate().is_err());
        let s = ShareSpec {
            accounts: vec!["12345".into()],
            ..ShareSpec::default()
        };
        assert!(s.validate().is_err());
        let s = ShareSpec {
            public: true,
            accounts: vec!["123456789012".into()],
            orgs: vec!["arn:aws:organizations::123456789012:organization/o-abc".into()],
            ..ShareSpec::default()
        };
        assert!(s.validate().is_ok());
        assert_eq!(s.permissions().len(), 3);
        assert_eq!(
            s.words(),
            [
                "public",
                "account:123456789012",
                "org:arn:aws:organizations::123456789012:organization/o-abc"
            ]
        );
    }
}
