//! What a request is: its AWS operation (from the path, the `Action` parameter or the
//! `X-Amz-Target` header) and its wire protocol, which decides the shape of an error.

use bytes::Bytes;
use hyper::header::CONTENT_TYPE;

use crate::http_util;

/// The EBS direct operations (restJson1, by method and path).
pub(super) const EBS_OPERATIONS: &[&str] = &[
    "StartSnapshot",
    "PutSnapshotBlock",
    "CompleteSnapshot",
    "ListSnapshotBlocks",
    "GetSnapshotBlock",
    "ListChangedBlocks",
];

/// Wire protocol of a request, which decides the shape of injected errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Proto {
    RestJson,
    Ec2Query,
    AwsQuery,
    AwsJson,
}

/// The AWS operation name of a request.
pub(super) fn classify(parts: &hyper::http::request::Parts, body: &Bytes) -> (String, bool) {
    if let Some(target) = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
    {
        let op = target.rsplit('.').next().unwrap_or(target);
        return (op.to_string(), false);
    }
    let path = parts.uri.path();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let m = parts.method.as_str();
    let ebs = match (m, segs.as_slice()) {
        ("POST", ["snapshots"]) => Some("StartSnapshot"),
        ("PUT", ["snapshots", _, "blocks", _]) => Some("PutSnapshotBlock"),
        ("POST", ["snapshots", "completion", _]) => Some("CompleteSnapshot"),
        ("GET", ["snapshots", _, "blocks"]) => Some("ListSnapshotBlocks"),
        ("GET", ["snapshots", _, "blocks", _]) => Some("GetSnapshotBlock"),
        ("GET", ["snapshots", _, "changedblocks"]) => Some("ListChangedBlocks"),
        _ => None,
    };
    if let Some(op) = ebs {
        return (op.to_string(), false);
    }
    if let Some(op) = crate::rest_ops::rbin_operation(m, &segs) {
        return (op.to_string(), false);
    }
    let mut params = http_util::parse_form(parts.uri.query().unwrap_or(""));
    let is_form = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("x-www-form-urlencoded"));
    if is_form && let Ok(text) = std::str::from_utf8(body) {
        params.extend(http_util::parse_form(text));
    }
    match params.into_iter().find(|(k, _)| k == "Action") {
        Some((_, action)) if !action.is_empty() => (action, true),
        _ => ("Unknown".to_string(), false),
    }
}

/// The wire protocol of a request to `service`.
pub(super) fn protocol(
    service: &str,
    parts: &hyper::http::request::Parts,
    op: &str,
    has_action: bool,
) -> Proto {
    if parts.headers.contains_key("x-amz-target") {
        return Proto::AwsJson;
    }
    if EBS_OPERATIONS.contains(&op) {
        return Proto::RestJson;
    }
    if has_action {
        return if service == "ec2" || service == "unknown" {
            Proto::Ec2Query
        } else {
            Proto::AwsQuery
        };
    }
    match service {
        "ec2" => Proto::Ec2Query,
        "ssm" => Proto::AwsJson,
        _ => Proto::RestJson,
    }
}
