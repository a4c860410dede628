//! AWS errors as a release engineer can act on them: the operation, the region and the
//! resource the call was about, AWS's error code and message (never a Debug dump), and
//! whether another attempt can succeed.

use std::error::Error as StdError;
use std::fmt;

use aws_sdk_ebs::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::result::SdkError;

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

/// An AWS call that failed, with the AWS error code and message when there is one. Its
/// fields are read through [`AwsFailure`] (it is boxed: errors travel in every `Result`
/// and should stay one pointer wide).
#[derive(Debug, Clone)]
pub struct AwsError(Box<AwsFailure>);

/// What [`AwsError`] knows about a failed call.
#[derive(Debug, Clone)]
pub struct AwsFailure {
    /// The API operation, e.g. `PutSnapshotBlock`.
    pub operation: &'static str,
    /// The region the call went to, when known.
    pub region: Option<String>,
    /// The resource the call was about (snapshot, AMI, parameter...), when there is one.
    pub resource: Option<String>,
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

impl std::ops::Deref for AwsError {
    type Target = AwsFailure;
    fn deref(&self) -> &AwsFailure {
        &self.0
    }
}

impl From<AwsFailure> for AwsError {
    fn from(f: AwsFailure) -> Self {
        AwsError(Box::new(f))
    }
}

impl AwsError {
    /// An error found before any request was sent (configuration).
    pub fn config(message: impl Into<String>) -> Self {
        let mut e = AwsError::local("configuration", ErrorClass::Permanent, String::new());
        e.0.message = Some(message.into());
        e
    }

    /// The same error with AWS's error code `code` (tests, and answers we classify).
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.0.code = Some(code.into());
        self
    }

    /// An error of ours (not AWS's) about `operation`, to go through the same types and
    /// retry layer (e.g. an answer missing a field, a snapshot in the wrong state).
    pub fn local(operation: &'static str, class: ErrorClass, detail: String) -> Self {
        AwsError::from(AwsFailure {
            operation,
            region: None,
            resource: None,
            code: None,
            message: None,
            status: None,
            class,
            detail: (!detail.is_empty()).then_some(detail),
        })
    }

    /// Is another attempt worth it?
    pub fn is_retryable(&self) -> bool {
        self.class != ErrorClass::Permanent
    }

    /// True when AWS answered with this error code.
    pub fn has_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    /// Fill in the region and resource of `call` where the error does not have them.
    pub fn within(mut self, call: &super::Call) -> Self {
        if self.0.region.is_none() {
            self.0.region = call.region.clone();
        }
        if self.0.resource.is_none() {
            self.0.resource = call.resource.clone();
        }
        self
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
            SdkError::DispatchFailure(d)
                if d.as_connector_error()
                    .and_then(|c| credentials_failure(c))
                    .is_some() =>
            {
                (
                    ErrorClass::Permanent,
                    d.as_connector_error().and_then(|c| credentials_failure(c)),
                    None,
                )
            }
            SdkError::DispatchFailure(d) => {
                let class = if d.is_user() {
                    ErrorClass::Permanent
                } else {
                    ErrorClass::Transient
                };
                (class, Some(chain(&err)), None)
            }
            // An answer the SDK could not read as an AWS error (no error type, e.g. a
            // gateway's 403): its status decides, and its message is shown as a
            // sentence, never the SDK's Debug structure.
            SdkError::ResponseError(r) => {
                let status = r.raw().status();
                let said = r
                    .raw()
                    .body_text()
                    .map(|b| answer_message(&b))
                    .filter(|m| !m.is_empty());
                let detail = match said {
                    Some(m) => format!("HTTP {status} answer naming no AWS error: {m}"),
                    None => format!("HTTP {status} answer naming no AWS error"),
                };
                (
                    super::retry::classify(None, None, status),
                    Some(detail),
                    Some(status),
                )
            }
            SdkError::ServiceError(s) => {
                let status = s.raw().status();
                (
                    super::retry::classify(s.err().code(), s.err().message(), status),
                    None,
                    Some(status),
                )
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
        AwsError::from(AwsFailure {
            operation,
            region: None,
            resource: None,
            code,
            message,
            status,
            class,
            detail,
        })
    }
}

/// Lets [`AwsError::from_sdk`] read the HTTP status of any raw response type.
pub trait HasStatus {
    /// HTTP status code.
    fn status(&self) -> u16;
    /// The body, when it is in memory and text.
    fn body_text(&self) -> Option<String> {
        None
    }
}

impl HasStatus for aws_smithy_runtime_api::http::Response {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
    fn body_text(&self) -> Option<String> {
        let bytes = self.body().bytes()?;
        Some(String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).into_owned())
    }
}

