//! SSM parameters that publish AMI ids (`/myos/arm64/base/ufs/15.0/CURRENT` ->
//! `ami-...`), so users launch with `--image-id resolve:ssm:NAME`.
//!
//! Parameters are of type String with DataType `aws:ec2:image`. A parameter that holds
//! another value is never overwritten unless the caller allows it (and the change is
//! shown old -> new). Writes are paced per region and throttling backs off through the
//! retry layer; every written value is read back, because AWS checks an
//! `aws:ec2:image` value only after PutParameter has answered.

pub mod template;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ssm::types::{ParameterType, Tag};
use futures_util::future::join_all;
use serde::Serialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::aws::{AwsError, Clients, RetryPolicy};
use crate::snapshot::{OWNERSHIP_TAG, OWNERSHIP_VALUE};

/// The DataType that makes SSM check the value is an AMI id.
pub const EC2_IMAGE_DATA_TYPE: &str = "aws:ec2:image";

/// Why a parameter step failed.
#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    /// An AWS call failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// The request is not acceptable; nothing was sent.
    #[error("{0}")]
    Invalid(String),
    /// Some parameters were not written (each named).
    #[error("{}", .0.join("; "))]
    Failed(Vec<String>),
}

/// One parameter to hold one value in one region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Wanted {
    /// Region.
    pub region: String,
    /// Parameter name.
    pub name: String,
    /// The AMI id it should hold.
    pub value: String,
    /// A value this parameter may hold and be overwritten without `allow_clobber`:
    /// the one an earlier run of the same job wrote (repairing our own write is not
    /// clobbering someone else's).
    #[serde(skip)]
    pub ours: Option<String>,
}

/// What was (or would be) done to one parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum Change {
    /// It did not exist.
    Created,
    /// It already held the value.
    Unchanged,
    /// It held `old`.
    Updated {
        /// The value it held.
        old: String,
    },
    /// It holds `old` and overwriting was not allowed.
    Refused {
        /// The value it holds.
        old: String,
    },
}

/// The outcome for one parameter.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Which parameter, where, with what value.
    #[serde(flatten)]
    pub wanted: Wanted,
    /// What happened.
    #[serde(flatten)]
    pub change: Change,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

impl Outcome {
    /// `/name in region: old -> new` and the like, for people.
    pub fn describe(&self) -> String {
        let w = &self.wanted;
        let what = match &self.change {
            Change::Created => format!("created = {}", w.value),
            Change::Unchanged => format!("unchanged = {}", w.value),
            Change::Updated { old } => format!("updated {old} -> {}", w.value),
            Change::Refused { old } => format!(
                "NOT changed: holds {old}, wanted {} (--allow-clobber to overwrite)",
                w.value
            ),
        };
        match &self.error {
            Some(e) => format!("{} in {}: {what}: {e}", w.name, w.region),
            None => format!("{} in {}: {what}", w.name, w.region),
        }
    }
}

/// How to write parameters.
#[derive(Debug, Clone)]
pub struct PutOptions {
    /// Overwrite a parameter that holds another value.
    pub allow_clobber: bool,
    /// Only look and report what would change.
    pub dry_run: bool,
    /// Least time between two writes in one region.
    pub spacing: Duration,
    /// How long to wait for a written value to read back.
    pub read_back: Duration,
    /// Retry policy.
    pub retry: RetryPolicy,
}

impl Default for PutOptions {
    fn default() -> Self {
        PutOptions {
            allow_clobber: false,
            dry_run: false,
            spacing: Duration::from_millis(100),
            read_back: Duration::from_secs(60),
            retry: RetryPolicy::default(),
        }
    }
}

