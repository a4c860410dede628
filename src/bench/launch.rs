//! The EC2 side of a boot benchmark: launch one instance, watch DescribeInstances until
//! it is `running` with an address, terminate it, and find instances by launch token.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
use aws_sdk_ec2::types::{
    Instance, InstanceStateName, InstanceType, ResourceType, ShutdownBehavior, Tag,
    TagSpecification,
};
use base64::Engine;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::{Instant, MissedTickBehavior};

use crate::aws::{AwsError, Clients, ErrorClass, RetryPolicy, ec2, tags};

/// EC2's code for an instance id it does not know (yet, or any more).
const NOT_FOUND: &str = "InvalidInstanceID.NotFound";

/// What to launch.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The AMI.
    pub image_id: String,
    /// Instance type, e.g. `c5.xlarge`.
    pub instance_type: String,
    /// Subnet (default: the default VPC's).
    pub subnet: Option<String>,
    /// Security groups (default: the VPC's default group).
    pub security_groups: Vec<String>,
    /// User data, raw (base64-encoded here).
    pub user_data: Option<Vec<u8>>,
    /// Ask for an IPv6 address and probe it instead of the public IPv4 address.
    pub ipv6: bool,
    /// The key pair whose public key the instance gets (`ec2ami test`'s ephemeral one).
    pub key_name: Option<String>,
    /// What the instance is for, in its Name tag (`ec2ami bench ami-...`,
    /// `ec2ami test ami-...`).
    pub purpose: &'static str,
}

/// How to watch DescribeInstances.
#[derive(Debug, Clone, Copy)]
pub struct PollOptions {
    /// Time between two requests. 50 ms, like ec2-boot-bench: EC2's request-rate bucket
    /// for Describe calls refills at about 20 per second, so faster polling only buys
    /// throttling.
    pub interval: Duration,
    /// Requests in flight at once (a slow answer does not hold up the next poll).
    pub max_in_flight: usize,
    /// Give up on one request after this long.
    pub request_timeout: Duration,
    /// Longest interval after throttling has slowed us down.
    pub max_interval: Duration,
}

impl Default for PollOptions {
    fn default() -> Self {
        PollOptions {
            interval: Duration::from_millis(50),
            max_in_flight: 4,
            request_timeout: Duration::from_secs(5),
            max_interval: Duration::from_secs(1),
        }
    }
}

/// A launched instance.
#[derive(Debug, Clone)]
pub struct Launched {
    /// Its id.
    pub instance_id: String,
    /// When the attempt of RunInstances that launched it was sent.
    pub sent: Instant,
    /// When that attempt was answered.
    pub answered: Instant,
}

/// Why waiting for `running` ended without it.
#[derive(Debug)]
pub enum PollError {
    /// Not running with an address before the deadline.
    TimedOut,
    /// The instance stopped or terminated on its own (capacity, limits, bad image).
    Died(String),
    /// DescribeInstances failed in a way more polling cannot fix.
    Aws(AwsError),
}

