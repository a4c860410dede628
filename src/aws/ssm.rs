//! SSM reads every stage shares: parameters by name, ten a request (GetParameters'
//! limit), and every parameter under a path, page by page.

use std::collections::BTreeMap;

use super::paging::all_pages;
use super::{AwsError, Call, Clients, RetryPolicy};

/// The most names one GetParameters takes, and the largest GetParametersByPath page.
pub const BATCH: usize = 10;

/// The values of the parameters among `names` that exist in `clients`' region (one
/// GetParameters per ten names). A name with a version or label selector
/// (`/x/y:3`, as `resolve:ssm:` allows) is answered under the name it was asked by.
pub async fn get_parameters<S: AsRef<str>>(
    clients: &Clients,
    names: &[S],
    retry: &RetryPolicy,
) -> Result<BTreeMap<String, String>, AwsError> {
    let mut found = BTreeMap::new();
    let call = Call::new("GetParameters", clients.region());
    for chunk in names.chunks(BATCH) {
        let asked: Vec<String> = chunk.iter().map(|n| n.as_ref().to_string()).collect();
        let out = retry
            .send(&call, || {
                clients
                    .ssm
                    .get_parameters()
                    .set_names(Some(asked.clone()))
                    .send()
            })
            .await?;
        // Names that do not exist come back as InvalidParameters: not found.
        for p in out.parameters() {
            if let (Some(n), Some(v)) = (p.name(), p.value()) {
                found.insert(n.to_string(), v.to_string());
            }
        }
        for a in &asked {
            if let Some((plain, _)) = a.rsplit_once(':')
                && let Some(v) = found.get(plain).cloned()
            {
                found.entry(a.clone()).or_insert(v);
            }
        }
    }
    Ok(found)
}

/// The value of parameter `name`, or `None` if it does not exist.
pub async fn get_parameter(
    clients: &Clients,
    name: &str,
    retry: &RetryPolicy,
) -> Result<Option<String>, AwsError> {
    Ok(get_parameters(clients, &[name], retry).await?.remove(name))
}

/// Every parameter under `path`, recursively: name -> value.
pub async fn parameters_by_path(
    clients: &Clients,
    path: &str,
    retry: &RetryPolicy,
) -> Result<BTreeMap<String, String>, AwsError> {
    let mut out = BTreeMap::new();
    all_pages(
        retry,
        &Call::new("GetParametersByPath", clients.region()).on(path),
        |token| {
            clients
                .ssm
                .get_parameters_by_path()
                .path(path)
                .recursive(true)
                .max_results(BATCH as i32)
                .set_next_token(token)
                .send()
        },
        |page| page.next_token(),
        |page| {
            for p in page.parameters() {
                if let (Some(n), Some(v)) = (p.name(), p.value()) {
                    out.insert(n.to_string(), v.to_string());
                }
            }
        },
    )
    .await?;
    Ok(out)
}