/// Check a parameter name as SSM would, and keep `/aws/...` names for public AMIs.
pub fn check_name(name: &str, public: bool) -> Result<(), String> {
    if name.is_empty() || name.len() > 1011 {
        return Err(format!(
            "parameter name `{name}` must be 1 to 1011 characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.-/".contains(*c)))
    {
        return Err(format!(
            "parameter name `{name}` has `{c}`: only letters, digits and _ . - / are allowed"
        ));
    }
    if name.contains("//") || (name.contains('/') && !name.starts_with('/')) {
        return Err(format!(
            "parameter name `{name}`: a hierarchical name starts with / and has no empty level"
        ));
    }
    if name.split('/').filter(|s| !s.is_empty()).count() > 15 {
        return Err(format!("parameter name `{name}` has more than 15 levels"));
    }
    let first = name
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    if (first.starts_with("aws") || first.starts_with("ssm")) && !public {
        return Err(format!(
            "parameter `{name}`: names under /aws or /ssm are for public AMIs only \
             (and only AWS's publisher accounts may write them)"
        ));
    }
    Ok(())
}

/// Spaces writes in one region and lets one writer at a time through.
#[derive(Debug)]
struct Pacer {
    next: Mutex<Instant>,
    spacing: Duration,
}

impl Pacer {
    async fn wait(&self) {
        let mut next = self.next.lock().await;
        tokio::time::sleep_until(*next).await;
        *next = Instant::now() + self.spacing;
    }
}

/// Put every parameter of `wanted` (each in its region): regions concurrently, one
/// region's writes paced. Returns every outcome; fails after all are done if any was
/// refused or failed, naming each.
pub async fn put(
    home: &Clients,
    wanted: &[Wanted],
    opts: &PutOptions,
) -> Result<Vec<Outcome>, ParamError> {
    let mut by_region: BTreeMap<&str, Vec<&Wanted>> = BTreeMap::new();
    for w in wanted {
        by_region.entry(&w.region).or_default().push(w);
    }
    let runs = by_region.into_iter().map(|(region, items)| {
        let clients = home.in_region(region);
        let pacer = Arc::new(Pacer {
            next: Mutex::new(Instant::now()),
            spacing: opts.spacing,
        });
        async move {
            let mut out = Vec::new();
            for w in items {
                out.push(put_one(&clients, w, opts, &pacer).await);
            }
            out
        }
    });
    let outcomes: Vec<Outcome> = join_all(runs).await.into_iter().flatten().collect();
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.error.is_some() || matches!(o.change, Change::Refused { .. }))
        .map(Outcome::describe)
        .collect();
    if failed.is_empty() || opts.dry_run {
        Ok(outcomes)
    } else {
        Err(ParamError::Failed(failed))
    }
}

async fn put_one(clients: &Clients, w: &Wanted, opts: &PutOptions, pacer: &Pacer) -> Outcome {
    let outcome = |change, error: Option<String>| Outcome {
        wanted: w.clone(),
        change,
        error,
    };
    let current = match get(clients, &w.name, &opts.retry).await {
        Ok(v) => v,
        Err(e) => return outcome(Change::Created, Some(e.to_string())),
    };
    let change = match current {
        None => Change::Created,
        Some(v) if v == w.value => return outcome(Change::Unchanged, None),
        Some(old) if !opts.allow_clobber && w.ours.as_deref() != Some(old.as_str()) => {
            return outcome(Change::Refused { old }, None);
        }
        Some(old) => Change::Updated { old },
    };
    if opts.dry_run {
        return outcome(change, None);
    }
    pacer.wait().await;
    let overwrite = matches!(change, Change::Updated { .. });
    if let Err(e) = write(clients, w, overwrite, &opts.retry).await {
        return outcome(change, Some(e.to_string()));
    }
    match read_back(clients, w, opts).await {
        Ok(()) => {
            tracing::info!("{}", outcome(change.clone(), None).describe());
            outcome(change, None)
        }
        Err(e) => outcome(change, Some(e)),
    }
}

