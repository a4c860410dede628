//! Copy an AMI to other regions, concurrently, and wait until every copy is available.
//! A copy that already exists (found by its source tag) is reused; each CopyImage
//! carries a ClientToken derived from the source image and region, so even a retry
//! after a lost answer makes no second copy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use futures_util::future::join_all;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::protect::{Completion, Protect};
use super::waiter::CopyWaiter;
use super::{AmiError, permanent, wait_available};
use crate::aws::{Ami, AwsError, Clients, RetryPolicy, ec2, tags};

/// At most this many copies run into one destination region at once (AWS allows ~5).
pub const COPIES_PER_REGION: usize = 5;

/// Limits concurrent copies per destination region; share one across many images.
#[derive(Debug, Default, Clone)]
pub struct CopyLimiter {
    per_region: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl CopyLimiter {
    fn region(&self, region: &str) -> Arc<Semaphore> {
        self.per_region
            .lock()
            .expect("limiter lock")
            .entry(region.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(COPIES_PER_REGION)))
            .clone()
    }
}

/// Told `(region, image_id)` as soon as a CopyImage answers, so a journal can record
/// the copy before anything else can go wrong.
pub type OnCreated = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// How to copy.
#[derive(Clone)]
pub struct CopyOptions {
    /// Destination regions (the source region is skipped).
    pub regions: Vec<String>,
    /// Regions whose failure is only a warning.
    pub best_effort: Vec<String>,
    /// How long to wait for each copy to become available.
    pub wait: Duration,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Per-destination concurrency.
    pub limiter: CopyLimiter,
    /// Called with each new copy.
    pub on_created: Option<OnCreated>,
    /// Makes this run's ClientTokens (see [`copy_token`]).
    pub token_salt: String,
    /// Our images in each destination region, looked up beforehand for many images at
    /// once (see [`inventory`]); a region missing here is looked up.
    pub known: Option<Arc<Inventory>>,
    /// A time-based copy (SnapshotCopyCompletionDurationMinutes).
    pub completion: Option<Completion>,
    /// Deregistration protection for each copy.
    pub protect: Option<Protect>,
    /// Waits for the copies, one poll per region for all of them; share one across
    /// many images.
    pub waiter: CopyWaiter,
}

/// Our images by region, looked up beforehand for many images at once.
pub type Inventory = HashMap<String, Vec<Ami>>;

impl std::fmt::Debug for CopyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyOptions")
            .field("regions", &self.regions)
            .field("best_effort", &self.best_effort)
            .field("wait", &self.wait)
            .field("retry", &self.retry)
            .field("on_created", &self.on_created.is_some())
            .field("completion", &self.completion)
            .field("protect", &self.protect)
            .finish()
    }
}

/// One destination's result.
#[derive(Debug, Clone, Serialize)]
pub struct CopyOutcome {
    /// Destination region.
    pub region: String,
    /// The copy, if there is one.
    pub image_id: Option<String>,
    /// True when the copy already existed.
    pub reused: bool,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// A failure here is only a warning.
    pub best_effort: bool,
}

/// The ClientToken of the copy of `image_id` into `region` in one run (`salt`): every
/// retry of that CopyImage carries it, so a retried call whose answer was lost makes no
/// second copy. Across runs the lookup by name does that job; a token that never
/// changed would make AWS answer a deregistered copy's id forever.
pub fn copy_token(image_id: &str, region: &str, salt: &str) -> String {
    let d = Sha256::digest(format!("ec2ami-copy:{salt}:{image_id}:{region}").as_bytes());
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Copy `image_id` from `home`'s region to every region of `opts`, wait until each
/// copy is available, and report each region (a region's failure is in its outcome:
/// see [`check_outcomes`]). Fails only when the source image cannot be used.
pub async fn copy_to_regions(
    home: &Clients,
    image_id: &str,
    opts: &CopyOptions,
) -> Result<Vec<CopyOutcome>, AmiError> {
    let source = ec2::image(home, image_id, &opts.retry)
        .await?
        .ok_or_else(|| AmiError::Invalid(format!("{image_id} not found in {}", home.region())))?;
    // A copy of a pending image fails: wait for the source first (a registration
    // has usually waited already: the lookup above shows it available).
    if source.state != "available" {
        wait_available(home, image_id, opts.wait, &opts.retry).await?;
    }
    let copy_tags = copy_tags(&source, home.region());
    let job = CopyJob {
        home,
        image_id,
        name: &source.name,
        description: source.description.as_deref(),
        tags: &copy_tags,
        opts,
    };
    let targets = opts.regions.iter().filter(|r| r.as_str() != home.region());
    Ok(join_all(targets.map(|r| job.one(r))).await)
}

/// The tags of a copy of `source` (from `region`): the source's own, but its lineage
/// tags (a copy's snapshot is its own, in its mappings), plus ownership and the source
/// image and region.
fn copy_tags(source: &Ami, region: &str) -> Vec<Tag> {
    let lineage = [
        tags::SOURCE_IMAGE,
        tags::SOURCE_REGION,
        tags::SOURCE_SNAPSHOT,
    ];
    let mut out: Vec<Tag> = source
        .tags
        .iter()
        .filter(|(k, _)| !lineage.contains(&k.as_str()))
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    if !source.tags.contains_key(tags::OWNERSHIP) {
        out.push(
            Tag::builder()
                .key(tags::OWNERSHIP)
                .value(tags::OWNERSHIP_VALUE)
                .build(),
        );
    }
    out.push(
        Tag::builder()
            .key(tags::SOURCE_IMAGE)
            .value(&source.id)
            .build(),
    );
    out.push(
        Tag::builder()
            .key(tags::SOURCE_REGION)
            .value(region)
            .build(),
    );
    out
}

/// Fail if a region that is not best effort failed (naming each); warn about the
/// best-effort ones.
pub fn check_outcomes(image_id: &str, outcomes: &[CopyOutcome]) -> Result<(), AmiError> {
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            let e = o.error.as_ref()?;
            if o.best_effort {
                tracing::warn!("copy to best-effort region {} failed: {e}", o.region);
                None
            } else {
                Some(format!("copy of {image_id} to {} failed: {e}", o.region))
            }
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(AmiError::Regions(failed))
    }
}

