//! The world's error vocabulary: the error codes EC2, the EBS direct APIs, SSM and STS
//! document, with the HTTP status, message and (EBS) reason they answer them with, and
//! whether their documentation says to retry. The proxy injects errors from here
//! ([`Fault::Code`](super::Fault::Code), [`Fault::Throttle`](super::Fault::Throttle)),
//! and tests walk [`retryable`] to check that the client retries each one.
//!
//! Sources: the EC2 API reference "Error codes for the Amazon EC2 API"; the EBS user
//! guide "Error retries for EBS direct APIs" and the EBS API reference's error list;
//! the SSM and STS API references' "Errors" and "Common Errors". Written out here from
//! the documentation, not from ec2ami's classification.

/// One documented error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DocumentedError {
    /// Signing name of the service: `ec2`, `ebs`, `ssm` or `sts`.
    pub service: &'static str,
    /// The error code.
    pub code: &'static str,
    /// The HTTP status the service answers it with.
    pub status: u16,
    /// A message of the kind the service sends.
    pub message: &'static str,
    /// The EBS `Reason` field, when the error has one.
    pub reason: Option<&'static str>,
    /// Whether the service's documentation says another attempt can succeed.
    pub retryable: bool,
}

const fn e(
    service: &'static str,
    code: &'static str,
    status: u16,
    message: &'static str,
    retryable: bool,
) -> DocumentedError {
    DocumentedError {
        service,
        code,
        status,
        message,
        reason: None,
        retryable,
    }
}

const fn ebs(
    code: &'static str,
    status: u16,
    message: &'static str,
    reason: Option<&'static str>,
    retryable: bool,
) -> DocumentedError {
    DocumentedError {
        service: "ebs",
        code,
        status,
        message,
        reason,
        retryable,
    }
}

/// Every error of the vocabulary.
pub const DOCUMENTED: &[DocumentedError] = &[
    // EC2: the throttling and server errors, and the client errors EC2 says to retry.
    e(
        "ec2",
        "RequestLimitExceeded",
        503,
        "Request limit exceeded.",
        true,
    ),
    e(
        "ec2",
        "SnapshotCreationPerVolumeRateExceeded",
        400,
        "The rate limit for creating concurrent snapshots of an EBS volume has been exceeded.",
        true,
    ),
    e(
        "ec2",
        "InternalError",
        500,
        "An internal error has occurred.",
        true,
    ),
    e(
        "ec2",
        "InternalFailure",
        500,
        "The request processing has failed because of an unknown error, exception, or failure.",
        true,
    ),
    e(
        "ec2",
        "ServiceUnavailable",
        503,
        "The request has failed due to a temporary failure of the server.",
        true,
    ),
    e(
        "ec2",
        "Unavailable",
        503,
        "The server is overloaded and can't handle the request.",
        true,
    ),
    e(
        "ec2",
        "InsufficientInstanceCapacity",
        500,
        "There is not enough capacity to fulfill your request.",
        true,
    ),
    e(
        "ec2",
        "InsufficientCapacity",
        500,
        "There is not enough capacity to fulfill your request.",
        true,
    ),
    e(
        "ec2",
        "ConcurrentTagAccess",
        400,
        "You can't run simultaneous commands to modify a tag for a specific resource.",
        true,
    ),
    e(
        "ec2",
        "IdempotentParameterMismatch",
        400,
        "The request uses the same client token as a previous, but non-identical request.",
        false,
    ),
    e(
        "ec2",
        "InvalidAMIID.NotFound",
        400,
        "The image id does not exist",
        false,
    ),
    e(
        "ec2",
        "UnauthorizedOperation",
        403,
        "You are not authorized to perform this operation.",
        false,
    ),
    e(
        "ec2",
        "InvalidParameterValue",
        400,
        "Injected client error",
        false,
    ),
    // EBS direct APIs.
    ebs(
        "RequestThrottledException",
        400,
        "The number of API requests has exceeded the maximum allowed API request throttling limit for the snapshot.",
        Some("RESOURCE_LEVEL_THROTTLE"),
        true,
    ),
    ebs(
        "ConcurrentLimitExceededException",
        400,
        "You have reached the limit for concurrent API requests.",
        None,
        true,
    ),
    ebs(
        "ThrottlingException",
        400,
        "The number of API requests has exceeded the maximum allowed API request throttling limit for the account.",
        None,
        true,
    ),
    ebs(
        "InternalServerException",
        500,
        "The request failed due to a network or AWS server-side issue.",
        None,
        true,
    ),
    ebs(
        "ValidationException",
        400,
        "Failed to read block data",
        Some("INVALID_BLOCK"),
        true,
    ),
    ebs(
        "ResourceNotFoundException",
        404,
        "The snapshot was not found",
        Some("SNAPSHOT_NOT_FOUND"),
        false,
    ),
    ebs(
        "ConflictException",
        409,
        "The specified client token was previously used in a similar request that had different request parameters.",
        None,
        false,
    ),
    ebs(
        "AccessDeniedException",
        403,
        "User is not authorized to perform this action",
        Some("UNAUTHORIZED_ACCOUNT"),
        false,
    ),
    ebs(
        "ServiceQuotaExceededException",
        402,
        "Your current service quotas do not allow you to perform this action.",
        Some("DEPENDENCY_SERVICE_QUOTA_EXCEEDED"),
        false,
    ),
    // SSM.
    e("ssm", "ThrottlingException", 400, "Rate exceeded", true),
    e(
        "ssm",
        "TooManyUpdates",
        400,
        "There are concurrent updates for a resource that supports one update at a time.",
        true,
    ),
    e(
        "ssm",
        "InternalServerError",
        500,
        "An error occurred on the server side.",
        true,
    ),
    e(
        "ssm",
        "AccessDeniedException",
        400,
        "User is not authorized to perform this action",
        false,
    ),
    // STS.
    e("sts", "Throttling", 400, "Rate exceeded", true),
    e(
        "sts",
        "IDPCommunicationError",
        400,
        "The request could not be fulfilled because the identity provider could not be reached.",
        true,
    ),
    e(
        "sts",
        "InternalFailure",
        500,
        "The request processing has failed because of an unknown error.",
        true,
    ),
    e(
        "sts",
        "ServiceUnavailable",
        503,
        "The request has failed due to a temporary failure of the server.",
        true,
    ),
    e(
        "sts",
        "AccessDenied",
        403,
        "User is not authorized to perform this action",
        false,
    ),
];