/// The value of parameter `name`, or `None` if it does not exist.
pub async fn get(
    clients: &Clients,
    name: &str,
    retry: &RetryPolicy,
) -> Result<Option<String>, AwsError> {
    let r = retry
        .run(
            &format!("GetParameter {name} in {}", clients.region()),
            || async {
                clients
                    .ssm
                    .get_parameter()
                    .name(name)
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("GetParameter", e))
            },
        )
        .await;
    match r {
        Ok(out) => Ok(out.parameter().and_then(|p| p.value()).map(str::to_string)),
        Err(e) if e.has_code("ParameterNotFound") => Ok(None),
        Err(e) => Err(e),
    }
}

async fn write(
    clients: &Clients,
    w: &Wanted,
    overwrite: bool,
    retry: &RetryPolicy,
) -> Result<(), AwsError> {
    retry
        .run(
            &format!("PutParameter {} in {}", w.name, w.region),
            || async {
                let mut req = clients
                    .ssm
                    .put_parameter()
                    .name(&w.name)
                    .value(&w.value)
                    .r#type(ParameterType::String)
                    .data_type(EC2_IMAGE_DATA_TYPE);
                // SSM refuses tags together with Overwrite: tag on creation only.
                req = if overwrite {
                    req.overwrite(true)
                } else {
                    req.tags(
                        Tag::builder()
                            .key(OWNERSHIP_TAG)
                            .value(OWNERSHIP_VALUE)
                            .build()
                            .expect("key and value set"),
                    )
                };
                req.send()
                    .await
                    .map_err(|e| AwsError::from_sdk("PutParameter", e))
            },
        )
        .await?;
    Ok(())
}

/// Read the parameter until it holds the value: AWS validates `aws:ec2:image` values
/// after answering, and drops a value that is not an AMI of that region.
async fn read_back(clients: &Clients, w: &Wanted, opts: &PutOptions) -> Result<(), String> {
    let until = Instant::now() + opts.read_back;
    let mut delay = Duration::from_millis(200);
    loop {
        let now = get(clients, &w.name, &opts.retry)
            .await
            .map_err(|e| e.to_string())?;
        if now.as_deref() == Some(w.value.as_str()) {
            return Ok(());
        }
        if Instant::now() + delay > until {
            return Err(format!(
                "written, but reads back as {} after {}s (is {} an AMI in {}?)",
                now.as_deref().unwrap_or("nothing"),
                opts.read_back.as_secs(),
                w.value,
                w.region
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("/myos/arm64/base/ufs/15.0/CURRENT", false).is_ok());
        assert!(check_name("plain-name", false).is_ok());
        assert!(check_name("/aws/service/freebsd/arm64/base/ufs/15.0/RELEASE", true).is_ok());
        let e = check_name("/aws/service/freebsd/x", false).unwrap_err();
        assert!(e.contains("public AMIs only"), "{e}");
        assert!(check_name("/ssm/x", false).is_err());
        assert!(check_name("/AWSome/x", false).is_err(), "case-insensitive");
        assert!(check_name("/myos/{arch}", false).is_err());
        assert!(check_name("/myos//x", false).is_err());
        assert!(check_name("myos/x", false).is_err());
        assert!(check_name("", false).is_err());
        let deep = "/a".repeat(16);
        assert!(check_name(&deep, false).is_err());
    }

    #[test]
    fn outcomes_describe_changes() {
        let w = Wanted {
            region: "eu-west-1".into(),
            name: "/myos/x".into(),
            value: "ami-2".into(),
            ours: None,
        };
        let o = Outcome {
            wanted: w.clone(),
            change: Change::Updated {
                old: "ami-1".into(),
            },
            error: None,
        };
        assert_eq!(o.describe(), "/myos/x in eu-west-1: updated ami-1 -> ami-2");
        let o = Outcome {
            wanted: w,
            change: Change::Refused {
                old: "ami-1".into(),
            },
            error: None,
        };
        assert!(o.describe().contains("--allow-clobber"), "{}", o.describe());
    }
}