struct CopyJob<'a> {
    home: &'a Clients,
    image_id: &'a str,
    name: &'a str,
    description: Option<&'a str>,
    tags: &'a [Tag],
    opts: &'a CopyOptions,
}

impl CopyJob<'_> {
    async fn one(&self, region: &str) -> CopyOutcome {
        let best_effort = self.opts.best_effort.iter().any(|r| r == region);
        match self.copy(region).await {
            Ok((id, reused)) => CopyOutcome {
                region: region.to_string(),
                image_id: Some(id),
                reused,
                error: None,
                best_effort,
            },
            Err((id, e)) => CopyOutcome {
                region: region.to_string(),
                image_id: id,
                reused: false,
                error: Some(e.to_string()),
                best_effort,
            },
        }
    }

    async fn copy(&self, region: &str) -> Result<(String, bool), (Option<String>, AmiError)> {
        let retry = &self.opts.retry;
        let dest = self.home.in_region(region);
        // A copy has the source's name, and names are unique per region: one lookup
        // finds our copy, or an image that holds the name (a clear error, not a second
        // CopyImage that AWS would refuse).
        let known = self.opts.known.as_ref().and_then(|k| k.get(region));
        let existing = match known {
            Some(images) => images.iter().find(|i| i.name == self.name).cloned(),
            None => ec2::image_named(&dest, self.name, retry)
                .await
                .map_err(|e| (None, e.into()))?,
        };
        let (id, reused) = match &existing {
            Some(img) if img.tag(tags::SOURCE_IMAGE) == Some(self.image_id) => {
                (img.id.clone(), true)
            }
            Some(img) => {
                let id = img.id.clone();
                let from = img
                    .tag(tags::SOURCE_IMAGE)
                    .map(|s| format!("is a copy of {s}"))
                    .unwrap_or_else(|| "is not a copy made by ec2ami".into());
                return Err((
                    None,
                    AmiError::Invalid(format!(
                        "{id} in {region} is already named `{}` and {from}, not of {}: \
                         deregister it or choose another name",
                        self.name, self.image_id
                    )),
                ));
            }
            None => {
                let slot = self.opts.limiter.region(region);
                let _permit = slot.acquire().await.expect("never closed");
                match self.start(&dest).await {
                    Ok(id) => {
                        if let Some(f) = &self.opts.on_created {
                            f(region, &id);
                        }
                        tracing::info!("copying {} to {region}: {id}", self.image_id);
                        (id, false)
                    }
                    // Another publisher copied it meanwhile: that copy is ours to use.
                    Err(e) if e.has_code("InvalidAMIName.Duplicate") => {
                        match ec2::image_named(&dest, self.name, retry)
                            .await
                            .map_err(|e| (None, e.into()))?
                        {
                            Some(img) if img.tag(tags::SOURCE_IMAGE) == Some(self.image_id) => {
                                tracing::info!(
                                    "{} in {region} was copied from {} meanwhile (another \
                                     publisher): used",
                                    img.id,
                                    self.image_id
                                );
                                (img.id, true)
                            }
                            _ => return Err((None, e.into())),
                        }
                    }
                    Err(e) => return Err((None, e.into())),
                }
            }
        };
        self.opts
            .waiter
            .wait(&dest, &id, self.opts.wait, retry)
            .await
            .map_err(|e| (Some(id.clone()), e))?;
        if !reused {
            tracing::info!("copy of {} to {region} is available: {id}", self.image_id);
        }
        if let Some(p) = self.opts.protect {
            let now = crate::state::now_epoch();
            let needed = match &existing {
                Some(img) => p.missing_on(img, now),
                None => true,
            };
            if needed {
                p.apply(&dest, &id, retry)
                    .await
                    .map_err(|e| (Some(id.clone()), e.into()))?;
            }
        }
        Ok((id, reused))
    }

    async fn start(&self, dest: &Clients) -> Result<String, AwsError> {
        let token = copy_token(self.image_id, dest.region(), &self.opts.token_salt);
        let minutes = self.opts.completion.map(|c| i64::from(c.minutes));
        let out = self
            .opts
            .retry
            .send(&dest.call("CopyImage").on(self.image_id), || {
                dest.ec2
                    .copy_image()
                    .set_snapshot_copy_completion_duration_minutes(minutes)
                    .source_image_id(self.image_id)
                    .source_region(self.home.region())
                    .name(self.name)
                    .set_description(self.description.map(str::to_string))
                    .client_token(&token)
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ResourceType::Image)
                            .set_tags(Some(self.tags.to_vec()))
                            .build(),
                    )
                    .send()
            })
            .await?;
        out.image_id()
            .map(str::to_string)
            .ok_or_else(|| permanent("CopyImage", "answered no image id".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_tokens_are_stable_and_distinct() {
        let a = copy_token("ami-1", "eu-west-1", "run-1");
        assert_eq!(a, copy_token("ami-1", "eu-west-1", "run-1"));
        assert_ne!(a, copy_token("ami-1", "eu-west-1", "run-2"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, copy_token("ami-1", "eu-west-2", "run-1"));
        assert_ne!(a, copy_token("ami-2", "eu-west-1", "run-1"));
    }
}
