//! Disabling and enabling AMIs (`ec2ami disable`, `ec2ami enable`, and prune's
//! `disable_after` stage). DisableImage makes an image unlaunchable and private; AWS does
//! not give its sharing back on EnableImage, so ec2ami records the launch permissions
//! right before it disables an image (the state database) and re-grants them, with
//! those a publish journalled, when it enables it. Disabling also tags the image with
//! when it happened ([`tags::DISABLED_AT`]), which a staged prune counts from.

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use futures_util::future::join_all;
use serde::Serialize;

use super::AmiError;
use super::share::{ShareSpec, Target, launch_permissions};
use crate::aws::ec2::{self, ImageQuery};
use crate::aws::lifecycle;
use crate::aws::{Ami, AwsError, Clients, RetryPolicy, tags};
use crate::state::StateDb;
use crate::state::lifecycle::{record_sharing, recorded_sharing};

/// One image's part in a disable or enable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retirement {
    /// Region.
    pub region: String,
    /// AMI id.
    pub image_id: String,
    /// Name.
    pub name: String,
    /// `disable`, `enable`, or `unchanged` (already so).
    pub action: &'static str,
    /// Disable: the launch permissions it has (and loses); enable: those re-granted.
    pub permissions: Vec<String>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

impl Retirement {
    /// One line of a plan or report.
    pub fn line(&self, done: bool) -> String {
        let perms = if self.permissions.is_empty() {
            "no launch permissions".to_string()
        } else {
            self.permissions.join(", ")
        };
        let what = match (self.action, done, &self.error) {
            (_, _, Some(e)) => format!("FAILED: {e}"),
            ("unchanged", _, None) => "already so".to_string(),
            ("disable", false, None) => format!("would be disabled (loses: {perms})"),
            ("disable", true, None) => format!("disabled (lost: {perms}; recorded)"),
            ("enable", false, None) => format!("would be enabled (re-shared: {perms})"),
            (_, true, None) => format!("enabled (re-shared: {perms})"),
            (a, _, None) => a.to_string(),
        };
        format!(
            "{:<15} {:<22} `{}` {what}",
            self.region, self.image_id, self.name
        )
    }
}

/// The AMIs `ids` (in `home`'s region) and their copies (by ec2ami's source tag) in
/// `regions`, disabled ones included.
pub async fn find(
    home: &Clients,
    ids: &[String],
    regions: &[String],
    retry: &RetryPolicy,
) -> Result<Vec<Ami>, AmiError> {
    let own = lifecycle::images_by_id(home, ids, retry).await?;
    if let Some(missing) = ids.iter().find(|id| !own.iter().any(|a| &a.id == *id)) {
        return Err(AmiError::Invalid(format!(
            "{missing} is not an AMI of this account in {}",
            home.region()
        )));
    }
    let lookups = regions
        .iter()
        .filter(|r| r.as_str() != home.region())
        .map(|region| async move {
            let clients = home.in_region(region);
            let q = ImageQuery::everything(vec![ec2::filter_any(
                &format!("tag:{}", tags::SOURCE_IMAGE),
                ids,
            )]);
            ec2::images(&clients, &q, retry).await
        });
    let mut out = own;
    for r in join_all(lookups).await {
        out.extend(r?);
    }
    Ok(out)
}

/// What disabling `amis` would do: each image not yet disabled, with the launch
/// permissions it has now (read here, one DescribeImageAttribute each).
pub async fn plan_disable(
    home: &Clients,
    amis: &[Ami],
    retry: &RetryPolicy,
) -> Result<Vec<Retirement>, AwsError> {
    let reads = amis.iter().map(|a| async move {
        if a.state == "disabled" {
            return Ok(item(a, "unchanged", Vec::new()));
        }
        let clients = home.in_region(&a.region);
        let perms = launch_permissions(&clients, &a.id, retry).await?;
        Ok(item(a, "disable", with_public(a, perms)))
    });
    join_all(reads).await.into_iter().collect()
}

fn with_public(a: &Ami, mut perms: Vec<String>) -> Vec<String> {
    if a.public && !perms.iter().any(|p| p == "public") {
        perms.insert(0, "public".into());
    }
    perms
}

fn item(a: &Ami, action: &'static str, permissions: Vec<String>) -> Retirement {
    Retirement {
        region: a.region.clone(),
        image_id: a.id.clone(),
        name: a.name.clone(),
        action,
        permissions,
        error: None,
    }
}