/// The documented error `code` of `service`, if the vocabulary has it.
pub fn documented(service: &str, code: &str) -> Option<&'static DocumentedError> {
    DOCUMENTED
        .iter()
        .find(|d| d.service == service && d.code == code)
}

/// The errors `service` documents as retryable.
pub fn retryable(service: &str) -> Vec<&'static DocumentedError> {
    DOCUMENTED
        .iter()
        .filter(|d| d.service == service && d.retryable)
        .collect()
}

/// The code a service throttles with first ([`Fault::Throttle`](super::Fault::Throttle)).
pub fn throttling_code(service: &str) -> &'static str {
    match service {
        "ebs" => "RequestThrottledException",
        "ec2" => "RequestLimitExceeded",
        "ssm" => "ThrottlingException",
        _ => "Throttling",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_has_its_throttling_code_and_no_duplicates() {
        for s in ["ec2", "ebs", "ssm", "sts"] {
            let t = documented(s, throttling_code(s)).unwrap();
            assert!(t.retryable, "{s}");
            assert!(!retryable(s).is_empty());
        }
        for (i, a) in DOCUMENTED.iter().enumerate() {
            assert!(
                !DOCUMENTED[i + 1..]
                    .iter()
                    .any(|b| b.service == a.service && b.code == a.code),
                "{} {} twice",
                a.service,
                a.code
            );
        }
        // The EBS direct APIs throttle with 400, not 429.
        assert_eq!(
            documented("ebs", "RequestThrottledException")
                .unwrap()
                .status,
            400
        );
        assert_eq!(
            documented("ebs", "ConcurrentLimitExceededException")
                .unwrap()
                .status,
            400
        );
        assert_eq!(
            documented("ec2", "RequestLimitExceeded").unwrap().status,
            503
        );
    }
}
