//! The one place that builds AWS SDK clients (region, profile, endpoint, timeouts) and
//! turns SDK errors into something a release engineer can act on.
//!
//! The SDK's own retries are switched off: [`retry`] is the only retry layer, so a
//! request is never retried by two stacked loops.

pub mod retry;

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{Region, SdkConfig};
use aws_sdk_ebs::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::result::SdkError;

pub use retry::RetryPolicy;

/// Where and how to reach AWS: the global command-line options.
#[derive(Debug, Clone, Default)]
pub struct AwsOptions {
    /// Region; falls back to the standard chain (AWS_REGION, profile).
    pub region: Option<String>,
    /// Named profile from the shared config files.
    pub profile: Option<String>,
    /// Endpoint override for every service (also read from `AWS_ENDPOINT_URL` by the SDK).
    pub endpoint_url: Option<String>,
    /// Timeouts applied to every request.
    pub timeouts: Timeouts,
    /// Explicit credentials instead of the standard chain (a bsdec2-image-upload key
    /// file); their Debug output hides the secret.
    pub credentials: Option<aws_sdk_ec2::config::Credentials>,
}

/// Explicit network timeouts: uploads without them hang forever on a stalled socket.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// Time to the first byte of a response (and between reads).
    pub read: Duration,
    /// One attempt of one operation, start to finish.
    pub attempt: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(60),
            attempt: Duration::from_secs(120),
        }
    }
}

/// SDK clients sharing one configuration.
#[derive(Clone, Debug)]
pub struct Clients {
    /// The resolved configuration (region, credentials, endpoint).
    pub config: SdkConfig,
    /// EBS direct APIs.
    pub ebs: aws_sdk_ebs::Client,
    /// EC2.
    pub ec2: aws_sdk_ec2::Client,
    /// SSM (parameters).
    pub ssm: aws_sdk_ssm::Client,
}

impl Clients {
    /// Clients for `config` (which must name a region).
    pub fn from_config(config: SdkConfig) -> Clients {
        Clients {
            ebs: aws_sdk_ebs::Client::new(&config),
            ec2: aws_sdk_ec2::Client::new(&config),
            ssm: aws_sdk_ssm::Client::new(&config),
            config,
        }
    }

    /// The same credentials, endpoint and timeouts, in another region.
    pub fn in_region(&self, region: &str) -> Clients {
        Clients::from_config(
            self.config
                .to_builder()
                .region(Region::new(region.to_string()))
                .build(),
        )
    }

    /// The region these clients talk to.
    pub fn region(&self) -> &str {
        self.config.region().map(|r| r.as_ref()).unwrap_or("?")
    }
}

/// Resolve the configuration through the standard chain and build the clients.
pub async fn connect(opts: &AwsOptions) -> Result<Clients, AwsError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(opts.timeouts.connect)
                .read_timeout(opts.timeouts.read)
                .operation_attempt_timeout(opts.timeouts.attempt)
                .build(),
        );
    if let Some(region) = &opts.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(profile) = &opts.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(url) = &opts.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(creds) = &opts.credentials {
        loader = loader.credentials_provider(creds.clone());
    }
    let config = loader.load().await;
    if config.region().is_none() {
        return Err(AwsError::config(
            "no AWS region: pass --region or set AWS_REGION (or a region in your profile)",
        ));
    }
    Ok(Clients::from_config(config))
}

/// Whether an error is worth another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The service asked us to slow down.
    Throttling,
    /// Server-side or network trouble that may pass (5xx, reset, timeout).
    Transient,
    /// Will fail again the same way (access denied, validation, not found...).
    Permanent,
}

/// An AWS call that failed, with the AWS error code and message when there is one.
#[derive(Debug, Clone)]
pub struct AwsError {
    /// The API operation, e.g. `PutSnapshotBlock`.
    pub operation: &'static str,
    /// AWS error code, e.g. `AccessDeniedException`.
    pub code: Option<String>,
    /// AWS error message.
    pub message: Option<String>,
    /// HTTP status of the answer, when there was one.
    pub status: Option<u16>,
    /// Retry classification.
    pub class: ErrorClass,
    /// Description of a failure that carried no AWS error (network, timeout, parsing).
    pub detail: Option<String>,
}

impl AwsError {
    /// An error found before any request was sent (configuration).
    pub fn config(message: impl Into<String>) -> Self {
        AwsError {
            operation: "configuration",
            code: None,
            message: Some(message.into()),
            status: None,
            class: ErrorClass::Permanent,
            detail: None,
        }
    }

    /// Is another attempt worth it?
    pub fn is_retryable(&self) -> bool {
        self.class != ErrorClass::Permanent
    }