/// What an answer's body says, on one line: its JSON `message` (or `Message`) when it
/// is JSON, otherwise its first 200 characters; control characters escaped.
fn answer_message(body: &str) -> String {
    let text = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            ["message", "Message"]
                .iter()
                .find_map(|k| v.get(k).and_then(|m| m.as_str()).map(str::to_string))
        })
        .unwrap_or_else(|| body.chars().take(200).collect());
    crate::image::escaped(&one_line(&text))
}

/// What to set when no credentials could be found.
pub const NO_CREDENTIALS_HINT: &str = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
     pass --profile NAME (a profile in ~/.aws/config or ~/.aws/credentials), \
     or sign in with `aws sso login --profile NAME`";

/// When `err` is the SDK failing to find or load credentials (nothing was sent), the
/// sentence to show: what went wrong and what to set. Another attempt fails the same
/// way, so it is permanent; only a provider's timeout is not taken for one.
pub fn credentials_failure(err: &(dyn StdError + 'static)) -> Option<String> {
    use aws_credential_types::provider::error::CredentialsError;
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return match c {
                CredentialsError::ProviderTimedOut(_) => None,
                CredentialsError::CredentialsNotLoaded(_) => {
                    let why = c.source().map(|s| s.to_string()).unwrap_or_default();
                    // The default chain's "no providers in chain provided credentials"
                    // says nothing an operator can act on: the hint does.
                    if why.is_empty()
                        || why.contains("no providers in chain")
                        || why.contains("no credentials found in chain")
                    {
                        Some(format!("no AWS credentials found: {NO_CREDENTIALS_HINT}"))
                    } else {
                        Some(format!(
                            "AWS credentials not loaded ({}): {NO_CREDENTIALS_HINT}",
                            one_line(&why)
                        ))
                    }
                }
                _ => Some(format!(
                    "AWS credentials could not be loaded ({}): {NO_CREDENTIALS_HINT}",
                    one_line(&chain(c))
                )),
            };
        }
        cur = e.source();
    }
    None
}

/// `s` on one line: line breaks and runs of blanks become one space.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
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

/// Classify an AWS error by its code, then by HTTP status (see [`super::retry::classify`],
/// which also reads the message).
pub fn classify_code(code: Option<&str>, status: u16) -> ErrorClass {
    super::retry::classify(code, None, status)
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.operation)?;
        if let Some(r) = &self.resource {
            write!(f, " {r}")?;
        }
        if let Some(r) = &self.region {
            write!(f, " in {r}")?;
        }
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
        let e = AwsError::from(AwsFailure {
            code: Some("AccessDeniedException".into()),
            message: Some("not allowed".into()),
            status: Some(403),
            ..(*AwsError::local("StartSnapshot", ErrorClass::Permanent, String::new())).clone()
        });
        let s = e.to_string();
        assert!(
            s.starts_with("StartSnapshot: AccessDeniedException: not allowed"),
            "{s}"
        );
        assert!(s.contains("policy allows StartSnapshot"), "{s}");
        let call = super::super::Call::new("StartSnapshot", "eu-west-1").on("snap-0abc");
        let s = e.within(&call).to_string();
        assert!(
            s.starts_with("StartSnapshot snap-0abc in eu-west-1: AccessDeniedException"),
            "{s}"
        );
    }
}
