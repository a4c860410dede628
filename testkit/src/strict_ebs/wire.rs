//! The wire format: restJson1 answers and errors for the EBS direct paths, EC2 query
//! XML for `POST /`, pagination tokens, query and form parameters.

use std::collections::HashMap;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use serde_json::{Value, json};

use super::http_util;
use super::state::Snap;
use super::{BLOCK_SIZE, OWNER_ID};

pub(super) use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};

/// The namespace of EC2 query answers.
pub(super) const EC2_XMLNS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// An API error answer (EBS restJson1 or EC2 query XML, by route).
#[derive(Debug)]
pub(super) struct ApiError {
    pub(super) status: u16,
    pub(super) code: &'static str,
    pub(super) reason: Option<&'static str>,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn validation(reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            code: "ValidationException",
            reason: Some(reason),
            message: message.into(),
        }
    }
    pub(super) fn invalid(message: impl Into<String>) -> Self {
        Self::validation("INVALID_PARAMETER_VALUE", message)
    }
    pub(super) fn snapshot_not_found(id: &str) -> Self {
        ApiError {
            status: 404,
            code: "ResourceNotFoundException",
            reason: Some("SNAPSHOT_NOT_FOUND"),
            message: format!("The snapshot '{id}' was not found"),
        }
    }
    pub(super) fn ec2(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            reason: None,
            message: message.into(),
        }
    }
}

/// An operation's answer, or the error to answer instead.
pub(super) type ApiResult = Result<Response<Full<Bytes>>, ApiError>;

pub(super) fn header<'a>(req: &'a hyper::http::request::Parts, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

pub(super) fn query_params(parts: &hyper::http::request::Parts) -> HashMap<String, String> {
    http_util::parse_form(parts.uri.query().unwrap_or(""))
        .into_iter()
        .collect()
}

pub(super) fn ebs_json(status: u16, body: &Value) -> Response<Full<Bytes>> {
    http_util::full_response(
        status,
        &[
            ("content-type", "application/json".to_string()),
            ("x-amzn-requestid", http_util::request_id()),
        ],
        body.to_string(),
    )
}

pub(super) fn ebs_error_response(e: &ApiError) -> Response<Full<Bytes>> {
    let mut body = json!({ "message": e.message, "Message": e.message });
    if let Some(r) = e.reason {
        body["Reason"] = json!(r);
        body["reason"] = json!(r);
    }
    http_util::full_response(
        e.status,
        &[
            ("content-type", "application/json".to_string()),
            ("x-amzn-errortype", e.code.to_string()),
            ("x-amzn-requestid", http_util::request_id()),
        ],
        body.to_string(),
    )
}

pub(super) fn ec2_error_response(e: &ApiError) -> Response<Full<Bytes>> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
        http_util::xml_escape(e.code),
        http_util::xml_escape(&e.message),
        http_util::request_id()
    );
    http_util::full_response(
        e.status,
        &[("content-type", "text/xml;charset=UTF-8".to_string())],
        body,
    )
}

pub(super) fn ec2_xml(body: String) -> Response<Full<Bytes>> {
    http_util::full_response(
        200,
        &[("content-type", "text/xml;charset=UTF-8".to_string())],
        body,
    )
}

/// Encode a pagination token.
pub(super) fn page_token(kind: &str, id: &str, next: u64) -> String {
    B64URL.encode(format!("{kind}:{id}:{next}"))
}

/// Decode a pagination token, checking it belongs to this listing.
pub(super) fn parse_page_token(kind: &str, id: &str, token: &str) -> Result<u64, ApiError> {
    let bad = || ApiError::validation("INVALID_PAGE_TOKEN", "The pagination token is invalid");
    let raw = B64URL.decode(token.as_bytes()).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let mut it = raw.splitn(3, ':');
    match (it.next(), it.next(), it.next()) {
        (Some(k), Some(i), Some(n)) if k == kind && i == id => n.parse().map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// Parse `maxResults`, `pageToken` and `startingBlockIndex`: (start index, page limit).
pub(super) fn page_params(
    q: &HashMap<String, String>,
    kind: &str,
    id: &str,
    page_size: usize,
) -> Result<(u64, usize), ApiError> {
    let max = match q.get("maxResults") {
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (100..=10_000).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(format!(
                    "maxResults must be between 100 and 10000, got '{v}'"
                )));
            }
        },
        None => 10_000,
    };
    let mut start = match q.get("startingBlockIndex") {
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| ApiError::invalid(format!("invalid startingBlockIndex '{v}'")))?,
        None => 0,
    };
    if let Some(t) = q.get("pageToken") {
        start = parse_page_token(kind, id, t)?;
    }
    Ok((start, max.min(page_size.max(1))))
}

/// Values of `Prefix.1`, `Prefix.2`, ... in numeric order.
pub(super) fn numbered<'a>(params: &'a [(String, String)], prefix: &str) -> Vec<&'a str> {
    let mut out: Vec<(u32, &str)> = params
        .iter()
        .filter_map(|(k, v)| {
            let n = k.strip_prefix(prefix)?.strip_prefix('.')?.parse().ok()?;
            Some((n, v.as_str()))
        })
        .collect();
    out.sort_by_key(|(n, _)| *n);
    out.into_iter().map(|(_, v)| v).collect()
}

pub(super) fn parse_index(s: &str) -> Result<u64, ApiError> {
    s.parse::<u64>()
        .map_err(|_| ApiError::validation("INVALID_BLOCK", format!("invalid block index '{s}'")))
}

pub(super) fn start_output(s: &Snap) -> Value {
    let mut out = json!({
        "SnapshotId": s.id,
        "OwnerId": OWNER_ID,
        "Status": s.status.as_str(),
        "StartTime": s.start_time,
        "VolumeSize": s.volume_size,
        "BlockSize": BLOCK_SIZE,
        "Tags": s.tags.iter().map(|(k, v)| json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
        "SseType": match (s.encrypted, s.kms_key_arn.is_some()) {
            (true, true) => "sse-kms",
            (true, false) => "sse-ebs",
            (false, _) => "none",
        },
    });
    if let Some(d) = &s.description {
        out["Description"] = json!(d);
    }
    if let Some(k) = &s.kms_key_arn {
        out["KmsKeyArn"] = json!(k);
    }
    if let Some(p) = &s.parent {
        out["ParentSnapshotId"] = json!(p);
    }
    out
}
