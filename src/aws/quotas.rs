//! Service Quotas: the one quota a first public release runs into, "Public AMIs" (EC2,
//! L-0E3CBAB9), per region. Read where the credentials allow it; else AWS's default,
//! and the reason is kept so the plan can say which it is.

use serde::Serialize;

use super::{AwsError, Call, Clients, RetryPolicy};

/// Service Quotas' code of the EC2 quota "Public AMIs" (per region).
pub const PUBLIC_AMIS: &str = "L-0E3CBAB9";
/// AWS's default value of [`PUBLIC_AMIS`] for an account that never asked for more.
pub const DEFAULT_PUBLIC_AMIS: u32 = 5;

/// The public AMI quota of one region, and where the figure comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quota {
    /// Public AMIs the account may have in the region.
    pub value: u32,
    /// `None` when Service Quotas answered; else why AWS's default is used instead.
    pub defaulted: Option<String>,
}

impl Quota {
    /// The quota as the plan says it: `5 (AWS's default: ...)` or `8`.
    pub fn describe(&self) -> String {
        match &self.defaulted {
            None => format!("{} (Service Quotas)", self.value),
            Some(why) => format!(
                "{} (AWS's default; Service Quotas not read: {why})",
                self.value
            ),
        }
    }
}

/// The public AMI quota in `clients`' region: GetServiceQuota, or AWS's default 5 when
/// the quota cannot be read (access denied, not applied to the account...). A
/// throttled or failing service still fails after the retries: the caller keeps the
/// error for the region.
pub async fn public_amis(clients: &Clients, retry: &RetryPolicy) -> Result<Quota, AwsError> {
    let call = Call::new("GetServiceQuota", clients.region()).on(PUBLIC_AMIS);
    let r = retry
        .send(&call, || {
            clients
                .quotas
                .get_service_quota()
                .service_code("ec2")
                .quota_code(PUBLIC_AMIS)
                .send()
        })
        .await;
    match r {
        Ok(out) => match out.quota().and_then(|q| q.value()) {
            Some(v) if v.is_finite() && v >= 0.0 => Ok(Quota {
                value: v.min(u32::MAX as f64) as u32,
                defaulted: None,
            }),
            _ => Ok(default_because("the answer had no value".into())),
        },
        Err(e) if !e.is_retryable() => Ok(default_because(e.to_string())),
        Err(e) => Err(e),
    }
}

fn default_because(why: String) -> Quota {
    Quota {
        value: DEFAULT_PUBLIC_AMIS,
        defaulted: Some(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_defaulted_quota_says_so() {
        let q = default_because("AccessDeniedException".into());
        assert_eq!(q.value, 5);
        assert!(q.describe().contains("AWS's default"), "{}", q.describe());
        let read = Quota {
            value: 20,
            defaulted: None,
        };
        assert_eq!(read.describe(), "20 (Service Quotas)");
    }
}
