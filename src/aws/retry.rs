//! The single retry layer: jittered exponential backoff under an overall deadline.
//!
//! Only errors that can succeed on another attempt are retried (throttling, 5xx,
//! resets, timeouts, plus what the caller declares transient, such as "snapshot not
//! found" right after StartSnapshot). Every retry is logged at info level with its
//! reason, so nothing is retried silently.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use aws_sdk_ebs::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::result::SdkError;
use tokio::time::Instant;

use super::{AwsError, ErrorClass, HasStatus};

/// The service whose documentation names a retryable error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Amazon EC2 (query protocol).
    Ec2,
    /// The EBS direct APIs (restJson1).
    Ebs,
    /// Systems Manager Parameter Store (awsJson1.1).
    Ssm,
    /// AWS STS (the SDK's credential providers call it for assumed roles).
    Sts,
    /// Codes of the AWS SDKs' shared retry rules that any service may send.
    Any,
}

/// One error code a service documents as worth another attempt.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(test), allow(dead_code))] // service and status document the table; tests read them
pub struct RetryableCode {
    /// Who documents it.
    pub service: Service,
    /// The error code as it arrives (`__type`, `x-amzn-errortype` or `<Code>`).
    pub code: &'static str,
    /// The HTTP status the service answers it with.
    pub status: u16,
    /// Throttling or transient.
    pub class: ErrorClass,
    /// Retryable only with a message containing this (EBS: one ValidationException).
    pub message: Option<&'static str>,
}

const fn code(
    service: Service,
    code: &'static str,
    status: u16,
    class: ErrorClass,
) -> RetryableCode {
    RetryableCode {
        service,
        code,
        status,
        class,
        message: None,
    }
}

use ErrorClass::{Throttling as T, Transient as X};
use Service::{Any, Ebs, Ec2, Ssm, Sts};

/// Every retryable error code of the services ec2ami talks to, as their documentation
/// lists them (EC2 API "Error codes", EBS user guide "Error retries for EBS direct
/// APIs", the SSM and STS API references' error lists, the SDKs' shared retry rules).
/// Anything else is retried only for a 5xx or 429 status, or when the caller declares
/// it transient (e.g. "not found" right after a create: eventual consistency).
pub const RETRYABLE: &[RetryableCode] = &[
    // EC2: server errors, throttling, and the client errors EC2 says to retry.
    code(Ec2, "RequestLimitExceeded", 503, T),
    code(Ec2, "SnapshotCreationPerVolumeRateExceeded", 400, T),
    code(Ec2, "InternalError", 500, X),
    code(Ec2, "InternalFailure", 500, X),
    code(Ec2, "ServiceUnavailable", 503, X),
    code(Ec2, "Unavailable", 503, X),
    code(Ec2, "InsufficientInstanceCapacity", 500, X),
    code(Ec2, "InsufficientCapacity", 500, X),
    code(Ec2, "ConcurrentTagAccess", 400, X),
    // EBS direct APIs.
    code(Ebs, "RequestThrottledException", 400, T),
    code(Ebs, "ConcurrentLimitExceededException", 400, T),
    code(Ebs, "ThrottlingException", 400, T),
    code(Ebs, "InternalServerException", 500, X),
    RetryableCode {
        message: Some("Failed to read block data"),
        ..code(Ebs, "ValidationException", 400, X)
    },
    // SSM.
    code(Ssm, "ThrottlingException", 400, T),
    code(Ssm, "InternalServerError", 500, X),
    code(Ssm, "TooManyUpdates", 400, T),
    // STS.
    code(Sts, "Throttling", 400, T),
    code(Sts, "IDPCommunicationError", 400, X),
    code(Sts, "InternalFailure", 500, X),
    code(Sts, "ServiceUnavailable", 503, X),
    // The SDKs' shared rules.
    code(Any, "Throttling", 400, T),
    code(Any, "ThrottledException", 400, T),
    code(Any, "TooManyRequestsException", 429, T),
    code(Any, "RequestThrottled", 400, T),
    code(Any, "BandwidthLimitExceeded", 400, T),
    code(Any, "SlowDown", 503, T),
    code(Any, "EC2ThrottledException", 400, T),
    code(Any, "PriorRequestNotComplete", 400, T),
    code(Any, "RequestTimeout", 400, X),
    code(Any, "RequestTimeoutException", 400, X),
    code(Any, "InternalServerError", 500, X),
];