/// Disable one image: record its launch permissions (when a database is given), tag it
/// with the time, then DisableImage.
pub async fn disable_one(
    clients: &Clients,
    image_id: &str,
    permissions: &[String],
    db: Option<&StateDb>,
    retry: &RetryPolicy,
) -> Result<(), AmiError> {
    if let Some(db) = db {
        record_sharing(db, clients.region(), image_id, permissions)
            .map_err(|e| AmiError::Invalid(e.to_string()))?;
    }
    let now = DateTime::from_secs(crate::state::now_epoch())
        .fmt(Format::DateTime)
        .unwrap_or_default();
    ec2::create_tags(clients, image_id, &[(tags::DISABLED_AT, &now)], retry).await?;
    lifecycle::disable_image(clients, image_id, retry).await?;
    tracing::info!("disabled {image_id} in {}", clients.region());
    Ok(())
}

/// Carry out a disable plan, every image at once.
pub async fn disable(
    home: &Clients,
    plan: Vec<Retirement>,
    db: Option<&StateDb>,
    retry: &RetryPolicy,
) -> Vec<Retirement> {
    let work = plan.into_iter().map(|mut r| async move {
        if r.action == "disable" {
            let clients = home.in_region(&r.region);
            if let Err(e) = disable_one(&clients, &r.image_id, &r.permissions, db, retry).await {
                r.error = Some(e.to_string());
            }
        }
        r
    });
    join_all(work).await
}

/// What enabling `amis` would do: each disabled image is enabled, and every image gets
/// the launch permissions ec2ami recorded for it that it lacks (a disabled image has
/// none).
pub async fn plan_enable(
    home: &Clients,
    amis: &[Ami],
    db: Option<&StateDb>,
    retry: &RetryPolicy,
) -> Result<Vec<Retirement>, AmiError> {
    let mut out = Vec::new();
    for a in amis {
        let recorded = match db {
            Some(db) => recorded_sharing(db, &a.region, &a.id)
                .map_err(|e| AmiError::Invalid(e.to_string()))?,
            None => Vec::new(),
        };
        if a.state == "disabled" {
            out.push(item(a, "enable", recorded));
            continue;
        }
        let clients = home.in_region(&a.region);
        let have = with_public(a, launch_permissions(&clients, &a.id, retry).await?);
        let missing: Vec<String> = recorded.into_iter().filter(|p| !have.contains(p)).collect();
        if missing.is_empty() {
            out.push(item(a, "unchanged", Vec::new()));
        } else {
            out.push(item(a, "enable", missing));
        }
    }
    Ok(out)
}

/// The share spec of permission words (`public`, `account:ID`, `org:ARN`, `ou:ARN`).
pub fn spec_of(words: &[String]) -> ShareSpec {
    let mut s = ShareSpec::default();
    for w in words {
        match w.split_once(':') {
            None if w == "public" => s.public = true,
            Some(("account", a)) => s.accounts.push(a.to_string()),
            Some(("org", a)) => s.orgs.push(a.to_string()),
            Some(("ou", a)) => s.ous.push(a.to_string()),
            _ => tracing::warn!("ignoring the recorded permission `{w}`"),
        }
    }
    s
}

/// Carry out an enable plan: EnableImage where disabled, then re-grant the permissions.
pub async fn enable(home: &Clients, plan: Vec<Retirement>, retry: &RetryPolicy) -> Vec<Retirement> {
    let work = plan.into_iter().map(|mut r| async move {
        if r.action != "enable" {
            return r;
        }
        let clients = home.in_region(&r.region);
        let result = async {
            let img =
                lifecycle::images_by_id(&clients, std::slice::from_ref(&r.image_id), retry).await?;
            if img.first().is_some_and(|i| i.state == "disabled") {
                lifecycle::enable_image(&clients, &r.image_id, retry).await?;
                tracing::info!("enabled {} in {}", r.image_id, r.region);
            }
            let delete = aws_sdk_ec2::types::Tag::builder()
                .key(tags::DISABLED_AT)
                .build();
            retry
                .send(&clients.call("DeleteTags").on(&r.image_id), || {
                    clients
                        .ec2
                        .delete_tags()
                        .resources(&r.image_id)
                        .tags(delete.clone())
                        .send()
                })
                .await?;
            Ok::<(), AmiError>(())
        }
        .await;
        if let Err(e) = result {
            r.error = Some(e.to_string());
            return r;
        }
        if !r.permissions.is_empty() {
            let spec = spec_of(&r.permissions);
            let target = Target {
                region: r.region.clone(),
                image_id: r.image_id.clone(),
            };
            if let Err(e) = super::share(home, &[target], &spec, retry).await {
                r.error = Some(e.to_string());
            }
        }
        r
    });
    join_all(work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_words_make_a_share_spec() {
        let s = spec_of(&[
            "public".into(),
            "account:123456789012".into(),
            "org:arn:aws:organizations::1:organization/o-1".into(),
            "ou:arn:aws:organizations::1:ou/o-1/ou-1".into(),
        ]);
        assert!(s.public);
        assert_eq!(s.accounts, ["123456789012"]);
        assert_eq!(s.orgs.len(), 1);
        assert_eq!(s.ous.len(), 1);
        assert_eq!(s.words().len(), 4);
    }
}
