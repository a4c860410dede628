//! SSM parameters that publish AMI ids (`/myos/arm64/base/ufs/15.0/CURRENT` ->
//! `ami-...`), so users launch with `--image-id resolve:ssm:NAME`.
//!
//! Parameters are of type String with DataType `aws:ec2:image`. A parameter that holds
//! another value is never overwritten unless the caller allows it (and the change is
//! shown old -> new). Writes are paced per region and throttling backs off through the
//! retry layer; every written value is read back, because AWS checks an
//! `aws:ec2:image` value only after PutParameter has answered.

pub(crate) mod template;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ssm::types::{ParameterType, Tag};
use futures_util::future::join_all;
use serde::Serialize;

use crate::aws::poll::{Backoff, Poll, PollError, poll_until};
use crate::aws::{AwsError, Clients, RetryPolicy, ec2, ssm, tags};

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
    let shown = crate::image::escaped(name);
    if name.is_empty() || name.len() > 1011 {
        return Err(format!(
            "parameter name `{shown}` must be 1 to 1011 characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.-/".contains(*c)))
    {
        return Err(format!(
            "parameter name `{shown}` has `{}`: only letters, digits and _ . - / are allowed",
            c.escape_default()
        ));
    }
    if name.contains("//") || (name.contains('/') && !name.starts_with('/')) {
        return Err(format!(
            "parameter name `{shown}`: a hierarchical name starts with / and has no empty level"
        ));
    }
    if name.split('/').filter(|s| !s.is_empty()).count() > 15 {
        return Err(format!("parameter name `{shown}` has more than 15 levels"));
    }
    let first = name
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    if (first.starts_with("aws") || first.starts_with("ssm")) && !public {
        return Err(format!(
            "parameter `{shown}`: names under /aws or /ssm are for public AMIs only \
             (and only AWS's publisher accounts may write them)"
        ));
    }
    Ok(())
}

/// Parameters naming `image_id` (in `home`'s region) and its copies in `regions` (`all`
/// or names): each name template rendered per region with `{region}`, `{name}`, the
/// AMI's `ec2ami:*` build tags (`{version}`, `{branch}`...) and `vars` (which win). Names
/// under `/aws/` are allowed only for public AMIs. The templates are checked before any
/// request.
pub async fn for_image(
    home: &Clients,
    image_id: &str,
    templates: &[String],
    regions: &[String],
    vars: &[(String, String)],
    retry: &RetryPolicy,
) -> Result<Vec<Wanted>, ParamError> {
    for t in templates {
        template::variables(t).map_err(|e| ParamError::Invalid(e.to_string()))?;
    }
    let regions = &resolve_regions(home, regions, retry).await?;
    let source = ec2::image(home, image_id, retry)
        .await?
        .ok_or_else(|| ParamError::Invalid(format!("{image_id} not found in {}", home.region())))?;
    let mut base: template::Vars = source
        .tags
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(tags::VAR_PREFIX)?.to_string(), v.clone())))
        .collect();
    base.insert("name".into(), source.name.clone());
    base.extend(vars.iter().cloned());
    let found = crate::ami::locate(home, image_id, regions, retry).await?;
    let mut wanted = Vec::new();
    for img in &found {
        let mut v = base.clone();
        v.insert("region".into(), img.region.clone());
        for t in templates {
            let name = template::render(t, &v).map_err(|e| ParamError::Invalid(e.to_string()))?;
            check_name(&name, img.public).map_err(ParamError::Invalid)?;
            wanted.push(Wanted {
                region: img.region.clone(),
                name,
                value: img.id.clone(),
                ours: None,
            });
        }
    }
    Ok(wanted)
}