/// Classify an AWS error by its code (and message, where the service's documentation
/// makes retrying depend on it), then by HTTP status: 429 is throttling, 5xx transient,
/// anything else permanent.
pub fn classify(code: Option<&str>, message: Option<&str>, status: u16) -> ErrorClass {
    let listed = code.and_then(|c| {
        RETRYABLE.iter().find(|r| {
            r.code == c
                && r.message
                    .is_none_or(|m| message.is_some_and(|msg| msg.contains(m)))
        })
    });
    match listed {
        Some(r) => r.class,
        None if status == 429 => ErrorClass::Throttling,
        None if status >= 500 => ErrorClass::Transient,
        None => ErrorClass::Permanent,
    }
}

/// What one call is about: the operation, the region it goes to and the resource it
/// concerns. Log lines and errors name all three.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The API operation, e.g. `DescribeImages`.
    pub operation: &'static str,
    /// The region.
    pub region: Option<String>,
    /// The resource (AMI, snapshot, parameter...), if the call is about one.
    pub resource: Option<String>,
}

impl Call {
    /// `operation` in `region`.
    pub fn new(operation: &'static str, region: impl Into<String>) -> Call {
        Call {
            operation,
            region: Some(region.into()),
            resource: None,
        }
    }

    /// The same call, about `resource`.
    pub fn on(mut self, resource: impl Into<String>) -> Call {
        self.resource = Some(resource.into());
        self
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.operation)?;
        if let Some(r) = &self.resource {
            write!(f, " {r}")?;
        }
        if let Some(r) = &self.region {
            write!(f, " in {r}")?;
        }
        Ok(())
    }
}