/// Launch one instance tagged with ec2ami's ownership tag and `token`, with `token` as
/// the ClientToken, so a retried call never launches two. RunInstances is timed per
/// attempt: the figure is the call that launched the instance, not our backoff.
pub async fn run_instance(
    clients: &Clients,
    spec: &LaunchSpec,
    token: &str,
    retry: &RetryPolicy,
) -> Result<Launched, AwsError> {
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .tags(tag(tags::OWNERSHIP, tags::OWNERSHIP_VALUE))
        .tags(tag(tags::BENCH_TOKEN, token))
        .tags(tag(
            "Name",
            &format!("ec2ami {} {}", spec.purpose, spec.image_id),
        ))
        .build();
    let user_data = spec
        .user_data
        .as_ref()
        .map(|d| base64::engine::general_purpose::STANDARD.encode(d));
    let attempt_start = Mutex::new(Instant::now());
    let out = retry
        .send(&clients.call("RunInstances").on(&spec.image_id), || {
            *attempt_start.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            let mut req = clients
                .ec2
                .run_instances()
                .image_id(&spec.image_id)
                .instance_type(InstanceType::from(spec.instance_type.as_str()))
                .min_count(1)
                .max_count(1)
                .client_token(token)
                // A guest that powers itself off is gone, not a stopped instance to pay for.
                .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
                .tag_specifications(tags.clone())
                .set_subnet_id(spec.subnet.clone())
                .set_user_data(user_data.clone())
                .set_key_name(spec.key_name.clone());
            if !spec.security_groups.is_empty() {
                req = req.set_security_group_ids(Some(spec.security_groups.clone()));
            }
            if spec.ipv6 {
                req = req.ipv6_address_count(1);
            }
            req.send()
        })
        .await?;
    let answered = Instant::now();
    let sent = *attempt_start.lock().unwrap_or_else(|p| p.into_inner());
    let instance_id = out
        .instances()
        .first()
        .and_then(|i| i.instance_id())
        .ok_or_else(|| {
            AwsError::local(
                "RunInstances",
                ErrorClass::Permanent,
                "the answer names no instance".into(),
            )
        })?
        .to_string();
    Ok(Launched {
        instance_id,
        sent,
        answered,
    })
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// The address to probe, if the instance has it: IPv6 when asked, else public IPv4.
pub fn probe_address(instance: &Instance, ipv6: bool) -> Option<IpAddr> {
    let text = if ipv6 {
        instance.ipv6_address().or_else(|| {
            instance
                .network_interfaces()
                .iter()
                .flat_map(|n| n.ipv6_addresses())
                .find_map(|a| a.ipv6_address())
        })
    } else {
        instance.public_ip_address()
    };
    text.and_then(|t| t.parse().ok())
}

/// Poll DescribeInstances until `instance_id` is `running` with an address to probe;
/// returns when the answer saying so arrived, and the address. A poll goes out every
/// interval while fewer than `max_in_flight` are unanswered; errors that more polling
/// can outlive (not found yet, throttling, 5xx, timeouts) are skipped, throttling also
/// doubles the interval.
pub async fn wait_running(
    clients: &Clients,
    instance_id: &str,
    ipv6: bool,
    opts: &PollOptions,
    deadline: Instant,
) -> Result<(Instant, IpAddr), PollError> {
    let mut interval = opts.interval;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut in_flight = FuturesUnordered::new();
    let describe = || {
        let req = clients.ec2.describe_instances().instance_ids(instance_id);
        let timeout = opts.request_timeout;
        async move {
            let answer: Result<DescribeInstancesOutput, AwsError> =
                match tokio::time::timeout(timeout, req.send()).await {
                    Ok(r) => r.map_err(|e| AwsError::from_sdk("DescribeInstances", e)),
                    Err(_) => Err(AwsError::local(
                        "DescribeInstances",
                        ErrorClass::Transient,
                        format!("no answer within {timeout:?}"),
                    )),
                };
            answer
        }
    };
    loop {
        tokio::select! {
            biased;
            Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                let at = Instant::now();
                let answer: Result<DescribeInstancesOutput, AwsError> = answer;
                match answer {
                    Ok(out) => {
                        let Some(instance) = out
                            .reservations()
                            .iter()
                            .flat_map(|r| r.instances())
                            .find(|i| i.instance_id() == Some(instance_id))
                        else {
                            continue;
                        };
                        let state = instance.state().and_then(|s| s.name());
                        match state {
                            Some(InstanceStateName::Running) => {
                                if let Some(addr) = probe_address(instance, ipv6) {
                                    return Ok((at, addr));
                                }
                            }
                            Some(
                                s @ (InstanceStateName::ShuttingDown
                                | InstanceStateName::Terminated
                                | InstanceStateName::Stopping
                                | InstanceStateName::Stopped),
                            ) => {
                                let why = instance
                                    .state_reason()
                                    .and_then(|r| r.message())
                                    .unwrap_or("no reason given");
                                return Err(PollError::Died(format!(
                                    "{instance_id} went {} before running: {why}",
                                    s.as_str()
                                )));
                            }
                            _ => {}
                        }
                    }
                    Err(e) if e.class == ErrorClass::Throttling => {
                        let slower = (interval * 2).min(opts.max_interval);
                        if slower != interval {
                            tracing::info!(
                                "DescribeInstances throttled: polling every {} ms",
                                slower.as_millis()
                            );
                            interval = slower;
                            ticker = tokio::time::interval_at(Instant::now() + interval, interval);
                            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                        }
                    }
                    // Eventual consistency: a new instance is unknown for a moment.
                    Err(e) if e.has_code(NOT_FOUND) || e.is_retryable() => {
                        tracing::debug!("{instance_id}: {e} (polling on)");
                    }
                    Err(e) => return Err(PollError::Aws(e)),
                }
            }
            _ = ticker.tick(), if in_flight.len() < opts.max_in_flight => {
                in_flight.push(describe());
            }
            _ = tokio::time::sleep_until(deadline) => return Err(PollError::TimedOut),
        }
    }
}

/// Terminate `instance_id`. EC2 may not know an instance for a moment after launch,
/// so "not found" is retried under the policy when `fresh`; for an old journal entry
/// it means the instance is long gone, which is success.
pub async fn terminate(
    clients: &Clients,
    instance_id: &str,
    fresh: bool,
    retry: &RetryPolicy,
) -> Result<(), AwsError> {
    let r = retry
        .send_with(
            &clients.call("TerminateInstances").on(instance_id),
            |e| fresh && e.has_code(NOT_FOUND),
            || {
                clients
                    .ec2
                    .terminate_instances()
                    .instance_ids(instance_id)
                    .send()
            },
        )
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if !fresh && e.has_code(NOT_FOUND) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Instances launched with `token` that are not (being) terminated.
pub async fn find_by_token(
    clients: &Clients,
    token: &str,
    retry: &RetryPolicy,
) -> Result<Vec<String>, AwsError> {
    let filters = vec![
        ec2::filter(&format!("tag:{}", tags::BENCH_TOKEN), token),
        ec2::filter_any("instance-state-name", ec2::LIVE_STATES),
    ];
    Ok(ec2::instances(clients, filters, retry)
        .await?
        .into_iter()
        .map(|i| i.id)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{InstanceIpv6Address, InstanceNetworkInterface};

    #[test]
    fn probe_address_prefers_what_was_asked() {
        let i = Instance::builder()
            .public_ip_address("54.1.2.3")
            .private_ip_address("10.0.0.1")
            .build();
        assert_eq!(probe_address(&i, false), Some("54.1.2.3".parse().unwrap()));
        assert_eq!(probe_address(&i, true), None);
        let v6 = Instance::builder()
            .network_interfaces(
                InstanceNetworkInterface::builder()
                    .ipv6_addresses(
                        InstanceIpv6Address::builder()
                            .ipv6_address("2600:1f18::1")
                            .build(),
                    )
                    .build(),
            )
            .build();
        assert_eq!(
            probe_address(&v6, true),
            Some("2600:1f18::1".parse().unwrap())
        );
        // No public address yet: not ready to probe (a private one is not enough).
        let private = Instance::builder().private_ip_address("10.0.0.1").build();
        assert_eq!(probe_address(&private, false), None);
    }
}
