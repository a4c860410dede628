//! Lifecycle: prune old AMIs and the snapshots only they use, find orphaned snapshots,
//! and deprecate images about to be superseded; in every region at once, never deleting
//! what is still in use.
//!
//! The stages: [`plan`](fn@plan) reads each region ([`inventory`], read-only, a few paged
//! requests per region) and decides ([`plan::plan_region`], pure: [`series`] groups
//! names, [`policy`] keeps and expires, [`guard`] protects); [`execute`](fn@execute) deletes what
//! the plan lists, looking at the guards again right before each deletion.
//! [`deprecate`] sets deprecation times.

pub mod deprecate;
pub mod execute;
pub mod guard;
pub mod inventory;
pub mod plan;
pub mod policy;
pub mod restore;
pub mod series;

use std::collections::BTreeMap;

use futures_util::future::join_all;

use crate::ami::AmiError;
use crate::aws::{AwsError, Clients, RetryPolicy};

pub use execute::{ExecuteOptions, Outcome, Report, Status, execute};
pub use inventory::ParameterSources;
pub use plan::{Plan, PlanOptions, RegionPlan, Selection};
pub use policy::{Flags, Policy, PolicyError};
pub use series::{Glob, SeriesPattern};

/// Why prune or deprecate could not run.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// An AWS call failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// Regions could not be resolved, or an AMI step failed.
    #[error(transparent)]
    Ami(#[from] AmiError),
    /// The policy is unusable.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The request makes no sense; nothing was sent.
    #[error("{0}")]
    Invalid(String),
}

/// The SSM parameters to check in each region: the names the publish journal recorded
/// there (`journal`: region, name) and the `paths` everywhere.
pub fn parameter_sources(
    regions: &[String],
    journal: &[(String, String)],
    paths: &[String],
) -> BTreeMap<String, ParameterSources> {
    regions
        .iter()
        .map(|r| {
            let names = journal
                .iter()
                .filter(|(region, _)| region == r)
                .map(|(_, name)| name.clone())
                .collect();
            (
                r.clone(),
                ParameterSources {
                    names,
                    paths: paths.to_vec(),
                },
            )
        })
        .collect()
}

/// Look at every region (concurrently) and plan. A region that cannot be read is in
/// the plan with its error, and nothing is planned there.
pub async fn plan(
    home: &Clients,
    regions: &[String],
    sources: &BTreeMap<String, ParameterSources>,
    opts: &PlanOptions,
    retry: &RetryPolicy,
) -> Plan {
    let no_sources = ParameterSources::default();
    let scans = regions.iter().map(|region| {
        let clients = home.in_region(region);
        let sources = sources.get(region).unwrap_or(&no_sources);
        async move {
            match inventory::scan(&clients, sources, retry).await {
                Ok(inv) => plan::plan_region(&inv, opts),
                Err(e) => {
                    tracing::error!("{region}: {e}");
                    plan::failed_region(region, e.to_string())
                }
            }
        }
    });
    Plan::new(join_all(scans).await, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_parameters_are_checked_in_their_region_and_paths_everywhere() {
        let regions = vec!["us-east-1".to_string(), "eu-west-1".to_string()];
        let journal = vec![
            ("eu-west-1".to_string(), "/myos/a".to_string()),
            ("ap-south-1".to_string(), "/myos/b".to_string()),
        ];
        let s = parameter_sources(&regions, &journal, &["/aws/service/myos".to_string()]);
        assert!(s["us-east-1"].names.is_empty());
        assert_eq!(
            s["eu-west-1"].names.iter().collect::<Vec<_>>(),
            vec!["/myos/a"]
        );
        assert_eq!(s["us-east-1"].paths, vec!["/aws/service/myos".to_string()]);
        assert!(!s.contains_key("ap-south-1"));
    }
}
