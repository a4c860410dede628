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

use super::{AwsError, HasStatus};

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
    use crate::aws::ErrorClass;
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