/// How hard to try one operation.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// First backoff ceiling; doubles each attempt.
    pub base_delay: Duration,
    /// Largest backoff ceiling.
    pub max_delay: Duration,
    /// Overall time for the operation, all attempts and waits included.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(20),
            deadline: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// The backoff before attempt `attempt + 1` (full jitter: uniform in 0..=ceiling).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max_delay);
        let nanos = ceiling.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }

    /// Send one SDK request (`op` builds and sends it anew for each attempt) until it
    /// succeeds, fails permanently, or attempts or the deadline run out. The error names
    /// the call's operation, region and resource.
    pub async fn send<T, E, R, F, Fut>(&self, call: &Call, op: F) -> Result<T, AwsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, R>>>,
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
        R: HasStatus + fmt::Debug,
    {
        self.send_with(call, |_| false, op).await
    }

    /// Like [`RetryPolicy::send`], also retrying errors for which `also_retry` is true
    /// (e.g. "not found" for a resource that was just created: eventual consistency).
    pub async fn send_with<T, E, R, F, Fut>(
        &self,
        call: &Call,
        also_retry: impl Fn(&AwsError) -> bool,
        mut op: F,
    ) -> Result<T, AwsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, R>>>,
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
        R: HasStatus + fmt::Debug,
    {
        let operation = call.operation;
        self.run_with(call, also_retry, || {
            let fut = op();
            async move { fut.await.map_err(|e| AwsError::from_sdk(operation, e)) }
        })
        .await
    }

    /// Run `op` (which may do more than one request, or check an answer) until it
    /// succeeds, fails permanently, or attempts or the deadline run out.
    pub async fn run<T, F, Fut>(&self, call: &Call, op: F) -> Result<T, AwsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AwsError>>,
    {
        self.run_with(call, |_| false, op).await
    }

    /// Like [`RetryPolicy::run`], also retrying errors for which `also_retry` is true.
    pub async fn run_with<T, F, Fut>(
        &self,
        call: &Call,
        also_retry: impl Fn(&AwsError) -> bool,
        mut op: F,
    ) -> Result<T, AwsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AwsError>>,
    {
        let what = call;
        let deadline = Instant::now() + self.deadline;
        let mut attempt = 1;
        loop {
            let err = match op().await {
                Ok(v) => return Ok(v),
                Err(e) => e.within(call),
            };
            if !(err.is_retryable() || also_retry(&err)) {
                return Err(err);
            }
            if attempt >= self.max_attempts {
                tracing::warn!("{what}: giving up after {attempt} attempts: {err}");
                return Err(err);
            }
            let delay = self.backoff(attempt);
            if Instant::now() + delay >= deadline {
                tracing::warn!(
                    "{what}: giving up, the {:?} deadline has passed: {err}",
                    self.deadline
                );
                return Err(err);
            }
            tracing::info!(
                "retrying {what} in {} ms (attempt {}/{}): {err}",
                delay.as_millis(),
                attempt + 1,
                self.max_attempts
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn err(class: ErrorClass, code: &str) -> AwsError {
        AwsError::local("Op", class, String::new()).with_code(code)
    }

    fn op() -> Call {
        Call::new("Op", "us-east-1").on("snap-1")
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            deadline: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn retries_transient_until_success() {
        let calls = AtomicU32::new(0);
        let r = fast()
            .run(&op(), || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(err(ErrorClass::Throttling, "ThrottlingException"))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn never_retries_permanent_errors() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = fast()
            .run(&op(), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(err(ErrorClass::Permanent, "AccessDeniedException"))
            })
            .await;
        let e = r.unwrap_err();
        assert!(e.has_code("AccessDeniedException"));
        assert_eq!(e.region.as_deref(), Some("us-east-1"), "the call's region");
        assert_eq!(e.resource.as_deref(), Some("snap-1"), "the call's resource");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn stops_after_max_attempts() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = fast()
            .run(&op(), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(err(ErrorClass::Transient, "InternalError"))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn caller_can_declare_extra_retryable_errors() {
        let calls = AtomicU32::new(0);
        let r = fast()
            .run_with(
                &op(),
                |e| e.has_code("ResourceNotFoundException"),
                || async {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        Err(err(ErrorClass::Permanent, "ResourceNotFoundException"))
                    } else {
                        Ok(())
                    }
                },
            )
            .await;
        assert!(r.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// Each service's retryable codes as its documentation lists them (written out
    /// here, not read from the table), with the status it sends them with.
    const DOCUMENTED_RETRYABLE: &[(&str, &str, u16, ErrorClass)] = &[
        ("ec2", "RequestLimitExceeded", 503, ErrorClass::Throttling),
        (
            "ec2",
            "SnapshotCreationPerVolumeRateExceeded",
            400,
            ErrorClass::Throttling,
        ),
        ("ec2", "InternalError", 500, ErrorClass::Transient),
        ("ec2", "InternalFailure", 500, ErrorClass::Transient),
        ("ec2", "ServiceUnavailable", 503, ErrorClass::Transient),
        ("ec2", "Unavailable", 503, ErrorClass::Transient),
        (
            "ec2",
            "InsufficientInstanceCapacity",
            500,
            ErrorClass::Transient,
        ),
        ("ec2", "InsufficientCapacity", 500, ErrorClass::Transient),
        ("ec2", "ConcurrentTagAccess", 400, ErrorClass::Transient),
        (
            "ebs",
            "RequestThrottledException",
            400,
            ErrorClass::Throttling,
        ),
        (
            "ebs",
            "ConcurrentLimitExceededException",
            400,
            ErrorClass::Throttling,
        ),
        ("ebs", "ThrottlingException", 400, ErrorClass::Throttling),
        ("ebs", "InternalServerException", 500, ErrorClass::Transient),
        ("ssm", "ThrottlingException", 400, ErrorClass::Throttling),
        ("ssm", "TooManyUpdates", 400, ErrorClass::Throttling),
        ("ssm", "InternalServerError", 500, ErrorClass::Transient),
        ("sts", "Throttling", 400, ErrorClass::Throttling),
        ("sts", "IDPCommunicationError", 400, ErrorClass::Transient),
        ("sts", "InternalFailure", 500, ErrorClass::Transient),
        ("sts", "ServiceUnavailable", 503, ErrorClass::Transient),
    ];

    /// Codes the same documentation says not to retry (or that only a caller who just
    /// created the resource may retry), with their statuses.
    const DOCUMENTED_PERMANENT: &[(&str, u16)] = &[
        ("ValidationException", 400),
        ("ResourceNotFoundException", 404),
        ("ConflictException", 409),
        ("AccessDeniedException", 403),
        ("ServiceQuotaExceededException", 402),
        ("IdempotentParameterMismatch", 400),
        ("InvalidAMIID.NotFound", 400),
        ("InvalidSnapshot.NotFound", 400),
        ("InvalidSnapshot.InUse", 400),
        ("InvalidParameterValue", 400),
        ("UnauthorizedOperation", 403),
        ("AuthFailure", 401),
        ("ParameterAlreadyExists", 400),
        ("ParameterNotFound", 400),
        ("UnsupportedParameterType", 400),
        ("ExpiredTokenException", 400),
        ("RegionDisabledException", 403),
    ];

    #[test]
    fn every_documented_retryable_code_is_retried_with_its_class() {
        for (service, c, status, class) in DOCUMENTED_RETRYABLE {
            assert_eq!(
                classify(Some(c), Some("any message"), *status),
                *class,
                "{service} {c} ({status})"
            );
            // The code decides, whatever status a stand-in sends it with.
            assert_eq!(classify(Some(c), None, 400), *class, "{service} {c} as 400");
        }
    }

    #[test]
    fn the_table_lists_exactly_the_documented_codes() {
        for (service, c, status, class) in DOCUMENTED_RETRYABLE {
            assert!(
                RETRYABLE.iter().any(|r| r.code == *c
                    && r.status == *status
                    && r.class == *class
                    && format!("{:?}", r.service).to_lowercase() == *service),
                "{service} {c} missing from RETRYABLE"
            );
        }
        for r in RETRYABLE {
            let documented = DOCUMENTED_RETRYABLE.iter().any(|(_, c, _, _)| *c == r.code)
                || r.service == Service::Any
                || r.message.is_some();
            assert!(
                documented,
                "{} in RETRYABLE but not documented here",
                r.code
            );
        }
    }

    #[test]
    fn documented_permanent_codes_are_not_retried() {
        for (c, status) in DOCUMENTED_PERMANENT {
            assert_eq!(
                classify(Some(c), Some("some message"), *status),
                ErrorClass::Permanent,
                "{c} ({status})"
            );
        }
    }

    #[test]
    fn ebs_validation_is_retried_only_for_unreadable_block_data() {
        assert_eq!(
            classify(
                Some("ValidationException"),
                Some("Failed to read block data"),
                400
            ),
            ErrorClass::Transient
        );
        assert_eq!(
            classify(
                Some("ValidationException"),
                Some("The checksum does not match"),
                400
            ),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify(Some("ValidationException"), None, 400),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn status_decides_for_unlisted_codes() {
        assert_eq!(classify(None, None, 429), ErrorClass::Throttling);
        assert_eq!(classify(Some("Whatever"), None, 502), ErrorClass::Transient);
        assert_eq!(classify(None, None, 500), ErrorClass::Transient);
        assert_eq!(classify(Some("Whatever"), None, 400), ErrorClass::Permanent);
        assert_eq!(classify(None, None, 404), ErrorClass::Permanent);
    }

    #[test]
    fn backoff_spreads_over_its_whole_range_and_grows() {
        // Full jitter: uniform in 0..=ceiling. A backoff that never waits (or always
        // waits the ceiling) fails here: the lower bound of the test.
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            deadline: Duration::from_secs(60),
        };
        let mut previous_mean = 0.0;
        for attempt in 0..5u32 {
            let ceiling = (100u64 << attempt).min(2000) as f64;
            let draws: Vec<f64> = (0..2000)
                .map(|_| p.backoff(attempt).as_secs_f64() * 1000.0)
                .collect();
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            assert!(
                (0.4 * ceiling..=0.6 * ceiling).contains(&mean),
                "attempt {attempt}: mean {mean} ms of ceiling {ceiling} ms"
            );
            assert!(
                draws.iter().any(|d| *d >= 0.9 * ceiling),
                "attempt {attempt}"
            );
            assert!(
                draws.iter().any(|d| *d <= 0.1 * ceiling),
                "attempt {attempt}"
            );
            assert!(mean > previous_mean, "backoff grows with the attempt");
            previous_mean = mean;
        }
    }

    #[test]
    fn backoff_is_bounded_by_ceiling() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            deadline: Duration::from_secs(60),
        };
        for attempt in 0..40 {
            let d = p.backoff(attempt);
            let ceiling = Duration::from_millis(100)
                .saturating_mul(1 << attempt.min(20))
                .min(Duration::from_secs(2));
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
        }
    }
}
