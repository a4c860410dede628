//! `deprecate`: set EC2 deprecation times on the images about to be superseded, either
//! one AMI and its copies in every region, or every image of some series but the newest
//! few. Deprecation hides an image from DescribeImages listings of other accounts after
//! that time; it deletes nothing and can be undone (DisableImageDeprecation).

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use futures_util::future::join_all;
use serde::Serialize;

use super::PruneError;
use super::inventory;
use super::series::{Glob, SeriesPattern};
use crate::ami;
use crate::aws::{AwsError, Clients, RetryPolicy, ec2};

/// Which images to deprecate.
#[derive(Debug, Clone)]
pub enum Target {
    /// This AMI (in the home region) and its copies in the regions.
    Image(String),
    /// In every region, the images of the series matching these globs, but the newest
    /// `keep` of each.
    Series {
        /// Series globs (`{date}` stands for the build date in a series).
        globs: Vec<Glob>,
        /// How many of the newest of each series stay undeprecated.
        keep: u32,
        /// How names split into series.
        pattern: SeriesPattern,
    },
}

/// One image to deprecate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deprecation {
    /// Region.
    pub region: String,
    /// AMI id.
    pub image_id: String,
    /// Name.
    pub name: String,
    /// Its deprecation time before, if it had one.
    pub before: Option<String>,
    /// True when it already had exactly the time asked for.
    pub unchanged: bool,
    /// The error, when setting it failed.
    pub error: Option<String>,
}

/// Check a deprecation time before any request: EC2 takes only future times, at most
/// ten years ahead.
pub fn check_time(at: DateTime, now: i64) -> Result<(), PruneError> {
    let fmt = at.fmt(Format::DateTime).unwrap_or_default();
    if at.secs() <= now {
        return Err(PruneError::Invalid(format!(
            "deprecation time {fmt} is in the past: EC2 takes only future times"
        )));
    }
    if at.secs() > now + 3652 * 86_400 {
        return Err(PruneError::Invalid(format!(
            "deprecation time {fmt} is more than 10 years ahead: EC2 refuses it"
        )));
    }
    Ok(())
}

/// The images `target` names in `regions`, with their current deprecation time.
pub async fn find(
    home: &Clients,
    regions: &[String],
    target: &Target,
    at: DateTime,
    retry: &RetryPolicy,
) -> Result<Vec<Deprecation>, PruneError> {
    let minute = at.secs() / 60;
    let entry = |region: &str, img: &inventory::Image| Deprecation {
        region: region.to_string(),
        image_id: img.id.clone(),
        name: img.name.clone(),
        before: img.deprecation.clone(),
        unchanged: img
            .deprecation
            .as_deref()
            .and_then(|d| DateTime::from_str(d, Format::DateTime).ok())
            .is_some_and(|d| d.secs() / 60 == minute),
        error: None,
    };
    match target {
        Target::Image(id) => {
            let Some(first) = inventory::image(home, id, retry).await? else {
                return Err(PruneError::Invalid(format!(
                    "{id} not found in {}",
                    home.region()
                )));
            };
            let found = ami::locate(home, id, regions, retry).await?;
            let lookups = regions.iter().map(|region| {
                let by_tag = found.iter().find(|f| f.region == *region).cloned();
                let name = first.name.clone();
                async move {
                    let clients = home.in_region(region);
                    // Copies made by other tools lack ec2ami's source tag: same name.
                    let image_id = match by_tag {
                        Some(f) => Some(f.id),
                        None => ec2::image_named(&clients, &name, retry)
                            .await?
                            .map(|i| i.id),
                    };
                    match image_id {
                        Some(i) => inventory::image(&clients, &i, retry).await,
                        None => Ok(None),
                    }
                }
            });
            let mut out = Vec::new();
            for (region, r) in regions.iter().zip(join_all(lookups).await) {
                if let Some(img) = r? {
                    out.push(entry(region, &img));
                }
            }
            Ok(out)
        }
        Target::Series {
            globs,
            keep,
            pattern,
        } => {
            let lookups = regions.iter().map(|region| async move {
                let clients = home.in_region(region);
                inventory::images(&clients, Vec::new(), retry).await
            });
            let mut out = Vec::new();
            for (region, r) in regions.iter().zip(join_all(lookups).await) {
                let images = r?;
                let mut series: std::collections::BTreeMap<String, Vec<(i64, &inventory::Image)>> =
                    Default::default();
                for img in &images {
                    let Some(parts) = pattern.split(&img.name) else {
                        continue;
                    };
                    if globs.iter().any(|g| g.matches(&parts.series)) {
                        series
                            .entry(parts.series)
                            .or_default()
                            .push((parts.date.unwrap_or(img.created), img));
                    }
                }
                for members in series.values_mut() {
                    members.sort_by(|a, b| {
                        (b.0, b.1.created, &b.1.id).cmp(&(a.0, a.1.created, &a.1.id))
                    });
                    for (_, img) in members.iter().skip(*keep as usize) {
                        out.push(entry(region, img));
                    }
                }
            }
            Ok(out)
        }
    }
}

/// Set the deprecation time of each image of `list` that does not have it yet; every
/// region at once. Returns the list with errors filled in.
pub async fn apply(
    home: &Clients,
    mut list: Vec<Deprecation>,
    at: DateTime,
    retry: &RetryPolicy,
) -> Vec<Deprecation> {
    let calls = list.iter().map(|d| async move {
        if d.unchanged {
            return Ok::<(), AwsError>(());
        }
        let clients = home.in_region(&d.region);
        ami::register::deprecate(&clients, &d.image_id, at, retry).await?;
        tracing::info!(
            "{} in {} (`{}`) is deprecated at {}",
            d.image_id,
            d.region,
            d.name,
            at.fmt(Format::DateTime).unwrap_or_default()
        );
        Ok(())
    });
    let results = join_all(calls).await;
    for (d, r) in list.iter_mut().zip(results) {
        if let Err(e) = r {
            d.error = Some(e.to_string());
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deprecation_times_must_be_ahead_but_not_too_far() {
        let now = 1_800_000_000;
        assert!(check_time(DateTime::from_secs(now + 60), now).is_ok());
        let e = check_time(DateTime::from_secs(now - 60), now).unwrap_err();
        assert!(e.to_string().contains("in the past"), "{e}");
        let e = check_time(DateTime::from_secs(now + 11 * 365 * 86_400), now).unwrap_err();
        assert!(e.to_string().contains("10 years"), "{e}");
    }
}