/// Parameter `to` holding, in each of `regions` (`all` or names), the value `from`
/// holds there (regions where `from` does not exist are skipped, and said so).
pub async fn promotion(
    home: &Clients,
    from: &str,
    to: &str,
    regions: &[String],
    retry: &RetryPolicy,
) -> Result<Vec<Wanted>, ParamError> {
    check_name(to, true).map_err(ParamError::Invalid)?;
    let regions = &resolve_regions(home, regions, retry).await?;
    let values = join_all(regions.iter().map(|r| async move {
        let c = home.in_region(r);
        (r.clone(), ssm::get_parameter(&c, from, retry).await)
    }))
    .await;
    let mut wanted = Vec::new();
    for (region, v) in values {
        match v? {
            Some(value) => wanted.push(Wanted {
                region,
                name: to.to_string(),
                value,
                ours: None,
            }),
            None => tracing::info!("{from} does not exist in {region}: nothing to promote there"),
        }
    }
    // `put`'s rule, before any write: a name under /aws or /ssm only for public AMIs.
    if check_name(to, false).is_err() {
        for w in &wanted {
            let image = ec2::image(&home.in_region(&w.region), &w.value, retry).await?;
            let public = image.as_ref().is_some_and(|i| i.public);
            if !public {
                let what = if image.is_some() {
                    "a private AMI"
                } else {
                    "no AMI of the region"
                };
                return Err(ParamError::Invalid(format!(
                    "parameter `{}`: {from} holds {} in {}, {what}: names under /aws or /ssm \
                     are for public AMIs only (and only AWS's publisher accounts may write them)",
                    crate::image::escaped(to),
                    crate::image::escaped(&w.value),
                    w.region
                )));
            }
        }
    }
    Ok(wanted)
}

async fn resolve_regions(
    home: &Clients,
    wanted: &[String],
    retry: &RetryPolicy,
) -> Result<Vec<String>, ParamError> {
    ec2::resolve_regions(home, wanted, retry)
        .await?
        .map_err(ParamError::Invalid)
}

/// What writing `w` changes when the parameter holds `current`: a parameter holding
/// another value is refused unless clobbering is allowed or it holds what an earlier run
/// of the same job wrote (`w.ours`). The one rule for `put`, a publish and its plan.
pub fn decide(current: Option<&str>, w: &Wanted, allow_clobber: bool) -> Change {
    match current {
        None => Change::Created,
        Some(v) if v == w.value => Change::Unchanged,
        Some(old) if !allow_clobber && w.ours.as_deref() != Some(old) => Change::Refused {
            old: old.to_string(),
        },
        Some(old) => Change::Updated {
            old: old.to_string(),
        },
    }
}

/// Put every parameter of `wanted` (each in its region): regions concurrently; in a
/// region, one GetParameters per 10 names to see what they hold, the writes one after
/// the other `spacing` apart, then GetParameters again until every written value reads
/// back. Returns every outcome, in the order of `wanted` (see [`check`]).
pub async fn put(home: &Clients, wanted: &[Wanted], opts: &PutOptions) -> Vec<Outcome> {
    let mut by_region: BTreeMap<&str, Vec<(usize, &Wanted)>> = BTreeMap::new();
    for (i, w) in wanted.iter().enumerate() {
        by_region.entry(&w.region).or_default().push((i, w));
    }
    let runs = by_region.into_iter().map(|(region, items)| {
        let clients = home.in_region(region);
        async move {
            let (index, items): (Vec<usize>, Vec<&Wanted>) = items.into_iter().unzip();
            index
                .into_iter()
                .zip(put_region(&clients, &items, opts).await)
                .collect::<Vec<_>>()
        }
    });
    let mut outcomes: Vec<(usize, Outcome)> = join_all(runs).await.into_iter().flatten().collect();
    outcomes.sort_by_key(|(i, _)| *i);
    outcomes.into_iter().map(|(_, o)| o).collect()
}

/// Fail, naming each, if a parameter was refused or failed.
pub fn check(outcomes: &[Outcome]) -> Result<(), ParamError> {
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.error.is_some() || matches!(o.change, Change::Refused { .. }))
        .map(Outcome::describe)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(ParamError::Failed(failed))
    }
}