    /// True when AWS answered with this error code.
    pub fn has_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    /// Classify an SDK error from `operation`.
    pub fn from_sdk<E, R>(operation: &'static str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
        R: HasStatus + fmt::Debug,
    {
        let (class, detail, status) = match &err {
            SdkError::ConstructionFailure(_) => (ErrorClass::Permanent, Some(chain(&err)), None),
            SdkError::TimeoutError(_) => (
                ErrorClass::Transient,
                Some("timed out (attempt timeout)".to_string()),
                None,
            ),
            SdkError::DispatchFailure(d) => {
                let class = if d.is_user() {
                    ErrorClass::Permanent
                } else {
                    ErrorClass::Transient
                };
                (class, Some(chain(&err)), None)
            }
            SdkError::ResponseError(r) => (
                ErrorClass::Transient,
                Some(format!("unreadable response: {}", chain(&err))),
                Some(r.raw().status()),
            ),
            SdkError::ServiceError(s) => {
                let status = s.raw().status();
                (classify_code(s.err().code(), status), None, Some(status))
            }
            _ => (ErrorClass::Transient, Some(chain(&err)), None),
        };
        let (code, message) = match err.as_service_error() {
            Some(e) => (
                e.code().map(str::to_string),
                e.message().map(str::to_string),
            ),
            None => (None, None),
        };
        AwsError {
            operation,
            code,
            message,
            status,
            class,
            detail,
        }
    }
}

/// Lets [`AwsError::from_sdk`] read the HTTP status of any raw response type.
pub trait HasStatus {
    /// HTTP status code.
    fn status(&self) -> u16;
}

impl HasStatus for aws_smithy_runtime_api::http::Response {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
}

fn chain(err: &dyn StdError) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let m = e.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = e.source();
    }
    s
}

/// Throttling codes AWS services use (EC2, EBS, SSM and the common ones).
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "BandwidthLimitExceeded",
    "SlowDown",
    "EC2ThrottledException",
    "PriorRequestNotComplete",
];

/// Codes that mean "try again later" without being throttling.
const TRANSIENT_CODES: &[&str] = &[
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "InternalServerException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "Unavailable",
];

/// Classify an AWS error by its code, then by HTTP status.
pub fn classify_code(code: Option<&str>, status: u16) -> ErrorClass {
    match code {
        Some(c) if THROTTLING_CODES.contains(&c) => ErrorClass::Throttling,
        Some(c) if TRANSIENT_CODES.contains(&c) => ErrorClass::Transient,
        _ if status == 429 => ErrorClass::Throttling,
        _ if status >= 500 => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.operation)?;
        match (&self.code, &self.message, &self.detail) {
            (Some(code), Some(msg), _) => write!(f, ": {code}: {msg}"),
            (Some(code), None, _) => write!(f, ": {code}"),
            (None, Some(msg), _) => write!(f, ": {msg}"),
            (None, None, Some(detail)) => write!(f, ": {detail}"),
            (None, None, None) => match self.status {
                Some(s) => write!(f, ": HTTP {s} with no error code"),
                None => write!(f, ": failed"),
            },
        }?;
        if self.code.as_deref().is_some_and(is_access_denied) {
            write!(
                f,
                " (check the credentials in use and that their policy allows {})",
                self.operation
            )?;
        }
        Ok(())
    }
}

impl StdError for AwsError {}

fn is_access_denied(code: &str) -> bool {
    matches!(
        code,
        "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" | "AuthFailure"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified() {
        assert_eq!(
            classify_code(Some("ThrottlingException"), 429),
            ErrorClass::Throttling
        );
        assert_eq!(
            classify_code(Some("RequestLimitExceeded"), 503),
            ErrorClass::Throttling
        );
        assert_eq!(classify_code(None, 429), ErrorClass::Throttling);
        assert_eq!(
            classify_code(Some("InternalError"), 500),
            ErrorClass::Transient
        );
        assert_eq!(classify_code(None, 502), ErrorClass::Transient);
        assert_eq!(
            classify_code(Some("AccessDeniedException"), 403),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify_code(Some("ValidationException"), 400),
            ErrorClass::Permanent
        );
        // An access-denied answer with a 5xx status would be odd, but the code wins only
        // for known retryable codes; a 5xx stays retryable.
        assert_eq!(classify_code(Some("Whatever"), 503), ErrorClass::Transient);
    }

    #[test]
    fn display_names_code_and_message() {
        let e = AwsError {
            operation: "StartSnapshot",
            code: Some("AccessDeniedException".into()),
            message: Some("not allowed".into()),
            status: Some(403),
            class: ErrorClass::Permanent,
            detail: None,
        };
        let s = e.to_string();
        assert!(
            s.starts_with("StartSnapshot: AccessDeniedException: not allowed"),
            "{s}"
        );
        assert!(s.contains("policy allows StartSnapshot"), "{s}");
    }
}