/// [`put`] in one region.
async fn put_region(clients: &Clients, items: &[&Wanted], opts: &PutOptions) -> Vec<Outcome> {
    let names: Vec<&str> = items.iter().map(|w| w.name.as_str()).collect();
    let current = match ssm::get_parameters(clients, &names, &opts.retry).await {
        Ok(c) => c,
        Err(e) => {
            return items
                .iter()
                .map(|w| Outcome {
                    wanted: (*w).clone(),
                    change: Change::Created,
                    error: Some(e.to_string()),
                })
                .collect();
        }
    };
    let mut out: Vec<Outcome> = items
        .iter()
        .map(|w| Outcome {
            wanted: (*w).clone(),
            change: decide(
                current.get(&w.name).map(String::as_str),
                w,
                opts.allow_clobber,
            ),
            error: None,
        })
        .collect();
    if opts.dry_run {
        return out;
    }
    let mut written = Vec::new();
    for (i, o) in out.iter_mut().enumerate() {
        if !matches!(o.change, Change::Created | Change::Updated { .. }) {
            continue;
        }
        if !written.is_empty() {
            tokio::time::sleep(opts.spacing).await;
        }
        let overwrite = matches!(o.change, Change::Updated { .. });
        match write(clients, &o.wanted, overwrite, &opts.retry).await {
            Ok(()) => written.push(i),
            Err(e) => o.error = Some(e.to_string()),
        }
    }
    if let Err(e) = read_back(clients, &mut out, &written, opts).await {
        for &i in &written {
            out[i].error.get_or_insert_with(|| e.clone());
        }
    }
    for &i in &written {
        if out[i].error.is_none() {
            tracing::info!("{}", out[i].describe());
        }
    }
    out
}

async fn write(
    clients: &Clients,
    w: &Wanted,
    overwrite: bool,
    retry: &RetryPolicy,
) -> Result<(), AwsError> {
    let r = retry
        .send(&clients.call("PutParameter").on(&w.name), || {
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
                        .key(tags::OWNERSHIP)
                        .value(tags::OWNERSHIP_VALUE)
                        .build()
                        .expect("key and value set"),
                )
            };
            req.send()
        })
        .await;
    match r {
        Ok(_) => Ok(()),
        // Another publisher created it meanwhile: fine when it holds the same value.
        Err(e) if !overwrite && e.has_code("ParameterAlreadyExists") => {
            let held = ssm::get_parameters(clients, std::slice::from_ref(&w.name), retry).await?;
            if held.get(&w.name) == Some(&w.value) {
                Ok(())
            } else {
                Err(e)
            }
        }
        Err(e) => Err(e),
    }
}

/// Read the written parameters until each holds its value: AWS validates
/// `aws:ec2:image` values after answering, and drops a value that is not an AMI of that
/// region. Those that do not read back get an error.
async fn read_back(
    clients: &Clients,
    out: &mut [Outcome],
    written: &[usize],
    opts: &PutOptions,
) -> Result<(), String> {
    let backoff = Backoff {
        first: Duration::from_millis(200),
        max: Duration::from_secs(5),
    };
    // What is still to read back (index, name, value), and what each name read last.
    let pending = RefCell::new(
        written
            .iter()
            .map(|&i| (i, out[i].wanted.name.clone(), out[i].wanted.value.clone()))
            .collect::<Vec<_>>(),
    );
    let last = RefCell::new(BTreeMap::new());
    let r = poll_until(opts.read_back, backoff, || async {
        let names: Vec<String> = pending.borrow().iter().map(|(_, n, _)| n.clone()).collect();
        let now = ssm::get_parameters(clients, &names, &opts.retry).await?;
        pending
            .borrow_mut()
            .retain(|(_, n, v)| now.get(n) != Some(v));
        last.borrow_mut().extend(now);
        Ok::<_, AwsError>(if pending.borrow().is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        })
    })
    .await;
    match r {
        Ok(()) => Ok(()),
        Err(PollError::Failed(e)) => Err(e.to_string()),
        Err(PollError::TimedOut { .. }) => {
            let last = last.into_inner();
            for (i, name, value) in pending.into_inner() {
                out[i].error = Some(format!(
                    "written, but reads back as {} after {}s (is {value} an AMI in {}?)",
                    last.get(&name).map(String::as_str).unwrap_or("nothing"),
                    opts.read_back.as_secs(),
                    out[i].wanted.region
                ));
            }
            Ok(())
        }
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
